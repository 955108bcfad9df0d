//! Encode throughput of the emulated card's command path against `openh264` called
//! directly on the same frames, side by side in one run.
//!
//! `cargo bench -p vpu-driver --bench emu_encode [-- FRAMES]`
//!
//! The card path is what a host sees below the NVMe transport: frames already in DMA
//! memory (zero copy), Encode Frame commands through an I/O queue with several in flight,
//! PRP lists, completions polled from the CQ. Both sides use one encoder thread and the
//! same encoder settings (the card's session configuration). Rounds alternate between
//! the two and the best round of each counts, to damp noise from other load.
//!
//! Two figures per side: wall-clock fps, and fps per CPU-second of the whole process
//! (host, controller and engine threads together). On a machine shared with other work
//! the CPU figure is the stable one: it is the cost of a frame, whoever else runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
    UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use std::os::fd::{AsRawFd, BorrowedFd};
use vmm_sys_util::eventfd::EventFd;
use vpu_driver::emu::{EmuConfig, EmulatedCard};
use vpu_driver::io::{DeviceIo, DeviceIoExt, DmaBuffer};
use vpu_ffi::*;

const ROUNDS: usize = 3;

/// CPU time used by this process so far (all threads).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU time of a measured stretch.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

struct Timer(Instant, Duration);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), process_cpu())
    }
    fn stop(self) -> Cost {
        Cost {
            wall: self.0.elapsed(),
            cpu: process_cpu().saturating_sub(self.1),
        }
    }
}
const IN_FLIGHT: usize = 4;
const QUEUE: u16 = 16;

fn frames(w: usize, h: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = vec![128u8; w * h * 3 / 2];
            for y in 0..h {
                for x in 0..w {
                    let mut v = ((x + 3 * i) as u32).wrapping_mul(0x9e37_79b9)
                        ^ ((y + i) as u32).wrapping_mul(0x85eb_ca6b);
                    v ^= v >> 15;
                    f[y * w + x] = (((x + y + 2 * i) % 160) as u32 + (v & 0x3f)) as u8;
                }
            }
            f
        })
        .collect()
}

fn config(bitrate: u32) -> EncoderConfig {
    EncoderConfig::new()
        .skip_frames(false)
        .usage_type(UsageType::CameraVideoRealTime)
        .max_frame_rate(FrameRate::from_hz(30.0))
        .intra_frame_period(IntraFramePeriod::from_num_frames(60))
        .num_threads(1)
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Bitrate)
        .bitrate(BitRate::from_bps(bitrate))
}

fn direct(frames: &[Vec<u8>], w: usize, h: usize, bitrate: u32) -> (Cost, usize) {
    let mut enc =
        Encoder::with_api_config(OpenH264API::from_source(), config(bitrate)).expect("encoder");
    let mut out = Vec::with_capacity(1 << 20);
    let mut bytes = 0;
    let timer = Timer::start();
    for f in frames {
        let (y, uv) = f.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        let src = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        out.clear();
        enc.encode(&src).expect("encode").write_vec(&mut out);
        bytes += out.len();
    }
    (timer.stop(), bytes)
}

fn sqe_bytes(c: &vpu_sqe) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0] = c.opcode;
    b[2..4].copy_from_slice(&{ c.cid }.to_le_bytes());
    b[16..24].copy_from_slice(&{ c.mptr }.to_le_bytes());
    b[24..32].copy_from_slice(&{ c.prp1 }.to_le_bytes());
    b[32..40].copy_from_slice(&{ c.prp2 }.to_le_bytes());
    for (i, dw) in [c.cdw10, c.cdw11, c.cdw12, c.cdw13, c.cdw14, c.cdw15]
        .into_iter()
        .enumerate()
    {
        b[40 + 4 * i..44 + 4 * i].copy_from_slice(&dw.to_le_bytes());
    }
    b
}

struct Queue {
    qid: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    tail: u16,
    head: u16,
    phase: bool,
    cid: u16,
}

impl Queue {
    fn new(io: &Arc<dyn DeviceIo>, qid: u16) -> Self {
        Queue {
            qid,
            sq: io.alloc_dma(usize::from(QUEUE) * 64).expect("sq"),
            cq: io.alloc_dma(usize::from(QUEUE) * 16).expect("cq"),
            tail: 0,
            head: 0,
            phase: true,
            cid: 0,
        }
    }

