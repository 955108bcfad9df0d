//! Shared by vpuctl's integration tests: Y4M clips in, and the real tools that check
//! what comes out (`ffprobe` and `ffmpeg`, Debian package `ffmpeg`).

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use vpu_driver::media::{TestPattern, Y4mHeader, Y4mWriter};

/// Writes `frames` frames of a moving test pattern as a 25 fps Y4M file.
pub fn write_y4m(path: &Path, width: u32, height: u32, frames: u64) {
    let header = Y4mHeader::new(width, height, 25, 1);
    let mut w = Y4mWriter::new(BufWriter::new(File::create(path).unwrap()), &header).unwrap();
    let pattern = TestPattern::new(width, height);
    for n in 0..frames {
        w.write_frame(&pattern.frame(n)).unwrap();
    }
    w.finish().unwrap();
}

/// `ffprobe`'s view of the first video stream: codec, width, height, frames decoded.
pub fn probe(path: &Path) -> (String, u32, u32, u64) {
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
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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

/// The `vpud` binary of this build (the daemon's crate), built next to `vpuctl` first.
pub fn vpud_binary() -> std::path::PathBuf {
    let vpuctl = Path::new(env!("CARGO_BIN_EXE_vpuctl"));
    let release = vpuctl
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|p| p == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "vpud", "--bin", "vpud"]);
    if release {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("running cargo build -p vpud").success(),
        "cargo build -p vpud failed"
    );
    vpuctl.with_file_name("vpud")
}
