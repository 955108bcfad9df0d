//! `vpuctl` as users run it: the real binary against a private bus and emulated cards.
//! Outputs are checked by `ffprobe` (codec, size, frame count) and decoded by `ffmpeg`
//! (Debian package `ffmpeg`); JSON is parsed; bad input must fail cleanly.

#![allow(clippy::unwrap_used)]

mod common;

use common::{decodes_cleanly, probe, write_y4m};
use std::process::{Command, Output};

use serde_json::Value;
use vpu_driver::media::TestPattern;
use vpud::config::Config;
use vpud::service::Embedded;
use vpud_client::{Client, SessionParams};

const VPUCTL: &str = env!("CARGO_BIN_EXE_vpuctl");

fn vpuctl(args: &[&str]) -> Output {
    let out = Command::new(VPUCTL)
        .args(args)
        .env_remove("VPUD_BUS_ADDRESS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "vpuctl panicked: {stderr}");
    out
}

fn ok(args: &[&str]) -> String {
    let out = vpuctl(args);
    assert!(
        out.status.success(),
        "vpuctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a failing command; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = vpuctl(args);
    assert!(!out.status.success(), "vpuctl {args:?} should have failed");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.trim().is_empty(), "vpuctl {args:?} failed silently");
    stderr
}

#[test]
fn encode_y4m_to_annexb_and_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clip.y4m");
    write_y4m(&input, 320, 240, 40);
    for name in ["clip.h264", "clip.mp4"] {
        let output = dir.path().join(name);
        let stdout = ok(&[
            "--emulate",
            "1",
            "encode",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--bitrate",
            "400k",
            "--gop",
            "20",
        ]);
        assert!(stdout.contains("40 frames 320x240"), "{stdout}");
        assert!(stdout.contains("2 keyframes"), "{stdout}");
        assert_eq!(probe(&output), ("h264".to_string(), 320, 240, 40));
        decodes_cleanly(&output);
    }
}

#[test]
fn encode_av1_to_ivf_mp4_and_obu() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clip.y4m");
    write_y4m(&input, 160, 96, 20);
    for name in ["clip.ivf", "clip.mp4", "clip.obu"] {
        let output = dir.path().join(name);
        let stdout = ok(&[
            "--emulate",
            "1",
            "encode",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--codec",
            "av1",
            "--bitrate",
            "200k",
            "--gop",
            "10",
        ]);
        assert!(stdout.contains("20 frames 160x96"), "{stdout}");
        assert!(stdout.contains("2 keyframes"), "{stdout}");
        assert_eq!(probe(&output), ("av1".to_string(), 160, 96, 20), "{name}");
        decodes_cleanly(&output);
    }
    // The MP4 has an av01 sample entry with its av1C box.
    let mp4 = std::fs::read(dir.path().join("clip.mp4")).unwrap();
    assert!(mp4.windows(4).any(|w| w == b"av01") && mp4.windows(4).any(|w| w == b"av1C"));
    // Containers that do not hold the codec are refused before any session is made.
    let o = dir.path().join("clip.h264");
    let err = fails(&[
        "--emulate",
        "1",
        "encode",
        input.to_str().unwrap(),
        "-o",
        o.to_str().unwrap(),
        "--codec",
        "av1",
    ]);
    assert!(err.contains(".ivf, .mp4 or .obu"), "{err}");
    assert!(!o.exists());
    let o = dir.path().join("clip2.ivf");
    let err = fails(&[
        "--emulate",
        "1",
        "encode",
        input.to_str().unwrap(),
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(err.contains("--codec av1"), "{err}");
}

#[test]
fn encode_reads_y4m_from_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clip.y4m");
    write_y4m(&input, 160, 96, 25);
    let output = dir.path().join("piped.h264");
    let mut child = Command::new(VPUCTL)
        .args(["--emulate", "1", "encode", "/dev/stdin", "-o"])
        .arg(&output)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = std::fs::read(&input).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // Small writes, as a live producer would make them.
        for chunk in bytes.chunks(4096) {
            stdin.write_all(chunk).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(probe(&output), ("h264".to_string(), 160, 96, 25));
    decodes_cleanly(&output);
}

#[test]
fn encode_raw_i420_needs_and_uses_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clip.yuv");
    let pattern = TestPattern::new(176, 144);
    let raw: Vec<u8> = (0..12).flat_map(|n| pattern.frame(n)).collect();
    std::fs::write(&input, raw).unwrap();
    let output = dir.path().join("clip.mp4");
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());

    let err = fails(&["--emulate", "1", "encode", i, "-o", o]);
    assert!(err.contains("--size"), "{err}");
    let err = fails(&["--emulate", "1", "encode", i, "-o", o, "--size", "160x120"]);
    assert!(err.contains("whole number"), "{err}");

    ok(&[
        "--emulate",
        "1",
        "encode",
        i,
        "-o",
        o,
        "--size",
        "176x144",
        "--fps",
        "15",
    ]);
    assert_eq!(probe(&output), ("h264".to_string(), 176, 144, 12));
    decodes_cleanly(&output);
}

#[test]
fn demo_writes_playable_files_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "demo",
        "--cards",
        "2",
        "--sessions",
        "3",
        "--frames",
        "24",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.contains(&dir.path().display().to_string()), "{out}");
    // The sessions take H.264 and AV1 in turn.
    let expected = [
        ("session0-h264-1280x720.mp4", "h264", 1280, 720),
        ("session1-av1-640x360.mp4", "av1", 640, 360),
        ("session2-h264-960x540.mp4", "h264", 960, 540),
    ];
    for (file, codec, w, h) in expected {
        let path = dir.path().join(file);
        assert_eq!(probe(&path), (codec.to_string(), w, h, 24), "{file}");
        decodes_cleanly(&path);
        assert!(out.contains(file), "{out}");
    }
    // The per-card table lists both cards, and spread placement used both.
    let card_rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("card"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(card_rows.len(), 2, "{out}");
    for row in card_rows {
        let sessions: u32 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(sessions >= 1, "a card without sessions under spread: {out}");
    }
}

