//! Submission and completion queues, completion posting and interrupts.
//!
//! A completion is never written over an entry the host has not released through the CQ
//! head doorbell: while the queue is full, completions wait in the queue's overflow list
//! and are written as the host frees entries. Nothing is written while Bus Master Enable
//! is clear; nothing completes after a fatal error or a surprise removal.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use vpu_ffi::{
    vpu_cqe, VPU_CQE_PHASE, VPU_CQE_SCT_MASK, VPU_CQE_SCT_SHIFT, VPU_CQE_SC_MASK, VPU_CQE_SC_SHIFT,
    VPU_CQE_SIZE, VPU_SCT_COMMAND_SPECIFIC, VPU_SCT_GENERIC, VPU_SCT_VENDOR,
};

use super::controller::{Ctrl, Shared};
use super::dma::as_bytes;

/// The status field of a completion, without the phase tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0);

    const fn new(sct: u32, sc: u32) -> Status {
        Status(
            (((sc & VPU_CQE_SC_MASK) << VPU_CQE_SC_SHIFT)
                | ((sct & VPU_CQE_SCT_MASK) << VPU_CQE_SCT_SHIFT)) as u16,
        )
    }
    /// Generic command status (SCT 0).
    pub const fn generic(sc: u32) -> Status {
        Status::new(VPU_SCT_GENERIC, sc)
    }
    /// Command specific status (SCT 1).
    pub const fn specific(sc: u32) -> Status {
        Status::new(VPU_SCT_COMMAND_SPECIFIC, sc)
    }
    /// Vendor specific status (SCT 7): the video command set.
    pub const fn vendor(sc: u32) -> Status {
        Status::new(VPU_SCT_VENDOR, sc)
    }
}

/// Where a command came from, so its completion goes back to the right place and a stale
/// one (after a reset or queue deletion) is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub sqid: u16,
    /// Serial of the submission queue instance (queue ids are reused, serials never).
    pub serial: u64,
    pub cid: u16,
    /// Controller generation (incremented by every reset).
    pub generation: u64,
}

/// A finished command.
#[derive(Debug, Clone, Copy)]
pub(super) struct Done {
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
    /// Encode Frame: the output buffer's size (what a corrupt completion overstates).
    pub out_len: Option<u32>,
}

impl Done {
    pub fn ok(dw0: u32) -> Done {
        Done {
            status: Status::SUCCESS,
            dw0,
            dw1: 0,
            out_len: None,
        }
    }
    pub fn err(status: Status) -> Done {
        Done {
            status,
            dw0: 0,
            dw1: 0,
            out_len: None,
        }
    }
}

/// A submission queue.
#[derive(Debug)]
pub(super) struct SubQueue {
    pub base: u64,
    /// Entries (1's based).
    pub size: u16,
    pub head: u16,
    pub tail: u16,
    pub cqid: u16,
    pub serial: u64,
}

/// A completion queue.
#[derive(Debug)]
pub(super) struct CompQueue {
    pub base: u64,
    pub size: u16,
    pub tail: u16,
    /// Head as the host last released it through the doorbell.
    pub head: u16,
    pub phase: bool,
    pub vector: u16,
    pub interrupts: bool,
    /// Completions waiting for room.
    pub overflow: VecDeque<vpu_cqe>,
    /// Submission queues that post here.
    pub users: u16,
}

impl CompQueue {
    pub fn new(base: u64, size: u16, vector: u16, interrupts: bool) -> Self {
        Self {
            base,
            size,
            tail: 0,
            head: 0,
            phase: true,
            vector,
            interrupts,
            overflow: VecDeque::new(),
            users: 0,
        }
    }

    fn full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
}

