//! AV1 on the emulated card, two figures from one run:
//!
//! (a) `vpuctl encode --codec av1` through vpud (an emulated card with one AV1 engine)
//!     versus rav1e called directly in this process with the card's settings (the same
//!     `EncoderConfig`, the same thread count), on the same clip. Target: ratio ≥ 0.95.
//! (b) Bits needed for the same PSNR, AV1 versus H.264, both through vpud on the same
//!     clip: each codec at several bitrates, PSNR of the ffmpeg-decoded output against the
//!     source, then the bitrate each codec needs for a given PSNR (interpolated on
//!     log bitrate).
//!
//! `cargo bench -p vpud --bench av1` (env `VPUD_BENCH_FRAMES`, default 60, of 1280x720
//! testsrc2 at 30 fps; needs ffmpeg).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{median, VpudProcess};
use rav1e::prelude::*;
use vpu_driver::media::Y4mReader;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const BITRATE: u32 = 2_000_000;
const GOP: u32 = 60;
const ROUNDS: usize = 3;
/// Bitrates of the rate-quality curves, kb/s.
const CURVE_KBPS: [u32; 5] = [500, 1000, 2000, 4000, 8000];

/// Writes `frames` frames of testsrc2 as Y4M.
fn write_testsrc2(path: &Path, frames: u64) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}"))
        .args(["-frames:v", &frames.to_string(), "-pix_fmt", "yuv420p"])
        .arg(path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg testsrc2");
}

fn read_clip(path: &Path) -> Vec<Vec<u8>> {
    let mut reader = Y4mReader::new(BufReader::new(File::open(path).unwrap())).unwrap();
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    while reader.read_frame(&mut frame).unwrap() {
        frames.push(frame.clone());
    }
    frames
}

/// rav1e directly, configured as the card configures a CBR session: reads the Y4M,
/// encodes, writes IVF. Returns (frames, seconds).
fn direct(input: &Path, output: &Path) -> (u64, f64) {
    let start = Instant::now();
    let mut reader = Y4mReader::new(BufReader::new(File::open(input).unwrap())).unwrap();
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    let cfg = Config::new()
        .with_encoder_config(vpu_driver::emu::av1_cbr_config(w, h, FPS, BITRATE, GOP))
        .with_threads(vpu_driver::emu::AV1_THREADS);
    let mut ctx: Context<u8> = cfg.new_context().unwrap();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let mut n = 0u64;
    let mut units = 0u64;
    let mut take = |ctx: &mut Context<u8>, out: &mut Vec<u8>| loop {
        match ctx.receive_packet() {
            Ok(p) => {
                out.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
                out.extend_from_slice(&p.input_frameno.to_le_bytes());
                out.extend_from_slice(&p.data);
                units += 1;
            }
            Err(EncoderStatus::Encoded) => {}
            Err(_) => break,
        }
    };
    while reader.read_frame(&mut frame).unwrap() {
        let mut f = ctx.new_frame();
        let (y, uv) = frame.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        f.planes[0].copy_from_raw_u8(y, w, 1);
        f.planes[1].copy_from_raw_u8(u, w / 2, 1);
        f.planes[2].copy_from_raw_u8(v, w / 2, 1);
        ctx.send_frame(f).unwrap();
        n += 1;
        take(&mut ctx, &mut out);
    }
    ctx.flush();
    take(&mut ctx, &mut out);
    let mut ivf = Vec::new();
    ivf.extend_from_slice(b"DKIF\0\0\x20\0AV01");
    ivf.extend_from_slice(&(WIDTH as u16).to_le_bytes());
    ivf.extend_from_slice(&(HEIGHT as u16).to_le_bytes());
    ivf.extend_from_slice(&FPS.to_le_bytes());
    ivf.extend_from_slice(&1u32.to_le_bytes());
    ivf.extend_from_slice(&(units as u32).to_le_bytes());
    ivf.extend_from_slice(&0u32.to_le_bytes());
    ivf.extend_from_slice(&out);
    std::fs::write(output, ivf).unwrap();
    (n, start.elapsed().as_secs_f64())
}

/// `vpuctl encode` through vpud; returns (seconds of the whole command, fps of its encode
/// loop).
fn through(
    vpud: &VpudProcess,
    vpuctl: &Path,
    input: &Path,
    output: &Path,
    codec: &str,
    bps: u32,
) -> (f64, f64) {
    let start = Instant::now();
    let res = Command::new(vpuctl)
        .args(["--bus", vpud.address(), "encode"])
        .arg(input)
        .arg("-o")
        .arg(output)
        .args([
            "--codec",
            codec,
            "--bitrate",
            &bps.to_string(),
            "--gop",
            &GOP.to_string(),
        ])
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let summary = String::from_utf8_lossy(&res.stdout).to_string();
    let loop_fps: f64 = summary
        .split(" s (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|f| f.parse().ok())
        .unwrap_or(f64::NAN);
    (wall, loop_fps)
}

/// PSNR (all planes, mean over frames) of a decoded file against the source clip.
fn psnr_of(path: &Path, source: &[Vec<u8>]) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg decodes {}", path.display());
    let size = source[0].len();
    let decoded: Vec<&[u8]> = out.stdout.chunks(size).collect();
    assert_eq!(decoded.len(), source.len(), "{} frames", path.display());
    let mut sum = 0.0;
    for (a, b) in source.iter().zip(decoded) {
        let mse = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            / size as f64;
        sum += if mse == 0.0 {
            100.0
        } else {
            10.0 * (255.0 * 255.0 / mse).log10()
        };
    }
    sum / source.len() as f64
}

