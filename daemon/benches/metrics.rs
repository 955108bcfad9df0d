//! (e) What the Prometheus endpoint costs the encodes: the same 720p encode through two
//! vpud processes, one with `[metrics] enabled = false` and one with it on (every frame
//! timed into the latency histogram) and scraped every 100 ms throughout (ten times a
//! 1 s scrape interval), rounds alternating which goes first. Prints fps and vpud CPU per
//! frame of each and their ratios (target: vpud CPU per frame on/off ≤ 1.02, i.e. within
//! the noise; on a loaded host the wall-clock fps ratio swings and the CPU ratio is the one
//! to read), the scrape's own time and size, and the per-frame accounting alone (counting
//! a frame in and its packet out, with and without timing it) in ns, paired.
//!
//! `cargo bench -p vpud --bench metrics` (env `VPUD_BENCH_FRAMES`, default 150 frames of
//! 1280x720 per round; 6 rounds).

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{median, percentile, VpudProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpu_driver::media::TestPattern;
use vpud::metrics::Metrics;
use vpud_client::{Client, SessionParams};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const ROUNDS: usize = 6;
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// Encodes `frames` through `vpud`; returns (fps, vpud CPU ms per frame).
async fn encode(vpud: &VpudProcess, frames: &[Vec<u8>]) -> (f64, f64) {
    let client = Client::connect(Some(vpud.address())).await.unwrap();
    let mut s = client
        .create_session(&SessionParams::h264(WIDTH, HEIGHT, 30))
        .await
        .unwrap();
    let cpu0 = vpud.cpu_seconds();
    let start = Instant::now();
    let mut got = 0usize;
    for (pts, f) in frames.iter().enumerate() {
        s.send_frame(f, pts as u64, false).await.unwrap();
        got += s.ready_packets().count();
    }
    while got < frames.len() {
        s.next_packet().await.unwrap().unwrap();
        got += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = vpud.cpu_seconds() - cpu0;
    s.close().await.unwrap();
    (frames.len() as f64 / secs, cpu * 1e3 / frames.len() as f64)
}

/// One `GET /metrics`; returns the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// ns per frame of the daemon's accounting (frame in, packet out) with `timing`.
fn accounting_ns(timing: bool, frames: u32) -> f64 {
    let m = Metrics::new(timing);
    let s = m.session_created("h264");
    let start = Instant::now();
    for _ in 0..frames {
        let t = s.frame_in(&m);
        s.packet_out(&m, std::hint::black_box(20_000), t);
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(frames)
}

#[tokio::main]
async fn main() {
    let frames: usize = std::env::var("VPUD_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let pattern = TestPattern::new(WIDTH, HEIGHT);
    let clip: Vec<Vec<u8>> = (0..frames as u64).map(|n| pattern.frame(n)).collect();

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (off_cfg, on_cfg) = (dir.path().join("off.toml"), dir.path().join("on.toml"));
    std::fs::write(&off_cfg, "[metrics]\nenabled = false\n").unwrap();
    std::fs::write(
        &on_cfg,
        format!("[metrics]\nenabled = true\naddress = \"{addr}\"\n"),
    )
    .unwrap();
    let off = VpudProcess::start_with(1, &[OsStr::new("--config"), off_cfg.as_os_str()]).await;
    let on = VpudProcess::start_with(1, &[OsStr::new("--config"), on_cfg.as_os_str()]).await;

    // The scraper: every SCRAPE_EVERY while `on` encodes, timing each scrape.
    let scraping = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (scraping, stop) = (Arc::clone(&scraping), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut size = 0;
            let mut tick = tokio::time::interval(SCRAPE_EVERY);
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                if scraping.load(Ordering::Acquire) {
                    let t = Instant::now();
                    size = scrape(addr).await.len();
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            (times, size)
        })
    };

    let (mut fps_off, mut fps_on, mut cpu_off, mut cpu_on, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let run = |metrics: bool| {
            let (vpud, clip, scraping) = (if metrics { &on } else { &off }, &clip, &scraping);
            async move {
                scraping.store(metrics, Ordering::Release);
                let r = encode(vpud, clip).await;
                scraping.store(false, Ordering::Release);
                r
            }
        };
        let (a, b) = if round % 2 == 0 {
            let a = run(false).await;
            (a, run(true).await)
        } else {
            let b = run(true).await;
            (run(false).await, b)
        };
        fps_off.push(a.0);
        cpu_off.push(a.1);
        fps_on.push(b.0);
        cpu_on.push(b.1);
        ratios.push(b.0 / a.0);
    }
    stop.store(true, Ordering::Release);
    let (mut scrape_us, size) = scraper.await.unwrap();
    let last = scrape(addr).await;
    let count = sample(&last, "vpud_encode_latency_seconds_count{codec=\"h264\"}");
    let sum = sample(&last, "vpud_encode_latency_seconds_sum{codec=\"h264\"}");

    println!(
        "(e) metrics on vs off: {frames} frames {WIDTH}x{HEIGHT} per round, {ROUNDS} rounds alternating, medians"
    );
    println!("{:<44} {:>8} {:>14}", "vpud", "fps", "cpu ms/frame");
    println!(
        "{:<44} {:>8.1} {:>14.2}",
        "metrics off",
        median(&mut fps_off),
        median(&mut cpu_off)
    );
    println!(
        "{:<44} {:>8.1} {:>14.2}",
        "metrics on, scraped every 100 ms",
        median(&mut fps_on),
        median(&mut cpu_on)
    );
    println!(
        "vpud cpu per frame on/off {:.3}  target <= 1.02",
        median(&mut cpu_on) / median(&mut cpu_off)
    );
    println!(
        "fps on/off (median of per-round ratios) {:.3}; per round {:?}",
        median(&mut ratios),
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
    println!(
        "scrape: {} scrapes, p50 {:.0} us, p99 {:.0} us, {size} bytes",
        scrape_us.len(),
        percentile(&mut scrape_us, 50.0),
        percentile(&mut scrape_us, 99.0)
    );
    println!(
        "encode latency recorded by vpud: {count} frames, mean {:.2} ms",
        sum / count * 1e3
    );
    // The accounting alone, rounds alternating untimed and timed.
    let (mut untimed, mut timed) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        untimed.push(accounting_ns(false, 1_000_000));
        timed.push(accounting_ns(true, 1_000_000));
    }
    println!(
        "accounting per frame: counters only {:.0} ns, counters + latency histogram {:.0} ns (median of 10 x 1M)",
        median(&mut untimed),
        median(&mut timed)
    );
}
