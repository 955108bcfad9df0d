//! H.264 access units from an MP4 file (ISO BMFF, `avc1`/`avc3` sample entries).
//!
//! The `moov` box is read whole (it is bounded, [`MAX_MOOV_LEN`]) and its sample tables of
//! the first H.264 video track expanded into one entry per sample (offset, size, pts). The
//! samples' length-prefixed NAL units are turned into Annex-B with 4-byte start codes, and
//! the `avcC` SPS/PPS are put in front of every IDR sample that lacks its own, so each
//! keyframe can be decoded on its own. A seekable file may have `moov` anywhere; a pipe must
//! have it before `mdat` (`ffmpeg -movflags +faststart`), with samples in file order.

use std::io::{self, Read, Seek, SeekFrom};

use super::annexb::{AccessUnit, MAX_ACCESS_UNIT_LEN, NAL_IDR, NAL_SPS};
use super::moov::parse_moov;

/// Largest `moov` box read into memory.
pub const MAX_MOOV_LEN: u64 = 64 << 20;
/// Most samples one track may have (18 hours at 30 fps; the table takes 24 bytes each).
pub const MAX_SAMPLES: u32 = 2_000_000;

/// Errors of the MP4 reader.
#[derive(Debug, thiserror::Error)]
pub enum DemuxError {
    /// The input could not be read (or ended inside a box it announced).
    #[error("reading the mp4 file failed")]
    Read(#[source] io::Error),
    /// A box is malformed: sizes that do not fit, truncated fields, inconsistent tables.
    #[error("malformed mp4: {0}")]
    Malformed(String),
    /// No `moov` box before the end of the file.
    #[error("the mp4 file has no movie box (moov); it is incomplete or not an mp4 file")]
    NoMoov,
    /// A pipe delivered `mdat` before `moov`: its samples cannot be found without seeking.
    #[error("the mp4 stream has its index (moov) after its media data; a pipe needs it first (ffmpeg -movflags +faststart), or give a file")]
    MoovAfterMdat,
    /// Fragmented MP4 (`moof`) is not read.
    #[error(
        "fragmented mp4 (moof boxes) is not supported; give a regular mp4 or an annex-b stream"
    )]
    Fragmented,
    /// No video track, or one in another codec.
    #[error("the mp4 file has no h.264 video track ({0})")]
    NoH264Track(String),
    /// The track has more samples than [`MAX_SAMPLES`].
    #[error("the video track has {0} samples; at most {MAX_SAMPLES} are read")]
    TooManySamples(u64),
    /// A pipe delivered samples out of file order.
    #[error("sample {index} lies before the previous one in the stream; a pipe needs samples in file order")]
    OutOfOrder { index: usize },
    /// A sample's NAL length prefixes do not add up to the sample, or it has no NAL unit.
    #[error("sample {index} is corrupt: its nal unit lengths overrun the sample or it has none")]
    CorruptSample { index: usize },
}

pub(super) fn malformed(what: impl Into<String>) -> DemuxError {
    DemuxError::Malformed(what.into())
}

/// One sample of the video track.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) offset: u64,
    pub(super) size: u32,
    /// Presentation time, shifted so that the earliest is 0.
    pub(super) pts: u64,
}

/// The video track's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// Ticks per second of the sample times.
    pub timescale: u32,
    /// Width and height of the sample entry.
    pub width: u32,
    pub height: u32,
    pub samples: u64,
    /// Frame rate from the sample durations (their mean, reduced).
    pub fps: (u32, u32),
    /// The `avcC` parameter sets.
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

/// Reads access units from an MP4 file or stream.
#[derive(Debug)]
pub struct Mp4Reader<R> {
    input: R,
    seekable: bool,
    /// Stream position of `input`.
    pos: u64,
    samples: Vec<Sample>,
    next: usize,
    nal_len_size: usize,
    track: TrackInfo,
}

