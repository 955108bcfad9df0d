//! Where a ladder's packets go: one MP4 file per rendition, and with HLS one directory of
//! transport stream segments and a media playlist per rendition plus the master playlist.
//!
//! Packets of the renditions arrive interleaved and each rendition's in pts order; they are
//! consumed in lockstep, one frame of every rendition at a time, so a segment boundary is
//! decided knowing every rendition's packet for that frame: a new segment begins only at a
//! frame that is an IDR picture in every rendition, once the open segment has lasted the
//! target duration. A rendition ahead of the others waits in a queue (bounded).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use vpud_client::annexb::{is_idr, nal_type, nal_units, NAL_SPS};

use super::hls::{
    master_playlist, write_atomically, HlsError, HlsRendition, Variant, MASTER_PLAYLIST,
    MEDIA_PLAYLIST,
};
use super::ladder::Rendition;
use super::sps::parse_sps;
use crate::mp4::{Mp4Error, Mp4Writer};

/// Packets one rendition may run ahead of the slowest before the ladder is refused.
pub const MAX_SKEW: usize = 4096;

/// Errors of the ladder's output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The output directory or a file could not be created.
    #[error("creating {path} failed")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing an MP4 file failed.
    #[error("writing mp4 {path} failed")]
    Mp4 {
        path: PathBuf,
        #[source]
        source: Mp4Error,
    },
    /// Writing HLS failed.
    #[error(transparent)]
    Hls(#[from] HlsError),
    /// A size too large for an MP4 track header.
    #[error("{width}x{height} is too large for an mp4 track header")]
    TooLarge { width: u32, height: u32 },
    /// A packet for a rendition the ladder does not have.
    #[error("a packet for rendition {index}; the ladder has {count}")]
    NoSuchRendition { index: usize, count: usize },
    /// The renditions' packets do not line up frame by frame.
    #[error("renditions out of step at frame {frame}: rendition {rendition} has pts {pts}, rendition 0 has pts {first}")]
    OutOfStep {
        frame: u64,
        rendition: usize,
        pts: u64,
        first: u64,
    },
    /// One rendition ran too far ahead of another.
    #[error("rendition {rendition} is more than {MAX_SKEW} frames ahead of another")]
    TooFarAhead { rendition: usize },
    /// The ladder ended with renditions of different lengths.
    #[error("rendition {rendition} has {frames} frames, rendition 0 has {first}")]
    Unequal {
        rendition: usize,
        frames: u64,
        first: u64,
    },
}

/// One encoded frame of one rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub pts: u64,
    /// Annex-B bytes; empty for a frame the encoder skipped.
    pub data: Vec<u8>,
}

/// What was written for one rendition.
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionSummary {
    pub rendition: Rendition,
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub mp4: PathBuf,
    /// HLS segments written (0 without HLS).
    pub segments: usize,
}

#[derive(Debug)]
struct Out {
    rendition: Rendition,
    mp4_path: PathBuf,
    mp4: Mp4Writer<std::io::BufWriter<std::fs::File>>,
    hls: Option<HlsRendition>,
    queue: VecDeque<Packet>,
    codecs: Option<String>,
    frames: u64,
    keyframes: u64,
    bytes: u64,
}

/// The files of one ladder.
#[derive(Debug)]
pub struct LadderSink {
    dir: PathBuf,
    fps: (u32, u32),
    outs: Vec<Out>,
    /// Target segment duration, seconds, with HLS.
    segment_seconds: Option<f64>,
    /// Frames written in every rendition.
    frame: u64,
    segment_start: u64,
}

impl LadderSink {
    /// Creates `dir` and the files of `renditions` in it: `NAME.mp4` each, and with
    /// `segment_seconds` the HLS tree `master.m3u8`, `NAME/index.m3u8`, `NAME/segNNNNN.ts`.
    pub fn create(
        dir: &Path,
        renditions: &[Rendition],
        fps: (u32, u32),
        segment_seconds: Option<f64>,
    ) -> Result<LadderSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(|source| SinkError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut outs = Vec::with_capacity(renditions.len());
        for r in renditions {
            let mp4_path = dir.join(format!("{}.mp4", r.name));
            let file = std::fs::File::create(&mp4_path).map_err(|source| SinkError::Create {
                path: mp4_path.clone(),
                source,
            })?;
            let mp4_err = |source| SinkError::Mp4 {
                path: mp4_path.clone(),
                source,
            };
            let (w, h) = (u16::try_from(r.width), u16::try_from(r.height));
            let (Ok(w), Ok(h)) = (w, h) else {
                return Err(SinkError::TooLarge {
                    width: r.width,
                    height: r.height,
                });
            };
            let mp4 = Mp4Writer::new(
                std::io::BufWriter::with_capacity(1 << 20, file),
                w,
                h,
                fps.0,
                fps.1,
            )
            .map_err(mp4_err)?;
            let hls = match segment_seconds {
                Some(_) => Some(HlsRendition::create(&dir.join(&r.name), fps)?),
                None => None,
            };
            outs.push(Out {
                rendition: r.clone(),
                mp4_path,
                mp4,
                hls,
                queue: VecDeque::new(),
                codecs: None,
                frames: 0,
                keyframes: 0,
                bytes: 0,
            });
        }
        Ok(LadderSink {
            dir: dir.to_path_buf(),
            fps,
            outs,
            segment_seconds,
            frame: 0,
            segment_start: 0,
        })
    }

