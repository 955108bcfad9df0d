//! `vpu-surge`: runs `vpud` (paced emulated cards, private bus) as a separate process;
//! while sessions encode at their real frame rate, many clients fire `CreateSession` at
//! 100× the normal arrival rate. Prints each running session's frame rate before, during
//! and after the surge, the replies by kind, and a verdict; exits non-zero on failure.
//!
//! `cargo run --release -p vpu-tests --bin vpu-surge`

use std::time::Duration;

use clap::Parser;
use vpu_tests::load::surge::{self, SurgeOptions};

/// Fire a 100× burst of CreateSession at vpud while sessions encode; check the running
/// sessions keep their frame rate and the excess is refused with typed errors.
#[derive(Debug, Parser)]
#[command(name = "vpu-surge")]
struct Args {
    /// Emulated cards.
    #[arg(long, default_value_t = 1)]
    cards: u32,
    /// Engines per card.
    #[arg(long, default_value_t = 2)]
    engines: u8,
    /// Sessions one engine accepts.
    #[arg(long, default_value_t = 4)]
    sessions_per_engine: u16,
    /// Frame size, WxH.
    #[arg(long, default_value = "176x144")]
    size: String,
    /// Frame rate of every session.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Sessions encoding before the surge.
    #[arg(long, default_value_t = 4)]
    running: usize,
    /// Normal arrival rate of CreateSession, calls per second.
    #[arg(long, default_value_t = 2.0)]
    normal_rate: f64,
    /// Surge rate as a multiple of the normal rate.
    #[arg(long, default_value_t = 100.0)]
    factor: f64,
    /// CreateSession calls in the surge.
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Clients the calls come from.
    #[arg(long, default_value_t = 30)]
    clients: usize,
    /// Sessions one client may hold.
    #[arg(long, default_value_t = 1)]
    quota: u32,
    /// Seconds measured before and after the surge.
    #[arg(long, default_value_t = 5)]
    window: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (w, h) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--size {}: expected WxH, e.g. 176x144", args.size))?;
    if !(args.normal_rate > 0.0 && args.factor > 0.0) {
        anyhow::bail!("--normal-rate and --factor must be positive");
    }
    if args.fps == 0 || args.engines == 0 || args.sessions_per_engine == 0 || args.cards == 0 {
        anyhow::bail!("--fps, --cards, --engines and --sessions-per-engine must be at least 1");
    }
    let options = SurgeOptions {
        cards: args.cards,
        engines: args.engines,
        sessions_per_engine: args.sessions_per_engine,
        width: w,
        height: h,
        fps: args.fps,
        running: args.running,
        normal_rate: args.normal_rate,
        factor: args.factor,
        calls: args.calls,
        clients: args.clients.max(1),
        quota: args.quota,
        warmup: Duration::from_secs(3),
        before: Duration::from_secs(args.window.max(1)),
        after: Duration::from_secs(args.window.max(1)),
    };
    let report = surge::run(options).await?;
    report.print();
    let mut failures = report.behaviour_failures();
    failures.extend(report.rate_failures());
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
