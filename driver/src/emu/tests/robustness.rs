//! The card survives anything the host writes, and leaves nothing running when dropped.

use std::time::{Duration, Instant};

use vpu_ffi::*;

use super::encode::{encode_cmd, pattern, Frame};
use super::*;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn card_threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

#[test]
fn dropping_the_card_stops_its_threads() {
    let config = EmuConfig {
        engines: 3,
        ..EmuConfig::with_index(201)
    };
    let mut host = Host::new(config);
    // A new thread names itself once it runs: the controller, three encode engines, the
    // decoder and the scaler.
    let deadline = Instant::now() + TIMEOUT;
    while card_threads("emu201-") < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(card_threads("emu201-"), 6);
    // Work queued on a hung engine does not keep the thread alive.
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    host.card
        .inject(super::super::Fault::HangEngine {
            engine: None,
            duration: None,
        })
        .unwrap();
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    drop((q, frame, out, host));
    assert_eq!(card_threads("emu201-"), 0);
}

#[test]
fn pacing_holds_the_declared_pixel_rate() {
    // 64x64 frames at 64*64*100 luma samples/s: 10 ms a frame.
    let mut host = Host::new(EmuConfig {
        engines: 1,
        pace: true,
        pixel_rate_per_engine: 64 * 64 * 100,
        ..EmuConfig::default()
    });
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 16, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    let start = Instant::now();
    for _ in 0..10 {
        q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    }
    for _ in 0..10 {
        assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    // The engine was busy all that time: its measured load is most of one engine.
    let (_, log) = host.log(VPU_LOG_ENGINE, 0, 1088);
    let mut raw = vec![0u8; 1088];
    assert!(log.read(0, &mut raw));
    let log: vpu_engine_log = from_bytes(&raw);
    assert!({ log.engine[0].busy_ns } >= 100_000_000);
    assert!({ log.engine[0].load } >= VPU_LOAD_UNITS_PER_ENGINE / 20);
}

#[test]
fn random_host_writes_never_break_the_card() {
    let mut host = Host::new(EmuConfig::default());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut q = host.io_queue(1, 32, 1);
    let p = params(64, 64, true);
    let session = host.create_session(&p);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let scratch = host.io.alloc_dma(1 << 16).unwrap();
    let opcodes = [
        VPU_ADMIN_IDENTIFY,
        VPU_ADMIN_CREATE_CQ,
        VPU_ADMIN_CREATE_SQ,
        VPU_ADMIN_DELETE_SQ,
        VPU_ADMIN_GET_LOG_PAGE,
        VPU_ADMIN_SET_FEATURES,
        VPU_ADMIN_ABORT,
        VPU_ADMIN_CREATE_SESSION,
        VPU_ADMIN_DESTROY_SESSION,
        VPU_ADMIN_RECONFIGURE_SESSION,
        VPU_IO_ENCODE_FRAME,
        VPU_IO_FLUSH_SESSION,
        VPU_IO_NOP,
    ];
    let pick = |rng: &mut Rng, iova: u64| match rng.next() % 4 {
        0 => rng.next(),
        1 => iova + (rng.next() % 0x20000),
        2 => iova & !0xfff,
        _ => 0,
    };
    for i in 0..400 {
        let mut c = vpu_sqe {
            opcode: opcodes[(rng.next() % opcodes.len() as u64) as usize] as u8,
            nsid: rng.next() as u32,
            mptr: pick(&mut rng, scratch.iova()),
            prp1: pick(&mut rng, frame.data.iova()),
            prp2: pick(&mut rng, frame.list.iova()),
            cdw10: if rng.next() % 2 == 0 {
                session
            } else {
                rng.next() as u32
            },
            cdw11: rng.next() as u32,
            cdw12: rng.next() as u32,
            cdw13: rng.next() as u32,
            cdw14: (rng.next() % (1 << 17)) as u32,
            cdw15: rng.next() as u32 % (1 << 16),
            ..Default::default()
        };
        // Keep the test's own queues alive: no deleting queue 1.
        if u32::from(c.opcode) == VPU_ADMIN_DELETE_SQ {
            c.cdw10 |= 2;
        }
        let admin = u32::from(c.opcode) >= 0xc0 || u32::from(c.opcode) < 0x80;
        if admin {
            host.admin.submit(&host.io, c);
            host.admin
                .wait(&host.io, TIMEOUT)
                .unwrap_or_else(|| panic!("admin command {i} completes"));
        } else {
            q.submit(&host.io, c);
            q.wait(&host.io, TIMEOUT)
                .unwrap_or_else(|| panic!("I/O command {i} completes"));
        }
        // Stray register and config writes (never CC, AQA/ASQ/ACQ or real doorbells).
        let off = 0x38 + 4 * (rng.next() % ((u64::from(VPU_REG_DBS) - 0x38) / 4));
        host.io.write32(0, off, rng.next() as u32).unwrap();
        let mut b = [0u8; 4];
        host.io
            .config_read((rng.next() % 4092) as u32 & !3, &mut b)
            .unwrap();
    }
    // Every doorbell beyond the live queues: ignored, counted.
    for qid in 5..64u32 {
        host.io
            .write32(0, u64::from(VPU_REG_DBS + 8 * qid), rng.next() as u32)
            .unwrap();
    }
    assert!(host.card.counters().doorbell_errors >= 59);
    assert_eq!(host.csts() & VPU_CSTS_CFS, 0);
    q.submit(&host.io, cmd(VPU_IO_NOP));
    assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
}

#[test]
fn resets_racing_encodes_leave_a_working_card() {
    let mut host = Host::new(EmuConfig::default());
    let p = params(64, 64, false);
    let frame = Frame::new(&host, &pattern(&p, 1));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    for round in 0..6 {
        let sessions = [host.create_session(&p), host.create_session(&p)];
        let mut queues = [host.io_queue(1, 8, 1), host.io_queue(2, 8, 2)];
        for i in 0..12 {
            let q = &mut queues[i % 2];
            q.submit(
                &host.io,
                encode_cmd(sessions[i % 2], &frame, &out, 1 << 16, 0),
            );
        }
        // Alternate the two kinds of reset, at varying points of the work.
        std::thread::sleep(Duration::from_millis(round * 3));
        if round % 2 == 0 {
            host.io.reset().unwrap();
        } else {
            host.io.write32(0, u64::from(VPU_REG_CC), 0).unwrap();
            assert!(wait_ready(&host.io, false));
        }
        host.enable();
    }
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
    assert_eq!(host.card.counters().fatal_errors, 0);
}
