//! The MP4 muxer against real tools: a stream from the openh264 encoder, muxed by
//! `vpuctl::mp4`, must be read by `ffprobe` with the right codec, size and frame count,
//! and decode with `ffmpeg` without errors.

#![allow(clippy::unwrap_used)]

mod common;

use common::{decodes_cleanly, probe};

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::Command;

use openh264::encoder::{Encoder, EncoderConfig, IntraFramePeriod};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;
use vpuctl::mp4::Mp4Writer;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vpud-mp4-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn encode_clip(width: usize, height: usize, frames: usize) -> Vec<Vec<u8>> {
    let config = EncoderConfig::new().intra_frame_period(IntraFramePeriod::from_num_frames(10));
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), config).unwrap();
    let mut out = Vec::new();
    for f in 0..frames {
        let mut yuv = vec![128u8; width * height * 3 / 2];
        for y in 0..height {
            for x in 0..width {
                yuv[y * width + x] = ((x + y + f * 4) % 256) as u8;
            }
        }
        let buf = YUVBuffer::from_vec(yuv, width, height);
        out.push(enc.encode(&buf).unwrap().to_vec());
    }
    out
}

#[test]
fn openh264_stream_muxed_to_mp4_probes_and_decodes() {
    let dir = scratch("probe");
    let path = dir.join("clip.mp4");
    let packets = encode_clip(176, 144, 25);
    let file = BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut mp4 = Mp4Writer::new(file, 176, 144, 25, 1).unwrap();
    for p in &packets {
        mp4.write_access_unit(p).unwrap();
    }
    mp4.finish().unwrap();

    assert_eq!(probe(&path), ("h264".to_string(), 176, 144, 25));
    decodes_cleanly(&path);

    // Seeking needs the keyframe index (stss): every 10th frame is an IDR.
    let keys = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-skip_frame",
            "nokey",
        ])
        .args(["-show_entries", "frame=pts", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .unwrap();
    let keyframes = String::from_utf8_lossy(&keys.stdout).lines().count();
    assert_eq!(keyframes, 3, "{}", String::from_utf8_lossy(&keys.stdout));
    std::fs::remove_dir_all(&dir).unwrap();
}
