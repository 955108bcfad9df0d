//! The card's IOVA table: what the device can reach, as an IOMMU would enforce it.
//!
//! `dma_map` hands out IOVAs from a counter that starts low (but not at zero) and never
//! goes back, so an IOVA is never reused while the same number might still sit in a stale
//! command. Every device access resolves its IOVA range through the table; a range outside
//! every mapping, straddling two mappings, or in the wrong direction is a DMA fault.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::io::{DmaDirection, HostRegion, IoError};

/// Granule of the IOVA allocator (the host page size).
const PAGE_SIZE: usize = 4096;

/// First IOVA handed out: low, page aligned, never 0 (a zero PRP is a classic host bug).
const IOVA_BASE: u64 = 0x10_0000;

/// Which way the device moves data in an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// The device reads host memory.
    Read,
    /// The device writes host memory.
    Write,
}

/// A device access the IOMMU refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DmaFault {
    pub iova: u64,
    pub len: usize,
    pub reason: &'static str,
}

struct Mapping {
    region: Arc<HostRegion>,
    direction: DmaDirection,
}

/// A resolved mapping: where a device address lands in host memory.
#[derive(Clone)]
pub(super) struct Resolved {
    /// IOVA of the mapping's first byte.
    pub start: u64,
    pub region: Arc<HostRegion>,
    /// Offset of the requested IOVA inside `region`.
    pub offset: usize,
}

/// The device's view of host memory.
pub(super) struct IovaTable {
    inner: RwLock<Maps>,
}

struct Maps {
    by_iova: BTreeMap<u64, Mapping>,
    next: u64,
}

impl std::fmt::Debug for IovaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IovaTable")
            .field("mappings", &self.len())
            .finish()
    }
}

impl IovaTable {
    pub fn new() -> Self {
        Self {
            inner: RwLock::new(Maps {
                by_iova: BTreeMap::new(),
                next: IOVA_BASE,
            }),
        }
    }

    fn read_maps(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_maps(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Maps `region` and returns its IOVA. A guard page separates mappings, so a range
    /// that runs past one mapping's end never lands in the next.
    pub fn map(&self, region: &Arc<HostRegion>, direction: DmaDirection) -> Result<u64, IoError> {
        let len = region.len();
        let mut maps = self.write_maps();
        let span = (len as u64)
            .div_ceil(PAGE_SIZE as u64)
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|s| s.checked_add(PAGE_SIZE as u64));
        let iova = maps.next;
        let next = span.and_then(|s| iova.checked_add(s));
        let Some(next) = next else {
            return Err(IoError::IovaExhausted { len });
        };
        maps.next = next;
        maps.by_iova.insert(
            iova,
            Mapping {
                region: Arc::clone(region),
                direction,
            },
        );
        Ok(iova)
    }

    /// Removes the mapping that starts at `iova`; `len` must be its length.
    pub fn unmap(&self, iova: u64, len: usize) -> Result<(), IoError> {
        let mut maps = self.write_maps();
        match maps.by_iova.get(&iova) {
            Some(m) if m.region.len() == len => {
                maps.by_iova.remove(&iova);
                Ok(())
            }
            _ => Err(IoError::DmaUnmap {
                iova,
                len,
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            }),
        }
    }

    /// Number of live mappings.
    pub fn len(&self) -> usize {
        self.read_maps().by_iova.len()
    }

    /// Resolves `len` bytes at `iova` for `access`. The whole range must lie inside one
    /// mapping whose direction allows the access.
    pub fn resolve(&self, iova: u64, len: usize, access: Access) -> Result<Resolved, DmaFault> {
        let fault = |reason| DmaFault { iova, len, reason };
        let maps = self.read_maps();
        let (&start, m) = maps
            .by_iova
            .range(..=iova)
            .next_back()
            .ok_or(fault("unmapped IOVA"))?;
        let offset = usize::try_from(iova - start).map_err(|_| fault("unmapped IOVA"))?;
        let end = offset.checked_add(len).ok_or(fault("range overflows"))?;
        if offset >= m.region.len() {
            return Err(fault("unmapped IOVA"));
        }
        if end > m.region.len() {
            return Err(fault("range runs past the end of its mapping"));
        }
        let allowed = match access {
            Access::Read => m.direction.device_reads(),
            Access::Write => m.direction.device_writes() && m.region.writable(),
        };
        if !allowed {
            return Err(fault("access against the mapping's direction"));
        }
        Ok(Resolved {
            start,
            region: Arc::clone(&m.region),
            offset,
        })
    }

    /// Device read of `buf.len()` bytes at `iova`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let r = self.resolve(iova, buf.len(), Access::Read)?;
        if r.region.read(r.offset, buf) {
            Ok(())
        } else {
            Err(DmaFault {
                iova,
                len: buf.len(),
                reason: "host read failed",
            })
        }
    }

    /// Device write of `data` at `iova`.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let r = self.resolve(iova, data.len(), Access::Write)?;
        if r.region.write(r.offset, data) {
            Ok(())
        } else {
            Err(DmaFault {
                iova,
                len: data.len(),
                reason: "host write failed",
            })
        }
    }
}

pub(super) use vpu_ffi::{as_bytes, from_bytes, Pod};
