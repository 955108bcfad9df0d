//! H.264 access units from an Annex-B byte stream, read incrementally from a file or a
//! pipe with bounded memory.
//!
//! NAL units are split at start codes as bytes arrive; they are grouped into access units
//! by the rules of H.264 7.4.1.2.3: an access unit delimiter, SEI, SPS, PPS or NAL types
//! 14–18 after a picture's slices, or a slice with `first_mb_in_slice` = 0, begins the next
//! access unit. Each access unit is returned with 4-byte start codes, in decode order.

use std::io::{self, Read};

/// Largest NAL unit accepted (a 4K intra frame at a high rate is a few MiB).
pub const MAX_NAL_LEN: usize = 16 << 20;
/// Largest access unit accepted.
pub const MAX_ACCESS_UNIT_LEN: usize = 32 << 20;
/// Bytes read from the input at a time.
const READ_CHUNK: usize = 256 << 10;

/// NAL unit types (H.264 table 7-1) the grouping looks at.
pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// Errors of the Annex-B reader.
#[derive(Debug, thiserror::Error)]
pub enum AnnexbError {
    /// The input could not be read.
    #[error("reading the h.264 stream failed")]
    Read(#[source] io::Error),
    /// The stream does not begin with a start code.
    #[error("not an h.264 annex-b stream: it does not begin with a start code (00 00 01)")]
    NoStartCode,
    /// A NAL unit with `forbidden_zero_bit` set: the stream is corrupt.
    #[error("corrupt nal unit at byte {offset}: forbidden_zero_bit is set")]
    ForbiddenBit { offset: u64 },
    /// A NAL unit longer than [`MAX_NAL_LEN`].
    #[error("nal unit at byte {offset} is longer than {MAX_NAL_LEN} bytes")]
    NalTooLong { offset: u64 },
    /// An access unit longer than [`MAX_ACCESS_UNIT_LEN`].
    #[error("access unit {index} is longer than {MAX_ACCESS_UNIT_LEN} bytes")]
    AccessUnitTooLong { index: u64 },
}

/// One coded picture with its parameter sets and SEI, Annex-B with 4-byte start codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub data: Vec<u8>,
    /// Presentation time in the input's time base.
    pub pts: u64,
    /// Contains an IDR slice (a random-access point).
    pub keyframe: bool,
}

impl AccessUnit {
    /// The NAL units of the access unit (without start codes).
    pub fn nal_units(&self) -> Vec<&[u8]> {
        vpud_client::annexb::nal_units(&self.data)
    }
}

