//! AV1 engines: placement by codec, Encode Frame held until its temporal unit is out,
//! Flush and idle drains, forced keyframes, retries, and streams that ffmpeg decodes.

use std::path::Path;
use std::process::Command;

use vpu_ffi::*;

use super::encode::{encode_cmd, pattern, Frame};
use super::*;

/// A card with one H.264 and one AV1 engine.
fn mixed() -> EmuConfig {
    EmuConfig {
        engines: 2,
        av1_engines: 1,
        ..EmuConfig::default()
    }
}

fn av1_params(width: u16, height: u16) -> vpu_session_params {
    vpu_session_params {
        codec: VPU_CODEC_AV1 as u8,
        bitrate: 200_000,
        gop: 30,
        ..params(width, height, false)
    }
}

/// OBU types in a temporal unit (AV1 low-overhead format: every OBU has its size).
pub(crate) fn obu_types(mut tu: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while let Some(&header) = tu.first() {
        let extension = header & 0x04 != 0;
        assert_ne!(header & 0x02, 0, "OBU without a size field");
        let mut at = 1 + usize::from(extension);
        let mut size = 0usize;
        for i in 0..8 {
            let b = tu[at];
            at += 1;
            size |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        types.push((header >> 3) & 0x0f);
        tu = &tu[at + size..];
    }
    types
}

/// Writes temporal units as an IVF file.
fn write_ivf(path: &Path, w: u16, h: u16, units: &[Vec<u8>]) {
    let mut f = Vec::new();
    f.extend_from_slice(b"DKIF");
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&32u16.to_le_bytes());
    f.extend_from_slice(b"AV01");
    f.extend_from_slice(&w.to_le_bytes());
    f.extend_from_slice(&h.to_le_bytes());
    f.extend_from_slice(&30u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(units.len() as u32).to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    for (i, u) in units.iter().enumerate() {
        f.extend_from_slice(&(u.len() as u32).to_le_bytes());
        f.extend_from_slice(&(i as u64).to_le_bytes());
        f.extend_from_slice(u);
    }
    std::fs::write(path, f).unwrap();
}

/// Frames ffmpeg decodes from an IVF file.
fn ffmpeg_frames(path: &Path, w: u16, h: u16) -> usize {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.len() / (usize::from(w) * usize::from(h) * 3 / 2)
}

struct Stream {
    q: QueuePair,
    frames: Vec<Frame>,
    outs: Vec<DmaBuffer>,
}

impl Stream {
    fn new(host: &mut Host, p: &vpu_session_params, n: usize) -> Self {
        let q = host.io_queue(1, 64, 1);
        let frames = (0..n).map(|i| Frame::new(host, &pattern(p, i))).collect();
        let outs = (0..n)
            .map(|_| host.io.alloc_dma(256 * 1024).unwrap())
            .collect();
        Self { q, frames, outs }
    }

    fn submit(&mut self, host: &Host, session: u32, i: usize, out_len: u32, flags: u32) -> u16 {
        let mut c = encode_cmd(session, &self.frames[i], &self.outs[i], out_len, flags);
        c.cdw12 = i as u32;
        self.q.submit(&host.io, c)
    }

    fn flush(&mut self, host: &Host, session: u32) -> u16 {
        let mut c = cmd(VPU_IO_FLUSH_SESSION);
        c.cdw10 = session;
        self.q.submit(&host.io, c)
    }

    /// The bytes command `cid` (frame `i`) produced.
    fn unit(&self, cqe: &vpu_cqe, i: usize) -> Vec<u8> {
        let mut b = vec![0u8; cqe.dw0 as usize];
        assert!(self.outs[i].read(0, &mut b));
        b
    }
}

#[test]
fn av1_sessions_go_to_av1_engines_and_decode() {
    let mut host = Host::new(mixed());
    // Identify says both codecs.
    let (_, id) = {
        let buf = host.io.alloc_dma(4096).unwrap();
        let mut c = cmd(VPU_ADMIN_IDENTIFY);
        c.cdw10 = VPU_IDENTIFY_CNS_CONTROLLER;
        c.prp1 = buf.iova();
        (host.admin(c), buf)
    };
    let mut raw = vec![0u8; 4096];
    assert!(id.read(0, &mut raw));
    let ident: vpu_identify_controller = from_bytes(&raw);
    assert_eq!(
        { ident.vpu.codecs },
        (1 << VPU_CODEC_H264) | (1 << VPU_CODEC_AV1)
    );
    // The engine table: engine 0 H.264, engine 1 AV1 at its own pixel rate, then the
    // H.264 decoder and the scaler; the legacy pixel rate is H.264's.
    assert_eq!(ident.vpu.engine_caps_count, 4);
    let caps = ident.vpu.engine_caps;
    assert_eq!(caps[2].kind, VPU_ENGINE_KIND_DECODE as u8);
    assert_eq!(caps[3].kind, VPU_ENGINE_KIND_SCALE as u8);
    assert_eq!((caps[0].engine, caps[0].codec), (0, VPU_CODEC_H264 as u8));
    assert_eq!((caps[1].engine, caps[1].codec), (1, VPU_CODEC_AV1 as u8));
    assert_eq!({ caps[1].profiles }, VPU_AV1_PROFILE_BIT_MAIN);
    assert_eq!({ caps[1].pixel_rate }, crate::emu::AV1_PIXEL_RATE);
    assert_eq!({ ident.vpu.pixel_rate_per_engine }, { caps[0].pixel_rate });
    let identity = crate::card::CardIdentity::from_identify("emu0", &ident).unwrap();
    assert_eq!(identity.encoders(crate::card::Codec::Av1).count(), 1);
    assert_eq!(identity.encoders(crate::card::Codec::H264).count(), 1);
    let (w, h, n) = (64u16, 48u16, 12usize);
    let p = av1_params(w, h);
    // Hinted at the H.264 engine, the session still goes to the AV1 one.
    let session = host.create_session(&vpu_session_params {
        engine_hint: 0,
        ..p
    });
    let mut s = Stream::new(&mut host, &p, n);
    let mut cids = Vec::new();
    for i in 0..n {
        let flags = if i == 7 { VPU_ENCODE_FORCE_IDR } else { 0 };
        cids.push(s.submit(&host, session, i, 256 * 1024, flags));
    }
    let flush = s.flush(&host, session);
    let mut units = Vec::new();
    for (i, cid) in cids.iter().enumerate() {
        let cqe = s.q.wait(&host.io, TIMEOUT).expect("encode completion");
        // In order, each command with its own frame.
        assert_eq!({ cqe.cid }, *cid, "frame {i}");
        assert_eq!(status(&cqe), OK, "frame {i}");
        assert_eq!(cqe.dw1 >> VPU_ENCODED_INPUT_LAG_SHIFT, 0);
        let key = cqe.dw1 & VPU_ENCODED_KEYFRAME != 0;
        assert_eq!(key, i == 0 || i == 7, "keyframe flag of frame {i}");
        let unit = s.unit(&cqe, i);
        let types = obu_types(&unit);
        // Temporal delimiter first; a sequence header exactly on keyframes.
        assert_eq!(types[0], 2, "frame {i}: {types:?}");
        assert_eq!(types.contains(&1), key, "frame {i}: {types:?}");
        units.push(unit);
    }
    let cqe = s.q.wait(&host.io, TIMEOUT).expect("flush completion");
    assert_eq!(({ cqe.cid }, status(&cqe)), (flush, OK));
    // The session is on engine 1 (the AV1 one).
    let (_, log) = host.log(VPU_LOG_ENGINE, 0, std::mem::size_of::<vpu_engine_log>());
    let mut raw = vec![0u8; std::mem::size_of::<vpu_engine_log>()];
    assert!(log.read(0, &mut raw));
    let log: vpu_engine_log = from_bytes(&raw);
    assert_eq!({ log.engine[1].sessions }, 1);
    assert_eq!({ log.engine[1].frames }, n as u64);
    assert_eq!({ log.engine[0].frames }, 0);

    let dir = tempfile_dir();
    let path = dir.join("out.ivf");
    write_ivf(&path, w, h, &units);
    assert_eq!(ffmpeg_frames(&path, w, h), n);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vpu-emu-av1-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn codecs_without_engines_are_refused() {
    // No AV1 engine: AV1 is an unsupported codec.
    let mut host = Host::new(EmuConfig::default());
    let cqe = host.create_session_raw(&av1_params(64, 48));
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_UNSUPPORTED_CODEC));
    // Only AV1 engines: H.264 is.
    let mut host = Host::new(EmuConfig {
        engines: 1,
        av1_engines: 1,
        ..EmuConfig::default()
    });
    let cqe = host.create_session_raw(&params(64, 48, false));
    assert_eq!(status(&cqe), (VPU_SCT_VENDOR, VPU_SC_UNSUPPORTED_CODEC));
    // Bad AV1 profile and level.
    for p in [
        vpu_session_params {
            profile: VPU_PROFILE_H264_CONSTRAINED_BASELINE as u8,
            ..av1_params(64, 48)
        },
        vpu_session_params {
            level: 19,
            ..av1_params(64, 48)
        },
    ] {
        let cqe = host.create_session_raw(&p);
        assert_ne!(status(&cqe), OK);
    }
    let ok = host.create_session_raw(&vpu_session_params {
        profile: VPU_PROFILE_AV1_MAIN as u8,
        level: 40,
        ..av1_params(64, 48)
    });
    assert_eq!(status(&ok), OK);
    // More AV1 engines than engines is a configuration error.
    assert!(EmulatedCard::new(EmuConfig {
        engines: 1,
        av1_engines: 2,
        ..EmuConfig::default()
    })
    .is_err());
}

