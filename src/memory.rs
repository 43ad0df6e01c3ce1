//! How the process asks the allocator for memory. Each password hash takes
//! 19 MiB for a moment. glibc's defaults keep such blocks once freed (its
//! mmap threshold rises to their size, and every thread may get an arena of
//! its own), so a few hundred sign-ins left a process at ~400 MiB resident
//! while serving reads in 15. Big blocks are instead mapped and returned at
//! once, and arenas are few.

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
