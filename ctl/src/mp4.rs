//! A small MP4 (ISO BMFF) muxer for one H.264 or AV1 video track.
//!
//! Layout: `ftyp`, `mdat` (written as packets arrive, with a 64-bit size patched at the
//! end), then `moov` with the sample tables: `stts` (durations), `stss` (keyframes),
//! `stsc` (one sample per chunk), `stsz` (sizes), `stco`/`co64` (offsets).
//!
//! H.264 (`avc1`): samples are 4-byte-length-prefixed NAL units; SPS and PPS go into
//! `avcC`, not into samples. AV1 (`av01`, per "AV1 Codec ISO Media File Format Binding"):
//! a sample is a temporal unit without its temporal delimiter; the first sequence header
//! goes into `av1C` (and stays in the keyframe samples that carry it); a sample is a sync
//! sample when it starts a coded video sequence (a keyframe with a sequence header).
//! There are no B-frames from the encoders vpud drives, so no `ctts`.

use std::io::{self, Seek, SeekFrom, Write};

use vpud_client::annexb::{nal_type, nal_units, NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS};

use super::av1::{obus, Av1Error, SequenceHeader, OBU_SEQUENCE_HEADER, OBU_TEMPORAL_DELIMITER};

/// Errors of the MP4 muxer.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    /// The output could not be written.
    #[error("writing the mp4 file failed")]
    Write(#[source] io::Error),
    /// No SPS/PPS reached the muxer, so the track cannot be described.
    #[error("the stream has no sequence/picture parameter sets (SPS/PPS); cannot write avcC")]
    MissingParameterSets,
    /// A zero numerator or denominator, or one too large for the timescale.
    #[error("invalid frame rate {num}/{den}")]
    FrameRate { num: u32, den: u32 },
    /// A frame larger than 4 GiB.
    #[error("a sample of {0} bytes does not fit in an mp4 sample")]
    SampleTooLarge(usize),
    /// No AV1 sequence header reached the muxer, so `av1C` cannot be written.
    #[error("the AV1 stream has no sequence header; cannot write av1C")]
    MissingSequenceHeader,
    /// An AV1 temporal unit that does not parse.
    #[error("bad AV1 temporal unit")]
    Av1(#[from] Av1Error),
}

/// The codec of the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mp4Codec {
    H264,
    Av1,
}

/// Writes one H.264 track to `out` as MP4.
#[derive(Debug)]
pub struct Mp4Writer<W: Write + Seek> {
    out: W,
    width: u16,
    height: u16,
    timescale: u32,
    sample_duration: u32,
    codec: Mp4Codec,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// AV1: the first sequence header OBU and its fields.
    seq: Option<(Vec<u8>, SequenceHeader)>,
    mdat_start: u64,
    pos: u64,
    sizes: Vec<u32>,
    offsets: Vec<u64>,
    durations: Vec<u32>,
    sync: Vec<u32>,
}

impl<W: Write + Seek> Mp4Writer<W> {
    /// Starts a file of `width`×`height` H.264 video at `fps_num`/`fps_den` frames per
    /// second.
    pub fn new(
        out: W,
        width: u16,
        height: u16,
        fps_num: u32,
        fps_den: u32,
    ) -> Result<Self, Mp4Error> {
        Self::with_codec(out, Mp4Codec::H264, width, height, fps_num, fps_den)
    }

    /// Starts a file of `width`×`height` video in `codec` at `fps_num`/`fps_den` frames
    /// per second.
    pub fn with_codec(
        mut out: W,
        codec: Mp4Codec,
        width: u16,
        height: u16,
        fps_num: u32,
        fps_den: u32,
    ) -> Result<Self, Mp4Error> {
        if fps_num == 0 || fps_den == 0 {
            return Err(Mp4Error::FrameRate {
                num: fps_num,
                den: fps_den,
            });
        }
        // A timescale fine enough for players that round durations.
        let scale = if fps_num < 1000 { 1000 } else { 1 };
        let timescale = fps_num.checked_mul(scale).ok_or(Mp4Error::FrameRate {
            num: fps_num,
            den: fps_den,
        })?;
        let sample_duration = fps_den.checked_mul(scale).ok_or(Mp4Error::FrameRate {
            num: fps_num,
            den: fps_den,
        })?;
        let mut ftyp = Vec::new();
        put_box(&mut ftyp, b"ftyp", |b| {
            b.extend_from_slice(b"isom");
            b.extend_from_slice(&512u32.to_be_bytes());
            let brands = match codec {
                Mp4Codec::H264 => [b"isom", b"iso2", b"avc1", b"mp41"],
                Mp4Codec::Av1 => [b"isom", b"iso6", b"av01", b"mp41"],
            };
            for brand in brands {
                b.extend_from_slice(brand);
            }
        });
        out.write_all(&ftyp).map_err(Mp4Error::Write)?;
        let mdat_start = ftyp.len() as u64;
        // size = 1: the 64-bit size follows the type and is patched by `finish`.
        let mut mdat = Vec::with_capacity(16);
        mdat.extend_from_slice(&1u32.to_be_bytes());
        mdat.extend_from_slice(b"mdat");
        mdat.extend_from_slice(&0u64.to_be_bytes());
        out.write_all(&mdat).map_err(Mp4Error::Write)?;
        Ok(Mp4Writer {
            out,
            width,
            height,
            timescale,
            sample_duration,
            codec,
            sps: None,
            pps: None,
            seq: None,
            mdat_start,
            pos: mdat_start + 16,
            sizes: Vec::new(),
            offsets: Vec::new(),
            durations: Vec::new(),
            sync: Vec::new(),
        })
    }

