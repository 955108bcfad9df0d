//! Raw VFIO ioctls, BAR mmaps and process limits the backend needs beyond `vfio-ioctls`.
//!
//! `vfio-ioctls` 0.10 swallows the errno of `VFIO_DEVICE_RESET` and `VFIO_DEVICE_SET_IRQS`,
//! always maps DMA read-write, and does not expose the IOMMU's valid IOVA ranges, so those
//! calls are made here, on the descriptors it owns. Every syscall of the backend lives in
//! this module.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_iommu_type1_info,
    VFIO_BASE, VFIO_DEVICE_FLAGS_RESET, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};

/// `_IO(VFIO_TYPE, VFIO_BASE + offset)`: VFIO ioctls carry no size or direction bits.
const fn vfio_io(offset: u32) -> libc::c_ulong {
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + offset) as libc::c_ulong
}

const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const VFIO_DEVICE_RESET: libc::c_ulong = vfio_io(11);
const VFIO_IOMMU_GET_INFO: libc::c_ulong = vfio_io(12);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

/// Linux capability number of `CAP_IPC_LOCK` (exempts a process from `RLIMIT_MEMLOCK`).
const CAP_IPC_LOCK: u32 = 14;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `sizeof(T)` as the `argsz` field of a VFIO structure.
fn argsz<T>() -> u32 {
    // VFIO structures are a few dozen bytes.
    std::mem::size_of::<T>() as u32
}

/// Borrows the descriptor of a `vfio-ioctls` device.
pub(super) fn device_fd(device: &vfio_ioctls::VfioDevice) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `device` and stays open for as long as the
    // borrow, which is tied to `device`'s lifetime.
    unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) }
}

/// Borrows the descriptor of a `vfio-ioctls` container.
pub(super) fn container_fd(container: &vfio_ioctls::VfioContainer) -> BorrowedFd<'_> {
    // SAFETY: as for `device_fd`: the container owns the descriptor for its lifetime.
    unsafe { BorrowedFd::borrow_raw(container.as_raw_fd()) }
}

/// Whether the device advertises `VFIO_DEVICE_FLAGS_RESET` (vfio-pci found a reset
/// method: FLR, PM, slot or bus reset).
pub(super) fn device_supports_reset(device: BorrowedFd<'_>) -> io::Result<bool> {
    let mut info = vfio_device_info {
        argsz: argsz::<vfio_device_info>(),
        ..Default::default()
    };
    // SAFETY: `info` is a valid, writable `vfio_device_info` whose argsz says so; the
    // kernel writes at most argsz bytes.
    check(unsafe { ioctl_with_mut_ref(&device, VFIO_DEVICE_GET_INFO, &mut info) })?;
    Ok(info.flags & VFIO_DEVICE_FLAGS_RESET != 0)
}

/// `VFIO_DEVICE_RESET`, with the errno the kernel returned.
pub(super) fn device_reset(device: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the ioctl takes no argument and only acts on the device behind the fd.
    check(unsafe { ioctl(&device, VFIO_DEVICE_RESET) }).map(drop)
}

/// `VFIO_DEVICE_SET_IRQS` with `ACTION_TRIGGER`: vector `start + i` signals `fds[i]`. An
/// empty `fds` disables every vector of `index`.
pub(super) fn set_irq_eventfds(
    device: BorrowedFd<'_>,
    index: u32,
    fds: &[&vmm_sys_util::eventfd::EventFd],
) -> io::Result<()> {
    // struct vfio_irq_set { argsz, flags, index, start, count; u8 data[] }: five u32s
    // followed by one s32 eventfd per vector.
    const HEADER: usize = 5 * 4;
    let mut buf = Vec::with_capacity(HEADER + fds.len() * 4);
    let flags = if fds.is_empty() {
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
    } else {
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
    };
    let total = u32::try_from(HEADER + fds.len() * 4)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let count = u32::try_from(fds.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    for word in [total, flags, index, 0, count] {
        buf.extend_from_slice(&word.to_ne_bytes());
    }
    for fd in fds {
        buf.extend_from_slice(&fd.as_raw_fd().to_ne_bytes());
    }
    // SAFETY: `buf` holds a complete `vfio_irq_set` of `total` bytes; the kernel copies
    // it in and does not write back. The eventfds stay open for the duration of the call.
    check(unsafe { ioctl_with_ptr(&device, VFIO_DEVICE_SET_IRQS, buf.as_ptr()) }).map(drop)
}

/// What the type1 IOMMU driver reports about the container's address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes (lowest set bit: the mapping granule).
    pub page_sizes: u64,
    /// Inclusive `(start, end)` IOVA ranges the IOMMU can translate, when reported.
    pub iova_ranges: Option<Vec<(u64, u64)>>,
}

