//! The controller register file on BAR0: CAP, VS, CC/CSTS handshake, admin queue
//! attributes, doorbells; controller enable and reset.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vpu_ffi::*;

use super::controller::{Ctrl, Shared, QUEUE_PAIRS};
use super::pci::MSIX_TABLE_OFFSET;
use super::queues::{self, CompQueue, SubQueue};

/// Maximum Queue Entries Supported, 0's based.
pub(super) const MQES: u16 = 1023;
/// CAP.TO: worst-case time to become ready, in 500 ms units.
const CAP_TIMEOUT: u64 = 20;
/// How long CSTS.RDY takes to rise after CC.EN is set.
const ENABLE_DELAY: Duration = Duration::from_millis(2);
/// NVMe 1.4 asynchronous event: error status, "invalid doorbell register" / "invalid
/// doorbell write value", log page 01h.
const AEN_INVALID_DOORBELL: u32 = 0x01_00_00;
const AEN_INVALID_DOORBELL_VALUE: u32 = 0x01_01_00;

/// The value of CAP.
pub(super) fn cap() -> u64 {
    u64::from(MQES)
        | u64::from(VPU_CAP_CQR)
        | (CAP_TIMEOUT << VPU_CAP_TO_SHIFT)
        | VPU_CAP_CSS_NVM
        | (0 << VPU_CAP_DSTRD_SHIFT)
        | (0 << VPU_CAP_MPSMIN_SHIFT)
        | (0 << VPU_CAP_MPSMAX_SHIFT)
}

/// A 32-bit register read.
pub(super) fn read(ctrl: &Ctrl, offset: u32) -> u32 {
    match offset {
        VPU_REG_CAP => cap() as u32,
        o if o == VPU_REG_CAP + 4 => (cap() >> 32) as u32,
        VPU_REG_VS => VPU_NVME_VERSION_1_4,
        VPU_REG_INTMS | VPU_REG_INTMC => ctrl.intms,
        VPU_REG_CC => ctrl.cc,
        VPU_REG_CSTS => {
            let mut v = (ctrl.shst & VPU_CSTS_SHST_MASK) << VPU_CSTS_SHST_SHIFT;
            if ctrl.ready() {
                v |= VPU_CSTS_RDY;
            }
            if ctrl.cfs {
                v |= VPU_CSTS_CFS;
            }
            v
        }
        VPU_REG_AQA => ctrl.aqa,
        VPU_REG_ASQ => ctrl.asq as u32,
        o if o == VPU_REG_ASQ + 4 => (ctrl.asq >> 32) as u32,
        VPU_REG_ACQ => ctrl.acq as u32,
        o if o == VPU_REG_ACQ + 4 => (ctrl.acq >> 32) as u32,
        // Doorbells are write-only; reserved registers read as zero.
        _ => 0,
    }
}

/// A 32-bit register write.
pub(super) fn write(shared: &Shared, ctrl: &mut Ctrl, offset: u32, value: u32) {
    match offset {
        VPU_REG_INTMS => ctrl.intms |= value,
        VPU_REG_INTMC => ctrl.intms &= !value,
        VPU_REG_CC => write_cc(shared, ctrl, value),
        VPU_REG_AQA => ctrl.aqa = value,
        VPU_REG_ASQ => ctrl.asq = (ctrl.asq & !0xffff_ffff) | u64::from(value),
        o if o == VPU_REG_ASQ + 4 => ctrl.asq = (ctrl.asq & 0xffff_ffff) | (u64::from(value) << 32),
        VPU_REG_ACQ => ctrl.acq = (ctrl.acq & !0xffff_ffff) | u64::from(value),
        o if o == VPU_REG_ACQ + 4 => ctrl.acq = (ctrl.acq & 0xffff_ffff) | (u64::from(value) << 32),
        // The MSI-X table and PBA are programmed by the host kernel (VFIO), not by the
        // driver: writes there are accepted and have no effect on the model.
        o if o >= MSIX_TABLE_OFFSET => {}
        o if o >= VPU_REG_DBS => doorbell(shared, ctrl, o, value),
        // CAP, VS, CSTS are read-only; NSSR is not supported (CAP.NSSRS clear).
        _ => {}
    }
}

fn write_cc(shared: &Shared, ctrl: &mut Ctrl, value: u32) {
    let was = ctrl.cc & VPU_CC_EN != 0;
    let now = value & VPU_CC_EN != 0;
    ctrl.cc = value;
    if was && !now {
        tracing::info!(card = %shared.name, "controller reset (CC.EN 1 -> 0)");
        reset(shared, ctrl);
        ctrl.cc = value;
    } else if !was && now {
        enable(shared, ctrl);
    }
    let shn = (value >> VPU_CC_SHN_SHIFT) & VPU_CC_SHN_MASK;
    if shn != 0 && ctrl.shst == 0 {
        tracing::info!(card = %shared.name, "shutdown requested");
        ctrl.shst = VPU_CSTS_SHST_COMPLETE;
    }
    shared.wake.notify_all();
}

