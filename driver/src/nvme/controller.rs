//! The controller: options, commands with timeouts and Abort, Identify and NVM I/O.
//! Bring-up, shutdown and reset are in `lifecycle`, interrupt vectors in `vectors`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use vpu_ffi::{
    vpu_identify_controller, vpu_identify_namespace, VPU_ABORT_CID_SHIFT, VPU_ABORT_NOT_ABORTED,
    VPU_ADMIN_ABORT, VPU_ADMIN_IDENTIFY, VPU_IDENTIFY_CNS_CONTROLLER, VPU_IDENTIFY_CNS_NAMESPACE,
    VPU_IDENTIFY_SIZE, VPU_NVM_READ, VPU_NVM_WRITE, VPU_REG_CAP,
};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer, IoError};

use super::command::{read_struct, Command, Completion, DataPointer};
use super::error::NvmeError;
use super::metrics::NvmeMetrics;
use super::prp::PrpPagePool;
use super::queue::{QueuePair, Waiter};
use super::registers::Capabilities;

use super::lifecycle::Active;

/// How to bring a controller up.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// I/O queue pairs wanted; the controller may grant fewer.
    pub io_queues: u16,
    /// Entries per I/O queue (one fewer commands in flight per queue).
    pub queue_depth: u16,
    /// Poll completion phase tags instead of waiting for interrupts.
    pub polling: bool,
    /// Timeout of the admin commands the transport sends itself.
    pub admin_timeout: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            io_queues: 2,
            queue_depth: 64,
            polling: false,
            admin_timeout: Duration::from_secs(5),
        }
    }
}

/// An NVMe controller over any `DeviceIo`: admin queue, I/O queue pairs, commands.
#[derive(Debug)]
pub struct Controller {
    pub(super) io: Arc<dyn DeviceIo>,
    pub(super) device: String,
    pub(super) opts: ControllerOptions,
    pub(super) caps: Capabilities,
    pub(super) active: RwLock<Option<Arc<Active>>>,
    pub(super) fatal: AtomicBool,
    pub(super) metrics: Arc<NvmeMetrics>,
    pub(super) pool: Arc<PrpPagePool>,
    /// Serialises bring-up, reset and shutdown.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
    /// Largest data transfer of one command (Identify MDTS); `usize::MAX`: no limit.
    pub(super) max_transfer: AtomicUsize,
}

impl Controller {
    /// Brings the controller up: bus mastering, disable, admin queue, enable, Identify,
    /// Number of Queues, interrupts and the I/O queue pairs.
    pub async fn enable(
        io: Arc<dyn DeviceIo>,
        opts: ControllerOptions,
    ) -> Result<Arc<Controller>, NvmeError> {
        let device = io.info().name.clone();
        let cap = io
            .read64(0, u64::from(VPU_REG_CAP))
            .map_err(|source| NvmeError::Register {
                device: device.clone(),
                source,
            })?;
        if cap == u64::MAX {
            return Err(NvmeError::Removed { device });
        }
        let caps = Capabilities::decode(cap);
        if !caps.nvm_command_set {
            return Err(NvmeError::Unsupported {
                device,
                reason: "CAP.CSS lacks the NVM command set".into(),
            });
        }
        if caps.mps_min > 0 {
            return Err(NvmeError::Unsupported {
                device,
                reason: format!(
                    "memory pages of 4 KiB unsupported (CAP.MPSMIN {})",
                    caps.mps_min
                ),
            });
        }
        let ctrl = Arc::new(Controller {
            pool: PrpPagePool::new(Arc::clone(&io)),
            io,
            device,
            opts,
            caps,
            active: RwLock::new(None),
            fatal: AtomicBool::new(false),
            metrics: Arc::new(NvmeMetrics::default()),
            lifecycle: tokio::sync::Mutex::new(()),
            max_transfer: AtomicUsize::new(usize::MAX),
        });
        {
            let _guard = ctrl.lifecycle.lock().await;
            ctrl.bring_up().await?;
        }
        Ok(ctrl)
    }

    /// The device name logs use.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The transport's counters.
    pub fn metrics(&self) -> &NvmeMetrics {
        &self.metrics
    }

    /// True once CSTS.CFS has been seen; cleared by a successful reset.
    pub fn fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    /// I/O queue pairs in use.
    pub fn io_queue_count(&self) -> usize {
        self.active().map_or(0, |a| a.io.len())
    }

    /// Commands in flight on I/O queue `queue` (timed-out ones included until the
    /// device completes them).
    pub fn io_in_flight(&self, queue: usize) -> usize {
        self.active()
            .ok()
            .and_then(|a| a.io.get(queue).map(|q| q.in_flight()))
            .unwrap_or(0)
    }

