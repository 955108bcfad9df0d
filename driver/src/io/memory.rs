//! Host memory that a device reaches by DMA.
//!
//! `HostRegion` owns a page-aligned mapping (anonymous, or of a file descriptor such as a
//! client's memfd). `DmaBuffer` is a region mapped for one device at an IOVA; it unmaps
//! itself on drop, before the region is released, so the device can never reach memory
//! that has been given back. The device may write DMA memory at any time: every access
//! here goes through raw pointers (volatile for the small fields the driver polls), never
//! through a Rust reference to the memory.

use std::fmt;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

use super::{DeviceIo, IoError};

/// Which way data moves, as the IOMMU is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaDirection {
    /// The device only reads (input frames).
    ToDevice,
    /// The device only writes.
    FromDevice,
    /// Both (queues, bitstream buffers).
    Bidirectional,
}

impl DmaDirection {
    pub fn device_reads(self) -> bool {
        matches!(self, DmaDirection::ToDevice | DmaDirection::Bidirectional)
    }
    pub fn device_writes(self) -> bool {
        matches!(self, DmaDirection::FromDevice | DmaDirection::Bidirectional)
    }
}

/// The host page size every region is aligned and rounded to.
pub const PAGE_SIZE: usize = 4096;

/// An owned, page-aligned mapping of host memory.
pub struct HostRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the region is plain memory owned by this value; all access goes through raw
// pointers whose users synchronise as DMA memory requires.
unsafe impl Send for HostRegion {}
// SAFETY: as above; `&HostRegion` hands out only raw pointers and copies.
unsafe impl Sync for HostRegion {}

impl fmt::Debug for HostRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish()
    }
}

fn round_up_to_page(len: usize) -> usize {
    len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl HostRegion {
    /// Zeroed anonymous memory of at least `len` bytes (rounded up to whole pages).
    pub fn anonymous(len: usize) -> Result<Self, IoError> {
        let len = round_up_to_page(len);
        let size = std::num::NonZeroUsize::new(len).ok_or(IoError::DmaAlloc {
            len,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
            )
        }
        .map_err(|e| IoError::DmaAlloc {
            len,
            source: e.into(),
        })?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            writable: true,
        })
    }

    /// Maps `len` bytes of `fd` from `offset` (page aligned) shared, read-only unless
    /// `writable`. Used for clients' frame memfds.
    pub fn map_fd(fd: impl AsFd, offset: u64, len: usize, writable: bool) -> Result<Self, IoError> {
        let map_err = |source: std::io::Error| IoError::DmaMap { len, source };
        if offset % PAGE_SIZE as u64 != 0 {
            return Err(map_err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let size = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| map_err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| map_err(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        let mut prot = ProtFlags::PROT_READ;
        if writable {
            prot |= ProtFlags::PROT_WRITE;
        }
        // SAFETY: a new shared mapping of the descriptor; the caller's other mappings of
        // the same file are only ever accessed through raw pointers as DMA memory is.
        let ptr = unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, fd, offset) }
            .map_err(|e| map_err(e.into()))?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            writable,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the host mapping allows writes (the device's may be narrower).
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn check(&self, offset: usize, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + len <= self.len, so the result stays inside the mapping.
        Some(unsafe { self.ptr.as_ptr().add(offset) })
    }

    /// Copies `dst.len()` bytes from `offset`. Returns false (copying nothing) when the
    /// range is outside the region.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> bool {
        let Some(src) = self.check(offset, dst.len()) else {
            return false;
        };
        fence(Ordering::Acquire);
        // SAFETY: `src..src+len` is inside the mapping (checked) and `dst` is a distinct
        // Rust buffer; the device may be writing concurrently, in which case the bytes
        // read are whatever the device left, never undefined memory.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` to `offset`. Returns false (copying nothing) when the range is outside
    /// the region or the region is read-only.
    pub fn write(&self, offset: usize, src: &[u8]) -> bool {
        if !self.writable {
            return false;
        }
        let Some(dst) = self.check(offset, src.len()) else {
            return false;
        };
        // SAFETY: `dst..dst+len` is inside a writable mapping (checked) and `src` is a
        // distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        fence(Ordering::Release);
        true
    }

    /// Volatile little-endian 32-bit load at a 4-byte aligned `offset`.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        if offset % 4 != 0 {
            return None;
        }
        let p = self.check(offset, 4)?;
        // SAFETY: in bounds (checked) and 4-byte aligned (page-aligned base, aligned offset).
        let v = unsafe { std::ptr::read_volatile(p.cast::<u32>()) };
        fence(Ordering::Acquire);
        Some(u32::from_le(v))
    }

    /// Volatile little-endian 32-bit store at a 4-byte aligned `offset`.
    pub fn write_u32(&self, offset: usize, value: u32) -> bool {
        if offset % 4 != 0 || !self.writable {
            return false;
        }
        let Some(p) = self.check(offset, 4) else {
            return false;
        };
        fence(Ordering::Release);
        // SAFETY: in bounds, aligned and writable (checked).
        unsafe { std::ptr::write_volatile(p.cast::<u32>(), value.to_le()) };
        true
    }

    /// Fills the whole region with zeros.
    pub fn zero(&self) {
        if self.writable {
            // SAFETY: the whole mapping is writable and `len` bytes long.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len) };
            fence(Ordering::Release);
        }
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by this value and nothing else refers to it: a
        // device mapping holds an `Arc<HostRegion>`, so we only get here after the last
        // one is gone.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::error!(error = %e, len = self.len, "munmap of a host region failed");
        }
    }
}

/// A host region mapped for one device. The mapping is shared by every clone of the
/// buffer (cloning is cheap): the transport holds a clone for each command that uses the
/// buffer, so the IOVA stays mapped until the device has completed the command even if
/// the caller drops its handle first. Unmapped from the device when the last clone is
/// dropped; if the backend cannot unmap it, the memory is leaked rather than reused while
/// the device may reach it.
#[derive(Clone)]
pub struct DmaBuffer {
    mapping: Arc<Mapping>,
}

/// The one mapping behind all clones of a `DmaBuffer`.
struct Mapping {
    io: Arc<dyn DeviceIo>,
    region: Arc<HostRegion>,
    iova: u64,
}

impl fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("device", &self.mapping.io.info().name)
            .field("iova", &format_args!("{:#x}", self.mapping.iova))
            .field("len", &self.mapping.region.len())
            .finish()
    }
}

impl DmaBuffer {
    pub(super) fn new(io: Arc<dyn DeviceIo>, region: Arc<HostRegion>, iova: u64) -> Self {
        Self {
            mapping: Arc::new(Mapping { io, region, iova }),
        }
    }

    /// The address the device uses for the first byte.
    pub fn iova(&self) -> u64 {
        self.mapping.iova
    }

    pub fn len(&self) -> usize {
        self.mapping.region.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.region.is_empty()
    }

    /// The host side of the buffer.
    pub fn region(&self) -> &Arc<HostRegion> {
        &self.mapping.region
    }

    /// True when no other clone of this buffer exists, i.e. no command in flight holds
    /// it: only then may a pool hand the memory to another command.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.mapping) == 1
    }
}

impl std::ops::Deref for DmaBuffer {
    type Target = HostRegion;
    fn deref(&self) -> &HostRegion {
        &self.mapping.region
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Err(e) = self.io.dma_unmap(self.iova, self.region.len()) {
            tracing::error!(
                device = %self.io.info().name,
                iova = self.iova,
                error = %e,
                "DMA unmap failed; leaking the buffer so the device cannot reach reused memory"
            );
            std::mem::forget(Arc::clone(&self.region));
        }
    }
}
