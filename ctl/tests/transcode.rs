//! `vpuctl transcode` as users run it: the real binary with a private daemon and emulated
//! cards (`--emulate`). Every rendition's MP4 must decode with `ffmpeg` to exactly the
//! input's frame count, keyframes must sit on the same frames in every rendition, the HLS
//! output must pass `ffprobe` with every segment starting at a keyframe, live input through
//! a pipe must work, and bad flags and inputs must fail with a clear message.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const VPUCTL: &str = env!("CARGO_BIN_EXE_vpuctl");

/// Encodes `frames` frames of testsrc2 with libx264 (keyframes every 30 frames).
fn make_clip(path: &Path, size: &str, frames: u32, extra: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=30"))
        .args(["-frames:v", &frames.to_string(), "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30"])
        .args(extra)
        .arg(path)
        .output()
        .expect("ffmpeg (Debian package ffmpeg) must be installed");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn vpuctl(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(VPUCTL);
    cmd.args(args).env_remove("VPUD_BUS_ADDRESS");
    if let Some(p) = stdin {
        cmd.stdin(Stdio::from(std::fs::File::open(p).unwrap()));
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "vpuctl panicked: {stderr}");
    out
}

fn ok(args: &[&str], stdin: Option<&Path>) -> String {
    let out = vpuctl(args, stdin);
    assert!(
        out.status.success(),
        "vpuctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a failing command; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = vpuctl(args, None);
    assert!(!out.status.success(), "vpuctl {args:?} should have failed");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.trim().is_empty(), "vpuctl {args:?} failed silently");
    stderr
}

fn ffprobe(args: &[&str], path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Width, height and the decoded frames with their keyframe flags, failing on any error
/// `ffmpeg` reports while decoding.
fn decode(path: &Path) -> (u64, u64, Vec<bool>) {
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
    let v = ffprobe(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height:frame=key_frame",
        ],
        path,
    );
    let keys = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key_frame"] == 1)
        .collect();
    let s = &v["streams"][0];
    (
        s["width"].as_u64().unwrap(),
        s["height"].as_u64().unwrap(),
        keys,
    )
}

/// Checks an HLS tree: the master playlist names every rendition, each media playlist
/// decodes to `frames` frames, and every segment starts with a keyframe.
fn check_hls(out: &Path, names: &[&str], frames: usize) {
    let master = out.join("master.m3u8");
    let text = std::fs::read_to_string(&master).unwrap();
    let v = ffprobe(&["-show_entries", "stream=width,height"], &master);
    assert_eq!(
        v["streams"].as_array().unwrap().len(),
        names.len(),
        "{text}"
    );
    for name in names {
        assert!(text.contains(&format!("{name}/index.m3u8")), "{text}");
        let media = out.join(name).join("index.m3u8");
        let playlist = std::fs::read_to_string(&media).unwrap();
        assert!(
            playlist.contains("#EXT-X-TARGETDURATION:") && playlist.ends_with("#EXT-X-ENDLIST\n"),
            "{playlist}"
        );
        let (_, _, keys) = decode(&media);
        assert_eq!(keys.len(), frames, "{name}: frames through the playlist");
        let segments: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
        assert!(segments.len() >= 2, "{playlist}");
        for seg in segments {
            let path = out.join(name).join(seg);
            let v = ffprobe(
                &[
                    "-select_streams",
                    "v:0",
                    "-show_entries",
                    "frame=key_frame",
                    "-read_intervals",
                    "%+#1",
                ],
                &path,
            );
            assert_eq!(
                v["frames"][0]["key_frame"],
                1,
                "{} does not start with a keyframe",
                path.display()
            );
        }
    }
}

/// Checks the MP4 of every rendition: its size, `frames` decoded frames, and keyframes on
/// the same frames as every other rendition.
fn check_mp4s(out: &Path, renditions: &[(&str, u64, u64)], frames: usize) {
    let mut keyframes: Option<Vec<bool>> = None;
    for (name, w, h) in renditions {
        let (width, height, keys) = decode(&out.join(format!("{name}.mp4")));
        assert_eq!((width, height), (*w, *h), "{name}");
        assert_eq!(keys.len(), frames, "{name}: decoded frames");
        assert!(keys[0], "{name} starts with a keyframe");
        match &keyframes {
            Some(k) => assert_eq!(
                &keys, k,
                "{name}: keyframes differ from the first rendition's"
            ),
            None => keyframes = Some(keys),
        }
    }
}

#[test]
fn the_issue_ladder_from_1080p_into_mp4s_and_hls() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.h264");
    make_clip(&input, "1920x1080", 50, &["-bf", "0"]);
    let out = dir.path().join("out");
    let stdout = ok(
        &[
            "--emulate",
            "1",
            "transcode",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--ladder",
            "1080p:6M,720p:3M,480p:1500k,360p:800k",
            "--gop",
            "15",
            "--hls",
            "--segment-seconds",
            "0.5",
        ],
        None,
    );
    assert!(stdout.contains("50 frames 1920x1080"), "{stdout}");
    let renditions = [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
    ];
    check_mp4s(&out, &renditions, 50);
    check_hls(&out, &["1080p", "720p", "480p", "360p"], 50);
    // A keyframe every 15 frames.
    let (_, _, keys) = decode(&out.join("360p.mp4"));
    let at: Vec<usize> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| **k)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at, [0, 15, 30, 45]);
}

