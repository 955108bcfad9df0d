//! On-card transcoding: decoder sessions, Decode Frame, Scale Frame, Encode Frame from card
//! frame memory and Release Frame.
//!
//! Pictures between decode, scale and encode stay in the card's frame memory; the host
//! only holds their handles ([`CardFrame`]). Every handle a call returns must be given
//! back with [`Card::release_frame`] (a card reset frees them all). The card is not
//! trusted: a picture size it reports that is odd, zero, over its maximum or not what was
//! asked for is a bad completion.

use std::mem::offset_of;
use std::sync::atomic::Ordering;

use vpu_ffi::{
    vpu_decoder_params, VPU_ADMIN_CREATE_DECODER, VPU_ADMIN_DESTROY_SESSION, VPU_DECODE_FLUSH,
    VPU_ENCODE_CARD_FRAME, VPU_ENCODE_FORCE_IDR, VPU_ENGINE_ANY, VPU_FRAME_HANDLE_NONE,
    VPU_IO_DECODE_FRAME, VPU_IO_ENCODE_FRAME, VPU_IO_RELEASE_FRAME, VPU_IO_SCALE_FRAME,
};

use crate::io::DmaBuffer;
use crate::nvme::{Command, Completion, Status, VendorStatus};

use super::device::{bump, lock, Card, OUTPUT_RETRIES, PTS_HISTORY};
use super::encode::output_limit;
use super::error::CardError;
use super::types::{Codec, FrameInput, Packet, SessionId};

/// Largest access unit [`Card::decode`] sends (the card's limit too).
pub const MAX_ACCESS_UNIT: usize = 16 << 20;

/// What a decoder session decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    pub codec: Codec,
    /// Largest picture the stream may carry; 0: the card's maximum.
    pub max_width: u32,
    pub max_height: u32,
    /// The input's frame rate if known (0/1 otherwise).
    pub fps_num: u32,
    pub fps_den: u32,
}

/// A picture in the card's frame memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CardFrame {
    pub handle: u32,
    pub width: u32,
    pub height: u32,
}

/// Scaling filters of Scale Frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScaleFilter {
    #[default]
    Bilinear,
    Bicubic,
    Lanczos3,
}

impl ScaleFilter {
    /// Every filter.
    pub const ALL: &'static [ScaleFilter] = &[
        ScaleFilter::Bilinear,
        ScaleFilter::Bicubic,
        ScaleFilter::Lanczos3,
    ];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleFilter::Bilinear => "bilinear",
            ScaleFilter::Bicubic => "bicubic",
            ScaleFilter::Lanczos3 => "lanczos3",
        }
    }

    /// The filter named `s`, if any.
    pub fn parse(s: &str) -> Option<ScaleFilter> {
        Self::ALL.iter().copied().find(|f| f.as_str() == s)
    }

    fn code(self) -> u32 {
        match self {
            ScaleFilter::Bilinear => vpu_ffi::VPU_SCALE_FILTER_BILINEAR,
            ScaleFilter::Bicubic => vpu_ffi::VPU_SCALE_FILTER_BICUBIC,
            ScaleFilter::Lanczos3 => vpu_ffi::VPU_SCALE_FILTER_LANCZOS3,
        }
    }
}

fn decoder_params(cfg: &DecoderConfig) -> Vec<u8> {
    let mut b = vec![0u8; std::mem::size_of::<vpu_decoder_params>()];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(
        offset_of!(vpu_decoder_params, codec),
        &[cfg.codec.code() as u8],
    );
    put(
        offset_of!(vpu_decoder_params, max_width),
        &(cfg.max_width.min(u32::from(u16::MAX)) as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_decoder_params, max_height),
        &(cfg.max_height.min(u32::from(u16::MAX)) as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_decoder_params, engine_hint),
        &(VPU_ENGINE_ANY as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_decoder_params, fps_num),
        &cfg.fps_num.to_le_bytes(),
    );
    put(
        offset_of!(vpu_decoder_params, fps_den),
        &cfg.fps_den.to_le_bytes(),
    );
    b
}

impl Card {
    fn any_queue(&self) -> usize {
        let queues = self.controller.io_queue_count().max(1);
        self.next_queue.fetch_add(1, Ordering::Relaxed) % queues
    }

