//! The video command set: sessions, Encode Frame through real openh264, decoded back.

use openh264::formats::YUVSource;
use vpu_ffi::*;

use super::*;

/// A moving test pattern: a gradient background with a bright square sliding across.
pub(super) fn pattern(p: &vpu_session_params, n: usize) -> Vec<u8> {
    let (w, h) = (usize::from(p.width), usize::from(p.height));
    let (sy, suv) = (p.stride_y as usize, p.stride_uv as usize);
    let nv12 = u32::from(p.pixel_format) == VPU_PIXFMT_NV12;
    let chroma = if nv12 { suv * h / 2 } else { 2 * suv * h / 2 };
    let mut f = vec![0u8; sy * h + chroma];
    let (bx, by) = ((n * 3) % (w - 16), (n * 2) % (h - 16));
    for y in 0..h {
        for x in 0..w {
            let inside = x >= bx && x < bx + 16 && y >= by && y < by + 16;
            f[y * sy + x] = if inside {
                235
            } else {
                ((x + y + n) % 200 + 16) as u8
            };
        }
    }
    let base = sy * h;
    for y in 0..h / 2 {
        for x in 0..w / 2 {
            let (u, v) = ((64 + x + n) as u8, (192 - y) as u8);
            if nv12 {
                f[base + y * suv + 2 * x] = u;
                f[base + y * suv + 2 * x + 1] = v;
            } else {
                f[base + y * suv + x] = u;
                f[base + suv * h / 2 + y * suv + x] = v;
            }
        }
    }
    f
}

/// A frame in DMA memory with its PRP list.
pub(super) struct Frame {
    pub data: DmaBuffer,
    pub list: DmaBuffer,
    pub len: usize,
}

impl Frame {
    pub fn new(host: &Host, bytes: &[u8]) -> Self {
        let data = host.io.alloc_dma(bytes.len()).unwrap();
        assert!(data.write(0, bytes));
        let list = host.io.alloc_dma(4096).unwrap();
        let pages = bytes.len().div_ceil(4096);
        let entries: Vec<u8> = (1..pages as u64)
            .flat_map(|p| (data.iova() + p * 4096).to_le_bytes())
            .collect();
        assert!(list.write(0, &entries));
        Self {
            data,
            list,
            len: bytes.len(),
        }
    }

    pub fn prp2(&self) -> u64 {
        match self.len.div_ceil(4096) {
            0 | 1 => 0,
            2 => self.data.iova() + 4096,
            _ => self.list.iova(),
        }
    }
}