    /// Adds one encoded frame: an Annex-B access unit (H.264) or a temporal unit (AV1).
    pub fn write_packet(&mut self, packet: &[u8]) -> Result<(), Mp4Error> {
        match self.codec {
            Mp4Codec::H264 => self.write_access_unit(packet),
            Mp4Codec::Av1 => self.write_temporal_unit(packet),
        }
    }

    /// Adds one AV1 temporal unit. An empty one lengthens the previous sample.
    pub fn write_temporal_unit(&mut self, tu: &[u8]) -> Result<(), Mp4Error> {
        let mut sample = Vec::with_capacity(tu.len());
        let mut keyframe = false;
        for obu in obus(tu)? {
            match obu.kind {
                OBU_TEMPORAL_DELIMITER => continue,
                OBU_SEQUENCE_HEADER => {
                    keyframe = true;
                    if self.seq.is_none() {
                        let header = SequenceHeader::parse(obu.payload)?;
                        self.seq = Some((obu.bytes.to_vec(), header));
                    }
                }
                _ => {}
            }
            sample.extend_from_slice(obu.bytes);
        }
        self.push_sample(&sample, keyframe)
    }

    /// Adds one encoded H.264 frame (an Annex-B access unit). An empty one (a frame the
    /// encoder skipped) lengthens the previous sample so timing is kept.
    pub fn write_access_unit(&mut self, annexb: &[u8]) -> Result<(), Mp4Error> {
        let mut sample = Vec::with_capacity(annexb.len() + 16);
        let mut keyframe = false;
        for nal in nal_units(annexb) {
            match nal_type(nal) {
                Some(NAL_SPS) => {
                    if self.sps.is_none() {
                        self.sps = Some(nal.to_vec());
                    }
                    continue;
                }
                Some(NAL_PPS) => {
                    if self.pps.is_none() {
                        self.pps = Some(nal.to_vec());
                    }
                    continue;
                }
                Some(NAL_AUD) => continue,
                Some(NAL_IDR) => keyframe = true,
                _ => {}
            }
            let len = u32::try_from(nal.len()).map_err(|_| Mp4Error::SampleTooLarge(nal.len()))?;
            sample.extend_from_slice(&len.to_be_bytes());
            sample.extend_from_slice(nal);
        }
        self.push_sample(&sample, keyframe)
    }

    fn push_sample(&mut self, sample: &[u8], keyframe: bool) -> Result<(), Mp4Error> {
        if sample.is_empty() {
            if let Some(last) = self.durations.last_mut() {
                *last += self.sample_duration;
            }
            return Ok(());
        }
        let size =
            u32::try_from(sample.len()).map_err(|_| Mp4Error::SampleTooLarge(sample.len()))?;
        self.out.write_all(sample).map_err(Mp4Error::Write)?;
        self.offsets.push(self.pos);
        self.pos += u64::from(size);
        self.sizes.push(size);
        self.durations.push(self.sample_duration);
        if keyframe {
            self.sync.push(self.sizes.len() as u32);
        }
        Ok(())
    }

    /// Number of samples written so far.
    pub fn samples(&self) -> usize {
        self.sizes.len()
    }

    /// Patches the `mdat` size, writes `moov` and returns the output.
    pub fn finish(mut self) -> Result<W, Mp4Error> {
        let entry = match self.codec {
            Mp4Codec::H264 => {
                let (Some(sps), Some(pps)) = (self.sps.take(), self.pps.take()) else {
                    return Err(Mp4Error::MissingParameterSets);
                };
                let mut c = Vec::new();
                put_avcc(&mut c, &sps, &pps);
                (*b"avc1", *b"avcC", c)
            }
            Mp4Codec::Av1 => {
                let Some((obu, header)) = self.seq.take() else {
                    return Err(Mp4Error::MissingSequenceHeader);
                };
                (*b"av01", *b"av1C", header.av1c(&obu))
            }
        };
        let moov = self.moov(&entry);
        self.out.write_all(&moov).map_err(Mp4Error::Write)?;
        let mdat_size = self.pos - self.mdat_start;
        self.out
            .seek(SeekFrom::Start(self.mdat_start + 8))
            .and_then(|_| self.out.write_all(&mdat_size.to_be_bytes()))
            .and_then(|_| self.out.seek(SeekFrom::End(0)).map(|_| ()))
            .and_then(|_| self.out.flush())
            .map_err(Mp4Error::Write)?;
        Ok(self.out)
    }

