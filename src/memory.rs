//! How the process asks for memory. Rust's allocations go to mimalloc (see
//! `main.rs`, which also sets its options); C libraries (SQLite) still use
//! glibc's malloc.
//!
//! Each password hash takes 19 MiB for a moment. glibc's defaults keep such
//! blocks once freed (its mmap threshold rises to their size, and every
//! thread may get an arena of its own), so a few hundred sign-ins left a
//! process at ~400 MiB resident while serving reads in 15. Big blocks are
//! instead mapped and returned at once, and arenas are few.
//!
//! mimalloc by default commits its arenas eagerly: 64 connections of the
//! mixed load held 75 MiB; committing on demand, 46 MiB. (Purging freed
//! pages at once rather than after 10 ms brings that to 27 MiB, but costs
//! a tenth of the reads/s in madvise calls.)

/// Call first thing in `main`, before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            // Fixing the mmap threshold also fixes the trim threshold at its
            // small default: the heap would be shrunk and grown again all the
            // time. Small blocks may keep a few MiB; big ones are unmapped.
            libc::mallopt(libc::M_TRIM_THRESHOLD, 32 * 1024 * 1024);
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
