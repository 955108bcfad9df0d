//! `vpu-device-plugin`: a Kubernetes device plugin that hands out fractions of VPU cards.
//!
//! The kubelet learns from it how much encode capacity a node has, as the extended
//! resource `vpud.io/encode-units` ([`units`]: one unit is 1/100 of a 1080p30 H.264
//! encode in vpud's cost model), and pods ask for a quantity of it. When the kubelet
//! allocates units to a container, the plugin sets them aside in vpud
//! (`Manager.Reserve`), so that vpud guarantees them: the container's sessions draw on
//! its reservation (`VPUD_RESERVATION`), are refused with `QuotaExceeded` past it, and no
//! session outside it can take its units.
//!
//! Layout: [`api`] is the kubelet's device plugin API v1beta1 compiled from
//! `proto/api.proto`; [`vpud`] follows vpud on D-Bus (cards, their state, vpud coming and
//! going) and reserves; [`plugin`] is the `DevicePlugin` service, with [`prefer`] for
//! `GetPreferredAllocation`; [`kubelet`] serves it on the kubelet's socket directory and
//! keeps it registered. [`run`] puts them together. Documented in `docs/operations.md`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod kubelet;
pub mod plugin;
pub mod prefer;
pub mod units;
pub mod vpud;

use std::future::Future;
use std::sync::Arc;

use vpud_client::BusTarget;

pub use kubelet::{KubeletError, KubeletOptions};
pub use plugin::{ContainerBus, Plugin};

/// Everything the plugin needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The bus vpud is on.
    pub bus: BusTarget,
    /// The kubelet's socket directory and the socket names.
    pub kubelet: KubeletOptions,
    /// How containers reach that bus.
    pub container_bus: ContainerBus,
}

/// Runs the plugin until `shutdown` resolves: follows vpud, serves the kubelet.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), KubeletError> {
    let vpud = vpud::Vpud::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn(Arc::clone(&vpud).run(config.bus.clone(), async move {
        let _ = stop_rx.await;
    }));
    let plugin = Arc::new(Plugin::new(vpud, config.container_bus));
    let r = kubelet::serve(plugin, config.kubelet, shutdown).await;
    let _ = stop_tx.send(());
    let _ = follower.await;
    r
}
