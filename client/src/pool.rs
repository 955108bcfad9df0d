//! The client's frame pool: one sealed memfd, mapped once, cut into `window` page-aligned
//! slots of one frame each. The daemon maps the same memfd read-only and the card reads
//! frames straight out of it, so a frame is written once, by the client, in place.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::unistd::ftruncate;

/// Slots start on page boundaries so each frame's DMA starts page-aligned.
const SLOT_ALIGN: usize = 4096;

/// A memfd of `slots` frame slots, mapped read-write in this process.
#[derive(Debug)]
pub struct FramePool {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    slot_len: usize,
    frame_size: usize,
    slots: usize,
}

// SAFETY: the pool owns its mapping; the raw pointer is only dereferenced through
// `slot_mut`, which takes `&mut self`, so access is never shared across threads.
unsafe impl Send for FramePool {}

impl FramePool {
    /// Creates a sealed memfd of `slots` slots of `frame_size` bytes and maps it.
    pub fn new(slots: usize, frame_size: usize) -> std::io::Result<FramePool> {
        if slots == 0 || frame_size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("frame pool of {slots} slots of {frame_size} bytes"),
            ));
        }
        let slot_len = frame_size.div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        let len = slot_len.checked_mul(slots).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame pool too large")
        })?;
        let fd = memfd_create(
            c"vpud-frames",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        ftruncate(&fd, len as libc::off_t)?;
        // The daemon maps this memory; sealing its size means no one can shrink it under
        // the daemon's mapping.
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let size = NonZeroUsize::new(len).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty frame pool")
        })?;
        // SAFETY: a fresh shared mapping of a memfd we own, sized above and sealed against
        // shrinking, so every page of it stays backed for the mapping's life.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )?
        };
        Ok(FramePool {
            fd,
            ptr: ptr.cast(),
            len,
            slot_len,
            frame_size,
            slots,
        })
    }

    /// The memfd, to pass to the daemon.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size of the memfd.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the pool has no bytes (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Bytes of one frame.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Offset of slot `i` in the memfd.
    pub fn offset(&self, slot: usize) -> usize {
        slot * self.slot_len
    }

    /// Length of a slot: the frame rounded up to whole pages.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Start of the mapping in this process, for code that hands slots out itself (a media
    /// framework's buffer pool, say) and tells its frames apart by address. Writing through
    /// it is the caller's responsibility: a slot must not be written while a frame in it is
    /// in flight.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The frame bytes of slot `slot`, for writing. The caller must only ask for a slot no
    /// frame in flight uses (the session tracks that).
    pub fn slot_mut(&mut self, slot: usize) -> Option<&mut [u8]> {
        if slot >= self.slots {
            return None;
        }
        // SAFETY: `slot < slots`, so `offset(slot) + frame_size <= len`: the pointer stays
        // inside the mapping.
        let start = unsafe { self.ptr.as_ptr().add(self.offset(slot)) };
        // SAFETY: `start .. start + frame_size` lies inside the live mapping (above);
        // `&mut self` makes this the only reference into the pool in this process, and the
        // daemon reads a slot only while a frame in it is in flight, which the session never
        // hands out.
        Some(unsafe { std::slice::from_raw_parts_mut(start, self.frame_size) })
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, and no slice into it
        // outlives `&mut self`.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::warn!(error = %e, "unmapping the frame pool failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_page_aligned_and_writable() {
        let mut pool = FramePool::new(3, 6000).unwrap();
        assert_eq!(pool.offset(1), 8192);
        assert_eq!(pool.len(), 3 * 8192);
        pool.slot_mut(2).unwrap().fill(7);
        assert_eq!(pool.slot_mut(2).unwrap().len(), 6000);
        assert!(pool.slot_mut(3).is_none());
        // Sealed: the daemon can rely on the size.
        assert!(ftruncate(pool.fd(), 10).is_err());
        assert!(FramePool::new(0, 10).is_err());
    }
}
