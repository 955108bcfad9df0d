//! `vpuh264enc` in real pipelines against vpud with emulated cards on a private bus: the
//! plugin loaded by `gst-launch-1.0` and `gst-inspect-1.0` from `GST_PLUGIN_PATH`, frames
//! by reference from the element's pool and copied from elsewhere, a mid-stream bit-rate
//! change and forced keyframe, a caps change, and end of stream with frames in flight.
//! What comes out is checked by `ffprobe`/`ffmpeg` (Debian package `ffmpeg`).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{decodes_cleanly, init, pipeline, probe_frames, probe_stream, run, Daemon};
use gst::prelude::*;

const DEADLINE: Duration = Duration::from_secs(120);

/// The pipeline, verbatim, run by the real `gst-launch-1.0` with the plugin found
/// through `GST_PLUGIN_PATH`.
#[test]
fn gst_launch_encodes_300_frames_of_720p_into_an_mp4() {
    let daemon = Daemon::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let plugins = common::plugin_dir(tmp.path());
    let registry = tmp.path().join("registry.bin");
    let env = |cmd: &mut Command| {
        cmd.env("GST_PLUGIN_PATH", &plugins)
            .env("GST_REGISTRY", &registry)
            .env("VPUD_BUS_ADDRESS", daemon.address());
    };

    let mut inspect = Command::new("gst-inspect-1.0");
    inspect.arg("vpuh264enc");
    env(&mut inspect);
    let out = inspect
        .output()
        .expect("gst-inspect-1.0 (gstreamer1.0-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gst-inspect-1.0: {text}");
    for needle in [
        "bitrate",
        "rate-control",
        "gop-size",
        "bus-address",
        "video/x-h264",
    ] {
        assert!(
            text.contains(needle),
            "gst-inspect-1.0 lacks {needle}: {text}"
        );
    }

    let mp4 = tmp.path().join("out.mp4");
    let mut launch = Command::new("gst-launch-1.0");
    launch.arg("-q").args(
        "videotestsrc num-buffers=300 ! video/x-raw,width=1280,height=720,framerate=30/1 \
         ! vpuh264enc bitrate=3000 ! h264parse ! mp4mux ! filesink"
            .split_whitespace(),
    );
    launch.arg(format!("location={}", mp4.display()));
    env(&mut launch);
    let out = launch
        .output()
        .expect("gst-launch-1.0 (gstreamer1.0-tools)");
    assert!(
        out.status.success(),
        "gst-launch-1.0: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(probe_stream(&mp4), ("h264".to_string(), 1280, 720, 300));
    decodes_cleanly(&mp4);
}

/// Frames from the element's own pool go to the card in place: no copy at all. A
/// producer that cannot use the pool (rows GStreamer pads) gets exactly one copy per frame.
#[test]
fn frames_from_the_pool_are_not_copied_and_others_are_copied_once() {
    init();
    let daemon = Daemon::start(1);
    let tmp = tempfile::tempdir().unwrap();
    for (width, copies) in [(320u32, false), (322, true)] {
        let out = tmp.path().join(format!("{width}.h264"));
        let p = pipeline(&format!(
            "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,format=I420,width={width},height=240,framerate=30/1 \
             ! vpuh264enc name=enc bus-address={} ! filesink location={}",
            daemon.address(),
            out.display()
        ));
        run(&p, DEADLINE).unwrap();
        let enc = p.by_name("enc").unwrap();
        let copied: u64 = enc.property("frames-copied");
        let by_ref: u64 = enc.property("frames-by-reference");
        if copies {
            assert_eq!((copied, by_ref), (60, 0), "{width} wide");
        } else {
            assert_eq!((copied, by_ref), (0, 60), "{width} wide");
        }
        let frames = probe_frames(&out);
        assert_eq!(frames.len(), 60, "{width} wide");
        assert!(frames.iter().all(|&f| f == (width, 240)));
        decodes_cleanly(&out);
    }
}

/// One encoded buffer as the sink saw it.
#[derive(Debug, Clone)]
struct Out {
    pts: Option<gst::ClockTime>,
    duration: Option<gst::ClockTime>,
    delta: bool,
    bytes: usize,
}

/// An appsink collecting the encoder's buffers.
fn collect(p: &gst::Pipeline) -> Arc<Mutex<Vec<Out>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = p
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let s = seen.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let b = sample.buffer().ok_or(gst::FlowError::Error)?;
                s.lock().unwrap().push(Out {
                    pts: b.pts(),
                    duration: b.duration(),
                    delta: b.flags().contains(gst::BufferFlags::DELTA_UNIT),
                    bytes: b.size(),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    seen
}

/// Raising the bit rate while playing reconfigures the session and the stream follows;
/// an upstream force-key-unit event makes the next frame an IDR; timestamps and
/// durations are the input's; keyframes carry no DELTA_UNIT flag and other frames do.
#[test]
fn bitrate_change_and_forced_keyframe_mid_stream() {
    init();
    let daemon = Daemon::start(1);
    const FRAMES: u64 = 240;
    const CHANGE_AT: u64 = 120;
    const KEY_AT: u64 = 90;
    let p = pipeline(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=zone-plate kx2=20 ky2=20 kt=1 \
         ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vpuh264enc name=enc bitrate=300 gop-size=1000 bus-address={} \
         ! appsink name=sink sync=false",
        daemon.address()
    ));
    let seen = collect(&p);
    let enc = p.by_name("enc").unwrap();
    let src = enc.static_pad("src").unwrap();
    let e = enc.clone();
    enc.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(buffer) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let n = buffer.offset();
            if n == KEY_AT {
                let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build();
                assert!(src.send_event(ev));
            }
            if n == CHANGE_AT {
                e.set_property("bitrate", 1200u32);
            }
            gst::PadProbeReturn::Ok
        });
    run(&p, DEADLINE).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, FRAMES);
    let frame_time = gst::ClockTime::SECOND / 30;
    for (i, o) in seen.iter().enumerate() {
        let expected = gst::ClockTime::SECOND.mul_div_floor(i as u64, 30).unwrap();
        assert_eq!(o.pts, Some(expected), "pts of frame {i}");
        let d = o.duration.unwrap();
        assert!(
            d.nseconds().abs_diff(frame_time.nseconds()) <= 1,
            "duration {i}: {d}"
        );
    }
    let keys: Vec<usize> = (0..seen.len()).filter(|&i| !seen[i].delta).collect();
    assert_eq!(keys[0], 0);
    assert_eq!(keys.len(), 2, "keyframes at {keys:?}");
    assert!(
        (KEY_AT as usize..KEY_AT as usize + 3).contains(&keys[1]),
        "forced keyframe at {keys:?}"
    );
    // Rate control settles within a second either side of the change.
    let rate = |from: usize, to: usize| -> f64 {
        let bytes: usize = seen[from..to].iter().map(|o| o.bytes).sum();
        bytes as f64 * 8.0 * 30.0 / (to - from) as f64
    };
    let before = rate(30, CHANGE_AT as usize);
    let after = rate(CHANGE_AT as usize + 30, FRAMES as usize);
    assert!(
        after > before * 2.5,
        "bit rate {before:.0} -> {after:.0} b/s after raising 300 -> 1200 kbit/s"
    );
}

