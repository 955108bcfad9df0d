//! `vpu-device-plugin`: the Kubernetes device plugin for vpud (see the library's docs and
//! `docs/operations.md`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vpu_device_plugin::{Config, ContainerBus, KubeletOptions};
use vpud_client::BusTarget;

/// Advertises VPU capacity to the kubelet as `vpud.io/encode-units` and reserves allocated
/// units in vpud.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The kubelet's device plugin directory.
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
    device_plugin_dir: PathBuf,
    /// The kubelet's registration socket in that directory.
    #[arg(long, default_value = "kubelet.sock")]
    kubelet_socket: String,
    /// The plugin's socket in that directory.
    #[arg(long, default_value = "vpud-encode-units.sock")]
    socket: String,
    /// The bus vpud is on: `system`, `session` or a D-Bus address (else VPUD_BUS_ADDRESS,
    /// else the system bus).
    #[arg(long)]
    bus: Option<String>,
    /// The host directory of the system bus socket, mounted into allocated containers.
    #[arg(long, default_value = "/run/dbus")]
    bus_host_dir: String,
    /// Where that directory is mounted in containers.
    #[arg(long, default_value = "/run/dbus")]
    bus_container_dir: String,
    /// The bus socket's name in that directory.
    #[arg(long, default_value = "system_bus_socket")]
    bus_socket: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let bus = BusTarget::resolve(args.bus.as_deref()).context("--bus")?;
    let config = Config {
        bus,
        kubelet: KubeletOptions {
            dir: args.device_plugin_dir,
            kubelet_socket: args.kubelet_socket,
            endpoint: args.socket,
        },
        container_bus: ContainerBus {
            host_dir: args.bus_host_dir,
            container_dir: args.bus_container_dir,
            socket: args.bus_socket,
        },
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    vpu_device_plugin::run(config, shutdown)
        .await
        .context("the device plugin stopped")
}
