//! (d) Resident memory of a `vpud` process (2 emulated cards): idle, with 8 open 720p
//! sessions that have encoded frames, and after they closed. `VmRSS` of /proc/PID/status.
//!
//! `cargo bench -p vpud --bench rss`

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::VpudProcess;
use vpu_driver::media::TestPattern;
use vpud::client::{Client, SessionParams};

const SESSIONS: usize = 8;
const FRAMES: u64 = 10;

#[tokio::main]
async fn main() {
    let vpud = VpudProcess::start(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = vpud.rss_kib();

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
    let busy = vpud.rss_kib();
    for s in sessions {
        s.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = vpud.rss_kib();
    let per = (busy.saturating_sub(idle)) as f64 / SESSIONS as f64;
    println!("(d) vpud RSS (separate process, 2 emulated cards), KiB");
    println!("{:<40} {:>10}", "state", "VmRSS");
    println!("{:<40} {:>10}", "idle", idle);
    println!(
        "{:<40} {:>10}",
        format!("{SESSIONS} open 720p sessions"),
        busy
    );
    println!("{:<40} {:>10}", "after closing them", after);
    println!("per session {:.0} KiB ({:.1} MiB)", per, per / 1024.0);
}