    fn submit(&mut self, io: &Arc<dyn DeviceIo>, mut c: vpu_sqe) {
        self.cid = self.cid.wrapping_add(1);
        c.cid = self.cid;
        assert!(self.sq.write(usize::from(self.tail) * 64, &sqe_bytes(&c)));
        self.tail = (self.tail + 1) % QUEUE;
        io.write32(
            0,
            u64::from(VPU_REG_DBS + 8 * u32::from(self.qid)),
            u32::from(self.tail),
        )
        .expect("doorbell");
    }

    /// Waits for the next completion (on the interrupt eventfd): (dw0, status without phase).
    fn complete(&mut self, io: &Arc<dyn DeviceIo>, irq: &EventFd) -> (u32, u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut raw = [0u8; 16];
            assert!(self.cq.read(usize::from(self.head) * 16, &mut raw));
            let status = u16::from_le_bytes([raw[14], raw[15]]);
            if (status & 1 == 1) == self.phase {
                self.head = (self.head + 1) % QUEUE;
                if self.head == 0 {
                    self.phase = !self.phase;
                }
                io.write32(
                    0,
                    u64::from(VPU_REG_DBS + 8 * u32::from(self.qid) + 4),
                    u32::from(self.head),
                )
                .expect("doorbell");
                let dw0 = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                return (dw0, status >> 1);
            }
            assert!(Instant::now() < deadline, "completion timed out");
            // SAFETY: `irq` outlives this borrow of its descriptor.
            let fd = unsafe { BorrowedFd::borrow_raw(irq.as_raw_fd()) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(100u16)).expect("poll");
            // Clears the counter; EAGAIN when the completion was seen before the signal.
            let _ = irq.read();
        }
    }
}

fn cmd(opcode: u32) -> vpu_sqe {
    vpu_sqe {
        opcode: opcode as u8,
        ..Default::default()
    }
}

/// A frame in DMA memory with its PRP list.
struct DmaFrame {
    data: DmaBuffer,
    list: DmaBuffer,
}

