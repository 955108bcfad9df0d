//! `vpu-soak`: runs `vpud` (emulated cards, private bus) as a separate process and keeps
//! creating, encoding on and closing sessions from several clients for a given time,
//! sampling the daemon's RSS, open descriptors, mapped frame buffers and DMA mappings.
//! Prints a table and a verdict; exits non-zero when the run is not flat.
//!
//! `cargo run --release -p vpu-tests --bin vpu-soak -- --minutes 10`

use std::time::Duration;

use clap::Parser;
use vpu_tests::load::soak::{self, SoakOptions};

/// Soak vpud with sessions that come and go; check that its resources stay flat.
#[derive(Debug, Parser)]
#[command(name = "vpu-soak")]
struct Args {
    /// Length of the measured run, minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Warm-up before the reference sample, seconds: long enough for the cards' spare
    /// buffer pools to reach their working size.
    #[arg(long, default_value_t = 120)]
    warmup: u64,
    /// Emulated cards.
    #[arg(long, default_value_t = 2)]
    cards: u32,
    /// Long-lived client connections.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Sessions open at once (one per worker).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds between samples under load.
    #[arg(long, default_value_t = 30)]
    sample_every: u64,
    /// Allowed RSS growth from start to end, percent.
    #[arg(long, default_value_t = 10)]
    rss_tolerance: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
        anyhow::bail!(
            "--minutes {}: expected more than 0 and at most 1440",
            args.minutes
        );
    }
    let options = SoakOptions {
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        warmup: Duration::from_secs(args.warmup),
        cards: args.cards.max(1),
        clients: args.clients.max(1),
        concurrency: args.concurrency.max(1),
        sample_every: Duration::from_secs(args.sample_every.max(1)),
        rss_tolerance_percent: args.rss_tolerance,
    };
    let report = soak::run(options).await?;
    report.print();
    if !report.failures().is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
