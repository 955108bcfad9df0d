//! The controller: bring-up, admin and I/O commands with timeouts, shutdown and reset.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::task::JoinHandle;
use vmm_sys_util::eventfd::EventFd;
use vpu_ffi::{
    vpu_identify_controller, vpu_identify_namespace, VPU_ABORT_CID_SHIFT, VPU_ABORT_NOT_ABORTED,
    VPU_ADMIN_ABORT, VPU_ADMIN_CREATE_CQ, VPU_ADMIN_CREATE_SQ, VPU_ADMIN_DELETE_CQ,
    VPU_ADMIN_DELETE_SQ, VPU_ADMIN_IDENTIFY, VPU_ADMIN_SET_FEATURES, VPU_AQA_ACQS_SHIFT, VPU_CC_EN,
    VPU_CC_SHN_MASK, VPU_CC_SHN_NORMAL, VPU_CC_SHN_SHIFT, VPU_CQ_IEN, VPU_CQ_IV_SHIFT,
    VPU_CSTS_CFS, VPU_CSTS_RDY, VPU_CSTS_SHST_COMPLETE, VPU_CSTS_SHST_MASK, VPU_CSTS_SHST_SHIFT,
    VPU_FEATURE_NUMBER_OF_QUEUES, VPU_IDENTIFY_CNS_CONTROLLER, VPU_IDENTIFY_CNS_NAMESPACE,
    VPU_IDENTIFY_SIZE, VPU_NUM_QUEUES_NCQR_SHIFT, VPU_NVM_READ, VPU_NVM_WRITE, VPU_QUEUE_PC,
    VPU_QUEUE_QSIZE_SHIFT, VPU_REG_ACQ, VPU_REG_AQA, VPU_REG_ASQ, VPU_REG_CAP, VPU_REG_CC,
    VPU_REG_CSTS, VPU_SQ_CQID_SHIFT,
};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer, IoError};

use super::command::{read_struct, Command, Completion};
use super::error::NvmeError;
use super::metrics::NvmeMetrics;
use super::prp::PrpPagePool;
use super::queue::{QueuePair, Waiter};
use super::registers::{
    cc_enable, Capabilities, PCI_COMMAND, PCI_COMMAND_BUS_MASTER, PCI_COMMAND_MEMORY,
};

/// Entries of the admin queues.
const ADMIN_QUEUE_DEPTH: u16 = 32;
/// How often CSTS is read while waiting for the controller.
const STATUS_POLL: Duration = Duration::from_millis(1);

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

/// The queues of one enabled period of the controller, and the tasks that read their
/// completions. Dropping it stops the tasks.
#[derive(Debug)]
struct Active {
    admin: Arc<QueuePair>,
    io: Vec<Arc<QueuePair>>,
    tasks: Vec<JoinHandle<()>>,
    polling: bool,
}

impl Active {
    fn queues(&self) -> impl Iterator<Item = &Arc<QueuePair>> {
        std::iter::once(&self.admin).chain(self.io.iter())
    }

    fn kill(&self, release: bool) {
        for task in &self.tasks {
            task.abort();
        }
        for q in self.queues() {
            q.kill(release);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An eventfd registered with the runtime.
struct Vector(Arc<EventFd>);

impl AsRawFd for Vector {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL on a descriptor this process owns (the eventfd is alive in `Vector`).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with the flags just read plus O_NONBLOCK, on the same descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads completions of `queues` whenever `vector` fires.
fn spawn_vector_task(
    device: &str,
    vector: Arc<EventFd>,
    queues: Vec<Arc<QueuePair>>,
) -> Result<JoinHandle<()>, NvmeError> {
    let irq_err = |source: std::io::Error| NvmeError::Interrupts {
        device: device.to_string(),
        source: IoError::Interrupts {
            requested: 1,
            supported: 1,
            source: Some(source),
        },
    };
    set_nonblocking(vector.as_raw_fd()).map_err(irq_err)?;
    // SAFETY: `Vector` owns an `Arc<EventFd>`, so the descriptor stays open and the same
    // for as long as the `AsyncFd` holds it, and `as_raw_fd` always returns it.
    let fd = unsafe { AsyncFd::register_with_interest(Vector(vector), Interest::READABLE) }
        .map_err(|e| irq_err(e.into()))?;
    let device = device.to_string();
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(device = %device, error = %e, "interrupt eventfd failed");
                    return;
                }
            };
            if guard.try_io(|v| v.get_ref().0.read()).is_err() {
                continue; // spurious wake-up: readiness cleared, wait again
            }
            for q in &queues {
                q.process_completions();
            }
        }
    }))
}