/// The bitrate (kb/s) a rate-quality curve needs for `psnr`, interpolating log bitrate
/// linearly between the two points around it; `None` outside the curve.
fn rate_for(curve: &[(f64, f64)], psnr: f64) -> Option<f64> {
    curve.windows(2).find_map(|w| {
        let ((r0, p0), (r1, p1)) = (w[0], w[1]);
        if (p0..=p1).contains(&psnr) && p1 > p0 {
            let t = (psnr - p0) / (p1 - p0);
            Some((r0.ln() + t * (r1.ln() - r0.ln())).exp())
        } else {
            None
        }
    })
}

#[tokio::main]
async fn main() {
    let frames: u64 = std::env::var("VPUD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.y4m");
    write_testsrc2(&clip, frames);
    let source = read_clip(&clip);
    let config = dir.path().join("vpud.toml");
    // One card: two H.264 engines and one AV1 engine.
    std::fs::write(&config, "[emulated]\nengines = 3\nav1_engines = 1\n").unwrap();
    let vpuctl = common::vpuctl_binary();
    let vpud = VpudProcess::start_with(1, &["--config".as_ref(), config.as_os_str()]).await;

    // (a) AV1 through vpud / rav1e directly.
    let (mut d, mut t, mut l, mut paired) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (n, secs) = direct(&clip, &dir.path().join("direct.ivf"));
        assert_eq!(n, frames);
        let dfps = n as f64 / secs;
        let (wall, loop_fps) = through(
            &vpud,
            &vpuctl,
            &clip,
            &dir.path().join("vpud.ivf"),
            "av1",
            BITRATE,
        );
        let tfps = frames as f64 / wall;
        d.push(dfps);
        t.push(tfps);
        l.push(loop_fps);
        paired.push(tfps / dfps);
    }
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
    println!(
        "(a) AV1: {frames} frames {WIDTH}x{HEIGHT}@{FPS} testsrc2, CBR {} kb/s, gop {GOP}, rav1e speed {}, {} thread(s); median of {ROUNDS} rounds",
        BITRATE / 1000,
        vpu_driver::emu::AV1_SPEED,
        vpu_driver::emu::AV1_THREADS
    );
    let (dm, tm, lm) = (median(&mut d), median(&mut t), median(&mut l));
    println!("{:<50} {:>8}", "path", "fps");
    println!(
        "{:<50} {:>8.2}",
        "rav1e directly (read y4m, encode, write ivf)", dm
    );
    println!(
        "{:<50} {:>8.2}",
        "vpuctl encode --codec av1 via vpud (whole command)", tm
    );
    println!(
        "{:<50} {:>8.2}",
        "vpuctl encode --codec av1 via vpud (encode loop)", lm
    );
    println!(
        "output bytes: direct {}, via vpud {}",
        size("direct.ivf"),
        size("vpud.ivf")
    );
    println!(
        "ratio (whole command) {:.3}  target >= 0.95  (median of per-round ratios {:.3})",
        tm / dm,
        median(&mut paired)
    );
    println!("ratio (encode loop)   {:.3}", lm / dm);

    // (b) Rate-quality curves of both codecs through vpud on the same clip.
    let mut curves: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    println!("\n(b) rate and PSNR through vpud, same clip");
    println!(
        "{:>10} {:>22} {:>22}",
        "target", "H.264 kb/s / PSNR", "AV1 kb/s / PSNR"
    );
    let mut rows = vec![String::new(); CURVE_KBPS.len()];
    for (codec, ext) in [("h264", "h264"), ("av1", "ivf")] {
        let mut curve = Vec::new();
        for (i, kbps) in CURVE_KBPS.iter().enumerate() {
            let out = dir.path().join(format!("{codec}-{kbps}.{ext}"));
            through(&vpud, &vpuctl, &clip, &out, codec, kbps * 1000);
            let bits = std::fs::metadata(&out).unwrap().len() as f64 * 8.0;
            let rate = bits / (frames as f64 / f64::from(FPS)) / 1e3;
            let psnr = psnr_of(&out, &source);
            curve.push((rate, psnr));
            rows[i].push_str(&format!(" {:>13.0} / {:>6.2}", rate, psnr));
        }
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        curves.push((codec, curve));
    }
    for (kbps, row) in CURVE_KBPS.iter().zip(rows) {
        println!("{kbps:>10}{row}");
    }
    println!("\nbits for the same PSNR");
    println!(
        "{:>8} {:>12} {:>12} {:>12}",
        "PSNR", "H.264 kb/s", "AV1 kb/s", "AV1/H.264"
    );
    let (h264, av1) = (&curves[0].1, &curves[1].1);
    for target in [32.0, 34.0, 36.0, 38.0, 40.0] {
        if let (Some(h), Some(a)) = (rate_for(h264, target), rate_for(av1, target)) {
            println!("{target:>8.1} {h:>12.0} {a:>12.0} {:>12.2}", a / h);
        }
    }
}
