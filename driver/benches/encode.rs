//! Encode throughput: the driver and an emulated card against the same `openh264` encoder
//! called directly, on the same pre-generated frames with the same settings (one encoder
//! thread, Constrained Baseline, bitrate rate control, no frame skipping, the same GOP),
//! measured side by side in one run at 720p and 1080p.
//!
//! `cargo bench -p vpu-driver --bench encode [-- FRAMES [ROUNDS]]` (default 150 frames
//! per run, 4 rounds). Each round runs the three variants in a rotated order; the best run
//! of each variant counts, which filters out other load on a shared machine. The
//! bitstream sizes are compared too: equal sizes mean the encoder ran with the same
//! settings on both paths.
//!
//! Two figures per path: wall-clock fps, and fps per CPU-second of the whole process
//! (driver, runtime, controller and engine threads together). On a machine shared with
//! other work the CPU figure is the stable one: the cost of a frame, whoever else runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
    UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use vpu_driver::card::{Card, CardOptions, FrameInput, SessionConfig};
use vpu_driver::emu::{EmuConfig, EmulatedCard};
use vpu_driver::io::{DeviceIo, HostRegion};
use vpu_driver::media::TestPattern;

const FPS: u32 = 30;

/// CPU time used by this process so far (all threads).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Frames per wall-clock second and per CPU-second, and bitstream bytes, of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    wall_fps: f64,
    cpu_fps: f64,
    bytes: u64,
}

/// Starts timing a run of `frames` frames.
fn timer() -> (Instant, Duration) {
    (Instant::now(), process_cpu())
}

fn finish(t: (Instant, Duration), frames: usize, bytes: u64) -> Run {
    let wall = t.0.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(t.1).as_secs_f64();
    Run {
        wall_fps: frames as f64 / wall.max(1e-9),
        cpu_fps: frames as f64 / cpu.max(1e-9),
        bytes,
    }
}
const GOP: u32 = 60;

struct Case {
    name: &'static str,
    width: u32,
    height: u32,
    bitrate: u32,
}

/// The configuration the emulated card's engines give openh264 for such a session.
fn direct_config(bitrate: u32) -> EncoderConfig {
    EncoderConfig::new()
        .skip_frames(false)
        .usage_type(UsageType::CameraVideoRealTime)
        .max_frame_rate(FrameRate::from_hz(FPS as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(GOP))
        .num_threads(1)
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Bitrate)
        .bitrate(BitRate::from_bps(bitrate))
}

fn direct(case: &Case, frames: &[Vec<u8>]) -> Result<Run> {
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), direct_config(case.bitrate))
        .context("creating the encoder")?;
    let (w, h) = (case.width as usize, case.height as usize);
    let mut bytes = 0u64;
    let t = timer();
    for f in frames {
        let (y, uv) = f.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        let src = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bs = enc.encode(&src).context("encoding")?;
        bytes += bs.to_vec().len() as u64;
    }
    Ok(finish(t, frames.len(), bytes))
}

async fn session(case: &Case) -> Result<(Arc<Card>, vpu_driver::card::SessionId)> {
    let io: Arc<dyn DeviceIo> = EmulatedCard::new(EmuConfig::default())?;
    let card = Card::open(io, CardOptions::default()).await?;
    let id = card
        .create_session(&SessionConfig {
            width: case.width,
            height: case.height,
            fps_num: FPS,
            fps_den: 1,
            bitrate: case.bitrate,
            gop: GOP,
            ..SessionConfig::default()
        })
        .await?;
    Ok((card, id))
}

async fn through_card(case: &Case, frames: &[Vec<u8>]) -> Result<Run> {
    let (card, id) = session(case).await?;
    let mut bytes = 0u64;
    let t = timer();
    for (n, f) in frames.iter().enumerate() {
        let p = card
            .encode(id, FrameInput::Bytes(f), n as u64, false)
            .await?;
        bytes += p.data.len() as u64;
    }
    let run = finish(t, frames.len(), bytes);
    card.shutdown().await?;
    Ok(run)
}

async fn through_card_zero_copy(case: &Case, frames: &[Vec<u8>]) -> Result<Run> {
    let (card, id) = session(case).await?;
    let size = frames[0].len();
    let region = Arc::new(HostRegion::anonymous(size * frames.len())?);
    for (n, f) in frames.iter().enumerate() {
        region.write(n * size, f);
    }
    let mapped = card.map_frames(region)?;
    let mut bytes = 0u64;
    let t = timer();
    for n in 0..frames.len() {
        let input = FrameInput::Dma {
            buffer: &mapped,
            offset: n * size,
            len: size,
        };
        let p = card.encode(id, input, n as u64, false).await?;
        bytes += p.data.len() as u64;
    }
    let run = finish(t, frames.len(), bytes);
    card.shutdown().await?;
    Ok(run)
}

fn main() -> Result<()> {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("FRAMES and ROUNDS must be numbers")?;
    let count = numbers.first().copied().unwrap_or(150).max(1);
    let rounds = numbers.get(1).copied().unwrap_or(4).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cases = [
        Case {
            name: "720p",
            width: 1280,
            height: 720,
            bitrate: 4_000_000,
        },
        Case {
            name: "1080p",
            width: 1920,
            height: 1080,
            bitrate: 8_000_000,
        },
    ];
    println!(
        "encode throughput, {count} pre-generated frames per run, best of {rounds} interleaved rounds"
    );
    println!(
        "{:<6} {:>6} {:>10} {:>10} {:>7} {:>12} {:>7}",
        "size", "metric", "direct", "card", "ratio", "card 0-copy", "ratio"
    );
    for case in &cases {
        let pattern = TestPattern::new(case.width, case.height);
        let frames: Vec<Vec<u8>> = (0..count as u64).map(|n| pattern.frame(n)).collect();
        let mut best = [Run::default(); 3];
        for round in 0..rounds {
            for k in 0..3 {
                let variant = (round + k) % 3;
                let run = match variant {
                    0 => direct(case, &frames)?,
                    1 => rt.block_on(through_card(case, &frames))?,
                    _ => rt.block_on(through_card_zero_copy(case, &frames))?,
                };
                let b = &mut best[variant];
                b.wall_fps = b.wall_fps.max(run.wall_fps);
                b.cpu_fps = b.cpu_fps.max(run.cpu_fps);
                b.bytes = run.bytes;
            }
        }
        let [d, c, z] = best;
        for (metric, get) in [
            ("fps", (|r: &Run| r.wall_fps) as fn(&Run) -> f64),
            ("fps/cpu", |r: &Run| r.cpu_fps),
        ] {
            println!(
                "{:<6} {:>6} {:>10.1} {:>10.1} {:>7.3} {:>12.1} {:>7.3}",
                case.name,
                metric,
                get(&d),
                get(&c),
                get(&c) / get(&d),
                get(&z),
                get(&z) / get(&d)
            );
        }
        println!(
            "{:<6} bitstream bytes: direct {}, card {}, card 0-copy {}",
            case.name, d.bytes, c.bytes, z.bytes
        );
    }
    Ok(())
}
