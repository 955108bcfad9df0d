//! (d) Resident memory of a `vpud` process (2 emulated cards): idle, with 8 open 720p
//! sessions that have encoded frames, and after they closed. `VmRSS` of /proc/PID/status,
//! split into `RssAnon` (the daemon's own memory: encoders, buffers) and `RssShmem` (the
//! clients' memfd frame pools, mapped by vpud so the card reads frames in place; that
//! memory belongs to the clients and is counted in their RSS too).
//!
//! `cargo bench -p vpud --bench rss`

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::VpudProcess;
use vpu_driver::media::TestPattern;
use vpud_client::{Client, SessionParams};

const SESSIONS: usize = 8;
const FRAMES: u64 = 10;

#[tokio::main]
async fn main() {
    let vpud = VpudProcess::start(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sample = |v: &VpudProcess| {
        [
            v.rss_kib(),
            v.status_kib("RssAnon"),
            v.status_kib("RssShmem"),
        ]
    };
    let idle = sample(&vpud);

    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let mut params = SessionParams::h264(1280, 720, 30);
    params.bitrate = Some(3_000_000);
    let pattern = TestPattern::new(1280, 720);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut s = client.create_session(&params).await.unwrap();
        for n in 0..FRAMES {
            let f = pattern.frame(n);
            s.send_frame(&f, n, false).await.unwrap();
        }
        // Wait for every packet so each session's encoder and buffers are in use.
        let mut got = 0;
        while got < FRAMES {
            s.next_packet().await.unwrap().unwrap();
            got += 1;
        }
        sessions.push(s);
    }
    let busy = sample(&vpud);
    for s in sessions {
        s.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = sample(&vpud);
    let per = |i: usize| busy[i].saturating_sub(idle[i]) as f64 / SESSIONS as f64;
    println!("(d) vpud RSS (separate process, 2 emulated cards), KiB");
    println!(
        "{:<32} {:>10} {:>10} {:>10}",
        "state", "VmRSS", "RssAnon", "RssShmem"
    );
    let rows = [
        ("idle".to_string(), idle),
        (format!("{SESSIONS} open 720p sessions"), busy),
        ("after closing them".to_string(), after),
    ];
    for (name, v) in rows {
        println!("{:<32} {:>10} {:>10} {:>10}", name, v[0], v[1], v[2]);
    }
    println!(
        "per session: VmRSS {:.0} KiB ({:.1} MiB), of which own (RssAnon) {:.0} KiB, client frame pool (RssShmem) {:.0} KiB",
        per(0),
        per(0) / 1024.0,
        per(1),
        per(2)
    );
}
