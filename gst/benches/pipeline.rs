//! `vpuh264enc` against GStreamer's own software H.264 encoder, paired in one run.
//!
//! The pipeline is the one in the README: 300 frames of 1280×720 at 30 fps from
//! `videotestsrc`, encoded at 3 Mbit/s, parsed and muxed into an MP4 file. The baseline is
//! `openh264enc` (gst-plugins-bad) with the settings the emulated card gives openh264
//! (bit-rate rate control, no frame skipping, one thread, a keyframe every 60 frames), so
//! the same encoder runs underneath both; `vpuh264enc` encodes through vpud with one
//! emulated card, which runs in this process so that its CPU time is counted.
//!
//! Runs alternate between the two, `ROUNDS` times; medians are printed, with CPU time per
//! frame (user + system, the whole process) and the element's copies per frame.
//!
//! `cargo bench -p gst-vpud --bench pipeline` (`ROUNDS=N` to change the number of rounds).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use gst::prelude::*;
use vpud::config::Config;
use vpud::service::Embedded;

const FRAMES: u64 = 300;

/// CPU time of this process so far (user + system).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the structure it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by the successful call above.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Run {
    fps: f64,
    cpu_ms_per_frame: f64,
    copies_per_frame: Option<f64>,
}

fn run(encoder: &str, out: &std::path::Path) -> Run {
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! video/x-raw,width=1280,height=720,framerate=30/1 \
         ! {encoder} ! h264parse ! mp4mux ! filesink location={}",
        out.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = p.bus().unwrap();
    let (t0, c0) = (Instant::now(), cpu_time());
    p.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(300),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the pipeline did not finish");
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{encoder}: {} ({:?})", e.error(), e.debug());
    }
    let copies = p.by_name("enc").and_then(|enc| {
        enc.find_property("frames-copied")?;
        let copied: u64 = enc.property("frames-copied");
        let by_ref: u64 = enc.property("frames-by-reference");
        assert_eq!(copied + by_ref, FRAMES);
        Some(copied as f64 / FRAMES as f64)
    });
    p.set_state(gst::State::Null).unwrap();
    Run {
        fps: FRAMES as f64 / wall.as_secs_f64(),
        cpu_ms_per_frame: cpu.as_secs_f64() * 1000.0 / FRAMES as f64,
        copies_per_frame: copies,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    gst::init().unwrap();
    gstvpud::register_static().unwrap();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(Embedded::start(1, Config::default())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ours = format!(
        "vpuh264enc name=enc bitrate=3000 gop-size=60 bus-address={}",
        daemon.address()
    );
    let baseline = "openh264enc name=enc bitrate=3000000 rate-control=bitrate \
                    enable-frame-skip=false multi-thread=1 gop-size=60";
    let mut results: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, enc) in [baseline, ours.as_str()].into_iter().enumerate() {
            let out = tmp.path().join(format!("{round}-{i}.mp4"));
            results[i].push(run(enc, &out));
        }
    }
    let summary = |name: &str, runs: &[Run]| -> (f64, f64) {
        let fps = median(runs.iter().map(|r| r.fps).collect());
        let cpu = median(runs.iter().map(|r| r.cpu_ms_per_frame).collect());
        let copies = runs
            .iter()
            .filter_map(|r| r.copies_per_frame)
            .fold(None, |acc: Option<f64>, c| Some(acc.unwrap_or(0.0).max(c)));
        let copies = copies.map_or("-".to_string(), |c| format!("{c:.2}"));
        println!("{name:<46} {fps:>8.1} fps {cpu:>8.2} ms CPU/frame   copies/frame {copies}");
        (fps, cpu)
    };
    println!(
        "{FRAMES} frames 1280x720 I420 -> H.264 3 Mbit/s -> mp4mux, median of {rounds} rounds"
    );
    let (base_fps, base_cpu) = summary("openh264enc (baseline, 1 thread)", &results[0]);
    let (fps, cpu) = summary("vpuh264enc (vpud, 1 emulated card)", &results[1]);
    println!(
        "ratio vpuh264enc/openh264enc: fps {:.2}x, CPU per frame {:.2}x",
        fps / base_fps,
        cpu / base_cpu
    );
    drop(daemon);
}
