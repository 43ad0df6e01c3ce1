//! The memory an argon2 hash works in, on 2 MiB pages where the kernel has
//! them. A hash reads its 19 MiB at random, 1 KiB at a time: on 4 KiB pages
//! nearly every read misses the TLB, and once the database and the reactor
//! have run in between, the page-table walks miss the cache too. On 2 MiB
//! pages the area needs ten TLB entries. Measured under `signin` load (the
//! load tool, 16 connections, 2 cores): 12.7-13.0 ms of CPU per hash against
//! 13.0-13.5 ms on 4 KiB pages; a hash alone runs as fast either way.

use argon2::Block;

/// Blocks for one hash at a time, zeroed when first mapped: on huge pages
/// where the system gives them, else on the heap.
pub(super) enum HashMemory {
    #[cfg(target_os = "linux")]
    Mapped(huge::Mapping),
    Heap(Vec<Block>),
}

impl HashMemory {
    /// An area of `blocks` blocks.
    pub(super) fn new(blocks: usize) -> Self {
        #[cfg(target_os = "linux")]
        if let Some(m) = huge::Mapping::new(blocks) {
            return Self::Mapped(m);
        }
        Self::Heap(vec![Block::new(); blocks])
    }

    pub(super) fn len(&self) -> usize {
        match self {
            #[cfg(target_os = "linux")]
            Self::Mapped(m) => m.blocks,
            Self::Heap(v) => v.len(),
        }
    }

    /// The first `n` blocks (at most [`len`](Self::len)).
    pub(super) fn blocks(&mut self, n: usize) -> &mut [Block] {
        match self {
            #[cfg(target_os = "linux")]
            Self::Mapped(m) => &mut m.as_mut_slice()[..n],
            Self::Heap(v) => &mut v[..n],
        }
    }
}

#[cfg(target_os = "linux")]
mod huge {
    use std::ptr::NonNull;

    use argon2::Block;

    pub(super) const HUGE_PAGE: usize = 2 << 20;

    /// An anonymous mapping aligned to a huge page, with the kernel asked
    /// (`MADV_HUGEPAGE`) to back it with huge pages before it is first
    /// touched; where it will not, it is ordinary memory.
    pub struct Mapping {
        pub(super) ptr: NonNull<Block>,
        pub(super) blocks: usize,
        bytes: usize,
    }

    // SAFETY: the mapping is owned by this value alone, as a Vec owns its
    // buffer.
    unsafe impl Send for Mapping {}

    impl Mapping {
        /// Maps `blocks` blocks rounded up to whole huge pages, at a
        /// huge-page boundary: a mapping one huge page longer, cut down at
        /// both ends. None when there is no mapping to be had.
        pub fn new(blocks: usize) -> Option<Self> {
            let bytes = blocks.checked_mul(size_of::<Block>())?.max(1).next_multiple_of(HUGE_PAGE);
            let span = bytes.checked_add(HUGE_PAGE)?;
            // SAFETY: a new private anonymous mapping; no existing memory is
            // touched.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return None;
            }
            let start = raw as usize;
            let aligned = start.next_multiple_of(HUGE_PAGE);
            let head = aligned - start;
            let tail = span - head - bytes;
            // SAFETY: the head and the tail are the parts of the new mapping
            // outside the aligned range, and nothing refers to them. The
            // advice only changes how the kernel backs the range; a kernel
            // without transparent huge pages refuses it, and the memory works
            // the same.
            unsafe {
                if head > 0 {
                    libc::munmap(raw, head);
                }
                if tail > 0 {
                    libc::munmap((aligned + bytes) as *mut libc::c_void, tail);
                }
                libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            }
            let ptr = NonNull::new(aligned as *mut Block)?;
            Some(Self { ptr, blocks, bytes })
        }

        pub fn as_mut_slice(&mut self) -> &mut [Block] {
            // SAFETY: `ptr` starts a private read-write mapping of `bytes` >=
            // `blocks` blocks, aligned to 2 MiB (so to a Block's 64), used
            // through this value only; the kernel maps anonymous memory
            // zeroed, and any bits are a valid Block.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.blocks) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: exactly the range `new` kept; the slices that borrowed
            // it are gone with the borrow of `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_area_is_zeroed_writable_and_as_long_as_asked() {
        let mut m = HashMemory::new(19 * 1024);
        assert_eq!(m.len(), 19 * 1024);
        #[cfg(target_os = "linux")]
        assert!(
            matches!(&m, HashMemory::Mapped(a) if (a.ptr.as_ptr() as usize).is_multiple_of(huge::HUGE_PAGE)),
            "mapped at a huge-page boundary"
        );
        let blocks = m.blocks(19 * 1024);
        assert!(blocks.iter().all(|b| b.as_ref().iter().all(|w| *w == 0)));
        blocks[19 * 1024 - 1].as_mut()[127] = 7;
        assert_eq!(m.blocks(19 * 1024)[19 * 1024 - 1].as_ref()[127], 7);
    }
}
