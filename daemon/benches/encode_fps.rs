//! (a) `vpuctl encode` through vpud versus encoding the same clip directly with openh264,
//! same settings, in the same run. Target: ratio ≥ 0.95.
//!
//! `cargo bench -p vpud --bench encode_fps` (env `VPUD_BENCH_FRAMES`, default 150, of
//! 1280x720 at 30 fps, 3 Mb/s, GOP 60; 3 rounds, medians).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Instant;

use common::{direct_encode_file, median, rusage_seconds, write_clip, Usage, VpudProcess};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const BITRATE: u32 = 3_000_000;
const GOP: u32 = 60;
const ROUNDS: usize = 5;

#[tokio::main]
async fn main() {
    let frames: u64 = std::env::var("VPUD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.y4m");
    write_clip(&clip, WIDTH, HEIGHT, FPS, frames);
    let vpuctl = common::vpuctl_binary();
    let vpud = VpudProcess::start(1).await;

    let mut direct = Vec::new();
    let mut through = Vec::new();
    let mut through_loop = Vec::new();
    let (mut direct_cpu, mut through_cpu) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let cpu0 = rusage_seconds(Usage::Own);
        let (n, secs) = direct_encode_file(&clip, &dir.path().join("direct.h264"), BITRATE, GOP);
        assert_eq!(n, frames);
        direct.push(n as f64 / secs);
        direct_cpu.push((rusage_seconds(Usage::Own) - cpu0) * 1e3 / n as f64);

        let out = dir.path().join("vpud.h264");
        let (children0, vpud0) = (rusage_seconds(Usage::Children), vpud.cpu_seconds());
        let start = Instant::now();
        let res = Command::new(&vpuctl)
            .args(["--bus", vpud.address(), "encode"])
            .arg(&clip)
            .arg("-o")
            .arg(&out)
            .args(["--bitrate", &BITRATE.to_string(), "--gop", &GOP.to_string()])
            .output()
            .unwrap();
        let wall = start.elapsed().as_secs_f64();
        let cpu = rusage_seconds(Usage::Children) - children0 + vpud.cpu_seconds() - vpud0;
        through_cpu.push(cpu * 1e3 / frames as f64);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let summary = String::from_utf8_lossy(&res.stdout).to_string();
        assert!(
            summary.starts_with(&format!("{frames} frames")),
            "{summary}"
        );
        through.push(frames as f64 / wall);
        // "... in S s (F fps)": the encode loop alone, without process start and connect.
        let loop_fps: f64 = summary
            .split(" s (")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|f| f.parse().ok())
            .unwrap_or(f64::NAN);
        through_loop.push(loop_fps);
    }
    // Each round pairs a direct encode with one through vpud back to back, so the median
    // of the per-round ratios is robust to the host's speed drifting between rounds.
    let mut paired: Vec<f64> = through.iter().zip(&direct).map(|(t, d)| t / d).collect();
    let mut paired_loop: Vec<f64> = through_loop
        .iter()
        .zip(&direct)
        .map(|(t, d)| t / d)
        .collect();
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
    let (direct_bytes, vpud_bytes) = (size("direct.h264"), size("vpud.h264"));
    let dc = median(&mut direct_cpu);
    let tc = median(&mut through_cpu);
    let d = median(&mut direct);
    let t = median(&mut through);
    let l = median(&mut through_loop);
    println!("(a) encode {frames} frames {WIDTH}x{HEIGHT}@{FPS}, {BITRATE} b/s, gop {GOP}; median of {ROUNDS} rounds");
    println!("{:<46} {:>10} {:>14}", "path", "fps", "cpu ms/frame");
    let rows = [
        (
            "direct openh264 (read y4m, encode, write)",
            d,
            format!("{dc:.2}"),
        ),
        (
            "vpuctl encode via vpud (whole command)",
            t,
            format!("{tc:.2}"),
        ),
        (
            "vpuctl encode via vpud (encode loop only)",
            l,
            String::new(),
        ),
    ];
    for (name, fps, cpu) in rows {
        println!("{name:<46} {fps:>10.1} {cpu:>14}");
    }
    println!("output bytes: direct {direct_bytes}, via vpud {vpud_bytes}");
    println!(
        "ratio (whole command) {:.3}  target >= 0.95  (median of per-round ratios {:.3})",
        t / d,
        median(&mut paired)
    );
    println!(
        "ratio (encode loop)   {:.3}  (median of per-round ratios {:.3})",
        l / d,
        median(&mut paired_loop)
    );
    println!(
        "cpu per frame, vpud path (vpuctl + vpud) / direct {:.3}",
        tc / dc
    );
}