#[test]
fn held_frames_drain_when_idle_and_retry_small_buffers() {
    let mut host = Host::new(mixed());
    let p = av1_params(64, 48);
    let session = host.create_session(&p);
    let mut s = Stream::new(&mut host, &p, 4);
    // One frame and nothing after it: the idle drain completes it.
    let cid = s.submit(&host, session, 0, 256 * 1024, 0);
    let cqe = s.q.wait(&host.io, TIMEOUT).expect("drained when idle");
    assert_eq!(({ cqe.cid }, status(&cqe)), (cid, OK));
    assert_ne!(cqe.dw1 & VPU_ENCODED_KEYFRAME, 0);
    // After the drain the next frame starts a new sequence: a keyframe again. Its
    // buffer is too small; the retry of the same frame gets the kept unit.
    let cid = s.submit(&host, session, 1, 8, 0);
    let cqe = s.q.wait(&host.io, TIMEOUT).expect("too small");
    assert_eq!(
        ({ cqe.cid }, status(&cqe)),
        (cid, (VPU_SCT_VENDOR, VPU_SC_OUTPUT_TOO_SMALL))
    );
    let cid = s.submit(&host, session, 1, 256 * 1024, 0);
    let cqe = s.q.wait(&host.io, TIMEOUT).expect("retry");
    assert_eq!(({ cqe.cid }, status(&cqe)), (cid, OK));
    assert_ne!(cqe.dw1 & VPU_ENCODED_KEYFRAME, 0);
    assert!(obu_types(&s.unit(&cqe, 1)).contains(&1));
    // A held frame of a destroyed session completes SESSION_ABORTED at once.
    let cid = s.submit(&host, session, 2, 256 * 1024, 0);
    std::thread::sleep(Duration::from_millis(20));
    let mut c = cmd(VPU_ADMIN_DESTROY_SESSION);
    c.cdw10 = session;
    assert_eq!(status(&host.admin(c)), OK);
    let cqe = s.q.wait(&host.io, TIMEOUT).expect("aborted");
    assert_eq!(
        ({ cqe.cid }, status(&cqe)),
        (cid, (VPU_SCT_VENDOR, VPU_SC_SESSION_ABORTED))
    );
}

