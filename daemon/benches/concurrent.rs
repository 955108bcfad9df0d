//! (c) Aggregate fps of 8 concurrent 720p sessions through vpud versus one stream of the
//! raw encoder (openh264 in this process) on the same cores, in the same run.
//!
//! `cargo bench -p vpud --bench concurrent` (env `VPUD_BENCH_FRAMES`, default 60 per
//! session; 2 emulated cards of 2 engines each).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::{baseline_encoder, encode_i420, VpudProcess};
use vpu_driver::media::TestPattern;
use vpud_client::{Client, SessionParams};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const BITRATE: u32 = 3_000_000;
const GOP: u32 = 60;
const SESSIONS: u32 = 8;
const DISTINCT_FRAMES: u64 = 30;

#[tokio::main]
async fn main() {
    let frames: u64 = std::env::var("VPUD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let pattern = TestPattern::new(WIDTH, HEIGHT);
    let clip: std::sync::Arc<Vec<Vec<u8>>> =
        std::sync::Arc::new((0..DISTINCT_FRAMES).map(|n| pattern.frame(n)).collect());

    // Baseline: one stream, raw encoder, this process.
    let mut enc = baseline_encoder(BITRATE, FPS, GOP);
    let mut out = Vec::new();
    let start = Instant::now();
    for n in 0..frames {
        out.clear();
        let f = &clip[(n % DISTINCT_FRAMES) as usize];
        encode_i420(&mut enc, f, WIDTH as usize, HEIGHT as usize, &mut out);
    }
    let single = frames as f64 / start.elapsed().as_secs_f64();
    drop(enc);

    let vpud = VpudProcess::start(2).await;
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let mut params = SessionParams::h264(WIDTH, HEIGHT, FPS);
    params.bitrate = Some(BITRATE);
    params.gop = Some(GOP);
    let run = |n_sessions: u32| {
        let client = client.clone();
        let params = params.clone();
        let clip = clip.clone();
        async move {
            let mut sessions = Vec::new();
            for _ in 0..n_sessions {
                sessions.push(client.create_session(&params).await.unwrap());
            }
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for mut s in sessions {
                let clip = clip.clone();
                tasks.spawn(async move {
                    for n in 0..frames {
                        let f = &clip[(n % DISTINCT_FRAMES) as usize];
                        s.send_frame(f, n, false).await.unwrap();
                        s.ready_packets().for_each(drop);
                    }
                    let got = s.drain().await.unwrap().len() as u64;
                    let total = s.counters().packets;
                    assert_eq!(total, frames, "{got} packets after end of stream");
                    s.close().await.unwrap();
                    total
                });
            }
            let mut total = 0;
            while let Some(r) = tasks.join_next().await {
                total += r.unwrap();
            }
            total as f64 / start.elapsed().as_secs_f64()
        }
    };
    let one = run(1).await;
    let eight = run(SESSIONS).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("(c) {WIDTH}x{HEIGHT}@{FPS} {BITRATE} b/s, {frames} frames per stream, {cores} cores, vpud with 2 emulated cards x 2 engines");
    println!("{:<44} {:>10}", "path", "fps");
    println!(
        "{:<44} {:>10.1}",
        "raw openh264, 1 stream (baseline)", single
    );
    println!("{:<44} {:>10.1}", "vpud, 1 session", one);
    println!(
        "{:<44} {:>10.1}",
        "vpud, 8 concurrent sessions (aggregate)", eight
    );
    println!("ratio 8 sessions / raw single stream {:.2}", eight / single);
}
