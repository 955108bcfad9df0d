//! [`Card`]: a VPU card opened over the NVMe transport, its sessions and commands.

use std::collections::{HashMap, VecDeque};
use std::mem::offset_of;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vpu_ffi::{
    vpu_engine_log, vpu_session_log, vpu_session_params, VPU_ADMIN_CREATE_SESSION,
    VPU_ADMIN_DESTROY_SESSION, VPU_ADMIN_GET_LOG_PAGE, VPU_ADMIN_RECONFIGURE_SESSION,
    VPU_ENCODE_FORCE_IDR, VPU_IO_ENCODE_FRAME, VPU_IO_FLUSH_SESSION, VPU_IO_NOP, VPU_LOG_ENGINE,
    VPU_LOG_LSI_SHIFT, VPU_LOG_NUMDL_SHIFT, VPU_LOG_SESSION, VPU_MAX_ENGINES, VPU_RECONFIG_BITRATE,
    VPU_RECONFIG_FORCE_IDR, VPU_RECONFIG_FRAMERATE, VPU_SESSION_LOW_LATENCY,
};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer, DmaDirection, HostRegion};
use crate::nvme::{
    read_struct, Command, Completion, Controller, ControllerOptions, NvmeMetricsSnapshot, Status,
    VendorStatus,
};

use super::encoded::{check_encoded, BadEncoded};
use super::error::CardError;
use super::identity::CardIdentity;
use super::pool::BufferPool;
use super::types::{
    CardOptions, EngineStats, FrameInput, Packet, Reconfigure, SessionConfig, SessionId,
    SessionStats,
};

/// Spare buffers each pool keeps.
const POOL_SPARES: usize = 64;
/// Recent input timestamps kept per session to attribute reordered output.
const PTS_HISTORY: usize = 256;
/// Output buffer growth steps on OUTPUT_TOO_SMALL before giving up.
const OUTPUT_RETRIES: u32 = 4;

/// Counters of the card layer (the transport's are in [`Card::nvme_metrics`]).
#[derive(Debug, Default)]
pub struct CardMetrics {
    /// Frames encoded successfully.
    pub frames: AtomicU64,
    /// Bitstream bytes received.
    pub bytes: AtomicU64,
    /// Completions the device got wrong at this layer (byte count over the buffer,
    /// unknown frame type, impossible input lag).
    pub bad_completions: AtomicU64,
    /// Requests the card rejected with a vendor or generic error status.
    pub rejected: AtomicU64,
    /// Encodes retried with a larger output buffer.
    pub output_retries: AtomicU64,
}

/// A copy of [`CardMetrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CardMetricsSnapshot {
    pub frames: u64,
    pub bytes: u64,
    pub bad_completions: u64,
    pub rejected: u64,
    pub output_retries: u64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What the driver remembers of a session.
