//! Controller bring-up (bus mastering, disable, admin queue, enable, Identify, Number of
//! Queues, interrupts, I/O queue pairs), shutdown, reset, and disabling on drop.

use std::mem::offset_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use vpu_ffi::{
    vpu_identify_controller, VPU_ADMIN_CREATE_CQ, VPU_ADMIN_CREATE_SQ, VPU_ADMIN_DELETE_CQ,
    VPU_ADMIN_DELETE_SQ, VPU_ADMIN_SET_FEATURES, VPU_AQA_ACQS_SHIFT, VPU_CC_EN, VPU_CC_SHN_MASK,
    VPU_CC_SHN_NORMAL, VPU_CC_SHN_SHIFT, VPU_CQ_IEN, VPU_CQ_IV_SHIFT, VPU_CSTS_CFS, VPU_CSTS_RDY,
    VPU_CSTS_SHST_COMPLETE, VPU_CSTS_SHST_MASK, VPU_CSTS_SHST_SHIFT, VPU_FEATURE_NUMBER_OF_QUEUES,
    VPU_IDENTIFY_CNS_CONTROLLER, VPU_NUM_QUEUES_NCQR_SHIFT, VPU_QUEUE_PC, VPU_QUEUE_QSIZE_SHIFT,
    VPU_REG_ACQ, VPU_REG_AQA, VPU_REG_ASQ, VPU_REG_CC, VPU_REG_CSTS, VPU_SQ_CQID_SHIFT,
};

use super::command::Command;
use super::error::NvmeError;
use super::metrics::NvmeMetrics;
use super::prp::MEMORY_PAGE_SIZE;
use super::queue::QueuePair;
use super::registers::{cc_enable, PCI_COMMAND, PCI_COMMAND_BUS_MASTER, PCI_COMMAND_MEMORY};

use super::controller::Controller;
use super::vectors::spawn_vector_task;

/// Entries of the admin queues.
pub(super) const ADMIN_QUEUE_DEPTH: u16 = 32;
/// How often CSTS is read while waiting for the controller.
pub(super) const STATUS_POLL: Duration = Duration::from_millis(1);

/// The queues of one enabled period of the controller, and the tasks that read their
/// completions. Dropping it stops the tasks.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) admin: Arc<QueuePair>,
    pub(super) io: Vec<Arc<QueuePair>>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) polling: bool,
}

impl Active {
    pub(super) fn queues(&self) -> impl Iterator<Item = &Arc<QueuePair>> {
        std::iter::once(&self.admin).chain(self.io.iter())
    }

    pub(super) fn kill(&self, release: bool) {
        for task in &self.tasks {
            task.abort();
        }
        for q in self.queues() {
            q.kill(release);
        }
    }

    /// Waits (at most a second) until the tasks stopped by [`Active::kill`] have ended, so
    /// that the queue memory they held is released by the time the caller goes on.
    pub(super) async fn tasks_ended(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(STATUS_POLL).await;
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

impl Controller {
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
    pub(super) async fn wait_ready(&self, ready: bool) -> Result<(), NvmeError> {
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
    pub(super) async fn disable(&self) -> Result<(), NvmeError> {
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

    /// Reads CSTS; records and reports a fatal controller status or a removed device. One
    /// register read: it touches no queue and waits for nothing.
    pub fn check_status(&self) -> Option<NvmeError> {
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
    pub(super) async fn bring_up(&self) -> Result<(), NvmeError> {
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
                active.tasks_ended().await;
                Err(e)
            }
        }
    }

    pub(super) async fn bring_up_queues(&self, active: &mut Active) -> Result<(), NvmeError> {
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
        let mdts = identify
            .get(offset_of!(vpu_identify_controller, mdts))
            .copied()
            .unwrap_or(0);
        let max_transfer = if mdts == 0 {
            usize::MAX
        } else {
            // MDTS counts pages of CAP.MPSMIN, which is 4 KiB here (checked at enable).
            (MEMORY_PAGE_SIZE as usize)
                .checked_shl(u32::from(mdts))
                .unwrap_or(usize::MAX)
        };
        self.max_transfer.store(max_transfer, Ordering::Relaxed);
        tracing::debug!(device = %self.device, max_transfer, "identified controller");

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
        active.tasks_ended().await;
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
            old.tasks_ended().await;
        }
        // Spare list pages are in no command, so the device cannot reach them.
        self.pool.clear();
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