/// Two frames in a row too large for their buffers, with more frames behind them: both
/// units are kept, and each retry gets its own at once (the keyframe, then the frame
/// coded against it).
#[test]
fn every_unit_too_large_is_kept_for_its_own_retry() {
    let mut host = Host::new(mixed());
    let p = av1_params(64, 48);
    let session = host.create_session(&p);
    let mut s = Stream::new(&mut host, &p, 6);
    let small = [
        s.submit(&host, session, 0, 8, 0),
        s.submit(&host, session, 1, 8, 0),
    ];
    for i in 2..6 {
        s.submit(&host, session, i, 256 * 1024, 0);
    }
    let mut done = std::collections::HashMap::new();
    for _ in 0..6 {
        let cqe = s.q.wait(&host.io, TIMEOUT).expect("completion");
        done.insert(cqe.cid, status(&cqe));
    }
    for cid in small {
        assert_eq!(done[&cid], (VPU_SCT_VENDOR, VPU_SC_OUTPUT_TOO_SMALL));
    }
    s.submit(&host, session, 0, 256 * 1024, 0);
    let first = s.q.wait(&host.io, TIMEOUT).expect("retry of frame 0");
    assert_eq!(status(&first), OK);
    assert_ne!(first.dw1 & VPU_ENCODED_KEYFRAME, 0);
    s.submit(&host, session, 1, 256 * 1024, 0);
    let second = s.q.wait(&host.io, TIMEOUT).expect("retry of frame 1");
    assert_eq!(status(&second), OK);
    assert_eq!(
        second.dw1 & VPU_ENCODED_KEYFRAME,
        0,
        "frame 1 as coded after frame 0, not coded again"
    );
}

