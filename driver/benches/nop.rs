//! Vendor Nop round trips per second through the NVMe I/O queues of an emulated card, with
//! completion interrupts (eventfds) and with polling, at queue depth 1 and 32.
//!
//! `cargo bench -p vpu-driver --bench nop [-- SECONDS]` (default 2 s per configuration).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use vpu_driver::card::{Card, CardOptions};
use vpu_driver::emu::{EmuConfig, EmulatedCard};
use vpu_driver::io::DeviceIo;
use vpu_driver::nvme::Command;
use vpu_ffi::VPU_IO_NOP;

async fn run(polling: bool, depth: usize, seconds: f64) -> Result<f64> {
    let io: Arc<dyn DeviceIo> = EmulatedCard::new(EmuConfig::default())?;
    let card = Card::open(
        io,
        CardOptions {
            io_queues: 1,
            queue_depth: 64,
            polling,
            ..CardOptions::default()
        },
    )
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..depth {
        let card = Arc::clone(&card);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let c = card
                    .controller()
                    .io(0, Command::new(VPU_IO_NOP), Duration::from_secs(5))
                    .await?;
                anyhow::ensure!(c.status.is_success(), "nop failed: {}", c.status);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    card.shutdown().await?;
    Ok(rate)
}

fn main() -> Result<()> {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("vendor Nop round trips through one I/O queue pair, {seconds} s per configuration");
    println!(
        "{:<12} {:>6} {:>14} {:>12}",
        "completion", "depth", "round trips/s", "us/rt"
    );
    for polling in [false, true] {
        for depth in [1usize, 32] {
            let rate = rt.block_on(run(polling, depth, seconds))?;
            println!(
                "{:<12} {:>6} {:>14.0} {:>12.2}",
                if polling { "polling" } else { "interrupts" },
                depth,
                rate,
                1e6 / rate * depth as f64
            );
        }
    }
    Ok(())
}
