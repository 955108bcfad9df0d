//! PRP1/PRP2 and PRP lists (NVMe 1.4 section 4.3), walked through the IOVA table.
//!
//! A transfer of `len` bytes starts at PRP1 (any dword-aligned offset) up to the end of
//! its memory page; if one more page follows, PRP2 points at it; if more follow, PRP2
//! points at a PRP list whose entries are page addresses and whose last entry in each list
//! page chains to the next list page while entries remain.

use std::sync::Arc;

use crate::io::HostRegion;

use super::dma::{Access, DmaFault, IovaTable};

/// Why a PRP transfer could not be described or performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrpError {
    /// A list entry, PRP2 or a chain pointer had a forbidden offset.
    InvalidOffset,
    /// A page or list page was not reachable.
    Dma(DmaFault),
}

impl From<DmaFault> for PrpError {
    fn from(f: DmaFault) -> Self {
        PrpError::Dma(f)
    }
}

/// Entries read from a list page at a time.
const LIST_CHUNK: usize = 64;

/// Calls `visit(iova, len)` for each memory segment of a `len`-byte transfer, in order.
pub(super) fn walk(
    table: &IovaTable,
    prp1: u64,
    prp2: u64,
    len: usize,
    page: usize,
    mut visit: impl FnMut(u64, usize) -> Result<(), PrpError>,
) -> Result<(), PrpError> {
    if len == 0 {
        return Ok(());
    }
    if prp1 & 0x3 != 0 {
        return Err(PrpError::InvalidOffset);
    }
    let page64 = page as u64;
    let first = len.min(page - (prp1 % page64) as usize);
    visit(prp1, first)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= page {
        if prp2 % page64 != 0 {
            return Err(PrpError::InvalidOffset);
        }
        return visit(prp2, remaining);
    }
    if prp2 & 0x7 != 0 {
        return Err(PrpError::InvalidOffset);
    }
    let mut list = prp2;
    let mut chunk = [0u8; LIST_CHUNK * 8];
    loop {
        // Entries left in this list page, and how many pages the transfer still needs.
        let in_page = ((page64 - list % page64) / 8) as usize;
        let needed = remaining.div_ceil(page);
        // The last slot chains to the next list page when more entries remain.
        let chained = needed > in_page;
        let data_entries = if chained { in_page - 1 } else { needed };
        let mut done = 0usize;
        while done < data_entries {
            let n = (data_entries - done).min(LIST_CHUNK);
            let bytes = &mut chunk[..n * 8];
            table.read(list.wrapping_add((done * 8) as u64), bytes)?;
            for entry in bytes.chunks_exact(8) {
                let mut e = [0u8; 8];
                e.copy_from_slice(entry);
                let addr = u64::from_le_bytes(e);
                if addr % page64 != 0 {
                    return Err(PrpError::InvalidOffset);
                }
                let seg = remaining.min(page);
                visit(addr, seg)?;
                remaining -= seg;
            }
            done += n;
        }
        if !chained {
            return Ok(());
        }
        let mut e = [0u8; 8];
        table.read(list.wrapping_add(((in_page - 1) * 8) as u64), &mut e)?;
        let next = u64::from_le_bytes(e);
        if next % page64 != 0 {
            return Err(PrpError::InvalidOffset);
        }
        list = next;
    }
}

/// A stretch of host memory the device resolved.
#[derive(Clone)]
pub(super) struct HostSpan {
    pub region: Arc<HostRegion>,
    pub offset: usize,
    pub len: usize,
}

/// The host memory of a transfer: usually one contiguous span (a buffer mapped in one
/// piece), otherwise a list of spans to gather.
pub(super) enum Spans {
    One(HostSpan),
    Many(Vec<HostSpan>),
}

/// Resolves a PRP transfer into host spans, merging segments that are contiguous in the
/// same host region (the common case costs no allocation).
pub(super) fn resolve(
    table: &IovaTable,
    prp1: u64,
    prp2: u64,
    len: usize,
    page: usize,
    access: Access,
) -> Result<Spans, PrpError> {
    // The mapping the previous segment fell in: (start iova, region length, region).
    let mut current: Option<(u64, Arc<HostRegion>)> = None;
    let mut spans: Vec<HostSpan> = Vec::new();
    let mut last: Option<HostSpan> = None;
    walk(table, prp1, prp2, len, page, |iova, seg| {
        // Fast path: inside the mapping of the previous segment.
        let hit = current.as_ref().and_then(|(start, region)| {
            let off = iova.checked_sub(*start)? as usize;
            (off.checked_add(seg)? <= region.len()).then(|| (Arc::clone(region), off))
        });
        let (region, offset) = match hit {
            Some(h) => h,
            None => {
                let r = table.resolve(iova, seg, access)?;
                current = Some((r.start, Arc::clone(&r.region)));
                (r.region, r.offset)
            }
        };
        match &mut last {
            Some(l) if Arc::ptr_eq(&l.region, &region) && l.offset + l.len == offset => {
                l.len += seg;
            }
            _ => {
                if let Some(prev) = last.take() {
                    spans.push(prev);
                }
                last = Some(HostSpan {
                    region,
                    offset,
                    len: seg,
                });
            }
        }
        Ok(())
    })?;
    let Some(last) = last else {
        return Ok(Spans::Many(Vec::new()));
    };
    if spans.is_empty() {
        Ok(Spans::One(last))
    } else {
        spans.push(last);
        Ok(Spans::Many(spans))
    }
}

/// Device write of `data` through PRP1/PRP2.
pub(super) fn write(
    table: &IovaTable,
    prp1: u64,
    prp2: u64,
    page: usize,
    data: &[u8],
) -> Result<(), PrpError> {
    let mut pos = 0usize;
    walk(table, prp1, prp2, data.len(), page, |iova, seg| {
        table.write(iova, &data[pos..pos + seg])?;
        pos += seg;
        Ok(())
    })
}

/// Device read of `buf.len()` bytes through PRP1/PRP2.
pub(super) fn read(
    table: &IovaTable,
    prp1: u64,
    prp2: u64,
    page: usize,
    buf: &mut [u8],
) -> Result<(), PrpError> {
    let mut pos = 0usize;
    walk(table, prp1, prp2, buf.len(), page, |iova, seg| {
        table.read(iova, &mut buf[pos..pos + seg])?;
        pos += seg;
        Ok(())
    })
}