#[derive(Debug)]
struct SessionState {
    config: Mutex<SessionConfig>,
    frame_size: usize,
    queue: usize,
    /// Output buffer size to try first; grows on OUTPUT_TOO_SMALL.
    out_size: AtomicUsize,
    history: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    next_seq: u64,
    pts: VecDeque<(u64, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A VPU card, opened: the video command set over one NVMe controller.
#[derive(Debug)]
pub struct Card {
    io: Arc<dyn DeviceIo>,
    device: String,
    controller: Arc<Controller>,
    identity: CardIdentity,
    opts: CardOptions,
    sessions: Mutex<HashMap<u32, Arc<SessionState>>>,
    inputs: BufferPool,
    outputs: BufferPool,
    metrics: CardMetrics,
    next_queue: AtomicUsize,
}

impl Card {
    /// Brings the controller up and identifies the card; `NotVpu` for a plain NVMe
    /// controller (which is shut down again).
    #[tracing::instrument(skip_all, fields(card = %io.info().name))]
    pub async fn open(io: Arc<dyn DeviceIo>, opts: CardOptions) -> Result<Arc<Card>, CardError> {
        let device = io.info().name.clone();
        let controller = Controller::enable(
            Arc::clone(&io),
            ControllerOptions {
                io_queues: opts.io_queues,
                queue_depth: opts.queue_depth,
                polling: opts.polling,
                admin_timeout: opts.command_timeout,
            },
        )
        .await?;
        let identify = controller.identify_controller().await?;
        let identity = match CardIdentity::from_identify(&device, &identify) {
            Ok(id) => id,
            Err(e) => {
                if let Err(se) = controller.shutdown().await {
                    tracing::warn!(card = %device, error = %se, "shutting down a non-VPU controller failed");
                }
                return Err(e);
            }
        };
        tracing::info!(card = %device, model = %identity.model, serial = %identity.serial,
            engines = identity.encode_engines, "card opened");
        Ok(Arc::new(Card {
            inputs: BufferPool::new(Arc::clone(&io), POOL_SPARES),
            outputs: BufferPool::new(Arc::clone(&io), POOL_SPARES),
            io,
            device,
            controller,
            identity,
            opts,
            sessions: Mutex::new(HashMap::new()),
            metrics: CardMetrics::default(),
            next_queue: AtomicUsize::new(0),
        }))
    }

    pub fn identity(&self) -> &CardIdentity {
        &self.identity
    }

    pub fn device(&self) -> &Arc<dyn DeviceIo> {
        &self.io
    }

    /// The NVMe transport underneath (raw commands, transport metrics).
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// Counters of the card layer.
    pub fn metrics(&self) -> CardMetricsSnapshot {
        let m = &self.metrics;
        CardMetricsSnapshot {
            frames: m.frames.load(Ordering::Relaxed),
            bytes: m.bytes.load(Ordering::Relaxed),
            bad_completions: m.bad_completions.load(Ordering::Relaxed),
            rejected: m.rejected.load(Ordering::Relaxed),
            output_retries: m.output_retries.load(Ordering::Relaxed),
        }
    }

    /// Counters of the transport.
    pub fn nvme_metrics(&self) -> NvmeMetricsSnapshot {
        self.controller.metrics().snapshot()
    }

    /// True once the controller reported a fatal status.
    pub fn fatal(&self) -> bool {
        self.controller.fatal()
    }

    fn dma_err(&self, source: crate::io::IoError) -> CardError {
        CardError::Io {
            device: self.device.clone(),
            source,
        }
    }

    /// Turns a completion's status into a result, counting rejections.
    fn status(&self, c: &Completion, what: impl FnOnce() -> String) -> Result<(), CardError> {
        match c.status {
            Status::Success => Ok(()),
            Status::Vendor(status) => {
                bump(&self.metrics.rejected, 1);
                Err(CardError::Rejected {
                    device: self.device.clone(),
                    status,
                    what: what(),
                })
            }
            status => {
                bump(&self.metrics.rejected, 1);
                Err(CardError::CommandFailed {
                    device: self.device.clone(),
                    status,
                    what: what(),
                })
            }
        }
    }

    fn session(&self, id: SessionId) -> Result<Arc<SessionState>, CardError> {
        lock(&self.sessions)
            .get(&id.0)
            .cloned()
            .ok_or_else(|| CardError::Rejected {
                device: self.device.clone(),
                status: VendorStatus::SessionNotFound,
                what: format!("session {id}"),
            })
    }

    fn bad_completion(&self, session: u32, reason: String) -> CardError {
        bump(&self.metrics.bad_completions, 1);
        tracing::warn!(card = %self.device, session, %reason, "rejected a completion");
        CardError::BadCompletion {
            device: self.device.clone(),
            session,
            reason,
        }
    }

    /// Creates an encode session on the card.
    #[tracing::instrument(skip_all, fields(card = %self.device))]
    pub async fn create_session(&self, cfg: &SessionConfig) -> Result<SessionId, CardError> {
        cfg.validate(&self.identity)?;
        let params = session_params(cfg);
        let buf = self
            .io
            .alloc_dma(params.len())
            .map_err(|e| self.dma_err(e))?;
        buf.write(0, &params);
        let cmd = Command::new(VPU_ADMIN_CREATE_SESSION).data(&buf, 0, params.len());
        let c = self
            .controller
            .admin(cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || "create session".into())?;
        let id = c.dw0;
        let queues = self.controller.io_queue_count().max(1);
        let state = Arc::new(SessionState {
            frame_size: cfg.frame_size(),
            queue: id as usize % queues,
            out_size: AtomicUsize::new(initial_output_size(cfg.frame_size())),
            config: Mutex::new(cfg.clone()),
            history: Mutex::new(History::default()),
        });
        if lock(&self.sessions).insert(id, state).is_some() {
            tracing::warn!(card = %self.device, session = id, "card reused a live session id");
        }
        tracing::info!(card = %self.device, session = id, width = cfg.width, height = cfg.height,
            bitrate = cfg.bitrate, "session created");
        Ok(SessionId(id))
    }

    /// Destroys a session; frames still in flight complete as aborted.
    #[tracing::instrument(skip_all, fields(card = %self.device, session = id.0))]
    pub async fn destroy_session(&self, id: SessionId) -> Result<(), CardError> {
        let cmd = Command::new(VPU_ADMIN_DESTROY_SESSION).cdw10(id.0);
        let result = self.controller.admin(cmd, self.opts.command_timeout).await;
        lock(&self.sessions).remove(&id.0);
        let c = result?;
        self.status(&c, || format!("destroy session {id}"))
    }

    /// Changes bitrate or frame rate, or forces a keyframe, from the next frame on.
    pub async fn reconfigure(&self, id: SessionId, change: &Reconfigure) -> Result<(), CardError> {
        let state = self.session(id)?;
        let mut flags = 0;
        let mut cmd = Command::new(VPU_ADMIN_RECONFIGURE_SESSION).cdw10(id.0);
        if change.force_keyframe {
            flags |= VPU_RECONFIG_FORCE_IDR;
        }
        if let Some(bitrate) = change.bitrate {
            if bitrate == 0 {
                return Err(CardError::InvalidConfig("bitrate 0".into()));
            }
            flags |= VPU_RECONFIG_BITRATE;
            cmd = cmd.cdw12(bitrate);
        }
        if let Some((num, den)) = change.framerate {
            if num == 0 || den == 0 {
                return Err(CardError::InvalidConfig(format!("frame rate {num}/{den}")));
            }
            flags |= VPU_RECONFIG_FRAMERATE;
            cmd = cmd.cdw13(num).cdw14(den);
        }
        let c = self
            .controller
            .admin(cmd.cdw11(flags), self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("reconfigure session {id}"))?;
        let mut cfg = lock(&state.config);
        if let Some(b) = change.bitrate {
            cfg.bitrate = b;
        }
        if let Some((n, d)) = change.framerate {
            cfg.fps_num = n;
            cfg.fps_den = d;
        }
        Ok(())
    }

    /// Encodes one frame and returns the card's output for it.
    pub async fn encode(
        &self,
        id: SessionId,
        frame: FrameInput<'_>,
        pts: u64,
        force_keyframe: bool,
    ) -> Result<Packet, CardError> {
        let state = self.session(id)?;
        let invalid = |reason: String| CardError::InvalidFrame {
            device: self.device.clone(),
            session: id.0,
            reason,
        };
        let copied;
        let (input, offset, len): (&DmaBuffer, usize, usize) = match frame {
            FrameInput::Bytes(bytes) => {
                if bytes.len() != state.frame_size {
                    return Err(invalid(format!(
                        "{} bytes, the session's frames have {}",
                        bytes.len(),
                        state.frame_size
                    )));
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
                if offset.checked_add(len).is_none_or(|end| end > buffer.len()) {
                    return Err(invalid(format!(
                        "range {offset}+{len} outside a buffer of {}",
                        buffer.len()
                    )));
                }
                if len < state.frame_size {
                    return Err(invalid(format!(
                        "{len} bytes, the session's frames have {}",
                        state.frame_size
                    )));
                }
                (buffer, offset, len)
            }
        };
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
        let flags = if force_keyframe {
            VPU_ENCODE_FORCE_IDR
        } else {
            0
        };
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
                .cdw15(len as u32)
                .data(input, offset, len)
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
                tracing::debug!(card = %self.device, session = id.0, out_size, "output buffer grown");
                continue;
            }
            self.status(&c, || format!("encode session {id} pts {pts}"))?;
            return self.packet(&state, id, &c, &out, capacity, seq, pts);
        }
        bump(&self.metrics.rejected, 1);
        Err(CardError::OutputTooSmall {
            device: self.device.clone(),
            session: id.0,
            size: out_size,
        })
    }

    /// Reads and checks the output of a successful Encode Frame.
    #[allow(clippy::too_many_arguments)]
    fn packet(
        &self,
        state: &SessionState,
        id: SessionId,
        c: &Completion,
        out: &DmaBuffer,
        capacity: usize,
        seq: u64,
        pts: u64,
    ) -> Result<Packet, CardError> {
        let report = check_encoded(c, capacity, seq, pts, |n| {
            let h = lock(&state.history);
            h.pts.iter().find(|(s, _)| *s == n).map(|(_, p)| *p)
        });
        let report = match report {
            Ok(r) => r,
            Err(BadEncoded::ByteCount { written, capacity }) => {
                bump(&self.metrics.bad_completions, 1);
                tracing::warn!(card = %self.device, session = id.0, written, capacity,
                    "completion claims more bytes than the output buffer holds");
                return Err(CardError::BadByteCount {
                    device: self.device.clone(),
                    session: id.0,
                    written,
                    capacity,
                });
            }
            Err(other) => return Err(self.bad_completion(id.0, other.to_string())),
        };
        let written = report.written;
        let mut data = vec![0u8; written as usize];
        out.read(0, &mut data);
        bump(&self.metrics.frames, 1);
        bump(&self.metrics.bytes, u64::from(written));
        Ok(Packet {
            data,
            pts: report.pts,
            keyframe: report.keyframe,
            frame_type: report.frame_type,
            input_lag: report.input_lag,
        })
    }

    /// Waits until every earlier frame of the session has completed.
    pub async fn flush(&self, id: SessionId) -> Result<(), CardError> {
        let state = self.session(id)?;
        let cmd = Command::new(VPU_IO_FLUSH_SESSION).cdw10(id.0);
        let c = self
            .controller
            .io(state.queue, cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("flush session {id}"))
    }

    /// A vendor Nop through an I/O queue (round robin).
    pub async fn nop(&self) -> Result<(), CardError> {
        let queues = self.controller.io_queue_count().max(1);
        let q = self.next_queue.fetch_add(1, Ordering::Relaxed) % queues;
        let c = self
            .controller
            .io(q, Command::new(VPU_IO_NOP), self.opts.command_timeout)
            .await?;
        self.status(&c, || "nop".into())
    }

    async fn log_page(&self, lid: u32, lsi: u32, len: usize) -> Result<Vec<u8>, CardError> {
        let buf = self.io.alloc_dma(len).map_err(|e| self.dma_err(e))?;
        let numd = (len / 4 - 1) as u32;
        let cmd = Command::new(VPU_ADMIN_GET_LOG_PAGE)
            .cdw10(lid | ((numd & 0xffff) << VPU_LOG_NUMDL_SHIFT))
            .cdw11((numd >> 16) | (lsi << VPU_LOG_LSI_SHIFT))
            .data(&buf, 0, len);
        let c = self
            .controller
            .admin(cmd, self.opts.command_timeout)
            .await?;
        self.status(&c, || format!("get log page {lid:#04x}"))?;
        let mut bytes = vec![0u8; len];
        buf.read(0, &mut bytes);
        Ok(bytes)
    }

    /// Per-engine figures from the engine log.
    pub async fn engine_log(&self) -> Result<Vec<EngineStats>, CardError> {
        let bytes = self
            .log_page(VPU_LOG_ENGINE, 0, std::mem::size_of::<vpu_engine_log>())
            .await?;
        let log: vpu_engine_log =
            read_struct(&bytes).ok_or_else(|| self.bad_completion(0, "short engine log".into()))?;
        let engines = log.engines;
        if engines > VPU_MAX_ENGINES {
            return Err(self.bad_completion(0, format!("engine log claims {engines} engines")));
        }
        let entries = log.engine;
        Ok(entries[..engines as usize]
            .iter()
            .map(|e| EngineStats {
                load: e.load,
                sessions: e.sessions,
                frames: e.frames,
                bytes: e.bytes,
                errors: e.errors,
                busy_ns: e.busy_ns,
                temperature: e.temperature,
                state: e.state,
            })
            .collect())
    }

    /// One session's figures from the session log.
    pub async fn session_log(&self, id: SessionId) -> Result<SessionStats, CardError> {
        let bytes = self
            .log_page(
                VPU_LOG_SESSION,
                id.0,
                std::mem::size_of::<vpu_session_log>(),
            )
            .await?;
        let log: vpu_session_log = read_struct(&bytes)
            .ok_or_else(|| self.bad_completion(id.0, "short session log".into()))?;
        let sid = log.session_id;
        if sid != id.0 {
            return Err(self.bad_completion(id.0, format!("session log of session {sid}")));
        }
        Ok(SessionStats {
            engine: log.engine,
            frames_in: log.frames_in,
            frames_out: log.frames_out,
            bytes_out: log.bytes_out,
            keyframes: log.keyframes,
            errors: log.errors,
        })
    }

    /// Maps client memory (a frame memfd, say) for the card to read: zero-copy input.
    pub fn map_frames(&self, region: Arc<HostRegion>) -> Result<DmaBuffer, CardError> {
        self.io
            .map_dma(region, DmaDirection::ToDevice)
            .map_err(|e| self.dma_err(e))
    }

    /// Resets the controller and brings it up again; every session is gone afterwards.
    #[tracing::instrument(skip_all, fields(card = %self.device))]
    pub async fn reset(&self) -> Result<(), CardError> {
        let result = self.controller.reset().await;
        lock(&self.sessions).clear();
        self.inputs.clear();
        self.outputs.clear();
        result?;
        tracing::info!(card = %self.device, "card reset");
        Ok(())
    }

    /// Shuts the controller down (CC.SHN); sessions are gone.
    pub async fn shutdown(&self) -> Result<(), CardError> {
        let result = self.controller.shutdown().await;
        lock(&self.sessions).clear();
        result.map_err(CardError::from)
    }
}

/// First output buffer size for frames of `frame_size` bytes.
fn initial_output_size(frame_size: usize) -> usize {
    (frame_size / 4).max(256 * 1024)
}

/// Largest output buffer tried: more than any sane encoder writes for one frame.
fn output_limit(frame_size: usize) -> usize {
    (frame_size * 2 + (1 << 20)).min(u32::MAX as usize)
}

/// The Create Session parameter block, little-endian at the offsets of `vpu.h`.
fn session_params(cfg: &SessionConfig) -> Vec<u8> {
    let mut b = vec![0u8; std::mem::size_of::<vpu_session_params>()];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    let (stride_y, stride_uv) = cfg.pixel_format.strides(cfg.width);
    put(
        offset_of!(vpu_session_params, codec),
        &[cfg.codec.code() as u8],
    );
    put(
        offset_of!(vpu_session_params, pixel_format),
        &[cfg.pixel_format.code() as u8],
    );
    put(
        offset_of!(vpu_session_params, width),
        &(cfg.width as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, height),
        &(cfg.height as u16).to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, fps_num),
        &cfg.fps_num.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, fps_den),
        &cfg.fps_den.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, stride_y),
        &stride_y.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, stride_uv),
        &stride_uv.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, rate_control),
        &[cfg.rate_control.code() as u8],
    );
    put(offset_of!(vpu_session_params, qp), &[cfg.qp]);
    let flags = if cfg.low_latency {
        VPU_SESSION_LOW_LATENCY
    } else {
        0
    };
    put(offset_of!(vpu_session_params, flags), &[flags as u8]);
    put(
        offset_of!(vpu_session_params, bitrate),
        &cfg.bitrate.to_le_bytes(),
    );
    put(
        offset_of!(vpu_session_params, max_bitrate),
        &cfg.max_bitrate.to_le_bytes(),
    );
    put(offset_of!(vpu_session_params, gop), &cfg.gop.to_le_bytes());
    put(
        offset_of!(vpu_session_params, engine_hint),
        &cfg.engine_code().to_le_bytes(),
    );
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::card::types::{PixelFormat, RateControl};

    #[test]
    fn session_params_layout() {
        let cfg = SessionConfig {
            width: 1920,
            height: 1080,
            pixel_format: PixelFormat::Nv12,
            rate_control: RateControl::Vbr,
            bitrate: 6_000_000,
            gop: 120,
            engine_hint: Some(1),
            ..SessionConfig::default()
        };
        let b = session_params(&cfg);
        assert_eq!(b.len(), 64);
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 1920);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1080);
        assert_eq!(b[3], 1); // NV12
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 1920);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1920);
        assert_eq!(b[24], 1); // VBR
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 6_000_000);
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 120);
        assert_eq!(u16::from_le_bytes([b[44], b[45]]), 1);
    }

    #[test]
    fn output_sizes_grow_to_a_bound() {
        let f = 1280 * 720 * 3 / 2;
        assert!(initial_output_size(f) >= 256 * 1024);
        assert!(output_limit(f) > 2 * f);
    }
}