pub(super) fn encode_cmd(
    session: u32,
    frame: &Frame,
    out: &DmaBuffer,
    out_len: u32,
    flags: u32,
) -> vpu_sqe {
    let mut c = cmd(VPU_IO_ENCODE_FRAME);
    c.cdw10 = session;
    c.cdw11 = flags;
    c.cdw12 = 1234;
    c.prp1 = frame.data.iova();
    c.prp2 = frame.prp2();
    c.mptr = out.iova();
    c.cdw14 = out_len;
    c.cdw15 = frame.len as u32;
    c
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn encode_and_decode(p: vpu_session_params, frames: usize, forced: &[usize]) {
    let mut host = Host::new(EmuConfig::default());
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let out = host.io.alloc_dma(1 << 20).unwrap();
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let (w, h, sy) = (
        usize::from(p.width),
        usize::from(p.height),
        p.stride_y as usize,
    );
    let mut decoded = 0;
    let mut keyframes = 0;
    for n in 0..frames {
        let src = pattern(&p, n);
        let frame = Frame::new(&host, &src);
        let flags = if forced.contains(&n) {
            VPU_ENCODE_FORCE_IDR
        } else {
            0
        };
        let cid = q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 20, flags));
        let cqe = q.wait(&host.io, TIMEOUT).expect("encode completion");
        assert_eq!({ cqe.cid }, cid);
        assert_eq!(status(&cqe), OK, "frame {n}");
        let key = cqe.dw1 & VPU_ENCODED_KEYFRAME != 0;
        if n == 0 || forced.contains(&n) {
            assert!(key, "frame {n} should be a keyframe");
            assert_eq!(cqe.dw1 & VPU_FRAME_TYPE_MASK, VPU_FRAME_TYPE_IDR);
        } else {
            assert_eq!(cqe.dw1 & VPU_FRAME_TYPE_MASK, VPU_FRAME_TYPE_P, "frame {n}");
        }
        keyframes += usize::from(key);
        assert_eq!(cqe.dw1 >> VPU_ENCODED_INPUT_LAG_SHIFT, 0);
        let len = cqe.dw0 as usize;
        assert!(len > 0 && len <= 1 << 20);
        let mut packet = vec![0u8; len];
        assert!(out.read(0, &mut packet));
        assert_eq!(&packet[..4], &[0, 0, 0, 1], "Annex-B start code");
        if let Some(yuv) = decoder.decode(&packet).expect("decodable") {
            decoded += 1;
            assert_eq!(yuv.dimensions(), (w, h));
            let ys = yuv.strides().0;
            let got: Vec<u8> = (0..h)
                .flat_map(|r| yuv.y()[r * ys..r * ys + w].to_vec())
                .collect();
            let want: Vec<u8> = (0..h)
                .flat_map(|r| src[r * sy..r * sy + w].to_vec())
                .collect();
            let db = psnr(&got, &want);
            assert!(db >= 30.0, "frame {n}: PSNR {db:.1} dB");
        }
    }
    decoded += decoder.flush_remaining().unwrap().len();
    assert_eq!(decoded, frames);
    let (cqe, log) = host.log(VPU_LOG_SESSION, session, 64);
    assert_eq!(status(&cqe), OK);
    let mut raw = [0u8; 64];
    assert!(log.read(0, &mut raw));
    let log: vpu_session_log = from_bytes(&raw);
    assert_eq!({ log.session_id }, session);
    assert_eq!({ log.frames_in }, frames as u64);
    assert_eq!({ log.frames_out }, frames as u64);
    assert_eq!({ log.keyframes }, keyframes as u64);
    assert_eq!({ log.errors }, 0);
    let (cqe, log) = host.log(VPU_LOG_ENGINE, 0, 1088);
    assert_eq!(status(&cqe), OK);
    let mut raw = vec![0u8; 1088];
    assert!(log.read(0, &mut raw));
    let log: vpu_engine_log = from_bytes(&raw);
    assert_eq!({ log.engines }, 2);
    let e = log.engine[usize::from({ log.engine[0].sessions } == 0)];
    assert_eq!({ e.sessions }, 1);
    assert_eq!({ e.frames }, frames as u64);
    assert!({ e.busy_ns } > 0);
    assert!({ e.load } > 0);
}

#[test]
fn encode_i420_decodes_with_forced_keyframes() {
    encode_and_decode(params(160, 96, false), 30, &[12, 20]);
}

#[test]
fn encode_nv12_with_padded_strides() {
    let mut p = params(128, 72, true);
    p.stride_y = 160;
    p.stride_uv = 192;
    encode_and_decode(p, 12, &[]);
}

#[test]
fn encode_cqp_and_reconfigure() {
    let mut host = Host::new(EmuConfig::default());
    let mut p = params(64, 64, false);
    p.rate_control = VPU_RC_CQP as u8;
    p.qp = 30;
    let cqp = host.create_session(&p);
    let cbr = host.create_session(&params(64, 64, false));
    let mut q = host.io_queue(1, 8, 1);
    let out = host.io.alloc_dma(1 << 16).unwrap();
    let frame = Frame::new(&host, &pattern(&p, 0));
    for s in [cqp, cbr, cbr] {
        q.submit(&host.io, encode_cmd(s, &frame, &out, 1 << 16, 0));
        assert_eq!(status(&q.wait(&host.io, TIMEOUT).unwrap()), OK);
    }
    // Bitrate on a CQP session is invalid; on CBR it applies, with a forced IDR.
    let mut c = cmd(VPU_ADMIN_RECONFIGURE_SESSION);
    c.cdw10 = cqp;
    c.cdw11 = VPU_RECONFIG_BITRATE;
    c.cdw12 = 500_000;
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_VENDOR, VPU_SC_INVALID_PARAMS)
    );
    c.cdw10 = cbr;
    c.cdw11 = VPU_RECONFIG_BITRATE | VPU_RECONFIG_FRAMERATE | VPU_RECONFIG_FORCE_IDR;
    c.cdw13 = 25;
    c.cdw14 = 1;
    assert_eq!(status(&host.admin(c)), OK);
    q.submit(&host.io, encode_cmd(cbr, &frame, &out, 1 << 16, 0));
    let cqe = q.wait(&host.io, TIMEOUT).unwrap();
    assert_eq!(status(&cqe), OK);
    assert_ne!(cqe.dw1 & VPU_ENCODED_KEYFRAME, 0);
    c.cdw10 = 999;
    assert_eq!(
        status(&host.admin(c)),
        (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND)
    );
}

