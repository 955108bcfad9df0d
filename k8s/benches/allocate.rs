//! The device plugin's latencies against a real vpud (2 emulated cards) on a private bus,
//! each paired with a baseline measured in the same run:
//!
//! - `Allocate` round trip over the plugin's socket (it reserves in vpud over D-Bus), for
//!   units never allocated before and for units allocated again (the earlier reservation
//!   is released first), against `GetDevicePluginOptions` on the same socket (a bare gRPC
//!   call);
//! - `ListAndWatch` update after a card state change: from sending `Card.Drain` (or
//!   `Resume`) to the new list arriving, against the `Drain`/`Resume` call's own D-Bus
//!   round trip.
//!
//! `cargo bench -p vpu-device-plugin --bench allocate`; figures in BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::oneshot;
use vpu_device_plugin::api::{self, device_plugin_client::DevicePluginClient};
use vpu_device_plugin::{kubelet, units, Config, ContainerBus, KubeletOptions};
use vpud::bus::PrivateBus;
use vpud::service::{BusChoice, RunOptions};
use vpud_client::BusTarget;

fn percentiles(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let (p50, p99) = (p(0.50), p(0.99));
    println!(
        "{name:<58} n={:<5} p50 {:>9.1} µs  p99 {:>9.1} µs",
        v.len(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bus = PrivateBus::start().unwrap();
    let address = bus.address().to_owned();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_vpud, stop_rx) = oneshot::channel::<()>();
    let opts = RunOptions {
        bus: BusChoice::Address(address.clone()),
        emulate: 2,
        ready: Some(ready_tx),
        systemd_notify: false,
    };
    let vpud = tokio::spawn(vpud::service::run(
        vpud::config::Config::default(),
        opts,
        async move {
            let _ = stop_rx.await;
        },
    ));
    ready_rx.await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubelet_opts = KubeletOptions {
        dir: dir.path().to_owned(),
        ..KubeletOptions::default()
    };
    let socket = dir.path().join(&kubelet_opts.endpoint);
    let (stop_plugin, plugin_rx) = oneshot::channel::<()>();
    let config = Config {
        bus: BusTarget::Address(address.clone()),
        kubelet: kubelet_opts,
        container_bus: ContainerBus::default(),
    };
    // No kubelet is needed to call the plugin: it serves before it registers.
    let plugin = tokio::spawn(vpu_device_plugin::run(config, async move {
        let _ = plugin_rx.await;
    }));
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = DevicePluginClient::new(kubelet::unix_channel(&socket).await.unwrap());
    let mut stream = client
        .list_and_watch(api::Empty {})
        .await
        .unwrap()
        .into_inner();
    // Until vpud's cards are known and healthy.
    let mut last = Vec::new();
    while last.is_empty() || last.iter().any(|d: &api::Device| d.health != api::HEALTHY) {
        last = stream.next().await.unwrap().unwrap().devices;
    }
    let per_card = last.len() / 2;
    println!("vpud with 2 emulated cards, {} units each", per_card);

    // Warm-up.
    for _ in 0..200 {
        client
            .get_device_plugin_options(api::Empty {})
            .await
            .unwrap();
    }
    let allocate = |ids: Vec<String>| api::AllocateRequest {
        container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids }],
    };
    // Allocations of 5 units never allocated before, interleaved with bare calls.
    let mut bare = Vec::new();
    let mut fresh = Vec::new();
    let mut sets = Vec::new();
    for card in 0..2 {
        for k in 0..(per_card as u64 / 5) {
            sets.push(
                (0..5)
                    .map(|u| units::device_id(card, k * 5 + u))
                    .collect::<Vec<_>>(),
            );
        }
    }
    for ids in &sets {
        let t = Instant::now();
        client
            .get_device_plugin_options(api::Empty {})
            .await
            .unwrap();
        bare.push(t.elapsed());
        let t = Instant::now();
        client.allocate(allocate(ids.clone())).await.unwrap();
        fresh.push(t.elapsed());
    }
    // The same units allocated again: release of the earlier reservation, then Reserve.
    let mut again = Vec::new();
    for round in 0..2 {
        for ids in sets.iter().skip(round).step_by(2) {
            let t = Instant::now();
            client.allocate(allocate(ids.clone())).await.unwrap();
            again.push(t.elapsed());
        }
    }
    println!();
    percentiles("GetDevicePluginOptions (bare gRPC call, same socket)", bare);
    percentiles("Allocate, 5 new units (Reserve over D-Bus)", fresh);
    percentiles("Allocate, 5 units again (Release + Reserve)", again);

    // ListAndWatch updates after a card state change.
    let conn = zbus::connection::Builder::address(address.as_str())
        .build()
        .await
        .unwrap();
    let card = "/org/vpud/Vpud1/card/1";
    let mut call_only = Vec::new();
    let mut update = Vec::new();
    for i in 0..100 {
        let (method, want) = if i % 2 == 0 {
            ("Drain", api::UNHEALTHY)
        } else {
            ("Resume", api::HEALTHY)
        };
        let t = Instant::now();
        conn.call_method(
            Some("org.vpud.Vpud1"),
            card,
            Some("org.vpud.Vpud1.Card"),
            method,
            &(),
        )
        .await
        .unwrap();
        call_only.push(t.elapsed());
        loop {
            let devices = stream.next().await.unwrap().unwrap().devices;
            if devices
                .iter()
                .filter(|d| d.id.starts_with("vpu1-"))
                .all(|d| d.health == want)
            {
                break;
            }
        }
        update.push(t.elapsed());
    }
    percentiles("Card.Drain/Resume D-Bus round trip (baseline)", call_only);
    percentiles("ListAndWatch update, from Drain/Resume sent", update);

    let _ = stop_plugin.send(());
    let _ = plugin.await;
    let _ = stop_vpud.send(());
    let _ = vpud.await;
}