/// Splits a byte stream into NAL units.
#[derive(Debug)]
struct NalSplitter<R> {
    input: R,
    buf: Vec<u8>,
    /// Start of the current NAL unit's payload in `buf`, once the first start code is seen.
    start: Option<usize>,
    /// Where the search for the next start code resumes.
    scan: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl<R: Read> NalSplitter<R> {
    fn fill(&mut self) -> Result<usize, AnnexbError> {
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let n = loop {
            match self.input.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(AnnexbError::Read(e));
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Position of the `00 00 01` at or after `from`.
    fn find_start_code(&self, from: usize) -> Option<usize> {
        let mut i = from;
        while i + 3 <= self.buf.len() {
            match self.buf[i + 2] {
                1 if self.buf[i] == 0 && self.buf[i + 1] == 0 => return Some(i),
                // The third byte is not 0 or 1: no start code can begin at i, i+1 or i+2.
                b if b > 1 => i += 3,
                _ => i += 1,
            }
        }
        None
    }

    /// The next NAL unit (payload without start code or trailing zeros) and its offset.
    fn next(&mut self) -> Result<Option<(Vec<u8>, u64)>, AnnexbError> {
        loop {
            let Some(start) = self.start else {
                // Before the first start code only zero bytes may come.
                if let Some(p) = self.buf.iter().position(|&b| b != 0) {
                    if p < 2 || self.buf[p] != 1 {
                        return Err(AnnexbError::NoStartCode);
                    }
                    self.start = Some(p + 1);
                    self.scan = p + 1;
                    continue;
                }
                if self.buf.len() > 4096 || (self.fill()? == 0) {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(AnnexbError::NoStartCode)
                    };
                }
                continue;
            };
            let end = match self.find_start_code(self.scan) {
                Some(sc) => Some(sc),
                None if self.eof => Some(self.buf.len()),
                None => None,
            };
            let Some(end) = end else {
                self.scan = self.buf.len().saturating_sub(2).max(start);
                if self.buf.len() - start > MAX_NAL_LEN {
                    return Err(AnnexbError::NalTooLong {
                        offset: self.base + start as u64,
                    });
                }
                // Keep the buffer from growing with what was already returned.
                if start > READ_CHUNK {
                    self.buf.drain(..start);
                    self.base += start as u64;
                    self.scan -= start;
                    self.start = Some(0);
                }
                self.fill()?;
                continue;
            };
            if start >= self.buf.len() && self.eof {
                return Ok(None);
            }
            let mut nal_end = end;
            while nal_end > start && self.buf[nal_end - 1] == 0 {
                nal_end -= 1;
            }
            let nal = self.buf[start..nal_end].to_vec();
            let offset = self.base + start as u64;
            let next = (end + 3).min(self.buf.len());
            self.start = Some(next);
            self.scan = next;
            if nal_end - start > MAX_NAL_LEN {
                return Err(AnnexbError::NalTooLong { offset });
            }
            if nal.is_empty() {
                continue;
            }
            return Ok(Some((nal, offset)));
        }
    }
}

/// Access units from an Annex-B stream; pts counts frames from 0 in decode order (an
/// Annex-B stream carries no timestamps).
#[derive(Debug)]
pub struct AnnexbReader<R> {
    nals: NalSplitter<R>,
    /// The access unit being assembled and whether it has a slice yet.
    current: Vec<u8>,
    has_slice: bool,
    keyframe: bool,
    /// A NAL unit read that belongs to the next access unit.
    pending: Option<(Vec<u8>, u64)>,
    index: u64,
    /// The most recent SPS and PPS seen.
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

impl<R: Read> AnnexbReader<R> {
    /// Reads from `input` (which should be buffered by the reader's own chunks; a plain
    /// `File` or pipe is fine).
    pub fn new(input: R) -> Self {
        AnnexbReader {
            nals: NalSplitter {
                input,
                buf: Vec::new(),
                start: None,
                scan: 0,
                base: 0,
                eof: false,
            },
            current: Vec::new(),
            has_slice: false,
            keyframe: false,
            pending: None,
            index: 0,
            sps: None,
            pps: None,
        }
    }

    /// Bytes consumed from the input so far (for progress).
    pub fn position(&self) -> u64 {
        self.nals.base + self.nals.start.unwrap_or(0) as u64
    }

    /// The most recent SPS seen, when any.
    pub fn sps(&self) -> Option<&[u8]> {
        self.sps.as_deref()
    }

    /// The most recent PPS seen, when any.
    pub fn pps(&self) -> Option<&[u8]> {
        self.pps.as_deref()
    }

    /// The next access unit, or `None` at the end of the stream.
    pub fn next_access_unit(&mut self) -> Result<Option<AccessUnit>, AnnexbError> {
        loop {
            let next = match self.pending.take() {
                Some(n) => Some(n),
                None => self.nals.next()?,
            };
            let Some((nal, offset)) = next else {
                return Ok(self.finish_current());
            };
            let header = nal[0];
            if header & 0x80 != 0 {
                return Err(AnnexbError::ForbiddenBit { offset });
            }
            let kind = header & 0x1f;
            let vcl = matches!(kind, 1..=5);
            let begins_au = match kind {
                NAL_SEI | NAL_SPS | NAL_PPS | NAL_AUD | 14..=18 => true,
                // first_mb_in_slice is ue(v) first in the header: 0 is the single bit 1.
                1..=5 => nal.get(1).is_some_and(|b| b & 0x80 != 0),
                _ => false,
            };
            if begins_au && self.has_slice {
                self.pending = Some((nal, offset));
                if let Some(au) = self.finish_current() {
                    return Ok(Some(au));
                }
                continue;
            }
            match kind {
                NAL_SPS => self.sps = Some(nal.clone()),
                NAL_PPS => self.pps = Some(nal.clone()),
                NAL_IDR => self.keyframe = true,
                _ => {}
            }
            self.has_slice |= vcl;
            if self.current.len() + nal.len() + 4 > MAX_ACCESS_UNIT_LEN {
                return Err(AnnexbError::AccessUnitTooLong { index: self.index });
            }
            self.current.extend_from_slice(&[0, 0, 0, 1]);
            self.current.extend_from_slice(&nal);
        }
    }

    /// The assembled access unit, when it has a picture (NAL units after the last picture
    /// with none of their own, such as an end-of-stream NAL, are dropped at the end).
    fn finish_current(&mut self) -> Option<AccessUnit> {
        let data = std::mem::take(&mut self.current);
        let has_slice = std::mem::replace(&mut self.has_slice, false);
        let keyframe = std::mem::replace(&mut self.keyframe, false);
        if !has_slice {
            return None;
        }
        let pts = self.index;
        self.index += 1;
        Some(AccessUnit {
            data,
            pts,
            keyframe,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A reader that hands out at most `n` bytes per read, to split start codes across
    /// reads.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn all(data: &[u8], step: usize) -> Result<Vec<AccessUnit>, AnnexbError> {
        let mut r = AnnexbReader::new(Trickle(data, step));
        let mut out = Vec::new();
        while let Some(au) = r.next_access_unit()? {
            out.push(au);
        }
        Ok(out)
    }

    #[test]
    fn groups_nal_units_into_access_units() {
        let stream = [
            &[0, 0, 0, 1, 0x67, 0x42, 0, 0x1e][..], // SPS
            &[0, 0, 1, 0x68, 0xce],                 // PPS
            &[0, 0, 1, 0x65, 0x88, 1],              // IDR, first_mb 0
            &[0, 0, 1, 0x65, 0x48, 2],              // IDR, first_mb > 0 (same picture)
            &[0, 0, 0, 1, 0x41, 0x9a, 3, 0, 0],     // P, first_mb 0, trailing zeros
            &[0, 0, 1, 0x06, 5, 1, 0x80],           // SEI begins the next AU
            &[0, 0, 1, 0x41, 0x9b],                 // P
            &[0, 0, 1, 0x0b],                       // end of stream: no picture of its own
        ]
        .concat();
        for step in [1, 2, 3, 5, 1000] {
            let aus = all(&stream, step).unwrap();
            assert_eq!(aus.len(), 3, "step {step}");
            assert!(aus[0].keyframe && !aus[1].keyframe && !aus[2].keyframe);
            assert_eq!(aus[0].nal_units().len(), 4);
            assert_eq!(aus[1].data, [0, 0, 0, 1, 0x41, 0x9a, 3]);
            assert_eq!(aus[2].nal_units().len(), 3);
            assert_eq!(aus.iter().map(|a| a.pts).collect::<Vec<_>>(), [0, 1, 2]);
        }
    }

    #[test]
    fn hostile_streams_give_typed_errors() {
        assert!(matches!(
            all(b"YUV4MPEG2 W16", 64),
            Err(AnnexbError::NoStartCode)
        ));
        assert!(matches!(
            all(&[0, 0, 0, 0, 7], 64),
            Err(AnnexbError::NoStartCode)
        ));
        assert!(matches!(
            all(&[0, 0, 1, 0xe5, 0x88], 64),
            Err(AnnexbError::ForbiddenBit { offset: 3 })
        ));
        assert_eq!(all(&[], 64).unwrap(), vec![]);
        assert!(matches!(
            all(&[0, 0, 0, 0], 64),
            Err(AnnexbError::NoStartCode)
        ));
        // Parameter sets alone are no picture.
        assert_eq!(all(&[0, 0, 1, 0x67, 0x42], 64).unwrap(), vec![]);
        // A NAL unit that never ends is refused once it passes the limit, not buffered.
        let mut long = vec![0, 0, 1, 0x65, 0x88];
        long.resize(MAX_NAL_LEN + 10, 0xaa);
        assert!(matches!(
            all(&long, 1 << 20),
            Err(AnnexbError::NalTooLong { offset: 3 })
        ));
    }
}
