//! (b) `CreateSession` + `Session.Close` round trip versus a bare
//! `org.freedesktop.DBus.Peer.Ping` to the daemon on the same bus, p50 and p99.
//! Target: ratio ≤ 3 at p50.
//!
//! `cargo bench -p vpud --bench session_rtt` (env `VPUD_BENCH_ITERS`, default 500).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::{percentile, VpudProcess};
use vpud_client::proxy::{BUS_NAME, ROOT_PATH};
use vpud_client::{Client, SessionParams};

const BLOCK: usize = 50;

#[tokio::main]
async fn main() {
    let iters: usize = std::env::var("VPUD_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let vpud = VpudProcess::start(2).await;
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let conn = client.connection().clone();
    let peer = zbus::fdo::PeerProxy::builder(&conn)
        .destination(BUS_NAME)
        .path(ROOT_PATH)
        .build()
        .await
        .unwrap();
    let mut params = SessionParams::h264(1280, 720, 30);
    params.bitrate = Some(3_000_000);
    let dict = params.to_dict();

    let ping = || async { peer.ping().await.unwrap() };
    let create_close = || async {
        let (path, fd) = client.manager().create_session(dict.clone()).await.unwrap();
        conn.call_method(
            Some(BUS_NAME),
            path.as_str(),
            Some("org.vpud.Vpud1.Session"),
            "Close",
            &(),
        )
        .await
        .unwrap();
        drop(fd);
    };
    // A full client-library session: CreateSession, hello, memfd pool registered, Close.
    let library = || async {
        let s = client.create_session(&params).await.unwrap();
        s.close().await.unwrap();
    };

    for _ in 0..BLOCK {
        ping().await;
        create_close().await;
    }
    let (mut p, mut c, mut l) = (Vec::new(), Vec::new(), Vec::new());
    while p.len() < iters {
        for _ in 0..BLOCK {
            let t = Instant::now();
            ping().await;
            p.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            create_close().await;
            c.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for _ in 0..BLOCK / 5 {
            let t = Instant::now();
            library().await;
            l.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let (p50, p99) = (percentile(&mut p, 50.0), percentile(&mut p, 99.0));
    let (c50, c99) = (percentile(&mut c, 50.0), percentile(&mut c, 99.0));
    let (l50, l99) = (percentile(&mut l, 50.0), percentile(&mut l, 99.0));
    println!("(b) round trips to vpud (separate process, 2 emulated cards), {iters} each, µs");
    println!("{:<52} {:>9} {:>9}", "call", "p50", "p99");
    println!("{:<52} {:>9.0} {:>9.0}", "Peer.Ping", p50, p99);
    println!(
        "{:<52} {:>9.0} {:>9.0}",
        "CreateSession + Session.Close (D-Bus)", c50, c99
    );
    println!(
        "{:<52} {:>9.0} {:>9.0}",
        "client library open + close (hello, memfd pool)", l50, l99
    );
    println!("ratio p50 {:.2}  target <= 3", c50 / p50);
    println!("ratio p99 {:.2}", c99 / p99);
}
