//! The IOVA allocator: which device addresses DMA buffers get.
//!
//! Addresses are handed out first-fit from the lowest free one, so a device with a narrow
//! DMA mask (QEMU's `edu` decodes 28 bits) works as long as the pool is small. Only
//! addresses inside the IOMMU's valid ranges (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`) and
//! below the device's address limit are used; the x86 MSI window is never used whatever
//! the IOMMU reports, since writes there are interrupt messages, not memory; and the lowest
//! [`IOVA_FLOOR`] bytes are kept free so that a zero or small bogus address in a command
//! faults at the IOMMU instead of reaching a buffer.

use std::collections::BTreeMap;

/// The x86 interrupt address window (`0xfee00000..=0xfeefffff`), inclusive bounds.
pub const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// IOVAs below this are never allocated.
pub const IOVA_FLOOR: u64 = 0x1_0000;

/// Free IOVA space as disjoint, coalesced `[start, end)` ranges.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    /// start -> end (exclusive).
    free: BTreeMap<u64, u64>,
    /// Allocation granule: the IOMMU page size (a power of two).
    granule: u64,
}

fn subtract(ranges: Vec<(u64, u64)>, hole: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for (s, e) in ranges {
        if hole.1 <= s || hole.0 >= e {
            out.push((s, e));
            continue;
        }
        if s < hole.0 {
            out.push((s, hole.0));
        }
        if hole.1 < e {
            out.push((hole.1, e));
        }
    }
    out
}

impl IovaAllocator {
    /// Builds the free space from the IOMMU's valid ranges (inclusive bounds; `None` when
    /// the kernel does not report them: the whole space below `limit`), the device's
    /// address limit (`1 << dma_bits`, exclusive) and the IOMMU page size.
    pub fn new(valid: Option<&[(u64, u64)]>, limit: u64, granule: u64) -> Self {
        let granule = granule.max(1).next_power_of_two();
        let mut ranges: Vec<(u64, u64)> = match valid {
            Some(valid) => valid
                .iter()
                .filter(|(s, e)| s <= e)
                .map(|&(s, e)| (s, e.saturating_add(1)))
                .collect(),
            None => vec![(0, u64::MAX)],
        };
        ranges = subtract(ranges, (MSI_WINDOW.0, MSI_WINDOW.1 + 1));
        ranges = subtract(ranges, (0, IOVA_FLOOR));
        ranges = subtract(ranges, (limit, u64::MAX));
        let mut free = BTreeMap::new();
        for (s, e) in ranges {
            // Round inwards to whole granules.
            let s = s.div_ceil(granule).saturating_mul(granule);
            let e = e / granule * granule;
            if s < e {
                free.insert(s, e);
            }
        }
        let mut alloc = Self { free, granule };
        alloc.coalesce_all();
        alloc
    }

    fn coalesce_all(&mut self) {
        let ranges: Vec<(u64, u64)> = std::mem::take(&mut self.free).into_iter().collect();
        for (s, e) in ranges {
            self.insert_free(s, e);
        }
    }

