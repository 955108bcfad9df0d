//! Encodes a Y4M file to H.264 through an emulated VPU card: the whole driver path (NVMe
//! queues, PRPs, the video command set) with a software encoder behind it.
//!
//! ```text
//! cargo run --release -p vpu-driver --example encode -- INPUT.y4m OUTPUT.h264 [--bitrate BITS] [--gop N]
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use vpu_driver::card::{Card, CardOptions, FrameInput, FrameType, SessionConfig};
use vpu_driver::emu::{EmuConfig, EmulatedCard};
use vpu_driver::io::DeviceIo;
use vpu_driver::media::{Interlace, Y4mReader};

/// Encode a 4:2:0 8-bit Y4M file to an H.264 Annex-B file through an emulated VPU card.
#[derive(Debug, Parser)]
struct Args {
    /// Input YUV4MPEG2 file (4:2:0, 8-bit).
    input: PathBuf,
    /// Output raw H.264 (Annex-B) file.
    output: PathBuf,
    /// Target bitrate in bit/s (CBR).
    #[arg(long, default_value_t = 4_000_000)]
    bitrate: u32,
    /// Frames between IDR frames; 0: only the first.
    #[arg(long)]
    gop: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("encode: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("encode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let file =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let mut reader = Y4mReader::new(BufReader::new(file))
        .with_context(|| format!("reading the Y4M header of {}", args.input.display()))?;
    let header = reader.header().clone();
    if header.width % 2 != 0 || header.height % 2 != 0 {
        bail!(
            "{}: {}x{} is not supported: the card needs even width and height",
            args.input.display(),
            header.width,
            header.height
        );
    }
    if header.interlace != Interlace::Progressive {
        eprintln!(
            "note: {:?} input is encoded as progressive frames",
            header.interlace
        );
    }
    if header.is_mono() {
        eprintln!("note: luma-only input is encoded with neutral chroma");
    }
    if args.bitrate == 0 {
        bail!("--bitrate must be positive");
    }
    let fps = f64::from(header.fps_num) / f64::from(header.fps_den);
    let gop = args
        .gop
        .unwrap_or_else(|| (2.0 * fps).round().max(1.0) as u32);

    let emulated = EmulatedCard::new(EmuConfig::default()).context("creating the emulated card")?;
    let io: Arc<dyn DeviceIo> = emulated;
    let card = Card::open(io, CardOptions::default())
        .await
        .context("opening the emulated card")?;
    let config = SessionConfig {
        width: header.width,
        height: header.height,
        fps_num: header.fps_num,
        fps_den: header.fps_den,
        bitrate: args.bitrate,
        gop,
        ..SessionConfig::default()
    };
    let session = card
        .create_session(&config)
        .await
        .context("creating the encode session")?;

    let out = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::new(out);
    let mut frame = Vec::new();
    let (mut frames, mut bytes, mut keyframes, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    while reader
        .read_frame(&mut frame)
        .with_context(|| format!("reading {}", args.input.display()))?
    {
        let packet = card
            .encode(session, FrameInput::Bytes(&frame), frames, false)
            .await
            .with_context(|| format!("encoding frame {frames}"))?;
        out.write_all(&packet.data)
            .with_context(|| format!("writing {}", args.output.display()))?;
        frames += 1;
        bytes += packet.data.len() as u64;
        keyframes += u64::from(packet.keyframe);
        skipped += u64::from(packet.frame_type == FrameType::Skipped);
    }
    card.flush(session).await.context("flushing the session")?;
    let elapsed = start.elapsed().as_secs_f64();
    out.flush()
        .with_context(|| format!("writing {}", args.output.display()))?;
    card.destroy_session(session)
        .await
        .context("destroying the session")?;
    card.shutdown().await.context("shutting the card down")?;

    let seconds = frames as f64 / fps;
    println!(
        "{} -> {}: {}x{} @ {:.3} fps, {frames} frames ({keyframes} keyframes, {skipped} skipped)",
        args.input.display(),
        args.output.display(),
        header.width,
        header.height,
        fps
    );
    println!(
        "encoded in {elapsed:.2} s: {:.1} fps; {bytes} bytes, {:.0} kbit/s (target {} kbit/s)",
        frames as f64 / elapsed.max(1e-9),
        if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds / 1000.0
        } else {
            0.0
        },
        args.bitrate / 1000
    );
    Ok(())
}