/// An NVMe controller over any `DeviceIo`: admin queue, I/O queue pairs, commands.
#[derive(Debug)]
pub struct Controller {
    io: Arc<dyn DeviceIo>,
    device: String,
    opts: ControllerOptions,
    caps: Capabilities,
    active: RwLock<Option<Arc<Active>>>,
    fatal: AtomicBool,
    metrics: Arc<NvmeMetrics>,
    pool: Arc<PrpPagePool>,
    /// Serialises bring-up, reset and shutdown.
    lifecycle: tokio::sync::Mutex<()>,
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

    /// Whether completions are polled rather than signalled.
    pub fn polling(&self) -> bool {
        self.opts.polling
    }

    fn short_identify(&self) -> NvmeError {
        NvmeError::Unsupported {
            device: self.device.clone(),
            reason: "identify data shorter than its structure".into(),
        }
    }

    fn reg_err(&self, source: IoError) -> NvmeError {
        NvmeError::Register {
            device: self.device.clone(),
            source,
        }
    }

    fn read32(&self, reg: u32) -> Result<u32, NvmeError> {
        self.io
            .read32(0, u64::from(reg))
            .map_err(|e| self.reg_err(e))
    }

    fn write32(&self, reg: u32, value: u32) -> Result<(), NvmeError> {
        self.io
            .write32(0, u64::from(reg), value)
            .map_err(|e| self.reg_err(e))
    }