    /// The allocation granule.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// Reserves `len` bytes (rounded up to the granule) at the lowest free address.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.max(1).checked_next_multiple_of(self.granule)?;
        let (&start, &end) = self.free.iter().find(|(s, e)| *e - **s >= len)?;
        self.free.remove(&start);
        if start + len < end {
            self.free.insert(start + len, end);
        }
        Some(start)
    }

    /// Returns `iova..iova+len` (as allocated) to the free space. Returns false, changing
    /// nothing, when any of it is already free.
    pub fn free(&mut self, iova: u64, len: u64) -> bool {
        let Some(len) = len.max(1).checked_next_multiple_of(self.granule) else {
            return false;
        };
        let Some(end) = iova.checked_add(len) else {
            return false;
        };
        let overlaps_prev = self
            .free
            .range(..=iova)
            .next_back()
            .is_some_and(|(_, &e)| e > iova);
        let overlaps_next = self.free.range(iova..end).next().is_some();
        if overlaps_prev || overlaps_next {
            return false;
        }
        self.insert_free(iova, end);
        true
    }

    fn insert_free(&mut self, mut start: u64, mut end: u64) {
        if let Some((&ps, &pe)) = self.free.range(..=start).next_back() {
            if pe >= start {
                start = ps;
                end = end.max(pe);
                self.free.remove(&ps);
            }
        }
        while let Some((&ns, &ne)) = self.free.range(start..).next() {
            if ns > end {
                break;
            }
            end = end.max(ne);
            self.free.remove(&ns);
        }
        self.free.insert(start, end);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    /// What intel-iommu reports on x86: everything but the interrupt window.
    fn vtd_ranges() -> Vec<(u64, u64)> {
        vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]
    }

    #[test]
    fn starts_low_above_the_floor() {
        let mut a = IovaAllocator::new(Some(&vtd_ranges()), u64::MAX, PAGE);
        assert_eq!(a.alloc(1), Some(IOVA_FLOOR));
        assert_eq!(a.alloc(PAGE + 1), Some(IOVA_FLOOR + PAGE));
        assert_eq!(a.alloc(PAGE), Some(IOVA_FLOOR + 3 * PAGE));
    }

    #[test]
    fn never_hands_out_the_msi_window_even_if_reported_valid() {
        let mut a = IovaAllocator::new(None, 1 << 33, 1 << 20);
        // Fill everything below the window with one allocation.
        let below = MSI_WINDOW.0 - IOVA_FLOOR.next_multiple_of(1 << 20);
        let first = a.alloc(below).expect("space below the window");
        assert!(first + below <= MSI_WINDOW.0);
        let next = a.alloc(1 << 20).expect("space above the window");
        assert!(next > MSI_WINDOW.1, "got {next:#x}");
    }

    #[test]
    fn respects_valid_ranges_and_the_device_limit() {
        let valid = [(0x10_0000, 0x1f_ffff), (0x100_0000, 0x1ff_ffff)];
        let mut a = IovaAllocator::new(Some(&valid), 0x180_0000, PAGE);
        assert_eq!(a.free_bytes(), 0x10_0000 + 0x80_0000);
        assert_eq!(a.alloc(0x20_0000), Some(0x100_0000));
        // Too big for what is left below the 0x1800000 limit.
        assert_eq!(a.alloc(0x70_0000), None);
        assert_eq!(a.alloc(0x60_0000), Some(0x120_0000));
    }

    #[test]
    fn edu_mask_keeps_addresses_under_28_bits() {
        let mut a = IovaAllocator::new(Some(&vtd_ranges()), 1 << 28, PAGE);
        let mut last = 0;
        while let Some(iova) = a.alloc(1 << 20) {
            last = iova;
        }
        assert!(last + (1 << 20) <= 1 << 28);
        // Only the tail short of a whole MiB (the floor's worth) is left.
        assert_eq!(a.free_bytes(), (1 << 20) - IOVA_FLOOR);
    }

    #[test]
    fn free_coalesces_and_rejects_double_free() {
        let mut a = IovaAllocator::new(None, 1 << 30, PAGE);
        let total = a.free_bytes();
        let x = a.alloc(PAGE).unwrap();
        let y = a.alloc(2 * PAGE).unwrap();
        let z = a.alloc(PAGE).unwrap();
        assert!(a.free(y, 2 * PAGE));
        assert!(!a.free(y, PAGE), "double free must be refused");
        assert!(!a.free(y + PAGE, PAGE));
        // Freed space is reused lowest first.
        assert_eq!(a.alloc(PAGE), Some(y));
        assert!(a.free(y, PAGE));
        assert!(a.free(x, PAGE));
        assert!(a.free(z, PAGE));
        assert_eq!(a.free_bytes(), total);
        assert_eq!(a.free.len(), 1, "all space coalesced: {:?}", a.free);
    }

    #[test]
    fn granule_rounds_inwards() {
        let a = IovaAllocator::new(Some(&[(0x1_0800, 0x3_07ff)]), u64::MAX, 0x1_0000);
        assert_eq!(a.free_bytes(), 0x1_0000);
        assert_eq!(a.granule(), 0x1_0000);
    }
}