#[test]
fn create_session_is_validated() {
    let mut host = Host::new(EmuConfig {
        engines: 1,
        max_sessions_per_engine: 1,
        ..EmuConfig::default()
    });
    let vendor = |sc| (VPU_SCT_VENDOR, sc);
    let mut cases: Vec<(vpu_session_params, u32)> = Vec::new();
    let mut p = params(64, 64, false);
    p.codec = VPU_CODEC_HEVC as u8;
    cases.push((p, VPU_SC_UNSUPPORTED_CODEC));
    let mut p = params(64, 64, false);
    p.pixel_format = 7;
    cases.push((p, VPU_SC_UNSUPPORTED_FORMAT));
    let mut p = params(66, 64, false);
    p.width = 65;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    cases.push((params(4096, 2160, false), VPU_SC_TOO_LARGE));
    let mut p = params(64, 64, false);
    p.stride_y = 32;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    let mut p = params(64, 64, true);
    p.stride_uv = 32;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    let mut p = params(64, 64, false);
    p.fps_den = 0;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    let mut p = params(64, 64, false);
    p.bitrate = 0;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    let mut p = params(64, 64, false);
    p.rate_control = VPU_RC_CQP as u8;
    p.qp = 52;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    let mut p = params(64, 64, false);
    p.rate_control = 9;
    cases.push((p, VPU_SC_UNSUPPORTED_FORMAT));
    let mut p = params(64, 64, false);
    p.bframes = 2;
    cases.push((p, VPU_SC_UNSUPPORTED_FORMAT));
    let mut p = params(64, 64, false);
    p.engine_hint = 3;
    cases.push((p, VPU_SC_INVALID_PARAMS));
    for (p, sc) in cases {
        assert_eq!(status(&host.create_session_raw(&p)), vendor(sc), "{p:?}");
    }
    host.create_session(&params(64, 64, false));
    assert_eq!(
        status(&host.create_session_raw(&params(64, 64, false))),
        vendor(VPU_SC_NO_CAPACITY)
    );
}

#[test]
fn encode_errors_leave_the_card_working() {
    let mut host = Host::new(EmuConfig::default());
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frame = Frame::new(&host, &pattern(&p, 0));
    let out = host.io.alloc_dma(1 << 16).unwrap();
    let mut run = |c: vpu_sqe| {
        q.submit(&host.io, c);
        q.wait(&host.io, TIMEOUT).expect("completion")
    };
    // Unknown session.
    assert_eq!(
        status(&run(encode_cmd(77, &frame, &out, 1 << 16, 0))),
        (VPU_SCT_VENDOR, VPU_SC_SESSION_NOT_FOUND)
    );
    // Input shorter than the session's frame.
    let mut c = encode_cmd(session, &frame, &out, 1 << 16, 0);
    c.cdw15 = 100;
    assert_eq!(status(&run(c)), (VPU_SCT_VENDOR, VPU_SC_INPUT_TOO_SMALL));
    // Unmapped input and output.
    let mut c = encode_cmd(session, &frame, &out, 1 << 16, 0);
    c.prp1 = 0x6000_0000_0000;
    assert_eq!(
        status(&run(c)),
        (VPU_SCT_GENERIC, VPU_SC_DATA_TRANSFER_ERROR)
    );
    let mut c = encode_cmd(session, &frame, &out, 1 << 16, 0);
    c.mptr = 0x6000_0000_0000;
    assert_eq!(
        status(&run(c)),
        (VPU_SCT_GENERIC, VPU_SC_DATA_TRANSFER_ERROR)
    );
    // Output buffer too small: nothing written; a retry succeeds with an IDR.
    assert!(out.write(0, &[0xaa; 64]));
    let cqe = run(encode_cmd(session, &frame, &out, 16, 0));
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_OUTPUT_TOO_SMALL));
    let mut head = [0u8; 64];
    assert!(out.read(0, &mut head));
    assert_eq!(head, [0xaa; 64]);
    let cqe = run(encode_cmd(session, &frame, &out, 1 << 16, 0));
    assert_eq!(status(&cqe), OK);
    assert_ne!(cqe.dw1 & VPU_ENCODED_KEYFRAME, 0);
    // Flush completes after the earlier frames.
    let a = q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    let b = q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 16, 0));
    let mut f = cmd(VPU_IO_FLUSH_SESSION);
    f.cdw10 = session;
    let fl = q.submit(&host.io, f);
    let order: Vec<u16> = (0..3)
        .map(|_| q.wait(&host.io, TIMEOUT).unwrap().cid)
        .collect();
    assert_eq!(order, vec![a, b, fl]);
    let (cqe, log) = host.log(VPU_LOG_SESSION, session, 64);
    assert_eq!(status(&cqe), OK);
    let mut raw = [0u8; 64];
    assert!(log.read(0, &mut raw));
    let log: vpu_session_log = from_bytes(&raw);
    // Accepted: the too-small output, its retry and the two before the flush.
    assert_eq!({ log.frames_in }, 4);
    assert_eq!({ log.frames_out }, 3);
    assert_eq!({ log.errors }, 4);
}