    /// Frames written in every rendition so far.
    pub fn frames(&self) -> u64 {
        self.frame
    }

    /// Takes one packet of rendition `index` and writes every frame now complete in all
    /// renditions.
    pub fn push(&mut self, index: usize, packet: Packet) -> Result<(), SinkError> {
        let count = self.outs.len();
        let out = self
            .outs
            .get_mut(index)
            .ok_or(SinkError::NoSuchRendition { index, count })?;
        if out.queue.len() >= MAX_SKEW {
            return Err(SinkError::TooFarAhead { rendition: index });
        }
        out.queue.push_back(packet);
        while self.outs.iter().all(|o| !o.queue.is_empty()) {
            let packets: Vec<Packet> = self
                .outs
                .iter_mut()
                .filter_map(|o| o.queue.pop_front())
                .collect();
            self.write_frame(packets)?;
        }
        Ok(())
    }

    fn write_frame(&mut self, packets: Vec<Packet>) -> Result<(), SinkError> {
        let frame = self.frame;
        let first = packets.first().map_or(0, |p| p.pts);
        if let Some((rendition, p)) = packets.iter().enumerate().find(|(_, p)| p.pts != first) {
            return Err(SinkError::OutOfStep {
                frame,
                rendition,
                pts: p.pts,
                first,
            });
        }
        if let Some(target) = self.segment_seconds {
            let all_idr = packets.iter().all(|p| is_idr(&p.data));
            let elapsed =
                (frame - self.segment_start) as f64 * f64::from(self.fps.1) / f64::from(self.fps.0);
            if frame == 0 || (all_idr && elapsed >= target - 1e-6) {
                for o in &mut self.outs {
                    if let Some(h) = &mut o.hls {
                        h.cut(frame)?;
                    }
                }
                if frame > 0 {
                    self.write_playlists(false)?;
                }
                self.segment_start = frame;
            }
        }
        for (o, p) in self.outs.iter_mut().zip(packets) {
            let idr = is_idr(&p.data);
            if idr && o.codecs.is_none() {
                o.codecs = nal_units(&p.data)
                    .into_iter()
                    .find(|n| nal_type(n) == Some(NAL_SPS))
                    .and_then(|n| parse_sps(n).ok())
                    .map(|s| s.codec_string());
            }
            o.frames += 1;
            o.keyframes += u64::from(idr);
            o.bytes += p.data.len() as u64;
            o.mp4
                .write_access_unit(&p.data)
                .map_err(|source| SinkError::Mp4 {
                    path: o.mp4_path.clone(),
                    source,
                })?;
            if let Some(h) = &mut o.hls {
                h.write(frame, &p.data, idr)?;
            }
        }
        self.frame += 1;
        Ok(())
    }

    fn write_playlists(&self, ended: bool) -> Result<(), SinkError> {
        let Some(target) = self.segment_seconds else {
            return Ok(());
        };
        let mut variants = Vec::new();
        for o in &self.outs {
            let Some(h) = &o.hls else { continue };
            h.write_playlist(target, ended)?;
            let (bandwidth, average) = h.bandwidth().unwrap_or((
                u64::from(o.rendition.bitrate),
                u64::from(o.rendition.bitrate),
            ));
            variants.push(Variant {
                uri: format!("{}/{MEDIA_PLAYLIST}", o.rendition.name),
                bandwidth,
                average_bandwidth: average,
                width: o.rendition.width,
                height: o.rendition.height,
                // Constrained Baseline 3.1 until an SPS says otherwise.
                codecs: o.codecs.clone().unwrap_or_else(|| "avc1.42c01f".into()),
                fps: f64::from(self.fps.0) / f64::from(self.fps.1),
            });
        }
        // Highest bandwidth first: the order players list them in.
        variants.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
        write_atomically(&self.dir.join(MASTER_PLAYLIST), &master_playlist(&variants))?;
        Ok(())
    }

    /// Finishes every file once all packets are in; every rendition must have had the same
    /// number of frames.
    pub fn finish(mut self) -> Result<Vec<RenditionSummary>, SinkError> {
        let first = self.frame + self.outs.first().map_or(0, |o| o.queue.len() as u64);
        for (rendition, o) in self.outs.iter().enumerate() {
            let frames = self.frame + o.queue.len() as u64;
            if frames != first {
                return Err(SinkError::Unequal {
                    rendition,
                    frames,
                    first,
                });
            }
        }
        let end = self.frame;
        for o in &mut self.outs {
            if let Some(h) = &mut o.hls {
                h.close_segment(end)?;
            }
        }
        self.write_playlists(true)?;
        let mut summaries = Vec::with_capacity(self.outs.len());
        for o in self.outs {
            o.mp4.finish().map_err(|source| SinkError::Mp4 {
                path: o.mp4_path.clone(),
                source,
            })?;
            summaries.push(RenditionSummary {
                rendition: o.rendition,
                frames: o.frames,
                keyframes: o.keyframes,
                bytes: o.bytes,
                mp4: o.mp4_path,
                segments: o.hls.as_ref().map_or(0, |h| h.segments().len()),
            });
        }
        Ok(summaries)
    }
}
