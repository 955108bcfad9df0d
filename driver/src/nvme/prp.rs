//! Physical Region Page entries: PRP1, PRP2 and chained PRP lists (NVMe 1.4 §4.3).
//!
//! The memory page size is 4 KiB (CC.MPS = 0). PRP1 may start anywhere dword aligned in
//! a page; every further entry is a page start. When the data spans more than two pages
//! PRP2 points at a PRP list; when a list page is full its last entry points at the next
//! list page. List pages come from a small pool of DMA pages and stay with the command
//! until it completes.

use std::sync::{Arc, Mutex};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer};

use super::command::DataPointer;
use super::error::NvmeError;

/// Memory page size the transport configures (CC.MPS = 0).
pub(crate) const MEMORY_PAGE_SIZE: u64 = 4096;
/// PRP entries in one list page.
const ENTRIES_PER_LIST_PAGE: usize = (MEMORY_PAGE_SIZE / 8) as usize;

/// The page starts after the first page of `len` bytes at `start`.
pub(crate) fn following_pages(start: u64, len: usize, page: u64) -> Vec<u64> {
    let end = start + len as u64;
    let mut next = (start & !(page - 1)) + page;
    let mut pages = Vec::new();
    while next < end {
        pages.push(next);
        next += page;
    }
    pages
}

/// List pages needed for `n` entries after PRP1 (0 when PRP2 holds the one entry).
pub(crate) fn list_pages_needed(n: usize, per_page: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut pages = 1;
    let mut remaining = n;
    while remaining > per_page {
        remaining -= per_page - 1;
        pages += 1;
    }
    pages
}

/// The contents of each list page: entries, with the last slot of every list page but
/// the final one pointing at the next list page (`list_iovas`).
pub(crate) fn fill_lists(entries: &[u64], list_iovas: &[u64], per_page: usize) -> Vec<Vec<u64>> {
    let mut lists = Vec::with_capacity(list_iovas.len());
    let mut rest = entries;
    for (i, _) in list_iovas.iter().enumerate() {
        let last = i + 1 == list_iovas.len();
        if last || rest.len() <= per_page {
            lists.push(rest.to_vec());
            rest = &[];
        } else {
            let mut page = rest[..per_page - 1].to_vec();
            page.push(list_iovas[i + 1]);
            rest = &rest[per_page - 1..];
            lists.push(page);
        }
    }
    lists
}

/// Spare PRP list pages of one controller: at most [`PrpPagePool::MAX_SPARE`] are kept
/// for reuse (enough for every command of a full queue moving several megabytes); pages
/// beyond that are unmapped when their command completes.
#[derive(Debug)]
pub(crate) struct PrpPagePool {
    io: Arc<dyn DeviceIo>,
    free: Mutex<Vec<DmaBuffer>>,
}

impl PrpPagePool {
    pub fn new(io: Arc<dyn DeviceIo>) -> Arc<Self> {
        Arc::new(Self {
            io,
            free: Mutex::new(Vec::new()),
        })
    }

    pub const MAX_SPARE: usize = 128;

    /// Unmaps every spare page (a reset: the working set starts again from nothing).
    pub fn clear(&self) {
        let spare = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        drop(spare);
    }

    /// Spare pages held now.
    #[cfg(test)]
    pub fn spare(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Result<DmaBuffer, crate::io::IoError> {
        let spare = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match spare {
            Some(page) => Ok(page),
            None => self.io.alloc_dma(MEMORY_PAGE_SIZE as usize),
        }
    }
}

/// PRP list pages a command holds until it completes; back to the pool afterwards.
#[derive(Debug, Default)]
pub(crate) struct ListPages {
    pool: Option<Arc<PrpPagePool>>,
    pages: Vec<DmaBuffer>,
}

impl Drop for ListPages {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let mut pages = std::mem::take(&mut self.pages);
            pages.retain(DmaBuffer::is_unique);
            {
                let mut free = pool.free.lock().unwrap_or_else(|p| p.into_inner());
                let keep = pages
                    .len()
                    .min(PrpPagePool::MAX_SPARE.saturating_sub(free.len()));
                free.extend(pages.drain(..keep));
            }
            // Pages beyond the cap unmap here, outside the lock.
            drop(pages);
        }
    }
}

/// PRP1, PRP2 and the list pages they need, plus the buffer kept alive for the device.
/// `lists` and `buffer` are never read: holding them keeps the memory mapped.
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) struct Prps {
    pub prp1: u64,
    pub prp2: u64,
    pub lists: ListPages,
    pub buffer: Option<DmaBuffer>,
}