/// `VFIO_IOMMU_GET_INFO`, including the `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` capability.
pub(super) fn iommu_info(container: BorrowedFd<'_>) -> io::Result<IommuInfo> {
    let mut info = vfio_iommu_type1_info {
        argsz: argsz::<vfio_iommu_type1_info>(),
        ..Default::default()
    };
    // SAFETY: `info` is a valid, writable `vfio_iommu_type1_info` of argsz bytes.
    check(unsafe { ioctl_with_mut_ref(&container, VFIO_IOMMU_GET_INFO, &mut info) })?;
    let page_sizes = if info.flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        info.iova_pgsizes
    } else {
        crate::io::PAGE_SIZE as u64
    };
    let needed = info.argsz as usize;
    if info.flags & VFIO_IOMMU_INFO_CAPS == 0 || needed <= std::mem::size_of_val(&info) {
        return Ok(IommuInfo {
            page_sizes,
            iova_ranges: None,
        });
    }
    // Second call with room for the capability chain. The buffer is handled as bytes:
    // the kernel copies to and from user memory without alignment requirements.
    let mut buf = vec![0u8; needed];
    buf[..4].copy_from_slice(&info.argsz.to_ne_bytes());
    // SAFETY: `buf` is `needed` writable bytes and its argsz field says so.
    check(unsafe { ioctl_with_ptr(&container, VFIO_IOMMU_GET_INFO, buf.as_mut_ptr()) })?;
    Ok(IommuInfo {
        page_sizes,
        iova_ranges: parse_iova_ranges(&buf),
    })
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// Walks the capability chain of a `vfio_iommu_type1_info` buffer for the IOVA ranges.
/// Bounds are checked at every step; a malformed chain yields `None`.
pub(super) fn parse_iova_ranges(buf: &[u8]) -> Option<Vec<(u64, u64)>> {
    // vfio_iommu_type1_info: argsz u32, flags u32, iova_pgsizes u64, cap_offset u32, pad u32.
    const CAP_OFFSET: usize = 16;
    const HEADER_LEN: usize = 24;
    let mut offset = read_u32(buf, CAP_OFFSET)? as usize;
    let mut hops = 0;
    while offset >= HEADER_LEN && hops < 64 {
        hops += 1;
        // vfio_info_cap_header: id u16, version u16, next u32.
        let id = u16::from_ne_bytes(buf.get(offset..offset + 2)?.try_into().ok()?);
        let next = read_u32(buf, offset + 4)? as usize;
        if u32::from(id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            // header (8), nr_iovas u32, reserved u32, then { start u64, end u64 }[nr].
            let nr = read_u32(buf, offset + 8)? as usize;
            let mut ranges = Vec::with_capacity(nr.min(64));
            for i in 0..nr {
                let at = offset + 16 + i * 16;
                ranges.push((read_u64(buf, at)?, read_u64(buf, at + 8)?));
            }
            return Some(ranges);
        }
        if next == 0 {
            break;
        }
        offset = next;
    }
    None
}

/// `VFIO_IOMMU_MAP_DMA` of `len` bytes at `vaddr` to `iova`.
///
/// # Safety
/// `vaddr..vaddr+len` must stay mapped in this process until the IOVA range is unmapped
/// with [`unmap_dma`], and must only be accessed through raw pointers meanwhile: the
/// device may read and write it at any time.
pub(super) unsafe fn map_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    vaddr: *mut u8,
    len: usize,
    device_reads: bool,
    device_writes: bool,
) -> io::Result<()> {
    let mut flags = 0;
    if device_reads {
        flags |= VFIO_DMA_MAP_FLAG_READ;
    }
    if device_writes {
        flags |= VFIO_DMA_MAP_FLAG_WRITE;
    }
    let map = vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags,
        vaddr: vaddr as u64,
        iova,
        size: len as u64,
    };
    // SAFETY: `map` is a valid `vfio_iommu_type1_dma_map`; the lifetime of the mapped
    // memory is the caller's contract.
    check(unsafe { ioctl_with_ref(&container, VFIO_IOMMU_MAP_DMA, &map) }).map(drop)
}

