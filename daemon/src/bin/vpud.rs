//! `vpud`: the VPU card daemon. Finds cards, schedules encode sessions across them and
//! serves the `org.vpud.Vpud1` D-Bus API until SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use vpud::config::Config;
use vpud::service::{self, BusChoice, RunOptions};

/// Log filter without `VPUD_LOG`: vpud's own `info`. zbus's `info` spans are left out: one
/// is opened for every incoming method call and formats the whole message and header, a
/// cost on each call that shows nothing an operator needs (`VPUD_LOG=info` brings them
/// back).
const DEFAULT_LOG: &str = "info,zbus=warn";

/// Share VPU encode cards between media services over D-Bus.
#[derive(Debug, Parser)]
#[command(name = "vpud", version)]
struct Args {
    /// Configuration file [default: /etc/vpud/vpud.toml; missing means defaults].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bus to serve on: system, session, private (start a private dbus-daemon), or a
    /// D-Bus address such as unix:path=/run/vpud/bus.
    #[arg(long, default_value = "system", value_name = "BUS")]
    bus: String,
    /// Add N emulated cards.
    #[arg(long, value_name = "N", default_value_t = 0)]
    emulate: u32,
    /// Print the bus address on standard output once serving (useful with --bus private).
    #[arg(long)]
    print_address: bool,
}

fn main() -> anyhow::Result<()> {
    service::memory::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VPUD_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    let bus: BusChoice = args.bus.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.threads))
        .thread_name("vpud-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, bus, args.emulate, args.print_address))
}

/// Serves on the bus until SIGTERM or SIGINT.
async fn serve(config: Config, bus: BusChoice, emulate: u32, print: bool) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let opts = RunOptions {
        bus,
        emulate,
        ready: Some(ready_tx),
        systemd_notify: true,
    };
    tokio::spawn(async move {
        if let Ok(ready) = ready_rx.await {
            if print {
                println!("{}", ready.address);
            }
        }
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    };
    service::run(config, opts, shutdown).await?;
    Ok(())
}