/// Posts the completion of the command from `origin`.
pub(super) fn post(shared: &Shared, ctrl: &mut Ctrl, origin: Origin, done: Done) {
    if ctrl.generation != origin.generation || shared.removed.load(Ordering::Acquire) {
        return;
    }
    let Some(sq) = ctrl
        .sqs
        .get(usize::from(origin.sqid))
        .and_then(|q| q.as_ref())
        .filter(|q| q.serial == origin.serial)
    else {
        tracing::debug!(card = %shared.name, queue = origin.sqid, cid = origin.cid,
            "completion for a deleted submission queue dropped");
        return;
    };
    let cqid = sq.cqid;
    let mut cqe = vpu_cqe {
        dw0: done.dw0,
        dw1: done.dw1,
        sq_head: sq.head,
        sq_id: origin.sqid,
        cid: origin.cid,
        status: done.status.0,
    };
    if shared
        .corrupt_completions
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        shared.counters.corrupted.fetch_add(1, Ordering::Relaxed);
        match done.out_len {
            Some(len) if done.status == Status::SUCCESS => {
                cqe.dw0 = len.saturating_add(4096);
            }
            _ => cqe.cid = origin.cid ^ 0x8000,
        }
        tracing::warn!(card = %shared.name, queue = origin.sqid, cid = origin.cid,
            "fault injection: corrupt completion");
    }
    let Some(cq) = ctrl.cqs.get_mut(usize::from(cqid)).and_then(|q| q.as_mut()) else {
        return;
    };
    cq.overflow.push_back(cqe);
    drain(shared, ctrl, cqid);
}

/// Writes waiting completions of CQ `cqid` while there is room.
pub(super) fn drain(shared: &Shared, ctrl: &mut Ctrl, cqid: u16) {
    if !shared.bus_master() || ctrl.cfs || shared.removed.load(Ordering::Acquire) {
        return;
    }
    let Some(cq) = ctrl.cqs.get_mut(usize::from(cqid)).and_then(|q| q.as_mut()) else {
        return;
    };
    let mut wrote = false;
    let mut failed = None;
    while !cq.full() {
        let Some(mut cqe) = cq.overflow.pop_front() else {
            break;
        };
        if cq.phase {
            cqe.status |= VPU_CQE_PHASE as u16;
        } else {
            cqe.status &= !(VPU_CQE_PHASE as u16);
        }
        let addr = cq
            .base
            .wrapping_add(u64::from(cq.tail) * u64::from(VPU_CQE_SIZE));
        // The phase tag is in the last dword: write the first 12 bytes, then that dword, so
        // the host never sees the new phase with stale contents.
        let bytes = as_bytes(&cqe);
        let res = shared
            .iova
            .resolve(addr, bytes.len(), super::dma::Access::Write);
        let written = match res {
            Ok(r) => {
                let mut last = [0u8; 4];
                last.copy_from_slice(&bytes[12..16]);
                r.region.write(r.offset, &bytes[..12])
                    && r.region.write_u32(r.offset + 12, u32::from_le_bytes(last))
            }
            Err(f) => {
                failed = Some(f);
                false
            }
        };
        if !written {
            cq.overflow.push_front(cqe);
            break;
        }
        wrote = true;
        shared.counters.completions.fetch_add(1, Ordering::Relaxed);
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
    }
    if wrote && cq.interrupts && cq.vector < 64 {
        ctrl.irq_pending |= 1u64 << cq.vector;
    }
    if let Some(f) = failed {
        shared.counters.dma_faults.fetch_add(1, Ordering::Relaxed);
        tracing::error!(card = %shared.name, queue = cqid, iova = f.iova, reason = f.reason,
            "completion queue write failed: controller fatal status");
        ctrl.cfs = true;
    }
}

/// Signals the interrupt vectors that have new completions.
pub(super) fn flush_interrupts(shared: &Shared, ctrl: &mut Ctrl) {
    let mut pending = std::mem::take(&mut ctrl.irq_pending);
    if pending == 0 {
        return;
    }
    let irqs = shared.interrupts();
    while pending != 0 {
        let v = pending.trailing_zeros() as usize;
        pending &= pending - 1;
        if shared
            .lost_interrupts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            shared
                .counters
                .interrupts_lost
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(card = %shared.name, vector = v, "fault injection: interrupt lost");
            continue;
        }
        if let Some(fd) = irqs.get(v) {
            if let Err(e) = fd.write(1) {
                tracing::error!(card = %shared.name, vector = v, error = %e, "signalling interrupt failed");
            } else {
                shared.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