    fn moov(&self, entry: &SampleEntry) -> Vec<u8> {
        let media_duration: u64 = self.durations.iter().map(|&d| u64::from(d)).sum();
        let movie_timescale = 1000u32;
        let movie_duration =
            media_duration * u64::from(movie_timescale) / u64::from(self.timescale);
        let mut moov = Vec::new();
        put_box(&mut moov, b"moov", |b| {
            put_full_box(b, b"mvhd", 1, 0, |b| {
                b.extend_from_slice(&[0; 16]); // creation, modification time (64-bit each)
                b.extend_from_slice(&movie_timescale.to_be_bytes());
                b.extend_from_slice(&movie_duration.to_be_bytes());
                b.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
                b.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
                b.extend_from_slice(&[0; 10]);
                put_matrix(b);
                b.extend_from_slice(&[0; 24]);
                b.extend_from_slice(&2u32.to_be_bytes()); // next track id
            });
            put_box(b, b"trak", |b| {
                put_full_box(b, b"tkhd", 1, 3, |b| {
                    b.extend_from_slice(&[0; 16]);
                    b.extend_from_slice(&1u32.to_be_bytes()); // track id
                    b.extend_from_slice(&[0; 4]);
                    b.extend_from_slice(&movie_duration.to_be_bytes());
                    b.extend_from_slice(&[0; 8]);
                    b.extend_from_slice(&[0; 4]); // layer, alternate group
                    b.extend_from_slice(&[0; 4]); // volume, reserved
                    put_matrix(b);
                    b.extend_from_slice(&(u32::from(self.width) << 16).to_be_bytes());
                    b.extend_from_slice(&(u32::from(self.height) << 16).to_be_bytes());
                });
                put_box(b, b"mdia", |b| {
                    put_full_box(b, b"mdhd", 1, 0, |b| {
                        b.extend_from_slice(&[0; 16]);
                        b.extend_from_slice(&self.timescale.to_be_bytes());
                        b.extend_from_slice(&media_duration.to_be_bytes());
                        b.extend_from_slice(&0x55c4u16.to_be_bytes()); // "und"
                        b.extend_from_slice(&[0; 2]);
                    });
                    put_full_box(b, b"hdlr", 0, 0, |b| {
                        b.extend_from_slice(&[0; 4]);
                        b.extend_from_slice(b"vide");
                        b.extend_from_slice(&[0; 12]);
                        b.extend_from_slice(b"VideoHandler\0");
                    });
                    put_box(b, b"minf", |b| {
                        put_full_box(b, b"vmhd", 0, 1, |b| b.extend_from_slice(&[0; 8]));
                        put_box(b, b"dinf", |b| {
                            put_full_box(b, b"dref", 0, 0, |b| {
                                b.extend_from_slice(&1u32.to_be_bytes());
                                put_full_box(b, b"url ", 0, 1, |_| {});
                            });
                        });
                        put_box(b, b"stbl", |b| self.stbl(b, entry));
                    });
                });
            });
        });
        moov
    }