#[test]
fn mp4_and_piped_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // MP4 with B-frames and its index at the end, from a file.
    let mp4 = d.join("in.mp4");
    make_clip(&mp4, "640x360", 40, &["-profile:v", "main"]);
    let out = d.join("from-mp4");
    ok(
        &[
            "--emulate",
            "1",
            "transcode",
            mp4.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--ladder",
            "360p:800k,180p:200k",
        ],
        None,
    );
    check_mp4s(&out, &[("360p", 640, 360), ("180p", 320, 180)], 40);
    assert!(!out.join("master.m3u8").exists());

    // Annex-B on standard input, as a live encoder would deliver it.
    let annexb = d.join("in.h264");
    make_clip(&annexb, "640x360", 40, &["-bf", "0"]);
    let out = d.join("from-stdin");
    ok(
        &[
            "--emulate",
            "1",
            "transcode",
            "-",
            "-o",
            out.to_str().unwrap(),
            "--ladder",
            "360p:800k,240p:400k",
            "--gop",
            "15",
            "--hls",
            "--segment-seconds",
            "0.5",
        ],
        Some(&annexb),
    );
    check_mp4s(&out, &[("360p", 640, 360), ("240p", 426, 240)], 40);
    check_hls(&out, &["360p", "240p"], 40);

    // An MP4 with its index first, through a FIFO.
    let faststart = d.join("fast.mp4");
    make_clip(&faststart, "320x240", 40, &["-movflags", "+faststart"]);
    let fifo = d.join("live.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (src, dst) = (faststart.clone(), fifo.clone());
    let feeder = std::thread::spawn(move || {
        let data = std::fs::read(src).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(dst).unwrap();
        for chunk in data.chunks(4096) {
            f.write_all(chunk).unwrap();
        }
    });
    let out = d.join("from-fifo");
    ok(
        &[
            "--emulate",
            "1",
            "transcode",
            fifo.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--ladder",
            "240p:300k",
        ],
        None,
    );
    feeder.join().unwrap();
    check_mp4s(&out, &[("240p", 320, 240)], 40);
}

#[test]
fn bad_flags_and_inputs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.h264");
    make_clip(&input, "320x240", 20, &["-bf", "0"]);
    let i = input.to_str().unwrap();
    let o = d.join("out");
    let o = o.to_str().unwrap();
    let missing = d.join("missing.h264");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["transcode", i, "-o", o, "--ladder", "240p"],
            "is not SIZE:BITRATE",
        ),
        (
            &["transcode", i, "-o", o, "--ladder", "240p:fast"],
            "is not a number",
        ),
        (
            &["transcode", i, "-o", o, "--ladder", "241p:1M"],
            "must be even",
        ),
        (
            &["transcode", i, "-o", o, "--ladder", ""],
            "ladder is empty",
        ),
        (&["transcode", i, "-o", o], "--ladder"),
        (
            &[
                "transcode",
                i,
                "-o",
                o,
                "--ladder",
                "240p:1M",
                "--segment-seconds",
                "0",
            ],
            "0.5 to 60",
        ),
        (
            &[
                "--emulate",
                "1",
                "transcode",
                i,
                "-o",
                o,
                "--ladder",
                "480p:1M",
            ],
            "larger than the 320x240 input",
        ),
        (
            &[
                "--emulate",
                "1",
                "transcode",
                missing,
                "-o",
                o,
                "--ladder",
                "240p:1M",
            ],
            "missing.h264",
        ),
    ];
    for (args, expected) in cases {
        let stderr = fails(args);
        assert!(
            stderr.contains(expected),
            "vpuctl {args:?}: expected `{expected}` in: {stderr}"
        );
    }
    // Not H.264 at all.
    let text = d.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let stderr = fails(&[
        "--emulate",
        "1",
        "transcode",
        text.to_str().unwrap(),
        "-o",
        o,
        "--ladder",
        "240p:1M",
    ]);
    assert!(stderr.contains("not an h.264 annex-b stream"), "{stderr}");
    // A stream whose pictures are garbage after valid parameter sets: the card's decoder
    // refuses it, the command says so and leaves no MP4 behind.
    let mut data = std::fs::read(&input).unwrap();
    let n = data.len();
    for (k, b) in data[n / 3..].iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(151) ^ 0x3c;
    }
    let corrupt = d.join("corrupt.h264");
    std::fs::write(&corrupt, &data).unwrap();
    let out = d.join("corrupt-out");
    let stderr = fails(&[
        "--emulate",
        "1",
        "transcode",
        corrupt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ladder",
        "240p:1M",
    ]);
    assert!(stderr.contains("vpuctl:"), "{stderr}");
    assert!(!out.join("240p.mp4").exists());
}