impl<R: Read + Seek> Mp4Reader<R> {
    /// Reads the file's structure up to its sample tables. `seekable` is false for pipes
    /// (no `Seek` call is then made).
    pub fn open(mut input: R, seekable: bool) -> Result<Self, DemuxError> {
        let mut pos = 0u64;
        let mut parsed: Option<(TrackInfo, Vec<Sample>, usize)> = None;
        let mut saw_mdat = false;
        while let Some((kind, header_len, size)) = read_box_header(&mut input)? {
            let body_start = pos + header_len;
            let body_len = size.map(|s| s.saturating_sub(header_len));
            match &kind {
                b"moov" => {
                    let len =
                        body_len.ok_or_else(|| malformed("moov box extends to end of file"))?;
                    if len > MAX_MOOV_LEN {
                        return Err(malformed(format!(
                            "moov box of {len} bytes (at most {MAX_MOOV_LEN})"
                        )));
                    }
                    let body = read_exactly(&mut input, len)?;
                    pos = body_start + len;
                    parsed = Some(parse_moov(&body)?);
                }
                b"moof" => return Err(DemuxError::Fragmented),
                b"mdat" if parsed.is_some() => {
                    pos = body_start;
                    break;
                }
                b"mdat" if !seekable => return Err(DemuxError::MoovAfterMdat),
                _ => {
                    if kind == *b"mdat" {
                        saw_mdat = true;
                    }
                    let Some(len) = body_len else { break };
                    skip(&mut input, seekable, len)?;
                    pos = body_start + len;
                }
            }
        }
        let Some((track, samples, nal_len_size)) = parsed else {
            return Err(if saw_mdat || pos > 0 {
                DemuxError::NoMoov
            } else {
                malformed("empty file")
            });
        };
        Ok(Mp4Reader {
            input,
            seekable,
            pos,
            samples,
            next: 0,
            nal_len_size,
            track,
        })
    }

    /// The video track.
    pub fn track(&self) -> &TrackInfo {
        &self.track
    }

    /// Samples read so far.
    pub fn position(&self) -> u64 {
        self.next as u64
    }

    /// The next access unit in decode order, or `None` after the last sample.
    pub fn next_access_unit(&mut self) -> Result<Option<AccessUnit>, DemuxError> {
        let index = self.next;
        let Some(&sample) = self.samples.get(index) else {
            return Ok(None);
        };
        if sample.offset != self.pos {
            if sample.offset < self.pos && !self.seekable {
                return Err(DemuxError::OutOfOrder { index });
            }
            if self.seekable {
                self.input
                    .seek(SeekFrom::Start(sample.offset))
                    .map_err(DemuxError::Read)?;
            } else {
                skip(&mut self.input, false, sample.offset - self.pos)?;
            }
            self.pos = sample.offset;
        }
        let data = read_exactly(&mut self.input, u64::from(sample.size))?;
        self.pos += u64::from(sample.size);
        self.next += 1;
        let mut nals = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Some(len_bytes) = rest.get(..self.nal_len_size) else {
                return Err(DemuxError::CorruptSample { index });
            };
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            let nal = rest
                .get(self.nal_len_size..self.nal_len_size + len)
                .ok_or(DemuxError::CorruptSample { index })?;
            rest = &rest[self.nal_len_size + len..];
            if !nal.is_empty() {
                nals.push(nal);
            }
        }
        if nals.is_empty() {
            return Err(DemuxError::CorruptSample { index });
        }
        let kind = |n: &&[u8]| n[0] & 0x1f;
        let has_idr = nals.iter().any(|n| kind(n) == NAL_IDR);
        let has_sps = nals.iter().any(|n| kind(n) == NAL_SPS);
        let mut out = Vec::with_capacity(data.len() + 64);
        if (has_idr || index == 0) && !has_sps {
            for ps in self.track.sps.iter().chain(&self.track.pps) {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(ps);
            }
        }
        for nal in nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        if out.len() > MAX_ACCESS_UNIT_LEN {
            return Err(malformed(format!(
                "sample {index} is larger than {MAX_ACCESS_UNIT_LEN} bytes"
            )));
        }
        // As the card will split it: a corrupt NAL unit may hide a start code.
        let keyframe = vpud_client::annexb::is_idr(&out);
        Ok(Some(AccessUnit {
            data: out,
            pts: sample.pts,
            keyframe,
        }))
    }
}

