//! [`Card`]: a VPU card opened over the NVMe transport, its sessions and commands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vpu_ffi::{
    vpu_session_params, VPU_ADMIN_CREATE_SESSION, VPU_ADMIN_DESTROY_SESSION,
    VPU_ADMIN_RECONFIGURE_SESSION, VPU_IO_FLUSH_SESSION, VPU_IO_NOP, VPU_RECONFIG_BITRATE,
    VPU_RECONFIG_FORCE_IDR, VPU_RECONFIG_FRAMERATE,
};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer, DmaDirection, HostRegion};
use crate::nvme::{
    Command, Completion, Controller, ControllerOptions, NvmeMetricsSnapshot, Status, VendorStatus,
};

use super::encode::initial_output_size;
use super::error::CardError;
use super::identity::CardIdentity;
use super::params::session_params;
use super::pool::BufferPool;
use super::types::{CardOptions, Reconfigure, SessionConfig, SessionId};

/// Spare buffers each pool keeps.
const POOL_SPARES: usize = 64;
/// Spare buffers for admin command data (session parameters), one per command that may
/// be in flight at once in the common case.
const ADMIN_SPARES: usize = 8;
/// Recent input timestamps kept per session to attribute reordered output.
pub(super) const PTS_HISTORY: usize = 256;
/// Output buffer growth steps on OUTPUT_TOO_SMALL before giving up.
pub(super) const OUTPUT_RETRIES: u32 = 4;

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

pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What the driver remembers of a session.
#[derive(Debug)]
pub(super) struct SessionState {
    pub(super) config: Mutex<SessionConfig>,
    pub(super) frame_size: usize,
    pub(super) queue: usize,
    /// Output buffer size to try first; grows on OUTPUT_TOO_SMALL.
    pub(super) out_size: AtomicUsize,
    pub(super) history: Mutex<History>,
}

#[derive(Debug, Default)]
pub(super) struct History {
    pub(super) next_seq: u64,
    pub(super) pts: VecDeque<(u64, u64)>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A VPU card, opened: the video command set over one NVMe controller.
#[derive(Debug)]
pub struct Card {
    pub(super) io: Arc<dyn DeviceIo>,
    pub(super) device: String,
    pub(super) controller: Arc<Controller>,
    pub(super) identity: CardIdentity,
    pub(super) opts: CardOptions,
    pub(super) sessions: Mutex<HashMap<u32, Arc<SessionState>>>,
    /// Decoder sessions (their ids share the card's session id space).
    pub(super) decoders: Mutex<HashSet<u32>>,
    pub(super) inputs: BufferPool,
    pub(super) outputs: BufferPool,
    /// Data buffers of admin commands (session parameters): mapped once, not per session.
    pub(super) admin_data: BufferPool,
    pub(super) metrics: CardMetrics,
    pub(super) next_queue: AtomicUsize,
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
        let card = Arc::new(Card {
            inputs: BufferPool::new(Arc::clone(&io), POOL_SPARES),
            outputs: BufferPool::new(Arc::clone(&io), POOL_SPARES),
            admin_data: BufferPool::new(Arc::clone(&io), ADMIN_SPARES),
            io,
            device,
            controller,
            identity,
            opts,
            sessions: Mutex::new(HashMap::new()),
            decoders: Mutex::new(HashSet::new()),
            metrics: CardMetrics::default(),
            next_queue: AtomicUsize::new(0),
        });
        card.prepare_admin_data();
        Ok(card)
    }

    /// Maps one session-parameter buffer ahead of the first `create_session`, so that the
    /// card's mappings while idle already include it. A failure only means the first
    /// session maps its own.
    fn prepare_admin_data(&self) {
        if let Err(e) = self
            .admin_data
            .get(std::mem::size_of::<vpu_session_params>())
        {
            tracing::debug!(card = %self.device, error = %e, "mapping a parameter buffer ahead failed");
        }
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

    /// True once the controller reported a fatal status (seen by a command or by
    /// [`check_status`](Self::check_status)); cleared by a successful reset.
    pub fn fatal(&self) -> bool {
        self.controller.fatal()
    }

    /// Reads the controller's status register now: a fatal status (CSTS.CFS) or a removed
    /// device is an error, and [`fatal`](Self::fatal) is true afterwards. A controller that
    /// failed stops completing commands, so this is how a card with nothing in flight, or
    /// with commands not yet timed out, is found to need a reset.
    pub fn check_status(&self) -> Result<(), CardError> {
        match self.controller.check_status() {
            Some(e) => Err(CardError::Nvme(e)),
            None => Ok(()),
        }
    }

    pub(super) fn dma_err(&self, source: crate::io::IoError) -> CardError {
        CardError::Io {
            device: self.device.clone(),
            source,
        }
    }

    /// Turns a completion's status into a result, counting rejections.
    pub(super) fn status(
        &self,
        c: &Completion,
        what: impl FnOnce() -> String,
    ) -> Result<(), CardError> {
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

    pub(super) fn session(&self, id: SessionId) -> Result<Arc<SessionState>, CardError> {
        lock(&self.sessions)
            .get(&id.0)
            .cloned()
            .ok_or_else(|| CardError::Rejected {
                device: self.device.clone(),
                status: VendorStatus::SessionNotFound,
                what: format!("session {id}"),
            })
    }

    pub(super) fn bad_completion(&self, session: u32, reason: String) -> CardError {
        bump(&self.metrics.bad_completions, 1);
        tracing::warn!(card = %self.device, session, %reason, "rejected a completion");
        CardError::BadCompletion {
            device: self.device.clone(),
            session,
            reason,
        }
    }

    /// Creates an encode session on the card.
    #[tracing::instrument(level = "debug", skip_all, fields(card = %self.device))]
    pub async fn create_session(&self, cfg: &SessionConfig) -> Result<SessionId, CardError> {
        cfg.validate(&self.identity)?;
        let params = session_params(cfg);
        let buf = self
            .admin_data
            .get(params.len())
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
        tracing::debug!(card = %self.device, session = id, width = cfg.width, height = cfg.height,
            bitrate = cfg.bitrate, "session created");
        Ok(SessionId(id))
    }

    /// Destroys a session; frames still in flight complete as aborted.
    #[tracing::instrument(level = "debug", skip_all, fields(card = %self.device, session = id.0))]
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
    /// Maps client memory (a frame memfd, say) for the card to read: zero-copy input.
    pub fn map_frames(&self, region: Arc<HostRegion>) -> Result<DmaBuffer, CardError> {
        self.io
            .map_dma(region, DmaDirection::ToDevice)
            .map_err(|e| self.dma_err(e))
    }

    /// Resets the controller and brings it up again; every session is gone afterwards.
    #[tracing::instrument(level = "debug", skip_all, fields(card = %self.device))]
    pub async fn reset(&self) -> Result<(), CardError> {
        let result = self.controller.reset().await;
        lock(&self.sessions).clear();
        lock(&self.decoders).clear();
        self.inputs.clear();
        self.outputs.clear();
        self.admin_data.clear();
        result?;
        self.prepare_admin_data();
        tracing::info!(card = %self.device, "card reset");
        Ok(())
    }

    /// Shuts the controller down (CC.SHN); sessions are gone.
    pub async fn shutdown(&self) -> Result<(), CardError> {
        let result = self.controller.shutdown().await;
        lock(&self.sessions).clear();
        lock(&self.decoders).clear();
        // Nothing stays mapped for a card that is shut down.
        self.inputs.clear();
        self.outputs.clear();
        self.admin_data.clear();
        result.map_err(CardError::from)
    }
}
