//! AV1 bitstream pieces `vpuctl` needs to store what a card sends: the OBUs of a temporal
//! unit, the sequence header's fields that the MP4 `av1C` box repeats, and an IVF writer.
//!
//! A card delivers one temporal unit per packet in the low-overhead bitstream format
//! (AV1 spec section 5.2: every OBU carries its size), starting with a temporal delimiter,
//! with the sequence header on keyframes (`docs/data-channel.md`).

use std::io::{self, Seek, SeekFrom, Write};

/// OBU types (AV1 spec 6.2.2).
pub const OBU_SEQUENCE_HEADER: u8 = 1;
pub const OBU_TEMPORAL_DELIMITER: u8 = 2;

/// Errors reading AV1 bitstreams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Av1Error {
    #[error("truncated OBU at byte {at} of a {len}-byte temporal unit")]
    Truncated { at: usize, len: usize },
    #[error("OBU at byte {at} has no size field (not the low-overhead format)")]
    NoSize { at: usize },
    #[error("OBU at byte {at} has the forbidden bit set")]
    Forbidden { at: usize },
    #[error("sequence header ends early")]
    ShortSequenceHeader,
}

/// One OBU of a temporal unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obu<'a> {
    pub kind: u8,
    /// The whole OBU: header, size field and payload.
    pub bytes: &'a [u8],
    pub payload: &'a [u8],
}

/// Splits a temporal unit (low-overhead format) into its OBUs.
pub fn obus(tu: &[u8]) -> Result<Vec<Obu<'_>>, Av1Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let truncated = |at| Av1Error::Truncated { at, len: tu.len() };
    while at < tu.len() {
        let header = tu[at];
        if header & 0x80 != 0 {
            return Err(Av1Error::Forbidden { at });
        }
        if header & 0x02 == 0 {
            return Err(Av1Error::NoSize { at });
        }
        let extension = usize::from(header & 0x04 != 0);
        let mut pos = at + 1 + extension;
        let mut size = 0u64;
        let mut done = false;
        for i in 0..8 {
            let b = *tu.get(pos).ok_or_else(|| truncated(at))?;
            pos += 1;
            size |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                done = true;
                break;
            }
        }
        if !done {
            return Err(truncated(at));
        }
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| pos.checked_add(s))
            .filter(|&e| e <= tu.len())
            .ok_or_else(|| truncated(at))?;
        out.push(Obu {
            kind: (header >> 3) & 0x0f,
            bytes: &tu[at..end],
            payload: &tu[pos..end],
        });
        at = end;
    }
    Ok(out)
}

/// Whether a temporal unit starts a coded video sequence (carries a sequence header: the
/// card sends one with every keyframe).
pub fn has_sequence_header(tu: &[u8]) -> bool {
    obus(tu).is_ok_and(|o| o.iter().any(|o| o.kind == OBU_SEQUENCE_HEADER))
}

/// The fields of a sequence header that `av1C` repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequenceHeader {
    pub profile: u8,
    pub level_idx0: u8,
    pub tier0: bool,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
    pub chroma_sample_position: u8,
    pub max_width: u32,
    pub max_height: u32,
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn f(&mut self, n: u32) -> Result<u32, Av1Error> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self
                .data
                .get(self.pos / 8)
                .ok_or(Av1Error::ShortSequenceHeader)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, Av1Error> {
        Ok(self.f(1)? == 1)
    }

    fn uvlc(&mut self) -> Result<u32, Av1Error> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros >= 32 {
                return Ok(u32::MAX);
            }
        }
        Ok(self.f(zeros)?.saturating_add((1u32 << zeros) - 1))
    }
}