/// A frame whose output did not fit is kept by the card while the frames behind it are
/// coded; its retry gets it, and the stream decodes in submission order.
#[test]
fn a_frame_too_large_for_its_buffer_is_kept_for_its_retry() {
    let mut host = Host::new(EmuConfig::default());
    let p = params(64, 64, false);
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let frames: Vec<Frame> = (0..3).map(|n| Frame::new(&host, &pattern(&p, n))).collect();
    let outs: Vec<_> = (0..3)
        .map(|_| host.io.alloc_dma(1 << 16).unwrap())
        .collect();
    let with_pts = |n: usize, out_len: u32| {
        let mut c = encode_cmd(session, &frames[n], &outs[n], out_len, 0);
        c.cdw12 = n as u32;
        c
    };
    // Frame 0 does not fit; frames 1 and 2 are already queued behind it.
    let first = q.submit(&host.io, with_pts(0, 16));
    let behind = [
        q.submit(&host.io, with_pts(1, 1 << 16)),
        q.submit(&host.io, with_pts(2, 1 << 16)),
    ];
    let mut done = std::collections::HashMap::new();
    for _ in 0..3 {
        let cqe = q.wait(&host.io, TIMEOUT).expect("completion");
        done.insert(cqe.cid, cqe);
    }
    assert_eq!(
        status(&done[&first]),
        (VPU_SCT_VENDOR, VPU_SC_OUTPUT_TOO_SMALL)
    );
    for cid in behind {
        assert_eq!(status(&done[&cid]), OK);
        assert_eq!(
            done[&cid].dw1 & VPU_ENCODED_KEYFRAME,
            0,
            "coded after frame 0"
        );
    }
    // The retry returns frame 0 as it was coded: the IDR the others refer to.
    q.submit(&host.io, with_pts(0, 1 << 16));
    let retry = q.wait(&host.io, TIMEOUT).expect("retry completion");
    assert_eq!(status(&retry), OK);
    assert_ne!(retry.dw1 & VPU_ENCODED_KEYFRAME, 0);
    let packet = |n: usize, cqe: &vpu_cqe| {
        let mut b = vec![0u8; cqe.dw0 as usize];
        assert!(outs[n].read(0, &mut b));
        b
    };
    let stream = [
        packet(0, &retry),
        packet(1, &done[&behind[0]]),
        packet(2, &done[&behind[1]]),
    ];
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    for (n, unit) in stream.iter().enumerate() {
        let yuv = decoder.decode(unit).expect("decodable in submission order");
        assert!(yuv.is_some(), "frame {n} decoded");
    }
}

