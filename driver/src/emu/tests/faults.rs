//! Injected faults, each observed at the register or queue level.

use std::time::{Duration, Instant};

use vpu_ffi::*;

use super::encode::{encode_cmd, pattern, Frame};
use super::*;
use crate::emu::{EmuError, Fault};

#[test]
fn fault_parse() {
    assert_eq!(EmulatedCard::fault_kinds().len(), 6);
    for kind in EmulatedCard::fault_kinds() {
        let engine = kind.ends_with("engine").then_some(0);
        let f = Fault::parse(kind, engine, None, None).unwrap();
        assert_eq!(f.kind(), *kind);
    }
    assert_eq!(
        Fault::parse("hang-engine", Some(1), None, Some(250)).unwrap(),
        Fault::HangEngine {
            engine: Some(1),
            duration: Some(Duration::from_millis(250))
        }
    );
    assert_eq!(
        Fault::parse("lost-interrupt", None, Some(3), None).unwrap(),
        Fault::LostInterrupt { count: 3 }
    );
    assert!(matches!(
        Fault::parse("melt", None, None, None),
        Err(EmuError::UnknownFault { .. })
    ));
    assert!(Fault::parse("lost-interrupt", None, Some(0), None).is_err());
    assert!(Fault::parse("fatal-status", Some(0), None, None).is_err());
    assert!(Fault::parse("slow-engine", None, Some(1), None).is_err());
    let card = EmulatedCard::new(EmuConfig::default()).unwrap();
    assert!(matches!(
        card.inject(Fault::HangEngine {
            engine: Some(5),
            duration: None
        }),
        Err(EmuError::InjectEngine { .. })
    ));
}

fn nop_host() -> (Host, QueuePair) {
    let mut host = Host::new(EmuConfig::default());
    let q = host.io_queue(1, 8, 1);
    (host, q)
}

#[test]
fn lost_interrupt() {
    let (host, mut q) = nop_host();
    let irq = host.irqs[1].clone();
    host.card.inject(Fault::LostInterrupt { count: 1 }).unwrap();
    q.submit(&host.io, cmd(VPU_IO_NOP));
    let cqe = q
        .wait(&host.io, TIMEOUT)
        .expect("completion is still posted");
    assert_eq!(status(&cqe), OK);
    assert!(irq.read().is_err(), "the interrupt was lost");
    assert_eq!(host.card.counters().interrupts_lost, 1);
    q.submit(&host.io, cmd(VPU_IO_NOP));
    q.wait(&host.io, TIMEOUT).expect("completion");
    assert!(irq.read().unwrap() >= 1, "the next interrupt arrives");
}

#[test]
fn fatal_status_stops_until_reset() {
    let (mut host, mut q) = nop_host();
    host.card.inject(Fault::FatalStatus).unwrap();
    assert_ne!(host.csts() & VPU_CSTS_CFS, 0);
    q.submit(&host.io, cmd(VPU_IO_NOP));
    assert!(q.wait(&host.io, Duration::from_millis(100)).is_none());
    host.io.write32(0, u64::from(VPU_REG_CC), 0).unwrap();
    assert!(wait_ready(&host.io, false));
    assert_eq!(host.csts() & VPU_CSTS_CFS, 0);
    host.enable();
    let mut q = host.io_queue(1, 8, 1);
    q.submit(&host.io, cmd(VPU_IO_NOP));
    assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
}

#[test]
fn corrupt_completion() {
    let (mut host, mut q) = nop_host();
    host.card
        .inject(Fault::CorruptCompletion { count: 1 })
        .unwrap();
    let cid = q.submit(&host.io, cmd(VPU_IO_NOP));
    let cqe = q.wait(&host.io, TIMEOUT).unwrap();
    assert_ne!({ cqe.cid }, cid);
    let cid = q.submit(&host.io, cmd(VPU_IO_NOP));
    assert_eq!({ q.wait(&host.io, TIMEOUT).unwrap().cid }, cid);
    // A successful Encode Frame reports more bytes than its buffer holds.
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    host.card
        .inject(Fault::CorruptCompletion { count: 1 })
        .unwrap();
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    let cqe = q.wait(&host.io, TIMEOUT).unwrap();
    assert_eq!(status(&cqe), OK);
    assert!(cqe.dw0 > 1 << 16);
    assert_eq!(host.card.counters().corrupted, 2);
}