impl SequenceHeader {
    /// Parses a sequence header OBU's payload (AV1 spec 5.5) up to its color config.
    pub fn parse(payload: &[u8]) -> Result<Self, Av1Error> {
        let mut b = Bits {
            data: payload,
            pos: 0,
        };
        let mut s = SequenceHeader {
            profile: b.f(3)? as u8,
            ..Default::default()
        };
        let _still_picture = b.flag()?;
        let reduced = b.flag()?;
        if reduced {
            s.level_idx0 = b.f(5)? as u8;
        } else {
            let mut decoder_model_info = false;
            let mut buffer_delay_len = 0;
            if b.flag()? {
                // timing_info
                b.f(32)?;
                b.f(32)?;
                if b.flag()? {
                    b.uvlc()?;
                }
                decoder_model_info = b.flag()?;
                if decoder_model_info {
                    buffer_delay_len = b.f(5)? + 1;
                    b.f(32)?;
                    b.f(5)?;
                    b.f(5)?;
                }
            }
            let initial_display_delay = b.flag()?;
            let operating_points = b.f(5)? + 1;
            for i in 0..operating_points {
                b.f(12)?;
                let level = b.f(5)? as u8;
                let tier = level > 7 && b.flag()?;
                if i == 0 {
                    s.level_idx0 = level;
                    s.tier0 = tier;
                }
                if decoder_model_info && b.flag()? {
                    b.f(buffer_delay_len)?;
                    b.f(buffer_delay_len)?;
                    b.f(1)?;
                }
                if initial_display_delay && b.flag()? {
                    b.f(4)?;
                }
            }
        }
        let wbits = b.f(4)? + 1;
        let hbits = b.f(4)? + 1;
        s.max_width = b.f(wbits)? + 1;
        s.max_height = b.f(hbits)? + 1;
        if !reduced && b.flag()? {
            // frame_id_numbers_present
            b.f(4)?;
            b.f(3)?;
        }
        b.f(3)?; // 128x128 superblock, filter intra, intra edge filter
        if !reduced {
            b.f(4)?; // interintra, masked compound, warped motion, dual filter
            let order_hint = b.flag()?;
            if order_hint {
                b.f(2)?; // jnt_comp, ref_frame_mvs
            }
            let force_screen_content = if b.flag()? { 2 } else { b.f(1)? };
            if force_screen_content > 0 && !b.flag()? {
                b.f(1)?; // seq_force_integer_mv
            }
            if order_hint {
                b.f(3)?;
            }
        }
        b.f(3)?; // superres, cdef, restoration
                 // color_config
        s.high_bitdepth = b.flag()?;
        let bit_depth = if s.profile == 2 && s.high_bitdepth {
            s.twelve_bit = b.flag()?;
            if s.twelve_bit {
                12
            } else {
                10
            }
        } else if s.high_bitdepth {
            10
        } else {
            8
        };
        s.monochrome = s.profile != 1 && b.flag()?;
        let (mut cp, mut tc, mut mc) = (2, 2, 2);
        if b.flag()? {
            cp = b.f(8)?;
            tc = b.f(8)?;
            mc = b.f(8)?;
        }
        if s.monochrome {
            s.subsampling_x = true;
            s.subsampling_y = true;
        } else if cp == 1 && tc == 13 && mc == 0 {
            // sRGB: 4:4:4, full range.
        } else {
            b.f(1)?; // color_range
            match s.profile {
                0 => (s.subsampling_x, s.subsampling_y) = (true, true),
                1 => {}
                _ if bit_depth == 12 => {
                    s.subsampling_x = b.flag()?;
                    s.subsampling_y = s.subsampling_x && b.flag()?;
                }
                _ => s.subsampling_x = true,
            }
            if s.subsampling_x && s.subsampling_y {
                s.chroma_sample_position = b.f(2)? as u8;
            }
        }
        Ok(s)
    }

    /// `AV1CodecConfigurationRecord` (AV1 in ISOBMFF, 2.3) with `seq_obu` (the whole
    /// sequence header OBU) as its configOBUs.
    pub fn av1c(&self, seq_obu: &[u8]) -> Vec<u8> {
        let mut b = vec![
            0x81, // marker, version 1
            (self.profile << 5) | (self.level_idx0 & 0x1f),
            (u8::from(self.tier0) << 7)
                | (u8::from(self.high_bitdepth) << 6)
                | (u8::from(self.twelve_bit) << 5)
                | (u8::from(self.monochrome) << 4)
                | (u8::from(self.subsampling_x) << 3)
                | (u8::from(self.subsampling_y) << 2)
                | (self.chroma_sample_position & 3),
            0, // no initial presentation delay
        ];
        b.extend_from_slice(seq_obu);
        b
    }
}

/// Writes AV1 temporal units as IVF (the `DKIF` container ffmpeg, libaom and dav1d read).
#[derive(Debug)]
pub struct IvfWriter<W: Write + Seek> {
    out: W,
    frames: u32,
}