/// A box header: type, header length, and the whole box's size (`None`: to the end).
type BoxHeader = ([u8; 4], u64, Option<u64>);

fn read_box_header(r: &mut impl Read) -> Result<Option<BoxHeader>, DemuxError> {
    let mut h = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(malformed("file ends inside a box header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DemuxError::Read(e)),
        }
    }
    let size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = [h[4], h[5], h[6], h[7]];
    match size {
        0 => Ok(Some((kind, 8, None))),
        1 => {
            let mut large = [0u8; 8];
            r.read_exact(&mut large).map_err(DemuxError::Read)?;
            let size = u64::from_be_bytes(large);
            if size < 16 {
                return Err(malformed(format!("box of {size} bytes")));
            }
            Ok(Some((kind, 16, Some(size))))
        }
        2..=7 => Err(malformed(format!("box of {size} bytes"))),
        n => Ok(Some((kind, 8, Some(u64::from(n))))),
    }
}

/// Reads exactly `len` bytes; memory grows with the bytes that arrive, not with what a
/// (possibly lying) size field announced.
fn read_exactly(r: &mut impl Read, len: u64) -> Result<Vec<u8>, DemuxError> {
    let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
    r.take(len)
        .read_to_end(&mut out)
        .map_err(DemuxError::Read)?;
    if out.len() as u64 != len {
        return Err(DemuxError::Read(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(out)
}

/// Skips `len` bytes: a seek for a file, reading them for a pipe.
fn skip(r: &mut (impl Read + Seek), seekable: bool, len: u64) -> Result<(), DemuxError> {
    if seekable {
        let len = i64::try_from(len).map_err(|_| malformed("box size"))?;
        r.seek(SeekFrom::Current(len)).map_err(DemuxError::Read)?;
        return Ok(());
    }
    let copied = io::copy(&mut r.take(len), &mut io::sink()).map_err(DemuxError::Read)?;
    if copied != len {
        return Err(DemuxError::Read(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn open(data: Vec<u8>, seekable: bool) -> Result<Mp4Reader<Cursor<Vec<u8>>>, DemuxError> {
        Mp4Reader::open(Cursor::new(data), seekable)
    }

    #[test]
    fn hostile_files_give_typed_errors() {
        assert!(matches!(open(vec![], true), Err(DemuxError::Malformed(_))));
        assert!(matches!(
            open(vec![0, 0, 0, 3, b'f'], true),
            Err(DemuxError::Malformed(_))
        ));
        let ftyp = boxed(b"ftyp", b"isom\0\0\0\0");
        assert!(matches!(open(ftyp.clone(), true), Err(DemuxError::NoMoov)));
        let mdat_first = [ftyp.clone(), boxed(b"mdat", &[1, 2, 3])].concat();
        assert!(matches!(
            open(mdat_first.clone(), false),
            Err(DemuxError::MoovAfterMdat)
        ));
        assert!(matches!(open(mdat_first, true), Err(DemuxError::NoMoov)));
        let moof = [ftyp.clone(), boxed(b"moof", &[])].concat();
        assert!(matches!(open(moof, true), Err(DemuxError::Fragmented)));
        // A moov whose child claims more bytes than it has.
        let bad = [
            ftyp.clone(),
            boxed(b"moov", &[0, 0, 1, 0, b't', b'r', b'a', b'k']),
        ]
        .concat();
        assert!(matches!(open(bad, true), Err(DemuxError::Malformed(_))));
        let empty = [ftyp.clone(), boxed(b"moov", &[])].concat();
        assert!(matches!(open(empty, true), Err(DemuxError::NoH264Track(_))));
        // A moov announced larger than the file.
        let mut cut = boxed(b"moov", &[0; 64]);
        cut.truncate(40);
        assert!(matches!(open(cut, true), Err(DemuxError::Read(_))));
        for seed in 0..200u32 {
            let junk: Vec<u8> = (0..200u32)
                .map(|i| (i.wrapping_mul(seed) ^ 0x5a) as u8)
                .collect();
            let data = [ftyp.clone(), boxed(b"moov", &junk)].concat();
            let _ = open(data, true);
        }
    }
}
