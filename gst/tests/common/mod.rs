//! Shared by the element's tests: GStreamer with the plugin registered, vpud on a private
//! bus with emulated cards (in-process, or as a child process that can be killed), and
//! the real tools that check what comes out (`ffprobe`, Debian package `ffmpeg`).

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use gst::prelude::*;
use vpud::config::Config;
use vpud::service::Embedded;

/// GStreamer initialised, `vpuh264enc` registered from this build.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gst::init().unwrap();
        gstvpud::register_static().unwrap();
    });
}

/// vpud with emulated cards on a private bus, in this process.
pub struct Daemon {
    pub embedded: Option<Embedded>,
    pub rt: tokio::runtime::Runtime,
}

impl Daemon {
    pub fn start(cards: u32) -> Daemon {
        Daemon::with_config(cards, Config::default())
    }

    pub fn with_config(cards: u32, config: Config) -> Daemon {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let embedded = rt.block_on(Embedded::start(cards, config)).unwrap();
        Daemon {
            embedded: Some(embedded),
            rt,
        }
    }

    pub fn address(&self) -> String {
        self.embedded.as_ref().unwrap().address().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(e) = self.embedded.take() {
            let _ = self.rt.block_on(e.stop());
        }
    }
}

/// Runs `pipeline` to end of stream; the first error message otherwise.
pub fn run(pipeline: &gst::Pipeline, within: Duration) -> Result<(), String> {
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("set_state: {e}"))?;
    let result = wait_end(pipeline, within);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Waits for end of stream or an error on `pipeline`'s bus.
pub fn wait_end(pipeline: &gst::Pipeline, within: Duration) -> Result<(), String> {
    let bus = pipeline.bus().unwrap();
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!("no end of stream within {within:?}"));
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(left.as_millis() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => {
                return Err(format!(
                    "{}: {} ({:?})",
                    e.src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default(),
                    e.error(),
                    e.debug()
                ))
            }
            _ => {}
        }
    }
}

/// A pipeline from a `gst-launch-1.0` description.
pub fn pipeline(description: &str) -> gst::Pipeline {
    gst::parse::launch(description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// `ffprobe`'s view of the first video stream: frames decoded, and each frame's size.
pub fn probe_frames(path: &Path) -> Vec<(u32, u32)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_frames"])
        .args(["-show_entries", "frame=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian package ffmpeg) must be installed");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.trim().trim_end_matches(',').split(',');
            let w = it.next().unwrap().parse().unwrap();
            let h = it.next().unwrap().parse().unwrap();
            (w, h)
        })
        .collect()
}

/// `ffprobe -count_frames` on the first video stream: codec, width, height, frames.
pub fn probe_stream(path: &Path) -> (String, u32, u32, u64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian package ffmpeg) must be installed");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        s["codec_name"].as_str().unwrap().to_string(),
        s["width"].as_u64().unwrap() as u32,
        s["height"].as_u64().unwrap() as u32,
        s["nb_read_frames"].as_str().unwrap().parse().unwrap(),
    )
}

/// Decodes the whole file with `ffmpeg`, failing on any decode error.
pub fn decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg decode of {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory of this build's target profile (`target/release`), from the test
/// executable's path (`target/release/deps/NAME-HASH`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// A directory holding only the plugin built with this test (`libgstvpud.so`), for
/// `GST_PLUGIN_PATH`: the target directory itself holds many unrelated shared objects.
pub fn plugin_dir(tmp: &Path) -> PathBuf {
    let profile = profile_dir();
    // `cargo test` rebuilds the library in deps/ and leaves target/PROFILE/ to `cargo
    // build`, so deps/ holds this build's plugin and the other may be stale.
    let lib = [
        profile.join("deps/libgstvpud.so"),
        profile.join("libgstvpud.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("libgstvpud.so not built under {}", profile.display()));
    let dir = tmp.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&lib, dir.join("libgstvpud.so")).unwrap();
    dir
}

/// The `vpud` binary of this build, built first (a test of another crate has no
/// `CARGO_BIN_EXE_vpud`).
pub fn vpud_binary() -> PathBuf {
    let profile = profile_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "vpud", "--bin", "vpud"]);
    if profile.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("running cargo build -p vpud").success(),
        "cargo build -p vpud failed"
    );
    profile.join("vpud")
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