/// Builds the PRPs of a command's data.
pub(crate) fn build(
    device: &str,
    pool: &Arc<PrpPagePool>,
    data: Option<&DataPointer>,
) -> Result<Prps, NvmeError> {
    let (buffer, offset, len) = match data {
        None => {
            return Ok(Prps {
                prp1: 0,
                prp2: 0,
                lists: ListPages::default(),
                buffer: None,
            })
        }
        Some(DataPointer::Raw { prp1, prp2 }) => {
            return Ok(Prps {
                prp1: *prp1,
                prp2: *prp2,
                lists: ListPages::default(),
                buffer: None,
            })
        }
        Some(DataPointer::Buffer {
            buffer,
            offset,
            len,
        }) => (buffer, *offset, *len),
    };
    if offset.checked_add(len).is_none_or(|end| end > buffer.len()) {
        return Err(NvmeError::DataRange {
            device: device.to_string(),
            offset,
            len,
            buffer_len: buffer.len(),
        });
    }
    let start = buffer.iova() + offset as u64;
    if start % 4 != 0 {
        return Err(NvmeError::DataAlignment {
            device: device.to_string(),
            iova: start,
        });
    }
    let rest = following_pages(start, len, MEMORY_PAGE_SIZE);
    let needed = list_pages_needed(rest.len(), ENTRIES_PER_LIST_PAGE);
    let mut lists = ListPages {
        pool: Some(Arc::clone(pool)),
        pages: Vec::with_capacity(needed),
    };
    for _ in 0..needed {
        let page = pool.take().map_err(|source| NvmeError::DmaAlloc {
            device: device.to_string(),
            what: "a PRP list page",
            source,
        })?;
        lists.pages.push(page);
    }
    let prp2 = match (rest.len(), lists.pages.first()) {
        (0, _) => 0,
        (1, _) => rest[0],
        (_, Some(first)) => first.iova(),
        (_, None) => 0,
    };
    if needed > 0 {
        let iovas: Vec<u64> = lists.pages.iter().map(DmaBuffer::iova).collect();
        for (page, entries) in
            lists
                .pages
                .iter()
                .zip(fill_lists(&rest, &iovas, ENTRIES_PER_LIST_PAGE))
        {
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            page.write(0, &bytes);
        }
    }
    Ok(Prps {
        prp1: start,
        prp2,
        lists,
        buffer: Some(buffer.clone()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P: u64 = MEMORY_PAGE_SIZE;

    #[test]
    fn one_page_needs_no_prp2() {
        assert!(following_pages(0x10000, 4096, P).is_empty());
        assert!(following_pages(0x10010, 100, P).is_empty());
        assert_eq!(list_pages_needed(0, 512), 0);
    }

    #[test]
    fn offset_buffer_spilling_into_a_second_page_uses_prp2() {
        assert_eq!(following_pages(0x10ff0, 32, P), vec![0x11000]);
        assert_eq!(list_pages_needed(1, 512), 0);
    }

    #[test]
    fn aligned_two_pages_and_three_pages() {
        assert_eq!(following_pages(0x20000, 8192, P), vec![0x21000]);
        assert_eq!(following_pages(0x20000, 8193, P), vec![0x21000, 0x22000]);
        assert_eq!(list_pages_needed(2, 512), 1);
    }

    #[test]
    fn list_fills_one_page_exactly_then_chains() {
        assert_eq!(list_pages_needed(512, 512), 1);
        assert_eq!(list_pages_needed(513, 512), 2);
        // 511 entries per chained page plus the final page's 512.
        assert_eq!(list_pages_needed(511 + 512, 512), 2);
        assert_eq!(list_pages_needed(511 + 513, 512), 3);
    }

    #[test]
    fn chained_lists_point_at_the_next_list_page() {
        let entries: Vec<u64> = (1..=10).map(|i| i * P).collect();
        let lists = fill_lists(&entries, &[0xa000, 0xb000, 0xc000], 4);
        assert_eq!(lists[0], vec![P, 2 * P, 3 * P, 0xb000]);
        assert_eq!(lists[1], vec![4 * P, 5 * P, 6 * P, 0xc000]);
        assert_eq!(lists[2], vec![7 * P, 8 * P, 9 * P, 10 * P]);
        assert_eq!(list_pages_needed(10, 4), 3);
    }

    #[test]
    fn frame_sized_buffers_cover_every_page_once() {
        // A 1080p I420 frame at an odd dword offset.
        let len = 1920 * 1080 * 3 / 2;
        let start = 0x40_0000 + 12;
        let rest = following_pages(start, len, P);
        let first_page_bytes = P - 12;
        let expected = (len as u64 - first_page_bytes).div_ceil(P) as usize;
        assert_eq!(rest.len(), expected);
        assert!(rest.windows(2).all(|w| w[1] == w[0] + P));
        let n = list_pages_needed(rest.len(), 512);
        let iovas: Vec<u64> = (0..n as u64).map(|i| 0x9000_0000 + i * P).collect();
        let lists = fill_lists(&rest, &iovas, 512);
        let flat: Vec<u64> = lists
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                if i + 1 < lists.len() {
                    assert_eq!(*l.last().unwrap(), iovas[i + 1]);
                    l[..l.len() - 1].to_vec()
                } else {
                    l.clone()
                }
            })
            .collect();
        assert_eq!(flat, rest);
        assert!(lists.iter().all(|l| l.len() <= 512));
    }
}