    /// A picture the card reports in a completion, checked.
    fn reported_frame(
        &self,
        session: u32,
        c: &Completion,
        what: &str,
    ) -> Result<Option<CardFrame>, CardError> {
        if c.dw0 == VPU_FRAME_HANDLE_NONE {
            return Ok(None);
        }
        let (width, height) = (c.dw1 & 0xffff, c.dw1 >> 16);
        let id = &self.identity;
        if width == 0
            || height == 0
            || width % 2 != 0
            || height % 2 != 0
            || width > u32::from(id.max_width)
            || height > u32::from(id.max_height)
        {
            return Err(
                self.bad_completion(session, format!("{what}: picture of {width}x{height}"))
            );
        }
        Ok(Some(CardFrame {
            handle: c.dw0,
            width,
            height,
        }))
    }

    /// Creates a decoder session.
    #[tracing::instrument(level = "debug", skip_all, fields(card = %self.device))]
    pub async fn create_decoder(&self, cfg: &DecoderConfig) -> Result<SessionId, CardError> {
        if self.identity.decode_engines == 0 {
            return Err(CardError::InvalidConfig(format!(
                "{} has no decode engine",
                self.device
            )));
        }
        let params = decoder_params(cfg);
        let buf = self
            .admin_data
            .get(params.len())
            .map_err(|e| self.dma_err(e))?;
        buf.write(0, &params);
        let cmd = Command::new(VPU_ADMIN_CREATE_DECODER).data(&buf, 0, params.len());
        let c = self
            .controller
            .admin(cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || "create decoder".into())?;
        lock(&self.decoders).insert(c.dw0);
        tracing::debug!(card = %self.device, session = c.dw0, "decoder created");
        Ok(SessionId(c.dw0))
    }

    /// Destroys a decoder session; its commands in flight complete as aborted.
    pub async fn destroy_decoder(&self, id: SessionId) -> Result<(), CardError> {
        let cmd = Command::new(VPU_ADMIN_DESTROY_SESSION).cdw10(id.0);
        let result = self.controller.admin(cmd, self.opts.command_timeout).await;
        lock(&self.decoders).remove(&id.0);
        let c = result?;
        self.status(&c, || format!("destroy decoder {id}"))
    }

    fn decoder_queue(&self, id: SessionId) -> Result<usize, CardError> {
        if !lock(&self.decoders).contains(&id.0) {
            return Err(CardError::Rejected {
                device: self.device.clone(),
                status: VendorStatus::SessionNotFound,
                what: format!("decoder {id}"),
            });
        }
        Ok(id.0 as usize % self.controller.io_queue_count().max(1))
    }

    /// Decodes one access unit; the picture it completes (in display order), if any.
    pub async fn decode(
        &self,
        id: SessionId,
        unit: FrameInput<'_>,
        pts: u64,
    ) -> Result<Option<CardFrame>, CardError> {
        let queue = self.decoder_queue(id)?;
        let invalid = |reason: String| CardError::InvalidFrame {
            device: self.device.clone(),
            session: id.0,
            reason,
        };
        let copied;
        let (input, offset, len): (&DmaBuffer, usize, usize) = match unit {
            FrameInput::Bytes(bytes) => {
                if bytes.is_empty() || bytes.len() > MAX_ACCESS_UNIT {
                    return Err(invalid(format!("access unit of {} bytes", bytes.len())));
                }
                copied = self.inputs.get(bytes.len()).map_err(|e| self.dma_err(e))?;
                if !copied.write(0, bytes) {
                    return Err(invalid("input buffer not writable".into()));
                }
                (&copied, 0, bytes.len())
            }
            FrameInput::Dma {
                buffer,
                offset,
                len,
            } => {
                if len == 0
                    || len > MAX_ACCESS_UNIT
                    || offset.checked_add(len).is_none_or(|end| end > buffer.len())
                {
                    return Err(invalid(format!(
                        "access unit {offset}+{len} in a buffer of {}",
                        buffer.len()
                    )));
                }
                (buffer, offset, len)
            }
        };
        let cmd = Command::new(VPU_IO_DECODE_FRAME)
            .cdw10(id.0)
            .cdw12(pts as u32)
            .cdw13((pts >> 32) as u32)
            .cdw15(len as u32)
            .data(input, offset, len);
        let c = self
            .controller
            .io(queue, cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("decode on decoder {id} pts {pts}"))?;
        self.reported_frame(id.0, &c, "decode")
    }