    fn active(&self) -> Result<Arc<Active>, NvmeError> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| NvmeError::NotEnabled {
                device: self.device.clone(),
            })
    }

    fn set_bus_master(&self) -> Result<(), NvmeError> {
        let mut cmd = [0u8; 2];
        let err = |source| NvmeError::BusMaster {
            device: self.device.clone(),
            source,
        };
        self.io.config_read(PCI_COMMAND, &mut cmd).map_err(err)?;
        let value = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER;
        self.io
            .config_write(PCI_COMMAND, &value.to_le_bytes())
            .map_err(err)
    }

    /// Waits until CSTS.RDY equals `ready`, within CAP.TO.
    async fn wait_ready(&self, ready: bool) -> Result<(), NvmeError> {
        let deadline = Instant::now() + self.caps.ready_timeout;
        loop {
            let csts = self.read32(VPU_REG_CSTS)?;
            if csts == u32::MAX {
                return Err(NvmeError::Removed {
                    device: self.device.clone(),
                });
            }
            if ready && csts & VPU_CSTS_CFS != 0 {
                self.fatal.store(true, Ordering::Relaxed);
                return Err(NvmeError::Fatal {
                    device: self.device.clone(),
                });
            }
            if (csts & VPU_CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NvmeError::ReadyTimeout {
                    device: self.device.clone(),
                    ready,
                    timeout: self.caps.ready_timeout,
                });
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0: afterwards the device touches no queue.
    async fn disable(&self) -> Result<(), NvmeError> {
        let cc = self.read32(VPU_REG_CC)?;
        if cc == u32::MAX {
            return Err(NvmeError::Removed {
                device: self.device.clone(),
            });
        }
        if cc & VPU_CC_EN != 0 {
            self.write32(VPU_REG_CC, cc & !VPU_CC_EN)?;
        }
        self.wait_ready(false).await
    }

    /// Reads CSTS; records and reports a fatal controller status or a removed device.
    fn check_status(&self) -> Option<NvmeError> {
        match self.read32(VPU_REG_CSTS) {
            Ok(u32::MAX) => {
                self.fatal.store(true, Ordering::Relaxed);
                Some(NvmeError::Removed {
                    device: self.device.clone(),
                })
            }
            Ok(csts) if csts & VPU_CSTS_CFS != 0 => {
                self.fatal.store(true, Ordering::Relaxed);
                Some(NvmeError::Fatal {
                    device: self.device.clone(),
                })
            }
            Ok(_) => None,
            Err(e) => Some(e),
        }
    }

    /// Bring-up proper; the caller holds `lifecycle`.
    async fn bring_up(&self) -> Result<(), NvmeError> {
        self.set_bus_master()?;
        self.disable().await?;
        let dstrd = self.caps.doorbell_stride;
        let admin_depth = ADMIN_QUEUE_DEPTH.min(self.caps.max_queue_entries.min(4096) as u16);
        let admin = Arc::new(QueuePair::new(
            &self.io,
            0,
            admin_depth,
            dstrd,
            Arc::clone(&self.metrics),
            Arc::clone(&self.pool),
        )?);
        let mut active = Active {
            admin: Arc::clone(&admin),
            io: Vec::new(),
            tasks: Vec::new(),
            polling: self.opts.polling,
        };
        match self.bring_up_queues(&mut active).await {
            Ok(()) => {
                self.fatal.store(false, Ordering::Relaxed);
                *self.active.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(active));
                tracing::info!(device = %self.device, io_queues = self.io_queue_count(),
                    polling = self.opts.polling, "controller enabled");
                Ok(())
            }
            Err(e) => {
                let released = self.disable().await.is_ok();
                active.kill(released);
                Err(e)
            }
        }
    }

    async fn bring_up_queues(&self, active: &mut Active) -> Result<(), NvmeError> {
        let admin = Arc::clone(&active.admin);
        let depth0 = u32::from(admin.depth) - 1;
        self.write32(VPU_REG_AQA, depth0 | (depth0 << VPU_AQA_ACQS_SHIFT))?;
        self.io
            .write64(0, u64::from(VPU_REG_ASQ), admin.sq_iova())
            .map_err(|e| self.reg_err(e))?;
        self.io
            .write64(0, u64::from(VPU_REG_ACQ), admin.cq_iova())
            .map_err(|e| self.reg_err(e))?;

        let wanted = u32::from(self.opts.io_queues.max(1));
        let vectors = if active.polling {
            Vec::new()
        } else {
            let count = (1 + wanted).min(self.io.max_interrupts());
            if count == 0 {
                return Err(NvmeError::Unsupported {
                    device: self.device.clone(),
                    reason: "no interrupt vectors; use polling".into(),
                });
            }
            self.io
                .enable_interrupts(count)
                .map_err(|source| NvmeError::Interrupts {
                    device: self.device.clone(),
                    source,
                })?
        };

        self.write32(VPU_REG_CC, cc_enable())?;
        self.wait_ready(true).await?;
        if let Some(v0) = vectors.first() {
            let task = spawn_vector_task(&self.device, Arc::clone(v0), vec![Arc::clone(&admin)])?;
            active.tasks.push(task);
        }
        let timeout = self.opts.admin_timeout;

        let identify = self
            .identify_on(&admin, active.polling, VPU_IDENTIFY_CNS_CONTROLLER, 0)
            .await?;
        tracing::debug!(device = %self.device, bytes = identify.len(), "identified controller");

        let n0 = wanted - 1;
        let features = Command::new(VPU_ADMIN_SET_FEATURES)
            .cdw10(VPU_FEATURE_NUMBER_OF_QUEUES)
            .cdw11(n0 | (n0 << VPU_NUM_QUEUES_NCQR_SHIFT));
        let c = self
            .execute(&admin, active.polling, features, timeout)
            .await?;
        let c = self.check(
            c,
            0,
            VPU_ADMIN_SET_FEATURES,
            "set features (number of queues)",
        )?;
        let granted_sq = (c.dw0 & 0xffff) + 1;
        let granted_cq = (c.dw0 >> VPU_NUM_QUEUES_NCQR_SHIFT) + 1;
        let count = wanted.min(granted_sq).min(granted_cq);

        let depth = self.opts.queue_depth.clamp(
            2,
            self.caps.max_queue_entries.min(u32::from(u16::MAX)) as u16,
        );
        let mut per_vector: Vec<Vec<Arc<QueuePair>>> = vec![Vec::new(); vectors.len()];
        for qid in 1..=count as u16 {
            let q = Arc::new(QueuePair::new(
                &self.io,
                qid,
                depth,
                self.caps.doorbell_stride,
                Arc::clone(&self.metrics),
                Arc::clone(&self.pool),
            )?);
            let size = u32::from(depth - 1) << VPU_QUEUE_QSIZE_SHIFT;
            let mut cq_flags = VPU_QUEUE_PC;
            if !vectors.is_empty() {
                let vector = u32::from(qid) % vectors.len() as u32;
                cq_flags |= VPU_CQ_IEN | (vector << VPU_CQ_IV_SHIFT);
                per_vector[vector as usize].push(Arc::clone(&q));
            }
            let create_cq = Command::new(VPU_ADMIN_CREATE_CQ)
                .cdw10(u32::from(qid) | size)
                .cdw11(cq_flags)
                .raw_data_pointer(q.cq_iova(), 0);
            let c = self
                .execute(&admin, active.polling, create_cq, timeout)
                .await?;
            self.check(c, 0, VPU_ADMIN_CREATE_CQ, "create I/O completion queue")?;
            let create_sq = Command::new(VPU_ADMIN_CREATE_SQ)
                .cdw10(u32::from(qid) | size)
                .cdw11(VPU_QUEUE_PC | (u32::from(qid) << VPU_SQ_CQID_SHIFT))
                .raw_data_pointer(q.sq_iova(), 0);
            let c = self
                .execute(&admin, active.polling, create_sq, timeout)
                .await?;
            self.check(c, 0, VPU_ADMIN_CREATE_SQ, "create I/O submission queue")?;
            active.io.push(q);
        }
        for (vector, queues) in vectors.iter().zip(per_vector) {
            if !queues.is_empty() {
                let task = spawn_vector_task(&self.device, Arc::clone(vector), queues)?;
                active.tasks.push(task);
            }
        }
        Ok(())
    }

    fn check(
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
    async fn execute(
        &self,
        q: &Arc<QueuePair>,
        polling: bool,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Completion, NvmeError> {
        let (cid, mut rx) = q.submit(&cmd).await?;
        let reset = || NvmeError::Reset {
            device: self.device.clone(),
            queue: q.qid,
        };
        let wait = async {
            if polling {
                loop {
                    q.process_completions();
                    match rx.try_recv() {
                        Ok(r) => return r,
                        Err(TryRecvError::Empty) => tokio::task::yield_now().await,
                        Err(TryRecvError::Closed) => return Err(reset()),
                    }
                }
            } else {
                (&mut rx).await.unwrap_or_else(|_| Err(reset()))
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Box::pin(self.timed_out(q, polling, cid, rx, cmd.opcode, timeout)).await,
        }
    }

    /// A command's timeout passed: look once more (a lost interrupt), check the
    /// controller's status, abort the command and report the timeout.
    async fn timed_out(
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
    async fn abort(&self, sqid: u16, cid: u16) {
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

    async fn identify_on(
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

    async fn identify(&self, cns: u32, nsid: u32) -> Result<Vec<u8>, NvmeError> {
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
    async fn nvm_rw(
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

    /// Normal shutdown: deletes the I/O queues, sets CC.SHN and waits for CSTS.SHST,
    /// then disables the controller. Commands still in flight fail with `Reset`.
    pub async fn shutdown(&self) -> Result<(), NvmeError> {
        let _guard = self.lifecycle.lock().await;
        let Some(active) = self
            .active
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let timeout = self.opts.admin_timeout;
        for q in active.io.iter().rev() {
            for (opcode, what) in [
                (VPU_ADMIN_DELETE_SQ, "delete I/O submission queue"),
                (VPU_ADMIN_DELETE_CQ, "delete I/O completion queue"),
            ] {
                let cmd = Command::new(opcode).cdw10(u32::from(q.qid));
                match self
                    .execute(&active.admin, active.polling, cmd, timeout)
                    .await
                {
                    Ok(c) if c.status.is_success() => {}
                    Ok(c) => {
                        tracing::warn!(device = %self.device, queue = q.qid, status = %c.status, what, "failed")
                    }
                    Err(e) => {
                        tracing::warn!(device = %self.device, queue = q.qid, error = %e, what, "failed")
                    }
                }
            }
        }
        let result = self.shutdown_notify().await;
        let released = self.disable().await.is_ok();
        active.kill(released);
        tracing::info!(device = %self.device, ok = result.is_ok(), "controller shut down");
        result
    }

    async fn shutdown_notify(&self) -> Result<(), NvmeError> {
        let cc = self.read32(VPU_REG_CC)?;
        let cc =
            (cc & !(VPU_CC_SHN_MASK << VPU_CC_SHN_SHIFT)) | (VPU_CC_SHN_NORMAL << VPU_CC_SHN_SHIFT);
        self.write32(VPU_REG_CC, cc)?;
        let deadline = Instant::now() + self.caps.ready_timeout;
        loop {
            let csts = self.read32(VPU_REG_CSTS)?;
            if csts == u32::MAX {
                return Err(NvmeError::Removed {
                    device: self.device.clone(),
                });
            }
            if (csts >> VPU_CSTS_SHST_SHIFT) & VPU_CSTS_SHST_MASK == VPU_CSTS_SHST_COMPLETE {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NvmeError::ShutdownTimeout {
                    device: self.device.clone(),
                    timeout: self.caps.ready_timeout,
                });
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// Resets the controller (CC.EN 1→0, or a function-level reset when that fails) and
    /// brings it up again. Commands in flight fail with `Reset`; their memory is released
    /// only once the device can no longer reach it.
    pub async fn reset(&self) -> Result<(), NvmeError> {
        let _guard = self.lifecycle.lock().await;
        NvmeMetrics::inc(&self.metrics.resets);
        let old = self
            .active
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let disabled = match self.disable().await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(device = %self.device, error = %e,
                    "controller did not disable; trying a function-level reset");
                self.io.reset().map_err(|e| self.reg_err(e))
            }
        };
        if let Some(old) = old {
            old.kill(disabled.is_ok());
        }
        disabled?;
        self.bring_up().await
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let Some(active) = self
            .active
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        // Disable synchronously so the queue memory can be released safely.
        let mut released = false;
        if let Ok(cc) = self.read32(VPU_REG_CC) {
            if cc != u32::MAX && self.write32(VPU_REG_CC, cc & !VPU_CC_EN).is_ok() {
                let deadline = Instant::now() + self.caps.ready_timeout;
                while Instant::now() < deadline {
                    match self.read32(VPU_REG_CSTS) {
                        Ok(csts) if csts != u32::MAX && csts & VPU_CSTS_RDY == 0 => {
                            released = true;
                            break;
                        }
                        Ok(_) => std::thread::sleep(STATUS_POLL),
                        Err(_) => break,
                    }
                }
            }
        }
        if !released {
            tracing::warn!(device = %self.device,
                "controller did not disable on drop; leaking its queue memory");
        }
        active.kill(released);
    }
}