/// Textured content that costs bits: a noise field scrolling diagonally.
fn textured(p: &vpu_session_params, n: usize) -> Vec<u8> {
    let mut f = pattern(p, n);
    let (w, h, sy) = (
        usize::from(p.width),
        usize::from(p.height),
        p.stride_y as usize,
    );
    for y in 0..h {
        for x in 0..w {
            let (sx, syy) = ((x + 2 * n) as u32, (y + n) as u32);
            let mut v = sx.wrapping_mul(0x9e37_79b9) ^ syy.wrapping_mul(0x85eb_ca6b);
            v ^= v >> 15;
            v = v.wrapping_mul(0x2c1b_3c6d);
            v ^= v >> 12;
            f[y * sy + x] = f[y * sy + x] / 2 + (v & 0x7f) as u8;
        }
    }
    f
}

#[test]
fn cbr_bitrate_lands_near_target() {
    let mut host = Host::new(EmuConfig::default());
    let mut p = params(160, 96, false);
    p.bitrate = 300_000;
    p.fps_num = 30;
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let out = host.io.alloc_dma(1 << 20).unwrap();
    let frames = 300; // 10 s
    let mut bytes = 0u64;
    let frame = Frame::new(&host, &textured(&p, 0));
    for n in 0..frames {
        assert!(frame.data.write(0, &textured(&p, n)));
        q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 20, 0));
        let cqe = q.wait(&host.io, TIMEOUT).unwrap();
        assert_eq!(status(&cqe), OK);
        assert_ne!(cqe.dw1 & VPU_FRAME_TYPE_MASK, VPU_FRAME_TYPE_SKIPPED);
        bytes += u64::from(cqe.dw0);
    }
    let bitrate = bytes as f64 * 8.0 / 10.0;
    let error = (bitrate - 300_000.0).abs() / 300_000.0;
    assert!(
        error <= 0.10,
        "bitrate {bitrate:.0} b/s, {:.1} % off",
        error * 100.0
    );
}

#[test]
fn many_sessions_and_queues_in_flight() {
    let mut host = Host::new(EmuConfig::default());
    let mut p = params(96, 64, false);
    let mut sessions = Vec::new();
    for i in 0..4 {
        p.rate_control = if i % 2 == 0 { VPU_RC_VBR } else { VPU_RC_CBR } as u8;
        p.max_bitrate = if i % 2 == 0 { 2_000_000 } else { 0 };
        sessions.push(host.create_session(&p));
    }
    let mut queues = [host.io_queue(1, 16, 1), host.io_queue(2, 16, 2)];
    let frame = Frame::new(&host, &pattern(&p, 3));
    let outs: Vec<DmaBuffer> = (0..8)
        .map(|_| host.io.alloc_dma(1 << 16).unwrap())
        .collect();
    let mut pending = [Vec::new(), Vec::new()];
    for round in 0..5 {
        for (i, &s) in sessions.iter().enumerate() {
            let qi = i % 2;
            let out = &outs[i * 2 + round % 2];
            let cid = queues[qi].submit(&host.io, encode_cmd(s, &frame, out, 1 << 16, 0));
            pending[qi].push(cid);
        }
        for qi in 0..2 {
            for _ in 0..2 {
                let cqe = queues[qi].wait(&host.io, TIMEOUT).expect("completion");
                assert_eq!(status(&cqe), OK);
                assert_eq!({ cqe.sq_id }, qi as u16 + 1);
                let at = pending[qi]
                    .iter()
                    .position(|&c| c == cqe.cid)
                    .expect("a cid in flight");
                pending[qi].remove(at);
            }
        }
    }
    // Each completion queue raised its own vector.
    assert!(host.irqs[1].read().unwrap() >= 1);
    assert!(host.irqs[2].read().unwrap() >= 1);
    let (_, log) = host.log(VPU_LOG_ENGINE, 0, 1088);
    let mut raw = vec![0u8; 1088];
    assert!(log.read(0, &mut raw));
    let log: vpu_engine_log = from_bytes(&raw);
    // Sessions spread over both engines.
    assert_eq!({ log.engine[0].sessions }, 2);
    assert_eq!({ log.engine[1].sessions }, 2);
    assert_eq!({ log.engine[0].frames } + { log.engine[1].frames }, 20);
}