#[test]
fn hang_engine_then_abort_and_destroy() {
    let mut host = Host::new(EmuConfig {
        engines: 1,
        ..EmuConfig::default()
    });
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    host.card
        .inject(Fault::HangEngine {
            engine: None,
            duration: None,
        })
        .unwrap();
    let a = q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    let b = q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    let c = q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    assert!(
        q.wait(&host.io, Duration::from_millis(100)).is_none(),
        "a hung engine completes nothing"
    );
    let (_, log) = host.log(VPU_LOG_ENGINE, 0, 1088);
    let mut raw = vec![0u8; 1088];
    assert!(log.read(0, &mut raw));
    let log: vpu_engine_log = from_bytes(&raw);
    assert_eq!(log.engine[0].state, VPU_ENGINE_STATE_FAULT as u8);
    // Abort a queued encode.
    let mut ab = cmd(VPU_ADMIN_ABORT);
    ab.cdw10 = 1 | (u32::from(a) << VPU_ABORT_CID_SHIFT);
    let cqe = host.admin(ab);
    assert_eq!(status(&cqe), OK);
    assert_eq!(cqe.dw0 & VPU_ABORT_NOT_ABORTED, 0);
    let done = q.wait(&host.io, TIMEOUT).unwrap();
    assert_eq!(
        ({ done.cid }, status(&done)),
        (a, (VPU_SCT_GENERIC, VPU_SC_ABORT_REQUESTED))
    );
    // Aborting it again: not aborted.
    let cqe = host.admin(ab);
    assert_ne!(cqe.dw0 & VPU_ABORT_NOT_ABORTED, 0);
    // Destroying the session aborts the rest.
    let mut d = cmd(VPU_ADMIN_DESTROY_SESSION);
    d.cdw10 = session;
    assert_eq!(status(&host.admin(d)), OK);
    for want in [b, c] {
        let done = q.wait(&host.io, TIMEOUT).unwrap();
        assert_eq!(
            ({ done.cid }, status(&done)),
            (want, (VPU_SCT_VENDOR, VPU_SC_SESSION_ABORTED))
        );
    }
    assert_eq!(
        status(&host.admin(d)),
        (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND)
    );
}

#[test]
fn hang_engine_with_duration_recovers() {
    let mut host = Host::new(EmuConfig::default());
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    host.card
        .inject(Fault::HangEngine {
            engine: None,
            duration: Some(Duration::from_millis(1000)),
        })
        .unwrap();
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    assert!(q.wait(&host.io, Duration::from_millis(50)).is_none());
    assert_eq!(
        status(&q.wait(&host.io, TIMEOUT).expect("completes after the hang")),
        OK
    );
}

#[test]
fn slow_engine() {
    // Paced at 64x64 luma per 20 ms.
    let mut host = Host::new(EmuConfig {
        engines: 1,
        pace: true,
        pixel_rate_per_engine: 64 * 64 * 50,
        ..EmuConfig::default()
    });
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    host.card
        .inject(Fault::SlowEngine {
            engine: Some(0),
            factor: 20,
            duration: None,
        })
        .unwrap();
    let start = Instant::now();
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
    // 20 ms paced, 20 times slower: at least 400 ms.
    assert!(start.elapsed() >= Duration::from_millis(400));
    let (_, log) = host.log(VPU_LOG_ENGINE, 0, 1088);
    let mut raw = vec![0u8; 1088];
    assert!(log.read(0, &mut raw));
    let log: vpu_engine_log = from_bytes(&raw);
    assert!({ log.engine[0].busy_ns } >= 400_000_000);
}

#[test]
fn surprise_removal() {
    let (host, mut q) = nop_host();
    host.card.inject(Fault::SurpriseRemoval).unwrap();
    assert_eq!(host.csts(), u32::MAX);
    assert_eq!(host.io.read32(0, u64::from(VPU_REG_VS)).unwrap(), u32::MAX);
    let mut id = [0u8; 4];
    host.io.config_read(0, &mut id).unwrap();
    assert_eq!(id, [0xff; 4]);
    q.submit(&host.io, cmd(VPU_IO_NOP));
    assert!(q.wait(&host.io, Duration::from_millis(100)).is_none());
    assert!(matches!(host.io.reset(), Err(crate::io::IoError::Removed)));
    // DMA buffers can still be released.
    drop(q);
    assert_eq!(host.card.dma_mappings(), 2);
}

#[test]
fn reset_drops_queued_work_without_touching_memory() {
    let mut host = Host::new(EmuConfig::default());
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    assert!(out.write(0, &[0xaa; 256]));
    host.card
        .inject(Fault::HangEngine {
            engine: None,
            duration: None,
        })
        .unwrap();
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    std::thread::sleep(Duration::from_millis(20));
    host.io.reset().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(q.peek().is_none(), "no completion after reset");
    let mut head = [0u8; 256];
    assert!(out.read(0, &mut head));
    assert_eq!(head, [0xaa; 256], "no DMA after reset");
    // The hang is cleared with everything else.
    host.enable();
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
}