    /// Largest data transfer one command may have (from Identify MDTS), in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer.load(Ordering::Relaxed)
    }

    /// Whether completions are polled rather than signalled.
    pub fn polling(&self) -> bool {
        self.opts.polling
    }

    pub(super) fn short_identify(&self) -> NvmeError {
        NvmeError::Unsupported {
            device: self.device.clone(),
            reason: "identify data shorter than its structure".into(),
        }
    }

    pub(super) fn reg_err(&self, source: IoError) -> NvmeError {
        NvmeError::Register {
            device: self.device.clone(),
            source,
        }
    }

    pub(super) fn read32(&self, reg: u32) -> Result<u32, NvmeError> {
        self.io
            .read32(0, u64::from(reg))
            .map_err(|e| self.reg_err(e))
    }

    pub(super) fn write32(&self, reg: u32, value: u32) -> Result<(), NvmeError> {
        self.io
            .write32(0, u64::from(reg), value)
            .map_err(|e| self.reg_err(e))
    }

    pub(super) fn active(&self) -> Result<Arc<Active>, NvmeError> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| NvmeError::NotEnabled {
                device: self.device.clone(),
            })
    }

    pub(super) fn check(
        &self,
        c: Completion,
        queue: u16,
        opcode: u32,
        what: &'static str,
    ) -> Result<Completion, NvmeError> {
        if c.status.is_success() {
            Ok(c)
        } else {
            Err(NvmeError::CommandFailed {
                device: self.device.clone(),
                queue,
                opcode: opcode as u8,
                what,
                status: c.status,
            })
        }
    }

    /// Submits `cmd` on `q` and waits for its completion at most `timeout`.
    pub(super) async fn execute(
        &self,
        q: &Arc<QueuePair>,
        polling: bool,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Completion, NvmeError> {
        if let Some(DataPointer::Buffer { len, .. }) = &cmd.data {
            let limit = self.max_transfer.load(Ordering::Relaxed);
            if *len > limit {
                return Err(NvmeError::TransferTooLarge {
                    device: self.device.clone(),
                    len: *len,
                    limit,
                });
            }
        }
        let (cid, mut rx) = q.submit(&cmd).await?;
        let reset = || NvmeError::Reset {
            device: self.device.clone(),
            queue: q.qid,
        };
        if !polling {
            // A device that completes within the doorbell write (the emulated card's admin
            // commands) or within a few microseconds is seen now, without waiting for the
            // interrupt and the task that serves it.
            q.process_completions();
            if let Ok(result) = rx.try_recv() {
                return result;
            }
        }
        let wait = async {
            let result = if polling {
                q.poll_for(&mut rx).await
            } else {
                (&mut rx).await.ok()
            };
            result.unwrap_or_else(|| Err(reset()))
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Box::pin(self.timed_out(q, polling, cid, rx, cmd.opcode, timeout)).await,
        }
    }

    /// A command's timeout passed: look once more (a lost interrupt), check the
    /// controller's status, abort the command and report the timeout.
    pub(super) async fn timed_out(
        &self,
        q: &Arc<QueuePair>,
        polling: bool,
        cid: u16,
        mut rx: Waiter,
        opcode: u8,
        timeout: Duration,
    ) -> Result<Completion, NvmeError> {
        q.process_completions();
        if let Ok(result) = rx.try_recv() {
            if !polling {
                NvmeMetrics::inc(&self.metrics.lost_interrupts);
                tracing::warn!(device = %self.device, queue = q.qid, cid,
                    "completion found without its interrupt");
            }
            return result;
        }
        if !q.abandon(cid) {
            if let Ok(result) = rx.try_recv() {
                return result;
            }
        }
        NvmeMetrics::inc(&self.metrics.timeouts);
        tracing::warn!(device = %self.device, queue = q.qid, cid, opcode,
            timeout_ms = timeout.as_millis() as u64, "command timed out");
        if let Some(status) = self.check_status() {
            return Err(status);
        }
        if !(q.qid == 0 && u32::from(opcode) == VPU_ADMIN_ABORT) {
            self.abort(q.qid, cid).await;
        }
        Err(NvmeError::Timeout {
            device: self.device.clone(),
            queue: q.qid,
            opcode,
            timeout,
        })
    }

    /// Sends Admin Abort for `cid` on `sqid`; the outcome is logged, not returned.
    pub(super) async fn abort(&self, sqid: u16, cid: u16) {
        NvmeMetrics::inc(&self.metrics.aborts);
        let cmd = Command::new(VPU_ADMIN_ABORT)
            .cdw10(u32::from(sqid) | (u32::from(cid) << VPU_ABORT_CID_SHIFT));
        match self.admin(cmd, self.opts.admin_timeout).await {
            Ok(c) => tracing::info!(device = %self.device, queue = sqid, cid,
                status = %c.status, aborted = c.dw0 & VPU_ABORT_NOT_ABORTED == 0, "abort sent"),
            Err(e) => tracing::warn!(device = %self.device, queue = sqid, cid, error = %e,
                "abort failed"),
        }
    }

    /// Runs an admin command. A completion with an error status is returned as such;
    /// transport failures are errors.
    pub async fn admin(&self, cmd: Command, timeout: Duration) -> Result<Completion, NvmeError> {
        let active = self.active()?;
        self.execute(&active.admin, active.polling, cmd, timeout)
            .await
    }

    /// Runs a command on I/O queue `queue` (0-based; NVMe queue id `queue + 1`).
    pub async fn io(
        &self,
        queue: usize,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Completion, NvmeError> {
        let active = self.active()?;
        let q = active.io.get(queue).ok_or_else(|| NvmeError::NoSuchQueue {
            device: self.device.clone(),
            queue,
            count: active.io.len(),
        })?;
        self.execute(q, active.polling, cmd, timeout).await
    }

    pub(super) async fn identify_on(
        &self,
        admin: &Arc<QueuePair>,
        polling: bool,
        cns: u32,
        nsid: u32,
    ) -> Result<Vec<u8>, NvmeError> {
        let len = VPU_IDENTIFY_SIZE as usize;
        let buf = self
            .io
            .alloc_dma(len)
            .map_err(|source| NvmeError::DmaAlloc {
                device: self.device.clone(),
                what: "identify data",
                source,
            })?;
        let cmd = Command::new(VPU_ADMIN_IDENTIFY)
            .nsid(nsid)
            .cdw10(cns)
            .data(&buf, 0, len);
        let c = self
            .execute(admin, polling, cmd, self.opts.admin_timeout)
            .await?;
        self.check(c, 0, VPU_ADMIN_IDENTIFY, "identify")?;
        let mut bytes = vec![0u8; len];
        buf.read(0, &mut bytes);
        Ok(bytes)
    }

    pub(super) async fn identify(&self, cns: u32, nsid: u32) -> Result<Vec<u8>, NvmeError> {
        let active = self.active()?;
        self.identify_on(&active.admin, active.polling, cns, nsid)
            .await
    }

    /// Identify Controller (CNS 01h).
    pub async fn identify_controller(&self) -> Result<Box<vpu_identify_controller>, NvmeError> {
        let bytes = self.identify(VPU_IDENTIFY_CNS_CONTROLLER, 0).await?;
        read_struct::<vpu_identify_controller>(&bytes)
            .map(Box::new)
            .ok_or_else(|| self.short_identify())
    }

    /// Identify Namespace (CNS 00h) of `nsid`.
    pub async fn identify_namespace(
        &self,
        nsid: u32,
    ) -> Result<Box<vpu_identify_namespace>, NvmeError> {
        let bytes = self.identify(VPU_IDENTIFY_CNS_NAMESPACE, nsid).await?;
        read_struct::<vpu_identify_namespace>(&bytes)
            .map(Box::new)
            .ok_or_else(|| self.short_identify())
    }

    /// NVM Read of `blocks` logical blocks from `slba` into `buffer[offset..offset+len]`.
    #[allow(clippy::too_many_arguments)]
    pub async fn nvm_read(
        &self,
        queue: usize,
        nsid: u32,
        slba: u64,
        blocks: u16,
        buffer: &DmaBuffer,
        offset: usize,
        len: usize,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        self.nvm_rw(
            VPU_NVM_READ,
            "nvm read",
            queue,
            nsid,
            slba,
            blocks,
            buffer,
            offset,
            len,
            timeout,
        )
        .await
    }

    /// NVM Write of `blocks` logical blocks at `slba` from `buffer[offset..offset+len]`.
    #[allow(clippy::too_many_arguments)]
    pub async fn nvm_write(
        &self,
        queue: usize,
        nsid: u32,
        slba: u64,
        blocks: u16,
        buffer: &DmaBuffer,
        offset: usize,
        len: usize,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        self.nvm_rw(
            VPU_NVM_WRITE,
            "nvm write",
            queue,
            nsid,
            slba,
            blocks,
            buffer,
            offset,
            len,
            timeout,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn nvm_rw(
        &self,
        opcode: u32,
        what: &'static str,
        queue: usize,
        nsid: u32,
        slba: u64,
        blocks: u16,
        buffer: &DmaBuffer,
        offset: usize,
        len: usize,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        let cmd = Command::new(opcode)
            .nsid(nsid)
            .cdw10(slba as u32)
            .cdw11((slba >> 32) as u32)
            .cdw12(u32::from(blocks.max(1) - 1))
            .data(buffer, offset, len);
        let c = self.io(queue, cmd, timeout).await?;
        self.check(c, queue as u16 + 1, opcode, what).map(|_| ())
    }
}
