//! BAR access: mmapped where vfio-pci allows it, pread/pwrite on the device fd elsewhere.
//!
//! vfio-pci describes which parts of a BAR may be mmapped: the whole region
//! (`VFIO_REGION_INFO_FLAG_MMAP`), or only the areas of a sparse-mmap capability (on
//! kernels that keep the MSI-X table out of reach). Registers inside a mapped area are
//! accessed with single volatile loads and stores; anything else goes through the
//! descriptor, which the kernel emulates or forwards.

use std::os::fd::BorrowedFd;

use nix::sys::uio::{pread, pwrite};
use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::VfioRegionInfoCap;

use super::sys::{self, Mmio};
use crate::io::IoError;

/// One mapped area of a BAR.
#[derive(Debug)]
struct Area {
    /// Offset of the area inside the BAR.
    start: u64,
    mmio: Mmio,
}

/// One BAR of an open device.
#[derive(Debug)]
pub(super) struct Bar {
    index: u32,
    size: u64,
    /// Offset of the region in the device descriptor.
    file_offset: u64,
    readable: bool,
    writable: bool,
    areas: Vec<Area>,
}

impl Bar {
    /// Describes BAR `index` from its region info and mmaps what may be mapped. A failed
    /// mmap is not fatal: that part is reached through the descriptor instead.
    pub(super) fn open(
        device: &vfio_ioctls::VfioDevice,
        index: u32,
        name: &str,
        mmap: bool,
    ) -> Option<Self> {
        let size = device.get_region_size(index);
        if size == 0 {
            return None;
        }
        let flags = device.get_region_flags(index);
        let file_offset = device.get_region_offset(index);
        let mut bar = Self {
            index,
            size,
            file_offset,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            areas: Vec::new(),
        };
        if !mmap || flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            tracing::debug!(device = name, bar = index, size, "bar not mmappable");
            return Some(bar);
        }
        let sparse = device
            .get_region_caps(index)
            .into_iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                _ => None,
            });
        let areas: Vec<(u64, u64)> = match sparse {
            Some(areas) => areas.iter().map(|a| (a.offset, a.size)).collect(),
            None => vec![(0, size)],
        };
        let fd = sys::device_fd(device);
        for (start, len) in areas {
            let in_bar = start.checked_add(len).is_some_and(|end| end <= size);
            if len == 0 || !in_bar {
                continue;
            }
            let Ok(map_len) = usize::try_from(len) else {
                continue;
            };
            match Mmio::map(fd, file_offset + start, map_len) {
                Ok(mmio) => bar.areas.push(Area { start, mmio }),
                Err(error) => tracing::warn!(
                    device = name, bar = index, start, len, %error,
                    "mmap of a bar area failed; using pread/pwrite for it"
                ),
            }
        }
        tracing::debug!(
            device = name, bar = index, size,
            mapped = ?bar.areas.iter().map(|a| (a.start, a.mmio.len())).collect::<Vec<_>>(),
            "bar opened"
        );
        Some(bar)
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of the BAR reachable by mmap.
    pub(super) fn mapped_bytes(&self) -> u64 {
        self.areas.iter().map(|a| a.mmio.len() as u64).sum()
    }

    fn check(&self, offset: u64, width: u32) -> Result<(), IoError> {
        let in_range = offset % u64::from(width) == 0
            && offset
                .checked_add(u64::from(width))
                .is_some_and(|end| end <= self.size);
        if in_range {
            Ok(())
        } else {
            Err(IoError::RegisterOutOfRange {
                bar: self.index,
                offset,
                width,
            })
        }
    }

    fn area(&self, offset: u64) -> Option<(&Mmio, usize)> {
        self.areas.iter().find_map(|a| {
            let rel = offset.checked_sub(a.start)?;
            let rel = usize::try_from(rel).ok()?;
            (rel.checked_add(4)? <= a.mmio.len()).then_some((&a.mmio, rel))
        })
    }

    fn access_err(&self, offset: u64, source: std::io::Error) -> IoError {
        IoError::RegisterAccess {
            bar: self.index,
            offset,
            source,
        }
    }

    pub(super) fn read32(&self, fd: BorrowedFd<'_>, offset: u64) -> Result<u32, IoError> {
        self.check(offset, 4)?;
        if let Some((mmio, rel)) = self.area(offset) {
            if let Some(v) = mmio.read32(rel) {
                return Ok(u32::from_le(v));
            }
        }
        if !self.readable {
            return Err(self.access_err(offset, std::io::Error::from_raw_os_error(libc::EACCES)));
        }
        let mut buf = [0u8; 4];
        let at = self.file_offset + offset;
        match pread(fd, &mut buf, at as libc::off_t) {
            Ok(4) => Ok(u32::from_le_bytes(buf)),
            Ok(_) => Err(self.access_err(offset, std::io::ErrorKind::UnexpectedEof.into())),
            Err(e) => Err(self.access_err(offset, e.into())),
        }
    }

    pub(super) fn write32(
        &self,
        fd: BorrowedFd<'_>,
        offset: u64,
        value: u32,
    ) -> Result<(), IoError> {
        self.check(offset, 4)?;
        if let Some((mmio, rel)) = self.area(offset) {
            if mmio.write32(rel, value.to_le()) {
                return Ok(());
            }
        }
        if !self.writable {
            return Err(self.access_err(offset, std::io::Error::from_raw_os_error(libc::EACCES)));
        }
        let at = self.file_offset + offset;
        match pwrite(fd, &value.to_le_bytes(), at as libc::off_t) {
            Ok(4) => Ok(()),
            Ok(_) => Err(self.access_err(offset, std::io::ErrorKind::WriteZero.into())),
            Err(e) => Err(self.access_err(offset, e.into())),
        }
    }
}