    /// The next picture a decoder still holds at the end of the stream; `None` once empty.
    pub async fn flush_decoder(&self, id: SessionId) -> Result<Option<CardFrame>, CardError> {
        let queue = self.decoder_queue(id)?;
        let cmd = Command::new(VPU_IO_DECODE_FRAME)
            .cdw10(id.0)
            .cdw11(VPU_DECODE_FLUSH);
        let c = self
            .controller
            .io(queue, cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("flush decoder {id}"))?;
        self.reported_frame(id.0, &c, "decoder flush")
    }

    /// A new picture of `width` × `height` scaled from `src` (which stays valid).
    pub async fn scale(
        &self,
        src: CardFrame,
        width: u32,
        height: u32,
        filter: ScaleFilter,
    ) -> Result<CardFrame, CardError> {
        if width > u32::from(u16::MAX) || height > u32::from(u16::MAX) {
            return Err(CardError::InvalidConfig(format!(
                "scaled size {width}x{height}"
            )));
        }
        let cmd = Command::new(VPU_IO_SCALE_FRAME)
            .cdw10(src.handle)
            .cdw11(width | (height << 16))
            .cdw12(filter.code());
        let c = self
            .controller
            .io(self.any_queue(), cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || {
            format!("scale frame {} to {width}x{height}", src.handle)
        })?;
        match self.reported_frame(0, &c, "scale")? {
            Some(f) if f.width == width && f.height == height => Ok(f),
            other => {
                Err(self.bad_completion(0, format!("scale to {width}x{height} answered {other:?}")))
            }
        }
    }

    /// Frees a picture of frame memory.
    pub async fn release_frame(&self, frame: CardFrame) -> Result<(), CardError> {
        let cmd = Command::new(VPU_IO_RELEASE_FRAME).cdw10(frame.handle);
        let c = self
            .controller
            .io(self.any_queue(), cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("release frame {}", frame.handle))
    }

    /// Encodes a picture of frame memory on encode session `id` (whose size it must have).
    pub async fn encode_card_frame(
        &self,
        id: SessionId,
        frame: CardFrame,
        pts: u64,
        force_keyframe: bool,
    ) -> Result<Packet, CardError> {
        let state = self.session(id)?;
        let seq = {
            let mut h = lock(&state.history);
            let seq = h.next_seq;
            h.next_seq += 1;
            h.pts.push_back((seq, pts));
            if h.pts.len() > PTS_HISTORY {
                h.pts.pop_front();
            }
            seq
        };
        let mut flags = VPU_ENCODE_CARD_FRAME;
        if force_keyframe {
            flags |= VPU_ENCODE_FORCE_IDR;
        }
        let max_out = output_limit(state.frame_size);
        let mut out_size = state.out_size.load(Ordering::Relaxed);
        for _ in 0..=OUTPUT_RETRIES {
            let out = self.outputs.get(out_size).map_err(|e| self.dma_err(e))?;
            let capacity = out.len().min(u32::MAX as usize);
            let cmd = Command::new(VPU_IO_ENCODE_FRAME)
                .cdw10(id.0)
                .cdw11(flags)
                .cdw12(pts as u32)
                .cdw13((pts >> 32) as u32)
                .cdw14(capacity as u32)
                .cdw15(frame.handle)
                .metadata(&out, 0);
            let c = self
                .controller
                .io(state.queue, cmd, self.opts.command_timeout)
                .await?;
            if c.status == Status::Vendor(VendorStatus::OutputTooSmall) {
                if out_size >= max_out {
                    break;
                }
                bump(&self.metrics.output_retries, 1);
                out_size = (out_size * 2).min(max_out);
                state.out_size.fetch_max(out_size, Ordering::Relaxed);
                continue;
            }
            self.status(&c, || {
                format!("encode frame {} on session {id} pts {pts}", frame.handle)
            })?;
            return self.packet(&state, id, &c, &out, capacity, seq, pts);
        }
        bump(&self.metrics.rejected, 1);
        Err(CardError::OutputTooSmall {
            device: self.device.clone(),
            session: id.0,
            size: out_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_parameters_sit_at_the_header_offsets() {
        let b = decoder_params(&DecoderConfig {
            codec: Codec::H264,
            max_width: 1920,
            max_height: 1080,
            fps_num: 30,
            fps_den: 1,
        });
        assert_eq!(b.len(), 32);
        assert_eq!(b[0], 0);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 1920);
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 1080);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0xffff);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 30);
    }

    #[test]
    fn filters_round_trip_by_name() {
        for f in ScaleFilter::ALL {
            assert_eq!(ScaleFilter::parse(f.as_str()), Some(*f));
        }
        assert_eq!(ScaleFilter::parse("nearest"), None);
    }
}
