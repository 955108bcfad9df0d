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

use std::sync::Arc;
use std::time::Instant;

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

fn direct(case: &Case, frames: &[Vec<u8>]) -> Result<(f64, u64)> {
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), direct_config(case.bitrate))
        .context("creating the encoder")?;
    let (w, h) = (case.width as usize, case.height as usize);
    let mut bytes = 0u64;
    let start = Instant::now();
    for f in frames {
        let (y, uv) = f.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        let src = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bs = enc.encode(&src).context("encoding")?;
        bytes += bs.to_vec().len() as u64;
    }
    Ok((frames.len() as f64 / start.elapsed().as_secs_f64(), bytes))
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

async fn through_card(case: &Case, frames: &[Vec<u8>]) -> Result<(f64, u64)> {
    let (card, id) = session(case).await?;
    let mut bytes = 0u64;
    let start = Instant::now();
    for (n, f) in frames.iter().enumerate() {
        let p = card
            .encode(id, FrameInput::Bytes(f), n as u64, false)
            .await?;
        bytes += p.data.len() as u64;
    }
    let fps = frames.len() as f64 / start.elapsed().as_secs_f64();
    card.shutdown().await?;
    Ok((fps, bytes))
}

async fn through_card_zero_copy(case: &Case, frames: &[Vec<u8>]) -> Result<(f64, u64)> {
    let (card, id) = session(case).await?;
    let size = frames[0].len();
    let region = Arc::new(HostRegion::anonymous(size * frames.len())?);
    for (n, f) in frames.iter().enumerate() {
        region.write(n * size, f);
    }
    let mapped = card.map_frames(region)?;
    let mut bytes = 0u64;
    let start = Instant::now();
    for n in 0..frames.len() {
        let input = FrameInput::Dma {
            buffer: &mapped,
            offset: n * size,
            len: size,
        };
        let p = card.encode(id, input, n as u64, false).await?;
        bytes += p.data.len() as u64;
    }
    let fps = frames.len() as f64 / start.elapsed().as_secs_f64();
    card.shutdown().await?;
    Ok((fps, bytes))
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
        "{:<6} {:>12} {:>12} {:>8} {:>16} {:>8} {:>14}",
        "size", "direct fps", "card fps", "ratio", "card 0-copy fps", "ratio", "bytes card/dir"
    );
    for case in &cases {
        let pattern = TestPattern::new(case.width, case.height);
        let frames: Vec<Vec<u8>> = (0..count as u64).map(|n| pattern.frame(n)).collect();
        let mut best = [0f64; 3];
        let mut bytes = [0u64; 3];
        for round in 0..rounds {
            for k in 0..3 {
                let variant = (round + k) % 3;
                let (fps, b) = match variant {
                    0 => direct(case, &frames)?,
                    1 => rt.block_on(through_card(case, &frames))?,
                    _ => rt.block_on(through_card_zero_copy(case, &frames))?,
                };
                best[variant] = best[variant].max(fps);
                bytes[variant] = b;
            }
        }
        let [d, c, z] = best;
        let (db, cb) = (bytes[0], bytes[1]);
        println!(
            "{:<6} {:>12.1} {:>12.1} {:>8.3} {:>16.1} {:>8.3} {:>14.3}",
            case.name,
            d,
            c,
            c / d,
            z,
            z / d,
            cb as f64 / db.max(1) as f64
        );
    }
    Ok(())
}
