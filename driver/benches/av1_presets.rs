//! rav1e settings for the emulated card's AV1 engines, measured side by side in one run:
//! speed presets, low-latency mode, tiles, threads, and the card's own settings, at 720p
//! on ffmpeg's `testsrc2`, CBR 2 Mb/s. For each: frames per second of wall time, CPU
//! milliseconds per frame (all threads), frames of delay between a frame going in and
//! its packet coming out, bytes, and PSNR of the decoded stream (ffmpeg) against the
//! source.
//!
//! `cargo bench -p vpu-driver --bench av1_presets [-- FRAMES]` (default 30; needs ffmpeg).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rav1e::config::SpeedSettings;
use rav1e::prelude::*;

const W: usize = 1280;
const H: usize = 720;
const FPS: u32 = 30;
const BITRATE: u32 = 2_000_000;

/// CPU time of this process so far (all threads).
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

/// `frames` frames of 1280x720 testsrc2, I420.
fn testsrc2(frames: usize) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={W}x{H}:rate={FPS}"))
        .args(["-frames:v", &frames.to_string()])
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg failed");
    out.stdout
        .chunks(W * H * 3 / 2)
        .map(<[u8]>::to_vec)
        .collect()
}

/// Decodes a stream of temporal units (IVF) with ffmpeg; the I420 frames.
fn decode(units: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut ivf = Vec::new();
    ivf.extend_from_slice(b"DKIF\0\0\x20\0AV01");
    ivf.extend_from_slice(&(W as u16).to_le_bytes());
    ivf.extend_from_slice(&(H as u16).to_le_bytes());
    ivf.extend_from_slice(&FPS.to_le_bytes());
    ivf.extend_from_slice(&1u32.to_le_bytes());
    ivf.extend_from_slice(&(units.len() as u32).to_le_bytes());
    ivf.extend_from_slice(&0u32.to_le_bytes());
    for (i, u) in units.iter().enumerate() {
        ivf.extend_from_slice(&(u.len() as u32).to_le_bytes());
        ivf.extend_from_slice(&(i as u64).to_le_bytes());
        ivf.extend_from_slice(u);
    }
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "ivf", "-i", "-"])
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&ivf));
    let out = child.wait_with_output().expect("ffmpeg output");
    writer.join().expect("writer").expect("ivf written");
    out.stdout
        .chunks(W * H * 3 / 2)
        .map(<[u8]>::to_vec)
        .collect()
}

fn psnr(a: &[Vec<u8>], b: &[Vec<u8>]) -> f64 {
    assert_eq!(a.len(), b.len(), "decoded frame count");
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        let mse = x
            .iter()
            .zip(y)
            .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
            .sum::<f64>()
            / x.len() as f64;
        sum += if mse == 0.0 {
            100.0
        } else {
            (10.0 * (255.0 * 255.0 / mse).log10()).min(100.0)
        };
    }
    sum / a.len() as f64
}

struct Variant {
    name: &'static str,
    config: EncoderConfig,
    threads: usize,
}

fn base(speed: u8, low_latency: bool, tiles: usize) -> EncoderConfig {
    let mut e = EncoderConfig::with_speed_preset(speed);
    e.width = W;
    e.height = H;
    e.time_base = Rational::new(1, u64::from(FPS));
    e.low_latency = low_latency;
    e.bitrate = BITRATE as i32;
    // The whole quantizer range, as the card opens it (rav1e's default caps it at 100).
    e.quantizer = 255;
    e.tiles = tiles;
    e.set_key_frame_interval(60, 60);
    e
}

fn variants() -> Vec<Variant> {
    let card = vpu_driver::emu::av1_cbr_config(W, H, FPS, BITRATE, 60);
    let mut rdo1 = base(10, true, 4);
    let mut s: SpeedSettings = rdo1.speed_settings;
    s.rdo_lookahead_frames = 1;
    rdo1.speed_settings = s;
    vec![
        Variant {
            name: "speed 6 (rav1e's default), reordering, 1 tile, 1 thread",
            config: base(6, false, 1),
            threads: 1,
        },
        Variant {
            name: "speed 8, low latency, 1 tile, 1 thread",
            config: base(8, true, 1),
            threads: 1,
        },
        Variant {
            name: "speed 9, low latency, 1 tile, 1 thread",
            config: base(9, true, 1),
            threads: 1,
        },
        Variant {
            name: "speed 10, reordering, 1 tile, 1 thread",
            config: base(10, false, 1),
            threads: 1,
        },
        Variant {
            name: "speed 10, low latency, 1 tile, 1 thread",
            config: base(10, true, 1),
            threads: 1,
        },
        Variant {
            name: "speed 10, low latency, 4 tiles, 1 thread",
            config: base(10, true, 4),
            threads: 1,
        },
        Variant {
            name: "speed 10, low latency, 4 tiles, 2 threads",
            config: base(10, true, 4),
            threads: 2,
        },
        Variant {
            name: "speed 10, low latency, 4 tiles, RDO lookahead 1, 1 thread",
            config: rdo1,
            threads: 1,
        },
        Variant {
            name: "the card's settings, 1 thread",
            config: card.clone(),
            threads: 1,
        },
        Variant {
            name: "the card's settings, 2 threads",
            config: card,
            threads: 2,
        },
    ]
}

fn main() {
    let frames: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let source = testsrc2(frames);
    println!(
        "rav1e {} at {W}x{H}, {frames} frames of testsrc2, {} kb/s CBR",
        rav1e::version::full(),
        BITRATE / 1000
    );
    println!(
        "{:<62} {:>7} {:>10} {:>6} {:>9} {:>7}",
        "settings", "fps", "cpu ms/f", "delay", "kb/s", "PSNR"
    );
    for v in variants() {
        let cfg = Config::new()
            .with_encoder_config(v.config.clone())
            .with_threads(v.threads);
        let mut ctx: Context<u8> = cfg.new_context().expect("valid configuration");
        let (cpu0, start) = (process_cpu(), Instant::now());
        let mut units = Vec::new();
        let mut max_delay = 0u64;
        let mut sent = 0u64;
        for f in &source {
            let mut frame = ctx.new_frame();
            let (y, uv) = f.split_at(W * H);
            let (u, v) = uv.split_at(W * H / 4);
            frame.planes[0].copy_from_raw_u8(y, W, 1);
            frame.planes[1].copy_from_raw_u8(u, W / 2, 1);
            frame.planes[2].copy_from_raw_u8(v, W / 2, 1);
            ctx.send_frame(frame).expect("frame accepted");
            sent += 1;
            loop {
                match ctx.receive_packet() {
                    Ok(p) => {
                        max_delay = max_delay.max(sent - 1 - p.input_frameno);
                        units.push(p.data);
                    }
                    Err(EncoderStatus::Encoded) => {}
                    Err(_) => break,
                }
            }
        }
        ctx.flush();
        loop {
            match ctx.receive_packet() {
                Ok(p) => units.push(p.data),
                Err(EncoderStatus::Encoded) => {}
                Err(_) => break,
            }
        }
        let (wall, cpu) = (start.elapsed(), process_cpu() - cpu0);
        let bytes: usize = units.iter().map(Vec::len).sum();
        let decoded = decode(&units);
        println!(
            "{:<62} {:>7.1} {:>10.1} {:>6} {:>9.0} {:>7.2}",
            v.name,
            frames as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e3 / frames as f64,
            max_delay,
            bytes as f64 * 8.0 * f64::from(FPS) / frames as f64 / 1e3,
            psnr(&source, &decoded)
        );
    }
}