impl<W: Write + Seek> IvfWriter<W> {
    /// Starts a file of `width`×`height` at `fps_num`/`fps_den` frames per second.
    pub fn new(
        mut out: W,
        width: u16,
        height: u16,
        fps_num: u32,
        fps_den: u32,
    ) -> io::Result<Self> {
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"DKIF");
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&32u16.to_le_bytes());
        h.extend_from_slice(b"AV01");
        h.extend_from_slice(&width.to_le_bytes());
        h.extend_from_slice(&height.to_le_bytes());
        h.extend_from_slice(&fps_num.to_le_bytes());
        h.extend_from_slice(&fps_den.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // frame count, patched by `finish`
        h.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out, frames: 0 })
    }

    /// Appends one temporal unit with timestamp `pts` (in frames); an empty one is
    /// skipped.
    pub fn write(&mut self, pts: u64, tu: &[u8]) -> io::Result<()> {
        if tu.is_empty() {
            return Ok(());
        }
        let len = u32::try_from(tu.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&pts.to_le_bytes())?;
        self.out.write_all(tu)?;
        self.frames += 1;
        Ok(())
    }

    /// Patches the frame count and flushes; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.seek(SeekFrom::Start(24))?;
        self.out.write_all(&self.frames.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A temporal delimiter and the sequence header rav1e writes for 64x48 8-bit 4:2:0
    /// Main profile (level 31, no timing info).
    fn tu() -> Vec<u8> {
        let mut tu = vec![0x12, 0x00];
        // seq_profile 0, still 0, reduced 0, timing 0, initial delay 0, 1 op point,
        // idc 0, level 31, tier 1 (bits by hand below).
        let seq = seq_payload();
        tu.push(0x0a);
        tu.push(seq.len() as u8);
        tu.extend_from_slice(&seq);
        tu
    }

    fn seq_payload() -> Vec<u8> {
        let mut bits = String::new();
        let mut put = |v: u32, n: u32| {
            for i in (0..n).rev() {
                bits.push(if (v >> i) & 1 == 1 { '1' } else { '0' });
            }
        };
        put(0, 3); // profile
        put(0, 1); // still
        put(0, 1); // reduced
        put(0, 1); // timing info
        put(0, 1); // initial display delay
        put(0, 5); // op points - 1
        put(0, 12); // idc
        put(31, 5); // level
        put(1, 1); // tier
        put(5, 4); // width bits - 1
        put(5, 4); // height bits - 1
        put(63, 6); // max width - 1
        put(47, 6); // max height - 1
        put(0, 1); // frame ids
        put(0, 3);
        put(0, 4);
        put(1, 1); // order hint
        put(0, 2);
        put(1, 1); // choose screen content tools
        put(1, 1); // choose integer mv
        put(6, 3); // order hint bits - 1
        put(0, 3);
        put(0, 1); // high bitdepth
        put(0, 1); // mono
        put(0, 1); // color description
        put(0, 1); // color range
        put(2, 2); // chroma sample position
        put(0, 1); // separate uv delta q
        put(1, 1); // trailing bit
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        bits.as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect()
    }

    #[test]
    fn obus_and_the_sequence_header_are_read() {
        let tu = tu();
        let o = obus(&tu).unwrap();
        assert_eq!(
            o.iter().map(|o| o.kind).collect::<Vec<_>>(),
            [OBU_TEMPORAL_DELIMITER, OBU_SEQUENCE_HEADER]
        );
        assert!(has_sequence_header(&tu));
        let s = SequenceHeader::parse(o[1].payload).unwrap();
        assert_eq!(
            (s.profile, s.level_idx0, s.tier0, s.max_width, s.max_height),
            (0, 31, true, 64, 48)
        );
        assert!(s.subsampling_x && s.subsampling_y && !s.high_bitdepth && !s.monochrome);
        assert_eq!(s.chroma_sample_position, 2);
        let c = s.av1c(o[1].bytes);
        assert_eq!(&c[..4], &[0x81, 31, 0x80 | 0x0c | 2, 0]);
        assert_eq!(&c[4..], o[1].bytes);
    }

    #[test]
    fn broken_units_are_errors() {
        assert!(matches!(obus(&[0x12]), Err(Av1Error::Truncated { .. })));
        assert!(matches!(obus(&[0x10, 0]), Err(Av1Error::NoSize { .. })));
        assert!(matches!(obus(&[0x92, 0]), Err(Av1Error::Forbidden { .. })));
        assert!(matches!(
            obus(&[0x12, 5, 1]),
            Err(Av1Error::Truncated { .. })
        ));
        assert!(matches!(
            obus(&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(Av1Error::Truncated { .. })
        ));
        assert_eq!(
            SequenceHeader::parse(&[0]),
            Err(Av1Error::ShortSequenceHeader)
        );
    }

    #[test]
    fn ivf_counts_its_frames() {
        let mut w = IvfWriter::new(std::io::Cursor::new(Vec::new()), 64, 48, 30, 1).unwrap();
        w.write(0, &tu()).unwrap();
        w.write(1, &[]).unwrap();
        w.write(2, &[0x12, 0]).unwrap();
        let data = w.finish().unwrap().into_inner();
        assert_eq!(&data[..4], b"DKIF");
        assert_eq!(u32::from_le_bytes(data[24..28].try_into().unwrap()), 2);
        assert_eq!(data.len(), 32 + 12 + tu().len() + 12 + 2);
    }
}