/// `VFIO_IOMMU_UNMAP_DMA` of `len` bytes at `iova`; fails unless exactly `len` bytes were
/// unmapped.
pub(super) fn unmap_dma(container: BorrowedFd<'_>, iova: u64, len: usize) -> io::Result<()> {
    let mut unmap = vfio_iommu_type1_dma_unmap {
        argsz: argsz::<vfio_iommu_type1_dma_unmap>(),
        flags: 0,
        iova,
        size: len as u64,
        ..Default::default()
    };
    // SAFETY: `unmap` is a valid, writable `vfio_iommu_type1_dma_unmap`; the kernel
    // writes back the number of bytes unmapped.
    check(unsafe { ioctl_with_mut_ref(&container, VFIO_IOMMU_UNMAP_DMA, &mut unmap) })?;
    if unmap.size != len as u64 {
        return Err(io::Error::other(format!(
            "the IOMMU unmapped {} of {len} bytes",
            unmap.size
        )));
    }
    Ok(())
}

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited.
pub(super) fn memlock_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// Whether this process holds `CAP_IPC_LOCK` in its effective set (the kernel then does
/// not hold VFIO's pinned pages against `RLIMIT_MEMLOCK`).
pub(super) fn has_ipc_lock() -> bool {
    status_field("CapEff:")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Bytes of this process's memory the kernel counts as locked (`VmLck`), which includes
/// pages pinned for VFIO DMA.
pub(super) fn locked_bytes() -> Option<u64> {
    let v = status_field("VmLck:")?;
    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::to_owned))
}

/// A shared mapping of (part of) a BAR from the device descriptor.
pub(super) struct Mmio {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is device memory owned by this value; accesses are volatile and
// each is a single naturally aligned load or store.
unsafe impl Send for Mmio {}
// SAFETY: as above; `&Mmio` only performs volatile accesses.
unsafe impl Sync for Mmio {}

impl std::fmt::Debug for Mmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmio")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Mmio {
    /// Maps `len` bytes of `device` at file offset `offset` (page aligned) read-write.
    pub(super) fn map(device: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: a new shared mapping chosen by the kernel; it aliases no Rust memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(Self { ptr, len })
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Volatile 32-bit load; `offset` must be 4-byte aligned and inside the mapping.
    pub(super) fn read32(&self, offset: usize) -> Option<u32> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        let p = self.ptr.as_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: in bounds and aligned (checked; the base is page aligned). MMIO is
        // only ever accessed volatilely.
        Some(unsafe { std::ptr::read_volatile(p) })
    }

    /// Volatile 32-bit store; `offset` must be 4-byte aligned and inside the mapping.
    pub(super) fn write32(&self, offset: usize, value: u32) -> bool {
        if offset % 4 != 0 || offset.checked_add(4).is_none_or(|end| end > self.len) {
            return false;
        }
        let p = self.ptr.as_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: in bounds and aligned (checked), and the mapping is writable.
        unsafe { std::ptr::write_volatile(p, value) };
        true
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `Mmio::map` with this length and nothing
        // else refers to it.
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            tracing::error!(error = %io::Error::last_os_error(), "munmap of a BAR failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info_with_cap(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut buf = vec![0u8; 24];
        buf[16..20].copy_from_slice(&24u32.to_ne_bytes());
        // A DMA_AVAIL capability first, chained to the IOVA range one.
        let first = buf.len();
        buf.extend_from_slice(&3u16.to_ne_bytes());
        buf.extend_from_slice(&1u16.to_ne_bytes());
        buf.extend_from_slice(&((first + 12) as u32).to_ne_bytes());
        buf.extend_from_slice(&65535u32.to_ne_bytes());
        buf.extend_from_slice(&(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16).to_ne_bytes());
        buf.extend_from_slice(&1u16.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        for (s, e) in ranges {
            buf.extend_from_slice(&s.to_ne_bytes());
            buf.extend_from_slice(&e.to_ne_bytes());
        }
        buf
    }

    #[test]
    fn iova_ranges_are_found_behind_other_caps() {
        let ranges = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        assert_eq!(
            parse_iova_ranges(&info_with_cap(&ranges)),
            Some(ranges.to_vec())
        );
    }

    #[test]
    fn truncated_chain_is_rejected() {
        let mut buf = info_with_cap(&[(0, 0xffff_ffff)]);
        buf.truncate(buf.len() - 4);
        assert_eq!(parse_iova_ranges(&buf), None);
        assert_eq!(parse_iova_ranges(&[0u8; 8]), None);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // From <linux/vfio.h>: _IO(';', 100 + n).
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
    }
}