    fn stbl(&self, b: &mut Vec<u8>, (kind, config_kind, config): &SampleEntry) {
        put_full_box(b, b"stsd", 0, 0, |b| {
            b.extend_from_slice(&1u32.to_be_bytes());
            put_box(b, kind, |b| {
                b.extend_from_slice(&[0; 6]);
                b.extend_from_slice(&1u16.to_be_bytes()); // data reference index
                b.extend_from_slice(&[0; 16]);
                b.extend_from_slice(&self.width.to_be_bytes());
                b.extend_from_slice(&self.height.to_be_bytes());
                b.extend_from_slice(&0x0048_0000u32.to_be_bytes()); // 72 dpi
                b.extend_from_slice(&0x0048_0000u32.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&1u16.to_be_bytes()); // frame count
                b.extend_from_slice(&[0; 32]); // compressor name
                b.extend_from_slice(&0x0018u16.to_be_bytes()); // depth
                b.extend_from_slice(&0xffffu16.to_be_bytes());
                put_box(b, config_kind, |b| b.extend_from_slice(config));
            });
        });
        put_full_box(b, b"stts", 0, 0, |b| {
            let mut runs: Vec<(u32, u32)> = Vec::new();
            for &d in &self.durations {
                match runs.last_mut() {
                    Some((count, delta)) if *delta == d => *count += 1,
                    _ => runs.push((1, d)),
                }
            }
            b.extend_from_slice(&(runs.len() as u32).to_be_bytes());
            for (count, delta) in runs {
                b.extend_from_slice(&count.to_be_bytes());
                b.extend_from_slice(&delta.to_be_bytes());
            }
        });
        if self.sync.len() != self.sizes.len() {
            put_full_box(b, b"stss", 0, 0, |b| {
                b.extend_from_slice(&(self.sync.len() as u32).to_be_bytes());
                for s in &self.sync {
                    b.extend_from_slice(&s.to_be_bytes());
                }
            });
        }
        put_full_box(b, b"stsc", 0, 0, |b| {
            b.extend_from_slice(&1u32.to_be_bytes());
            for v in [1u32, 1, 1] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        });
        put_full_box(b, b"stsz", 0, 0, |b| {
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&(self.sizes.len() as u32).to_be_bytes());
            for s in &self.sizes {
                b.extend_from_slice(&s.to_be_bytes());
            }
        });
        if self.pos <= u64::from(u32::MAX) {
            put_full_box(b, b"stco", 0, 0, |b| {
                b.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
                for &o in &self.offsets {
                    b.extend_from_slice(&(o as u32).to_be_bytes());
                }
            });
        } else {
            put_full_box(b, b"co64", 0, 0, |b| {
                b.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
                for &o in &self.offsets {
                    b.extend_from_slice(&o.to_be_bytes());
                }
            });
        }
    }
}

/// A sample entry's type, its configuration box's type and that box's body.
type SampleEntry = ([u8; 4], [u8; 4], Vec<u8>);

/// `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15) from one SPS and one PPS.
fn put_avcc(b: &mut Vec<u8>, sps: &[u8], pps: &[u8]) {
    let profile = sps.get(1).copied().unwrap_or(66);
    b.push(1);
    b.push(profile);
    b.push(sps.get(2).copied().unwrap_or(0));
    b.push(sps.get(3).copied().unwrap_or(0));
    b.push(0xff); // 4-byte NAL lengths
    b.push(0xe1); // one SPS
    b.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    b.extend_from_slice(sps);
    b.push(1);
    b.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    b.extend_from_slice(pps);
    if matches!(profile, 100 | 110 | 122 | 144) {
        b.extend_from_slice(&[0xfc | 1, 0xf8, 0xf8, 0]); // 4:2:0, 8-bit, no SPS extensions
    }
}

fn put_matrix(b: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        b.extend_from_slice(&v.to_be_bytes());
    }
}

fn put_box(b: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(kind);
    body(b);
    let size = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn put_full_box(
    b: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    put_box(b, kind, |b| {
        b.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
        body(b);
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn top_level_boxes(data: &[u8]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut i = 0usize;
        while i + 8 <= data.len() {
            let mut size = u64::from(u32::from_be_bytes(data[i..i + 4].try_into().unwrap()));
            let kind = String::from_utf8_lossy(&data[i + 4..i + 8]).to_string();
            if size == 1 {
                size = u64::from_be_bytes(data[i + 8..i + 16].try_into().unwrap());
            }
            out.push((kind, size));
            i += size as usize;
        }
        assert_eq!(i, data.len(), "boxes must tile the file");
        out
    }

    #[test]
    fn boxes_tile_the_file_and_parameter_sets_are_required() {
        let mut w = Mp4Writer::new(Cursor::new(Vec::new()), 16, 16, 30, 1).unwrap();
        let idr = [
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88,
        ];
        w.write_access_unit(&idr).unwrap();
        w.write_access_unit(&[]).unwrap();
        w.write_access_unit(&[0, 0, 0, 1, 0x41, 0x9a]).unwrap();
        assert_eq!(w.samples(), 2);
        let data = w.finish().unwrap().into_inner();
        let boxes = top_level_boxes(&data);
        let kinds: Vec<_> = boxes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["ftyp", "mdat", "moov"]);
        // mdat: 16-byte header + (4+2) + (4+2) bytes of samples.
        assert_eq!(boxes[1].1, 16 + 6 + 6);

        let w = Mp4Writer::new(Cursor::new(Vec::new()), 16, 16, 30, 1).unwrap();
        assert!(matches!(w.finish(), Err(Mp4Error::MissingParameterSets)));
        assert!(matches!(
            Mp4Writer::new(Cursor::new(Vec::new()), 16, 16, 0, 1),
            Err(Mp4Error::FrameRate { .. })
        ));
    }
}