#[test]
fn listings_as_json() {
    let cards: Value = serde_json::from_str(&ok(&["--emulate", "2", "cards", "--json"])).unwrap();
    let cards = cards.as_array().unwrap();
    assert_eq!(cards.len(), 2);
    for (i, c) in cards.iter().enumerate() {
        assert_eq!(c["path"], format!("/org/vpud/Vpud1/card/{i}"));
        assert_eq!(c["backend"], "emulated");
        assert_eq!(c["state"], "online");
        assert!(c["capacity"].as_u64().unwrap() > 0);
        assert!(c["codecs"]
            .as_array()
            .unwrap()
            .contains(&Value::from("h264")));
    }
    let status: Value = serde_json::from_str(&ok(&["--emulate", "2", "status", "--json"])).unwrap();
    assert_eq!(status["daemon"]["cards"], 2);
    assert_eq!(status["daemon"]["sessions"], 0);
    assert_eq!(status["cards"].as_array().unwrap().len(), 2);
    let table = ok(&["--emulate", "2", "cards"]);
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_listing_and_inject_against_a_running_daemon() {
    let daemon = Embedded::start(2, Config::default()).await.unwrap();
    let bus = daemon.address().to_string();
    let client = Client::connect(Some(&bus)).await.unwrap();
    let mut params = SessionParams::h264(320, 240, 30);
    params.bitrate = Some(300_000);
    let mut session = client.create_session(&params).await.unwrap();
    let pattern = TestPattern::new(320, 240);
    for n in 0..5 {
        session
            .send_frame(&pattern.frame(n), n, false)
            .await
            .unwrap();
    }
    let packets = session.drain().await.unwrap();
    assert_eq!(packets.len(), 5);
    assert!(packets[0].keyframe);

    let mut other = client.create_session(&params).await.unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            vpuctl(&refs)
        })
    };
    let out = run(vec![
        "--bus".into(),
        bus.clone(),
        "sessions".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sessions: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = sessions.as_array().unwrap();
    assert!(
        list.iter().any(|s| s["path"] == other.path().as_str()),
        "{sessions}"
    );
    for s in list {
        assert_eq!(s["width"], 320);
        assert_eq!(s["codec"], "h264");
        assert!(s["card"]
            .as_str()
            .unwrap()
            .starts_with("/org/vpud/Vpud1/card/"));
    }

    // VPUD_BUS_ADDRESS finds the daemon when --bus is not given.
    let env_out = tokio::task::spawn_blocking({
        let bus = bus.clone();
        move || {
            Command::new(VPUCTL)
                .args(["status"])
                .env("VPUD_BUS_ADDRESS", bus)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        env_out.status.success(),
        "{}",
        String::from_utf8_lossy(&env_out.stderr)
    );
    assert!(String::from_utf8_lossy(&env_out.stdout).contains("2 card(s)"));

    let inject = |kind: &str, extra: &[&str]| {
        let mut args = vec![
            "--bus".to_string(),
            bus.clone(),
            "inject".into(),
            "1".into(),
            kind.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(args)
    };
    let out = inject("slow-engine", &["--duration-ms", "50"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("card/1"));
    let out = inject("melt-down", &[]).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hang-engine") && err.contains("surprise-removal"),
        "{err}"
    );
    let out = run(vec![
        "--bus".into(),
        bus.clone(),
        "inject".into(),
        "7".into(),
        "fatal-status".into(),
    ])
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no card 7"));

    // The session that was open meanwhile still works.
    for n in 0..3 {
        other.send_frame(&pattern.frame(n), n, false).await.unwrap();
    }
    assert_eq!(other.drain().await.unwrap().len(), 3);
    other.close().await.unwrap();
    session.close().await.unwrap();
    daemon.stop().await.unwrap();
}

#[test]
fn bad_flags_and_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.h264");
    let o = out.to_str().unwrap();
    // Flags clap rejects: exit code 2 with usage.
    for args in [
        &["encode", "in.y4m"][..],
        &["encode", "in.y4m", "-o", o, "--bitrate", "fast"],
        &["encode", "in.y4m", "-o", o, "--size", "13x7"],
        &["encode", "in.y4m", "-o", o, "--gop", "0"],
        &["--emulate", "0", "cards"],
        &["frobnicate"],
        &["demo", "--cards", "0"],
    ] {
        let res = vpuctl(args);
        assert_eq!(res.status.code(), Some(2), "{args:?}");
    }
    let err = fails(&["encode", "/nonexistent.y4m", "-o", o]);
    assert!(err.contains("/nonexistent.y4m"), "{err}");
    let bad = dir.path().join("bad.y4m");
    std::fs::write(&bad, b"YUV4MPEG2 W320 H240 F25:1 C444\nFRAME\n").unwrap();
    let err = fails(&["--emulate", "1", "encode", bad.to_str().unwrap(), "-o", o]);
    assert!(err.contains("444"), "{err}");
    let err = fails(&["--bus", "unix:path=/nonexistent/bus", "cards"]);
    assert!(err.contains("/nonexistent/bus"), "{err}");
    let err = fails(&["--bus", "sytem", "cards"]);
    assert!(err.contains("system"), "{err}");
    let err = fails(&["--emulate", "1", "--bus", "session", "cards"]);
    assert!(err.contains("--emulate"), "{err}");
    let err = fails(&["demo", "--emulate", "2"]);
    assert!(err.contains("--cards"), "{err}");
    assert!(!out.exists());
}
