//! The `moov` box of an MP4 file, in memory: the first H.264 video track's description
//! (`mdhd`, `avc1`/`avc3` with `avcC`) and its sample tables (`stsz`, `stts`, `ctts`,
//! `stsc`, `stco`/`co64`) expanded into one entry per sample. Every length and count is
//! checked against the bytes that are there.

use super::annexb::MAX_ACCESS_UNIT_LEN;
use super::demux::{malformed, DemuxError, Sample, TrackInfo, MAX_SAMPLES};

/// A child box: type and body.
type ChildBox<'a> = ([u8; 4], &'a [u8]);

/// The child boxes of an in-memory box body, as (type, body).
fn children(mut data: &[u8]) -> Result<Vec<ChildBox<'_>>, DemuxError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 8 {
            return Err(malformed("trailing bytes after the last box"));
        }
        let size = u64::from(be32(data, 0)?);
        let kind = [data[4], data[5], data[6], data[7]];
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => (16, be64(data, 8)?),
            n => (8, n),
        };
        if size < header || size > data.len() as u64 {
            return Err(malformed(format!(
                "box {} of {size} bytes in {} bytes",
                String::from_utf8_lossy(&kind),
                data.len()
            )));
        }
        out.push((kind, &data[header as usize..size as usize]));
        data = &data[size as usize..];
    }
    Ok(out)
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, DemuxError> {
    Ok(children(data)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, b)| b))
}

fn need<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<&'a [u8], DemuxError> {
    child(data, kind)?.ok_or_else(|| malformed(format!("no {} box", String::from_utf8_lossy(kind))))
}

fn be16(d: &[u8], at: usize) -> Result<u16, DemuxError> {
    d.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| malformed("box too short"))
}

fn be32(d: &[u8], at: usize) -> Result<u32, DemuxError> {
    d.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed("box too short"))
}

fn be64(d: &[u8], at: usize) -> Result<u64, DemuxError> {
    Ok((u64::from(be32(d, at)?) << 32) | u64::from(be32(d, at + 4)?))
}

/// The first H.264 video track of a `moov` body: its description, samples, NAL length size.
pub(super) fn parse_moov(moov: &[u8]) -> Result<(TrackInfo, Vec<Sample>, usize), DemuxError> {
    let mut other = String::from("no video track");
    for (kind, trak) in children(moov)? {
        if kind == *b"mvex" {
            return Err(DemuxError::Fragmented);
        }
        if kind != *b"trak" {
            continue;
        }
        let mdia = need(trak, b"mdia")?;
        let hdlr = need(mdia, b"hdlr")?;
        if hdlr.get(8..12) != Some(b"vide") {
            continue;
        }
        let stbl = need(need(mdia, b"minf")?, b"stbl")?;
        let stsd = need(stbl, b"stsd")?;
        let entries = children(stsd.get(8..).ok_or_else(|| malformed("stsd too short"))?)?;
        let Some((entry_kind, entry)) = entries.first() else {
            return Err(malformed("stsd has no sample entry"));
        };
        if entry_kind != b"avc1" && entry_kind != b"avc3" {
            other = format!("video track in `{}`", String::from_utf8_lossy(entry_kind));
            continue;
        }
        return parse_track(mdia, stbl, entry);
    }
    Err(DemuxError::NoH264Track(other))
}