fn card(frames: &[Vec<u8>], w: usize, h: usize, bitrate: u32) -> (Cost, usize) {
    let card = EmulatedCard::new(EmuConfig {
        engines: 1,
        ..EmuConfig::with_index(250)
    })
    .expect("card");
    let io: Arc<dyn DeviceIo> = card;
    io.config_write(0x04, &0x6u16.to_le_bytes())
        .expect("bus master");
    let irqs = io.enable_interrupts(2).expect("interrupts");
    let mut admin = Queue::new(&io, 0);
    let aqa = u32::from(QUEUE - 1) | (u32::from(QUEUE - 1) << VPU_AQA_ACQS_SHIFT);
    io.write32(0, u64::from(VPU_REG_AQA), aqa).expect("aqa");
    io.write64(0, u64::from(VPU_REG_ASQ), admin.sq.iova())
        .expect("asq");
    io.write64(0, u64::from(VPU_REG_ACQ), admin.cq.iova())
        .expect("acq");
    let cc =
        VPU_CC_EN | (VPU_SQES_LOG2 << VPU_CC_IOSQES_SHIFT) | (VPU_CQES_LOG2 << VPU_CC_IOCQES_SHIFT);
    io.write32(0, u64::from(VPU_REG_CC), cc).expect("cc");
    while io.read32(0, u64::from(VPU_REG_CSTS)).expect("csts") & VPU_CSTS_RDY == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let q = Queue::new(&io, 1);
    let size = u32::from(QUEUE - 1) << VPU_QUEUE_QSIZE_SHIFT;
    let mut c = cmd(VPU_ADMIN_CREATE_CQ);
    c.prp1 = q.cq.iova();
    c.cdw10 = 1 | size;
    c.cdw11 = VPU_QUEUE_PC | VPU_CQ_IEN | (1 << VPU_CQ_IV_SHIFT);
    admin.submit(&io, c);
    assert_eq!(admin.complete(&io, &irqs[0]).1, 0);
    let mut c = cmd(VPU_ADMIN_CREATE_SQ);
    c.prp1 = q.sq.iova();
    c.cdw10 = 1 | size;
    c.cdw11 = VPU_QUEUE_PC | (1 << VPU_SQ_CQID_SHIFT);
    admin.submit(&io, c);
    assert_eq!(admin.complete(&io, &irqs[0]).1, 0);
    let mut q = q;
    // Session parameters, laid out as vpu_session_params.
    let mut p = [0u8; 64];
    p[3] = VPU_PIXFMT_I420 as u8;
    p[4..6].copy_from_slice(&(w as u16).to_le_bytes());
    p[6..8].copy_from_slice(&(h as u16).to_le_bytes());
    p[8..12].copy_from_slice(&30u32.to_le_bytes());
    p[12..16].copy_from_slice(&1u32.to_le_bytes());
    p[16..20].copy_from_slice(&(w as u32).to_le_bytes());
    p[20..24].copy_from_slice(&(w as u32 / 2).to_le_bytes());
    p[24] = VPU_RC_CBR as u8;
    p[28..32].copy_from_slice(&bitrate.to_le_bytes());
    p[40..44].copy_from_slice(&60u32.to_le_bytes());
    p[44..46].copy_from_slice(&(VPU_ENGINE_ANY as u16).to_le_bytes());
    let pbuf = io.alloc_dma(4096).expect("params");
    assert!(pbuf.write(0, &p));
    let mut c = cmd(VPU_ADMIN_CREATE_SESSION);
    c.prp1 = pbuf.iova();
    admin.submit(&io, c);
    let (session, status) = admin.complete(&io, &irqs[0]);
    assert_eq!(status, 0, "create session");
    // Every frame in DMA memory up front: the zero-copy path.
    let dma: Vec<DmaFrame> = frames
        .iter()
        .map(|f| {
            let data = io.alloc_dma(f.len()).expect("frame");
            assert!(data.write(0, f));
            let list = io.alloc_dma(4096 * 2).expect("prp list");
            let mut entries: Vec<u64> = (1..f.len().div_ceil(4096) as u64)
                .map(|pg| data.iova() + pg * 4096)
                .collect();
            // The last entry of a full list page chains to the next list page.
            if entries.len() > 512 {
                entries.insert(511, list.iova() + 4096);
            }
            let entries: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            assert!(list.write(0, &entries));
            DmaFrame { data, list }
        })
        .collect();
    let outs: Vec<DmaBuffer> = (0..IN_FLIGHT)
        .map(|_| io.alloc_dma(1 << 21).expect("out"))
        .collect();
    let encode = |q: &mut Queue, i: usize| {
        let mut c = cmd(VPU_IO_ENCODE_FRAME);
        c.cdw10 = session;
        c.prp1 = dma[i].data.iova();
        c.prp2 = dma[i].list.iova();
        c.mptr = outs[i % IN_FLIGHT].iova();
        c.cdw14 = 1 << 21;
        c.cdw15 = frames[i].len() as u32;
        q.submit(&io, c);
    };
    let mut bytes = 0usize;
    let timer = Timer::start();
    let mut next = 0;
    while next < frames.len().min(IN_FLIGHT) {
        encode(&mut q, next);
        next += 1;
    }
    for _ in 0..frames.len() {
        let (dw0, status) = q.complete(&io, &irqs[1]);
        assert_eq!(status, 0, "encode");
        bytes += dw0 as usize;
        if next < frames.len() {
            encode(&mut q, next);
            next += 1;
        }
    }
    (timer.stop(), bytes)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    println!(
        "emu_encode: {n} frames per round, best of {ROUNDS} alternating rounds, 1 encoder thread"
    );
    for (w, h, bitrate) in [(1280usize, 720usize, 4_000_000u32), (1920, 1080, 8_000_000)] {
        let input = frames(w, h, n);
        let best = |a: Option<Cost>, b: Cost| {
            let a = a.unwrap_or(b);
            Some(Cost {
                wall: a.wall.min(b.wall),
                cpu: a.cpu.min(b.cpu),
            })
        };
        let (mut direct_cost, mut card_cost) = (None, None);
        let (mut bytes_direct, mut bytes_card) = (0, 0);
        for _ in 0..ROUNDS {
            let (c, b) = direct(&input, w, h, bitrate);
            direct_cost = best(direct_cost, c);
            bytes_direct = b;
            let (c, b) = card(&input, w, h, bitrate);
            card_cost = best(card_cost, c);
            bytes_card = b;
        }
        let (Some(d), Some(c)) = (direct_cost, card_cost) else {
            continue;
        };
        let fps = |t: Duration| n as f64 / t.as_secs_f64();
        println!(
            "{w}x{h} wall: openh264 direct {:.1} fps, emulated card {:.1} fps, ratio {:.3}",
            fps(d.wall),
            fps(c.wall),
            fps(c.wall) / fps(d.wall)
        );
        println!(
            "{w}x{h} cpu:  openh264 direct {:.1} fps/cpu-s, emulated card {:.1} fps/cpu-s, ratio {:.3} (bitstream {} vs {} bytes)",
            fps(d.cpu),
            fps(c.cpu),
            fps(c.cpu) / fps(d.cpu),
            bytes_direct,
            bytes_card
        );
    }
}
