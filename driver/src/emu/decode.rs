//! Decoder sessions: the persistent `openh264` decoder of each, and Decode Frame.
//!
//! The access unit is read from host memory through the command's PRPs; the picture the
//! decoder outputs is copied into a card frame (tight I420), never back to the host.
//! Error concealment is off, so a corrupt or truncated bitstream is an error
//! (`BITSTREAM_ERROR`), after which the session's decoder is unusable: a decoder that
//! lost its references would only produce garbage. Pictures are taken out of the decoder
//! in display order: with reordering (B-frames) a picture comes out some access units
//! later, and Flush takes out the ones still held at the end.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use openh264::decoder::{DecodeOptions, DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;
use vpu_ffi::*;

use super::frames::CardFrame;
use super::lock;
use super::queues::Status;

/// Decoder session counters.
#[derive(Debug, Default)]
pub(super) struct DecoderCounters {
    pub units_in: AtomicU64,
    pub pictures_out: AtomicU64,
    pub errors: AtomicU64,
}

struct State {
    /// `None` once a bitstream error broke it.
    decoder: Option<Decoder>,
    /// Pictures taken out at a flush, handed out one per Flush command.
    flushed: VecDeque<CardFrame>,
}

/// One decoder session on a decode engine.
pub(super) struct DecoderSession {
    pub id: u32,
    pub engine: u8,
    pub max_width: usize,
    pub max_height: usize,
    pub destroyed: AtomicBool,
    pub counters: DecoderCounters,
    state: Mutex<State>,
}

impl std::fmt::Debug for DecoderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderSession")
            .field("id", &self.id)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Copies a decoded picture into a tight I420 card frame; `None` when its size is odd,
/// which a 4:2:0 card frame cannot hold.
fn to_card_frame(pic: &DecodedYUV<'_>) -> Option<CardFrame> {
    let (w, h) = pic.dimensions();
    if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
        return None;
    }
    let (sy, su, sv) = pic.strides();
    let mut frame = CardFrame::new(w, h);
    let (y, u, v) = frame.planes_mut();
    copy_plane(pic.y(), sy, y, w, h)?;
    copy_plane(pic.u(), su, u, w / 2, h / 2)?;
    copy_plane(pic.v(), sv, v, w / 2, h / 2)?;
    Some(frame)
}

fn copy_plane(src: &[u8], stride: usize, dst: &mut [u8], w: usize, h: usize) -> Option<()> {
    if stride < w || src.len() < stride * (h - 1) + w {
        return None;
    }
    for (row, out) in src.chunks(stride).zip(dst.chunks_exact_mut(w)).take(h) {
        out.copy_from_slice(row.get(..w)?);
    }
    Some(())
}

impl DecoderSession {
    pub fn new(
        id: u32,
        engine: u8,
        max_width: usize,
        max_height: usize,
    ) -> Result<DecoderSession, Status> {
        // Flushing is left to the Flush command: flushing after every access unit would
        // hand out pictures before reordering is done.
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder =
            Decoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| {
                tracing::error!(error = %e, "creating the decoder failed");
                Status::generic(VPU_SC_INTERNAL_ERROR)
            })?;
        Ok(DecoderSession {
            id,
            engine,
            max_width,
            max_height,
            destroyed: AtomicBool::new(false),
            counters: DecoderCounters::default(),
            state: Mutex::new(State {
                decoder: Some(decoder),
                flushed: VecDeque::new(),
            }),
        })
    }

    fn check(&self, frame: Option<CardFrame>, oversize: bool) -> Result<CardFrame, Status> {
        let Some(frame) = frame else {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Err(Status::vendor(VPU_SC_UNSUPPORTED_FORMAT));
        };
        if oversize || frame.width > self.max_width || frame.height > self.max_height {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Err(Status::vendor(VPU_SC_TOO_LARGE));
        }
        self.counters.pictures_out.fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }

    /// Decodes one access unit; the picture it completes, if any.
    pub fn decode(&self, unit: &[u8]) -> Result<Option<CardFrame>, Status> {
        self.counters.units_in.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        let Some(decoder) = st.decoder.as_mut() else {
            return Err(Status::vendor(VPU_SC_BITSTREAM_ERROR));
        };
        let opts = DecodeOptions::new().flush_after_decode(Flush::NoFlush);
        let picture = match decoder.decode_with_options(unit, opts) {
            Ok(Some(pic)) => {
                let (w, h) = pic.dimensions();
                Some((
                    to_card_frame(&pic),
                    w > self.max_width || h > self.max_height,
                ))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "bitstream error");
                st.decoder = None;
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(Status::vendor(VPU_SC_BITSTREAM_ERROR));
            }
        };
        match picture {
            None => Ok(None),
            Some((frame, oversize)) => self.check(frame, oversize).map(Some),
        }
    }

    /// The next picture the decoder still holds (end of stream); `None` when it is empty.
    pub fn flush(&self) -> Result<Option<CardFrame>, Status> {
        let mut st = lock(&self.state);
        let State { decoder, flushed } = &mut *st;
        if let Some(d) = decoder.as_mut() {
            let pictures = match d.flush_remaining() {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(session = self.id, error = %e, "bitstream error at flush");
                    *decoder = None;
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(Status::vendor(VPU_SC_BITSTREAM_ERROR));
                }
            };
            let mut frames = Vec::with_capacity(pictures.len());
            for pic in &pictures {
                let (w, h) = pic.dimensions();
                frames.push((
                    to_card_frame(pic),
                    w > self.max_width || h > self.max_height,
                ));
            }
            drop(pictures);
            for (frame, oversize) in frames {
                let frame = self.check(frame, oversize)?;
                flushed.push_back(frame);
            }
        }
        Ok(st.flushed.pop_front())
    }
}