/// A new resolution mid-stream: the element drains the old session, opens one at the new
/// size, and the stream holds every frame at its size.
#[test]
fn caps_change_opens_a_session_at_the_new_size() {
    init();
    let daemon = Daemon::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sizes.h264");
    let p = pipeline(&format!(
        "videotestsrc num-buffers=60 ! capsfilter name=size caps=video/x-raw,width=320,height=240,framerate=30/1 \
         ! vpuh264enc bus-address={} ! filesink location={}",
        daemon.address(),
        out.display()
    ));
    let filter = p.by_name("size").unwrap();
    let f = filter.clone();
    filter
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if info.buffer().is_some_and(|b| b.offset() == 29) {
                let caps = gst::Caps::builder("video/x-raw")
                    .field("width", 640)
                    .field("height", 360)
                    .field("framerate", gst::Fraction::new(30, 1))
                    .build();
                f.set_property("caps", caps);
            }
            gst::PadProbeReturn::Ok
        });
    run(&p, DEADLINE).unwrap();
    let frames = probe_frames(&out);
    assert_eq!(frames.len(), 60, "{frames:?}");
    let small = frames.iter().filter(|&&f| f == (320, 240)).count();
    let large = frames.iter().filter(|&&f| f == (640, 360)).count();
    assert_eq!(small + large, 60, "{frames:?}");
    assert!(small >= 30 && large >= 20, "{small} small, {large} large");
    decodes_cleanly(&out);
}

