//! `DeviceIo` for `VfioDevice`: registers, config space, DMA mappings, interrupt vectors
//! and function reset, each on the descriptors the device owns.

use std::sync::Arc;

use nix::sys::uio::{pread, pwrite};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{lock, InterruptKind, Mapping, VfioDevice};
use super::sys;
use crate::io::{DeviceInfo, DeviceIo, DmaDirection, HostRegion, IoError};

impl DeviceIo for VfioDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read32(&self, bar: u32, offset: u64) -> Result<u32, IoError> {
        self.bar_or_err(bar, offset)?
            .read32(sys::device_fd(&self.device), offset)
    }

    fn write32(&self, bar: u32, offset: u64, value: u32) -> Result<(), IoError> {
        self.bar_or_err(bar, offset)?
            .write32(sys::device_fd(&self.device), offset, value)
    }

    fn config_read(&self, offset: u32, buf: &mut [u8]) -> Result<(), IoError> {
        let at = self.config_range(offset, buf.len())?;
        let len = buf.len();
        match pread(sys::device_fd(&self.device), buf, at as libc::off_t) {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(IoError::ConfigAccess {
                offset,
                len,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Err(e) => Err(IoError::ConfigAccess {
                offset,
                len,
                source: e.into(),
            }),
        }
    }

    fn config_write(&self, offset: u32, buf: &[u8]) -> Result<(), IoError> {
        let at = self.config_range(offset, buf.len())?;
        let len = buf.len();
        match pwrite(sys::device_fd(&self.device), buf, at as libc::off_t) {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(IoError::ConfigAccess {
                offset,
                len,
                source: std::io::ErrorKind::WriteZero.into(),
            }),
            Err(e) => Err(IoError::ConfigAccess {
                offset,
                len,
                source: e.into(),
            }),
        }
    }

    fn dma_map(&self, region: &Arc<HostRegion>, direction: DmaDirection) -> Result<u64, IoError> {
        let len = region.len();
        let mut dma = lock(&self.dma);
        // The IOMMU maps whole pages; a region's mapping covers its last page entirely.
        let granule = dma.iova.granule() as usize;
        let mapped = len
            .checked_next_multiple_of(granule)
            .ok_or(IoError::IovaExhausted { len })?;
        let iova = dma
            .iova
            .alloc(mapped as u64)
            .ok_or(IoError::IovaExhausted { len })?;
        // SAFETY: the region stays mapped while the IOMMU mapping exists: `maps` holds an
        // `Arc` of it until `dma_unmap` of this IOVA succeeds (or the device is dropped,
        // which unmaps first). HostRegion only hands out raw-pointer access.
        let result = unsafe {
            sys::map_dma(
                sys::container_fd(&self.container),
                iova,
                region.as_ptr(),
                mapped,
                direction.device_reads(),
                direction.device_writes(),
            )
        };
        if let Err(source) = result {
            dma.iova.free(iova, mapped as u64);
            return Err(map_error(len, source));
        }
        dma.maps.insert(
            iova,
            Mapping {
                len,
                mapped,
                _region: Arc::clone(region),
            },
        );
        tracing::trace!(device = %self.info.name, iova, len, "dma mapped");
        Ok(iova)
    }

    fn dma_unmap(&self, iova: u64, len: usize) -> Result<(), IoError> {
        let mut dma = lock(&self.dma);
        let found = dma.maps.get(&iova).map(|m| (m.len, m.mapped));
        let mapped = match found {
            Some((l, mapped)) if l == len => mapped,
            _ => {
                return Err(IoError::DmaUnmap {
                    iova,
                    len,
                    source: std::io::Error::other(match found {
                        Some((l, _)) => format!("the mapping at this iova is {l} bytes"),
                        None => "nothing is mapped at this iova".to_owned(),
                    }),
                })
            }
        };
        sys::unmap_dma(sys::container_fd(&self.container), iova, mapped)
            .map_err(|source| IoError::DmaUnmap { iova, len, source })?;
        dma.maps.remove(&iova);
        dma.iova.free(iova, mapped as u64);
        Ok(())
    }

    fn max_interrupts(&self) -> u32 {
        if self.msix_vectors > 0 {
            self.msix_vectors
        } else {
            self.msi_vectors
        }
    }

    fn enable_interrupts(&self, count: u32) -> Result<Vec<Arc<EventFd>>, IoError> {
        let supported = self.max_interrupts();
        let kind = if self.msix_vectors > 0 {
            InterruptKind::Msix
        } else {
            InterruptKind::Msi
        };
        let fail = |source| IoError::Interrupts {
            requested: count,
            supported,
            source,
        };
        if count > supported {
            return Err(fail(None));
        }
        let mut irqs = lock(&self.irqs);
        // vfio-pci changes the vector count only from the disabled state.
        self.disable_irqs_locked(&mut irqs)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(Some(e)))?;
        let borrowed: Vec<&EventFd> = fds.iter().map(|f| &**f).collect();
        sys::set_irq_eventfds(sys::device_fd(&self.device), kind.index(), &borrowed)
            .map_err(|e| fail(Some(e)))?;
        irqs.active = Some(kind);
        irqs.fds = fds.clone();
        tracing::debug!(device = %self.info.name, count, ?kind, "interrupts enabled");
        Ok(fds)
    }

    fn disable_interrupts(&self) -> Result<(), IoError> {
        let mut irqs = lock(&self.irqs);
        self.disable_irqs_locked(&mut irqs)
    }

    fn reset(&self) -> Result<(), IoError> {
        if !self.reset_supported {
            return Err(IoError::ResetUnsupported {
                device: self.info.name.clone(),
            });
        }
        sys::device_reset(sys::device_fd(&self.device)).map_err(IoError::Reset)?;
        tracing::info!(device = %self.info.name, "function reset");
        Ok(())
    }
}

/// A failed `VFIO_IOMMU_MAP_DMA`: ENOMEM under a finite memlock limit means the pinned
/// pages would exceed it.
fn map_error(len: usize, source: std::io::Error) -> IoError {
    if source.raw_os_error() == Some(libc::ENOMEM) && !sys::has_ipc_lock() {
        if let Ok(Some(limit)) = sys::memlock_limit() {
            return IoError::DmaMemlock {
                len,
                limit,
                locked: sys::locked_bytes().unwrap_or(0),
            };
        }
    }
    IoError::DmaMap { len, source }
}
