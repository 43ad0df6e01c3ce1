//! The memory an argon2 hash works in, on 2 MiB pages where the kernel has
//! them. A hash reads its 19 MiB at random, 1 KiB at a time: on 4 KiB pages
//! nearly every read misses the TLB, and once the database and the reactor
//! have run in between, the page-table walks miss the cache too. On 2 MiB
//! pages the area needs ten TLB entries. Measured under `signin` load (the
//! load tool, 16 connections, 2 cores): 12.7-13.0 ms of CPU per hash against
//! 13.0-13.5 ms on 4 KiB pages; a hash alone runs as fast either way.

use argon2::Block;

/// Blocks for one hash at a time, zeroed when first mapped.
pub(super) struct HashMemory {
    inner: imp::Area,
}

impl HashMemory {
    /// An area of `blocks` blocks.
    pub(super) fn new(blocks: usize) -> Self {
        Self { inner: imp::Area::new(blocks) }
    }

    pub(super) fn len(&self) -> usize {
        self.inner.len()
    }

    /// The first `n` blocks (at most [`len`](Self::len)).
    pub(super) fn blocks(&mut self, n: usize) -> &mut [Block] {
        &mut self.inner.as_mut_slice()[..n]
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::ptr::NonNull;

    use argon2::Block;

    const HUGE_PAGE: usize = 2 << 20;

    /// An anonymous mapping aligned to a huge page, with the kernel asked
    /// (`MADV_HUGEPAGE`) to back it with huge pages before it is first
    /// touched; where it will not, it is ordinary memory. On the heap when
    /// there is no mapping to be had.
    pub enum Area {
        Mapped { ptr: NonNull<Block>, blocks: usize, bytes: usize },
        Heap(Vec<Block>),
    }

    // SAFETY: a mapping is owned by this value alone, as a Vec owns its
    // buffer.
    unsafe impl Send for Area {}

    impl Area {
        pub fn new(blocks: usize) -> Self {
            match map(blocks) {
                Some((ptr, bytes)) => Self::Mapped { ptr, blocks, bytes },
                None => Self::Heap(vec![Block::new(); blocks]),
            }
        }

        pub fn len(&self) -> usize {
            match self {
                Self::Mapped { blocks, .. } => *blocks,
                Self::Heap(v) => v.len(),
            }
        }

        pub fn as_mut_slice(&mut self) -> &mut [Block] {
            match self {
                // SAFETY: `ptr` starts a private read-write mapping of
                // `bytes` >= `blocks` blocks, aligned to 2 MiB (so to a
                // Block's 64), used through this value only; the kernel maps
                // anonymous memory zeroed, and any bits are a valid Block.
                Self::Mapped { ptr, blocks, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *blocks) },
                Self::Heap(v) => v,
            }
        }
    }

    impl Drop for Area {
        fn drop(&mut self) {
            if let Self::Mapped { ptr, bytes, .. } = self {
                // SAFETY: exactly the range `map` returned; the slices that
                // borrowed it are gone with the borrow of `self`.
                unsafe { libc::munmap(ptr.as_ptr().cast(), *bytes) };
            }
        }
    }

    /// Maps `blocks` blocks rounded up to whole huge pages, at a huge-page
    /// boundary: a mapping one huge page longer, cut down at both ends.
    fn map(blocks: usize) -> Option<(NonNull<Block>, usize)> {
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
        // outside the aligned range, and nothing refers to them. The advice
        // only changes how the kernel backs the range; a kernel without
        // transparent huge pages refuses it, and the memory works the same.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + bytes) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
        }
        NonNull::new(aligned as *mut Block).map(|p| (p, bytes))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use argon2::Block;

    pub struct Area(Vec<Block>);

    impl Area {
        pub fn new(blocks: usize) -> Self {
            Self(vec![Block::new(); blocks])
        }

        pub fn len(&self) -> usize {
            self.0.len()
        }

        pub fn as_mut_slice(&mut self) -> &mut [Block] {
            &mut self.0
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
        let blocks = m.blocks(19 * 1024);
        assert!(blocks.iter().all(|b| b.as_ref().iter().all(|w| *w == 0)));
        blocks[19 * 1024 - 1].as_mut()[127] = 7;
        assert_eq!(m.blocks(19 * 1024)[19 * 1024 - 1].as_ref()[127], 7);
    }
}