fn parse_track(
    mdia: &[u8],
    stbl: &[u8],
    entry: &[u8],
) -> Result<(TrackInfo, Vec<Sample>, usize), DemuxError> {
    let mdhd = need(mdia, b"mdhd")?;
    let timescale = match mdhd.first() {
        Some(1) => be32(mdhd, 20)?,
        _ => be32(mdhd, 12)?,
    };
    if timescale == 0 {
        return Err(malformed("media timescale 0"));
    }
    // VisualSampleEntry: 78 bytes of fields, then boxes.
    let width = u32::from(be16(entry, 24)?);
    let height = u32::from(be16(entry, 26)?);
    let avcc = need(
        entry
            .get(78..)
            .ok_or_else(|| malformed("avc1 entry too short"))?,
        b"avcC",
    )?;
    let (nal_len_size, sps, pps) = parse_avcc(avcc)?;

    let stsz = need(stbl, b"stsz")?;
    let fixed_size = be32(stsz, 4)?;
    let count = be32(stsz, 8)?;
    if count > MAX_SAMPLES {
        return Err(DemuxError::TooManySamples(u64::from(count)));
    }
    let n = count as usize;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push(match fixed_size {
            0 => be32(stsz, 12 + 4 * i)?,
            s => s,
        });
    }

    // Decode times from stts.
    let stts = need(stbl, b"stts")?;
    let mut dts = Vec::with_capacity(n);
    let mut t = 0u64;
    for e in 0..be32(stts, 4)? as usize {
        let (c, delta) = (be32(stts, 8 + 8 * e)?, be32(stts, 12 + 8 * e)?);
        for _ in 0..c {
            if dts.len() == n {
                return Err(malformed("stts has more samples than stsz"));
            }
            dts.push(t);
            t += u64::from(delta);
        }
    }
    if dts.len() != n {
        return Err(malformed(format!(
            "stts has {} samples, stsz {n}",
            dts.len()
        )));
    }
    let total_duration = t;

    // Composition offsets (B-frames) from ctts, signed in either version.
    let mut pts: Vec<i64> = dts.iter().map(|&d| d as i64).collect();
    if let Some(ctts) = child(stbl, b"ctts")? {
        let mut i = 0usize;
        for e in 0..be32(ctts, 4)? as usize {
            let (c, off) = (be32(ctts, 8 + 8 * e)?, be32(ctts, 12 + 8 * e)? as i32);
            for _ in 0..c {
                let p = pts
                    .get_mut(i)
                    .ok_or_else(|| malformed("ctts has more samples than stsz"))?;
                *p += i64::from(off);
                i += 1;
            }
        }
    }
    let min_pts = pts.iter().copied().min().unwrap_or(0);

    // Chunk offsets and sample-to-chunk runs give each sample's offset.
    let chunk_offsets: Vec<u64> = if let Some(stco) = child(stbl, b"stco")? {
        (0..be32(stco, 4)? as usize)
            .map(|i| be32(stco, 8 + 4 * i).map(u64::from))
            .collect::<Result<_, _>>()?
    } else {
        let co64 = need(stbl, b"co64")?;
        (0..be32(co64, 4)? as usize)
            .map(|i| be64(co64, 8 + 8 * i))
            .collect::<Result<_, _>>()?
    };
    let stsc = need(stbl, b"stsc")?;
    let runs = be32(stsc, 4)? as usize;
    let mut samples = Vec::with_capacity(n);
    for r in 0..runs {
        let first = be32(stsc, 8 + 12 * r)? as usize;
        let per_chunk = be32(stsc, 12 + 12 * r)? as usize;
        let end = if r + 1 < runs {
            be32(stsc, 8 + 12 * (r + 1))? as usize
        } else {
            chunk_offsets.len() + 1
        };
        if first == 0 || end < first || end > chunk_offsets.len() + 1 {
            return Err(malformed("stsc chunk numbers out of order or out of range"));
        }
        for &chunk_offset in &chunk_offsets[first - 1..end - 1] {
            let mut offset = chunk_offset;
            for _ in 0..per_chunk {
                let i = samples.len();
                if i == n {
                    break;
                }
                let p = (pts[i] - min_pts) as u64;
                samples.push(Sample {
                    offset,
                    size: sizes[i],
                    pts: p,
                });
                offset = offset
                    .checked_add(u64::from(sizes[i]))
                    .ok_or_else(|| malformed("sample offset overflows"))?;
            }
        }
    }
    if samples.len() != n {
        return Err(malformed(format!(
            "the chunks hold {} samples, stsz has {n}",
            samples.len()
        )));
    }
    if let Some(s) = samples
        .iter()
        .find(|s| s.size as usize > MAX_ACCESS_UNIT_LEN)
    {
        return Err(malformed(format!("a sample of {} bytes", s.size)));
    }
    let fps = mean_rate(timescale, total_duration, count);
    Ok((
        TrackInfo {
            timescale,
            width,
            height,
            samples: u64::from(count),
            fps,
            sps,
            pps,
        },
        samples,
        nal_len_size,
    ))
}

/// `AVCDecoderConfigurationRecord`: NAL length size, SPS and PPS lists.
#[allow(clippy::type_complexity)]
fn parse_avcc(d: &[u8]) -> Result<(usize, Vec<Vec<u8>>, Vec<Vec<u8>>), DemuxError> {
    let short = || malformed("avcC too short");
    if d.first() != Some(&1) {
        return Err(malformed("avcC version is not 1"));
    }
    let nal_len_size = usize::from(d.get(4).ok_or_else(short)? & 3) + 1;
    if nal_len_size == 3 {
        return Err(malformed("avcC nal length size 3"));
    }
    let mut at = 5;
    let mut lists = [Vec::new(), Vec::new()];
    for (k, list) in lists.iter_mut().enumerate() {
        let mut count = usize::from(*d.get(at).ok_or_else(short)?);
        if k == 0 {
            count &= 0x1f;
        }
        at += 1;
        for _ in 0..count {
            let len = usize::from(be16(d, at)?);
            let ps = d.get(at + 2..at + 2 + len).ok_or_else(short)?;
            if !ps.is_empty() {
                list.push(ps.to_vec());
            }
            at += 2 + len;
        }
    }
    let [sps, pps] = lists;
    Ok((nal_len_size, sps, pps))
}

/// The mean frame rate of `count` samples lasting `duration` ticks, as a reduced fraction.
fn mean_rate(timescale: u32, duration: u64, count: u32) -> (u32, u32) {
    if duration == 0 || count == 0 {
        return (30, 1);
    }
    let (mut num, mut den) = (u64::from(timescale) * u64::from(count), duration);
    let mut a = num;
    let mut b = den;
    while b != 0 {
        (a, b) = (b, a % b);
    }
    num /= a;
    den /= a;
    while num > u64::from(u32::MAX) || den > u64::from(u32::MAX) {
        num /= 2;
        den /= 2;
    }
    (num.max(1) as u32, den.max(1) as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mean_rate_reduces() {
        assert_eq!(mean_rate(15360, 512 * 10, 10), (30, 1));
        assert_eq!(mean_rate(30000, 1001 * 4, 4), (30000, 1001));
        assert_eq!(mean_rate(1000, 0, 0), (30, 1));
    }
}