/// End of stream arrives while frames are still on the card: every one of them comes out,
/// in order, before the end of stream.
#[test]
fn end_of_stream_with_frames_in_flight_loses_none() {
    init();
    let daemon = Daemon::start(1);
    const FRAMES: u64 = 37;
    let p = pipeline(&format!(
        "videotestsrc num-buffers={FRAMES} ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! vpuh264enc name=enc bus-address={} ! appsink name=sink sync=false",
        daemon.address()
    ));
    let seen = collect(&p);
    let at_eos = Arc::new(Mutex::new(None));
    let (s, a) = (seen.clone(), at_eos.clone());
    p.by_name("enc")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if ev.type_() == gst::EventType::Eos {
                    *a.lock().unwrap() = Some(s.lock().unwrap().len());
                }
            }
            gst::PadProbeReturn::Ok
        });
    run(&p, DEADLINE).unwrap();
    let out_at_eos = at_eos.lock().unwrap().unwrap();
    assert!(
        out_at_eos < FRAMES as usize,
        "all {out_at_eos} packets were out before end of stream: nothing was in flight"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, FRAMES);
    let pts: Vec<_> = seen.iter().map(|o| o.pts.unwrap()).collect();
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "{pts:?}");
}

/// Flushing seeks mid-stream: the element drops its session and opens a new one at the
/// next frame; output resumes from the seek position, and end of stream still drains.
#[test]
fn flushing_seeks_resume_encoding() {
    init();
    let daemon = Daemon::start(1);
    let p = pipeline(&format!(
        "videotestsrc ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vpuh264enc name=enc bus-address={} ! appsink name=sink sync=false",
        daemon.address()
    ));
    let seen = collect(&p);
    p.set_state(gst::State::Playing).unwrap();
    common::wait_until("frames before the seeks", DEADLINE, || {
        seen.lock().unwrap().len() >= 30
    });
    for to in [100u64, 10, 50] {
        p.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::from_seconds(to))
            .unwrap();
    }
    let resumed = gst::ClockTime::from_seconds(50);
    common::wait_until("frames after the last seek", DEADLINE, || {
        let s = seen.lock().unwrap();
        s.iter()
            .filter(|o| {
                o.pts
                    .is_some_and(|t| t >= resumed && t < resumed + gst::ClockTime::SECOND)
            })
            .count()
            >= 30
    });
    // The first frame after a seek is a keyframe (a new session starts with an IDR).
    {
        let s = seen.lock().unwrap();
        let first = s
            .iter()
            .find(|o| o.pts == Some(resumed))
            .expect("the seek target frame");
        assert!(
            !first.delta,
            "the frame at the seek position is not a keyframe"
        );
    }
    assert!(p.send_event(gst::event::Eos::new()));
    common::wait_end(&p, DEADLINE).unwrap();
    p.set_state(gst::State::Null).unwrap();
}