fn enable(shared: &Shared, ctrl: &mut Ctrl) {
    let cc = ctrl.cc;
    let asqs = (ctrl.aqa & VPU_AQA_ASQS_MASK) as u16;
    let acqs = ((ctrl.aqa >> VPU_AQA_ACQS_SHIFT) & VPU_AQA_ASQS_MASK) as u16;
    let field = |shift: u32, mask: u32| (cc >> shift) & mask;
    let problem = if field(VPU_CC_MPS_SHIFT, VPU_CC_MPS_MASK) != 0 {
        Some("CC.MPS outside CAP.MPSMIN..MPSMAX")
    } else if field(VPU_CC_CSS_SHIFT, 0x7) != 0 {
        Some("CC.CSS selects an unsupported command set")
    } else if field(VPU_CC_AMS_SHIFT, 0x7) != 0 {
        Some("CC.AMS selects an unsupported arbitration")
    } else if !matches!(field(VPU_CC_IOSQES_SHIFT, 0xf), 0 | VPU_SQES_LOG2) {
        Some("CC.IOSQES is not 6")
    } else if !matches!(field(VPU_CC_IOCQES_SHIFT, 0xf), 0 | VPU_CQES_LOG2) {
        Some("CC.IOCQES is not 4")
    } else if asqs == 0 || acqs == 0 {
        Some("AQA: admin queues need at least 2 entries")
    } else if ctrl.asq == 0 || ctrl.asq % 4096 != 0 || ctrl.acq == 0 || ctrl.acq % 4096 != 0 {
        Some("ASQ/ACQ not page aligned")
    } else {
        None
    };
    if let Some(why) = problem {
        tracing::warn!(card = %shared.name, cc, aqa = ctrl.aqa, reason = why,
            "enable with an invalid configuration");
        shared.fatal(ctrl, why);
        return;
    }
    let serial = ctrl.serial();
    ctrl.sqs[0] = Some(SubQueue {
        base: ctrl.asq,
        size: asqs + 1,
        head: 0,
        tail: 0,
        cqid: 0,
        serial,
    });
    let mut acq = CompQueue::new(ctrl.acq, acqs + 1, 0, true);
    acq.users = 1;
    ctrl.cqs[0] = Some(acq);
    ctrl.ready_at = Some(Instant::now() + ENABLE_DELAY);
    tracing::info!(card = %shared.name, admin_sq = asqs + 1, admin_cq = acqs + 1, "controller enabled");
}

/// Controller reset: every queue, session and held command is gone; CSTS back to zero.
/// Faults injected into the controller and engines are cleared (not surprise removal).
pub(super) fn reset(shared: &Shared, ctrl: &mut Ctrl) {
    ctrl.generation += 1;
    for q in ctrl.sqs.iter_mut() {
        *q = None;
    }
    for q in ctrl.cqs.iter_mut() {
        *q = None;
    }
    for s in ctrl.sessions.values() {
        s.destroyed.store(true, Ordering::Release);
    }
    ctrl.sessions.clear();
    for e in &shared.engines {
        e.reset();
    }
    shared.xcode.reset();
    ctrl.queues_granted = None;
    ctrl.aers.clear();
    ctrl.events.clear();
    ctrl.last_error = None;
    ctrl.error_count = 0;
    ctrl.irq_pending = 0;
    ctrl.cfs = false;
    ctrl.shst = 0;
    ctrl.ready_at = None;
    ctrl.cc = 0;
    shared.lost_interrupts.store(0, Ordering::Release);
    shared.corrupt_completions.store(0, Ordering::Release);
}

/// Raises an asynchronous event: completes a held Asynchronous Event Request, or keeps the
/// event until one arrives.
pub(super) fn async_event(shared: &Shared, ctrl: &mut Ctrl, event: u32) {
    if let Some(origin) = ctrl.aers.pop() {
        queues::post(shared, ctrl, origin, queues::Done::ok(event));
    } else if ctrl.events.len() < 16 {
        ctrl.events.push_back(event);
    }
}

fn bad_doorbell(shared: &Shared, ctrl: &mut Ctrl, offset: u32, value: u32, event: u32, why: &str) {
    shared
        .counters
        .doorbell_errors
        .fetch_add(1, Ordering::Relaxed);
    ctrl.log_error(u16::MAX, u16::MAX, queues::Status::SUCCESS);
    tracing::warn!(card = %shared.name, offset, value, reason = why, "invalid doorbell write ignored");
    async_event(shared, ctrl, event);
    queues::flush_interrupts(shared, ctrl);
}

fn doorbell(shared: &Shared, ctrl: &mut Ctrl, offset: u32, value: u32) {
    if ctrl.ready_at.is_none() || ctrl.cfs {
        return;
    }
    let index = ((offset - VPU_REG_DBS) / 4) as usize;
    let qid = index / 2;
    if offset % 4 != 0 || qid >= QUEUE_PAIRS {
        return bad_doorbell(
            shared,
            ctrl,
            offset,
            value,
            AEN_INVALID_DOORBELL,
            "no such doorbell",
        );
    }
    if index % 2 == 0 {
        let Some(sq) = ctrl.sqs[qid].as_mut() else {
            return bad_doorbell(
                shared,
                ctrl,
                offset,
                value,
                AEN_INVALID_DOORBELL,
                "submission queue does not exist",
            );
        };
        if value >= u32::from(sq.size) {
            return bad_doorbell(
                shared,
                ctrl,
                offset,
                value,
                AEN_INVALID_DOORBELL_VALUE,
                "tail beyond the queue size",
            );
        }
        sq.tail = value as u16;
        if qid == 0 {
            super::controller::admin_doorbell(shared, ctrl);
        } else {
            shared.wake.notify_one();
        }
    } else {
        let Some(cq) = ctrl.cqs[qid].as_mut() else {
            return bad_doorbell(
                shared,
                ctrl,
                offset,
                value,
                AEN_INVALID_DOORBELL,
                "completion queue does not exist",
            );
        };
        if value >= u32::from(cq.size) {
            return bad_doorbell(
                shared,
                ctrl,
                offset,
                value,
                AEN_INVALID_DOORBELL_VALUE,
                "head beyond the queue size",
            );
        }
        cq.head = value as u16;
        if !cq.overflow.is_empty() {
            queues::drain(shared, ctrl, qid as u16);
            queues::flush_interrupts(shared, ctrl);
        }
    }
}