#[test]
fn reconfigured_bitrate_takes_effect() {
    let mut host = Host::new(EmuConfig::default());
    let mut p = params(160, 96, false);
    p.bitrate = 600_000;
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let out = host.io.alloc_dma(1 << 20).unwrap();
    let frame = Frame::new(&host, &textured(&p, 0));
    let mut run = |host: &mut Host, from: usize| -> u64 {
        let mut bytes = 0;
        for n in from..from + 90 {
            assert!(frame.data.write(0, &textured(&p, n)));
            q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 20, 0));
            let cqe = q.wait(&host.io, TIMEOUT).unwrap();
            assert_eq!(status(&cqe), OK);
            // Skip the first 30 frames of each half while rate control settles.
            if n >= from + 30 {
                bytes += u64::from(cqe.dw0);
            }
        }
        bytes
    };
    let before = run(&mut host, 0);
    let mut c = cmd(VPU_ADMIN_RECONFIGURE_SESSION);
    c.cdw10 = session;
    c.cdw11 = VPU_RECONFIG_BITRATE;
    c.cdw12 = 150_000;
    assert_eq!(status(&host.admin(c)), OK);
    let after = run(&mut host, 90);
    // 60 frames at 30 fps: 2 s each.
    let (b, a) = (before as f64 * 8.0 / 2.0, after as f64 * 8.0 / 2.0);
    assert!(a < b / 2.0, "bitrate {b:.0} -> {a:.0} b/s");
    assert!(
        (a - 150_000.0).abs() / 150_000.0 < 0.25,
        "after reconfiguring: {a:.0} b/s"
    );
}

/// A raised target takes effect too: openh264 caps the target at the layer's peak, which
/// starts at the initial target, so the engine raises the peak with it.
#[test]
fn raised_bitrate_takes_effect() {
    let mut host = Host::new(EmuConfig::default());
    let mut p = params(160, 96, false);
    p.bitrate = 150_000;
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let out = host.io.alloc_dma(1 << 20).unwrap();
    let frame = Frame::new(&host, &textured(&p, 0));
    let mut run = |host: &mut Host, from: usize| -> u64 {
        let mut bytes = 0;
        for n in from..from + 90 {
            assert!(frame.data.write(0, &textured(&p, n)));
            q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 20, 0));
            let cqe = q.wait(&host.io, TIMEOUT).unwrap();
            assert_eq!(status(&cqe), OK, "frame {n}");
            if n >= from + 30 {
                bytes += u64::from(cqe.dw0);
            }
        }
        bytes
    };
    let before = run(&mut host, 0);
    let mut c = cmd(VPU_ADMIN_RECONFIGURE_SESSION);
    c.cdw10 = session;
    c.cdw11 = VPU_RECONFIG_BITRATE;
    c.cdw12 = 600_000;
    assert_eq!(status(&host.admin(c)), OK);
    let after = run(&mut host, 90);
    let (b, a) = (before as f64 * 8.0 / 2.0, after as f64 * 8.0 / 2.0);
    assert!(a > b * 2.0, "bitrate {b:.0} -> {a:.0} b/s");
    assert!(
        (a - 600_000.0).abs() / 600_000.0 < 0.25,
        "after reconfiguring: {a:.0} b/s"
    );
}

/// Pure noise at a generous bitrate drives openh264's QP so low that an I frame overflows
/// its internal buffer; the engine must clamp QP and keep encoding, as hardware does.
#[test]
fn noise_at_a_high_bitrate_still_encodes() {
    let mut host = Host::new(EmuConfig::default());
    let mut p = params(320, 240, false);
    p.bitrate = 4_000_000;
    let session = host.create_session(&p);
    let mut q = host.io_queue(1, 8, 1);
    let out = host.io.alloc_dma(1 << 20).unwrap();
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let len = p.stride_y as usize * usize::from(p.height) * 3 / 2;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut decoded = 0;
    let frames = 10;
    for n in 0..frames {
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let frame = Frame::new(&host, &noise);
        q.submit(&host.io, encode_cmd(session, &frame, &out, 1 << 20, 0));
        let cqe = q.wait(&host.io, TIMEOUT).expect("encode completion");
        assert_eq!(status(&cqe), OK, "frame {n}");
        let mut packet = vec![0u8; cqe.dw0 as usize];
        assert!(out.read(0, &mut packet));
        if decoder.decode(&packet).expect("decodable").is_some() {
            decoded += 1;
        }
    }
    decoded += decoder.flush_remaining().unwrap().len();
    assert_eq!(decoded, frames);
}