/// Bytes of `n` frames of an AV1 session with `p`, all submitted, then a Flush; every
/// command completes OK and the first frame is a keyframe.
fn encode_bytes(p: &vpu_session_params, n: usize) -> u64 {
    let mut host = Host::new(mixed());
    let session = host.create_session(p);
    let mut s = Stream::new(&mut host, p, n);
    let cids: Vec<u16> = (0..n)
        .map(|i| s.submit(&host, session, i, 256 * 1024, 0))
        .collect();
    let flush = s.flush(&host, session);
    let mut bytes = 0;
    for (i, cid) in cids.iter().enumerate() {
        let cqe = s.q.wait(&host.io, TIMEOUT).expect("encoded");
        assert_eq!(({ cqe.cid }, status(&cqe)), (*cid, OK));
        if i == 0 {
            assert_ne!(cqe.dw1 & VPU_ENCODED_KEYFRAME, 0);
        }
        bytes += u64::from(cqe.dw0);
    }
    let cqe = s.q.wait(&host.io, TIMEOUT).expect("flushed");
    assert_eq!(({ cqe.cid }, status(&cqe)), (flush, OK));
    bytes
}

#[test]
fn cqp_and_vbr_sessions_encode() {
    let cqp = |qp| vpu_session_params {
        rate_control: VPU_RC_CQP as u8,
        qp,
        ..av1_params(64, 48)
    };
    let (fine, coarse) = (encode_bytes(&cqp(10), 8), encode_bytes(&cqp(45), 8));
    assert!(coarse < fine, "CQP 45 gave {coarse} bytes, CQP 10 {fine}");
    let vbr = vpu_session_params {
        rate_control: VPU_RC_VBR as u8,
        max_bitrate: 400_000,
        ..av1_params(64, 48)
    };
    assert!(encode_bytes(&vbr, 8) > 0);
}
