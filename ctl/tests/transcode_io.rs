//! The transcode command's input and output modules against real tools: streams made by
//! `ffmpeg` (testsrc2, libx264) in Annex-B and MP4, from files and FIFOs, must come out as
//! the access units `ffprobe` counts, with the size and rate it reports; the ladder's MP4
//! and HLS outputs must probe and decode to every frame, with each segment starting at a
//! keyframe.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vpuctl::transcode::demux::DemuxError;
use vpuctl::transcode::ladder::{parse_ladder, resolve};
use vpuctl::transcode::sink::{LadderSink, Packet};
use vpuctl::transcode::source::{Container, Source, SourceError};

/// Encodes `frames` frames of testsrc2 with libx264 into `path` (format by extension).
fn make_clip(path: &Path, size: &str, rate: &str, frames: u32, extra: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate={rate}"))
        .args(["-frames:v", &frames.to_string(), "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-pix_fmt", "yuv420p"])
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

fn ffprobe_json(args: &[&str], path: &Path) -> Value {
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

/// ffprobe's packet count, size and frame rate of the first video stream.
fn probe_stream(path: &Path) -> (u64, u32, u32, String) {
    let v = ffprobe_json(
        &[
            "-count_packets",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_packets,width,height,r_frame_rate",
        ],
        path,
    );
    let s = &v["streams"][0];
    (
        s["nb_read_packets"].as_str().unwrap().parse().unwrap(),
        s["width"].as_u64().unwrap() as u32,
        s["height"].as_u64().unwrap() as u32,
        s["r_frame_rate"].as_str().unwrap().to_string(),
    )
}

/// Frames `ffmpeg` decodes from `path`, failing on any decode error.
fn decoded_frames(path: &Path) -> u64 {
    let v = ffprobe_json(
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
        ],
        path,
    );
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
    v["streams"][0]["nb_read_frames"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads every access unit of `path` through `Source`, writing them as Annex-B to `copy`.
fn read_all(path: &Path, copy: Option<&Path>) -> Result<(Source, Vec<(u64, bool)>), SourceError> {
    let mut src = Source::open(path, (30, 1))?;
    let mut file = copy.map(|c| std::fs::File::create(c).unwrap());
    let mut units = Vec::new();
    while let Some(au) = src.next_access_unit()? {
        if let Some(f) = &mut file {
            f.write_all(&au.data).unwrap();
        }
        units.push((au.pts, au.keyframe));
    }
    Ok((src, units))
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// Opens `path` through a FIFO fed by a thread, as a live input would arrive.
fn read_through_fifo(dir: &Path, path: &Path) -> Result<(Source, Vec<(u64, bool)>), SourceError> {
    let fifo = dir.join(format!(
        "{}.fifo",
        path.file_name().unwrap().to_string_lossy()
    ));
    mkfifo(&fifo);
    let data = std::fs::read(path).unwrap();
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        // Small writes, so start codes and boxes are split across reads.
        for chunk in data.chunks(1000) {
            if f.write_all(chunk).is_err() {
                break; // the reader gave up (an expected error)
            }
        }
    });
    let result = match read_all(&fifo, None) {
        Ok(read) => Ok(read),
        Err(e) => {
            // Unblock the writer before joining it.
            let _ =
                std::fs::File::open(&fifo).map(|mut f| std::io::copy(&mut f, &mut std::io::sink()));
            Err(e)
        }
    };
    writer.join().unwrap();
    result
}

#[test]
fn annexb_and_mp4_inputs_match_ffprobe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1080p is coded as 1088 lines with cropping; B-frames give MP4 composition offsets.
    let cases: [(&str, &str, &str, &[&str]); 5] = [
        ("a.h264", "1920x1080", "30", &["-g", "15"]),
        ("b.h264", "320x240", "30000/1001", &["-bf", "2", "-g", "24"]),
        ("c.mp4", "640x360", "25", &["-bf", "3", "-g", "50"]),
        (
            "d.mp4",
            "352x288",
            "30",
            &["-movflags", "+faststart", "-g", "10"],
        ),
        (
            "e.mp4",
            "176x144",
            "24",
            &["-bf", "0", "-g", "30", "-profile:v", "baseline"],
        ),
    ];
    for (name, size, rate, extra) in cases {
        let path = d.join(name);
        make_clip(&path, size, rate, 61, extra);
        let (packets, w, h, r_rate) = probe_stream(&path);
        let copy = d.join(format!("{name}.copy.h264"));
        let (src, units) = read_all(&path, Some(&copy)).unwrap();
        let info = src.info().clone();
        assert_eq!(units.len() as u64, packets, "{name}");
        assert_eq!((info.sps.width, info.sps.height), (w, h), "{name}");
        let (num, den) = info.fps;
        let rate_of = |s: &str| -> f64 {
            let (n, d) = s.split_once('/').unwrap_or((s, "1"));
            n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap()
        };
        assert!(
            (f64::from(num) / f64::from(den) - rate_of(&r_rate)).abs() < 0.01,
            "{name}: {num}/{den} vs {r_rate}"
        );
        assert_eq!(
            info.container,
            if name.ends_with(".mp4") {
                Container::Mp4
            } else {
                Container::AnnexB
            }
        );
        if info.container == Container::Mp4 {
            assert_eq!(info.frames, Some(packets));
        }
        assert!(units[0].1, "{name}: the first access unit is a keyframe");
        let keyframes = units.iter().filter(|u| u.1).count();
        assert!(keyframes >= 2, "{name}: {keyframes} keyframes");
        // What was read is a valid Annex-B stream with every frame.
        assert_eq!(decoded_frames(&copy), packets, "{name}");
        assert!(info.sps.codec_string().starts_with("avc1."), "{name}");

        // The same through a FIFO, in small writes; an MP4 with its index last cannot be.
        let piped = read_through_fifo(d, &path);
        if name == "c.mp4" || name == "e.mp4" {
            let e = piped.unwrap_err();
            assert!(
                matches!(
                    e,
                    SourceError::Mp4 {
                        source: DemuxError::MoovAfterMdat,
                        ..
                    }
                ),
                "{name}: {e:?}"
            );
        } else {
            let (_, piped_units) = piped.unwrap();
            assert_eq!(piped_units, units, "{name} through a fifo");
        }
    }
}

#[test]
fn hostile_inputs_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.mp4");
    make_clip(&good, "320x240", "30", 30, &["-g", "10"]);
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, data: &[u8]| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    assert!(matches!(
        Source::open(&write("empty", &[]), (30, 1)),
        Err(SourceError::Unsupported { .. })
    ));
    assert!(matches!(
        Source::open(&write("text", b"hello, world"), (30, 1)),
        Err(SourceError::AnnexB { .. })
    ));
    assert!(matches!(
        Source::open(&d.join("missing"), (30, 1)),
        Err(SourceError::Read { .. })
    ));
    // Cut anywhere: an error or fewer frames, never a panic.
    for cut in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
        let p = write("cut.mp4", &bytes[..cut]);
        let _ = read_all(&p, None);
    }
    // Flipped bytes all over the file.
    for seed in 0..60usize {
        let mut b = bytes.clone();
        for k in 0..8 {
            let at = (seed * 7919 + k * 104_729) % b.len();
            b[at] ^= 0x5a;
        }
        let _ = read_all(&write("flip.mp4", &b), None);
    }
    // An Annex-B stream with 4:2:2 chroma is refused with the reason.
    let p = d.join("422.h264");
    make_clip(
        &p,
        "320x240",
        "30",
        5,
        &["-pix_fmt", "yuv422p", "-profile:v", "high422"],
    );
    let e = Source::open(&p, (30, 1)).unwrap_err();
    assert!(
        e.to_string().contains("4:2:2") || format!("{e:?}").contains("4:2:2"),
        "{e:?}"
    );
    // A live stream joined between keyframes: the pictures before the first keyframe with
    // parameter sets are skipped (x264 repeats SPS/PPS at every IDR).
    let full = d.join("g.h264");
    make_clip(&full, "160x120", "30", 20, &["-g", "10", "-bf", "0"]);
    let mut src = Source::open(&full, (30, 1)).unwrap();
    let mut joined = Vec::new();
    let mut n = 0;
    while let Some(au) = src.next_access_unit().unwrap() {
        if n >= 3 {
            joined.extend_from_slice(&au.data);
        }
        n += 1;
    }
    let (src, units) = read_all(&write("joined.h264", &joined), None).unwrap();
    assert_eq!(src.info().skipped, 7);
    assert_eq!(units.len(), 10);
    assert!(units[0].1 && units[0].0 == 0);
}

/// Two renditions of one clip (the same pts, keyframes at the same frames) through the
/// ladder sink: MP4s and HLS that ffmpeg decodes to every frame, segments at keyframes.
#[test]
fn ladder_sink_writes_mp4_and_hls_that_ffmpeg_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames = 95u64;
    let sizes = [("320x180", 320, 180), ("160x90", 160, 90)];
    let mut streams = Vec::new();
    for (size, _, _) in sizes {
        let p = d.join(format!("{size}.h264"));
        // Keyframes every 15 frames in both, as a card aligns them; no B-frames.
        make_clip(
            &p,
            size,
            "30",
            frames as u32,
            &[
                "-g",
                "15",
                "-keyint_min",
                "15",
                "-sc_threshold",
                "0",
                "-bf",
                "0",
                "-profile:v",
                "baseline",
            ],
        );
        let mut src = Source::open(&p, (30, 1)).unwrap();
        let mut aus = Vec::new();
        while let Some(au) = src.next_access_unit().unwrap() {
            aus.push(au);
        }
        assert_eq!(aus.len() as u64, frames);
        streams.push(aus);
    }
    let renditions = resolve(&parse_ladder("180p:400k,90p:100k").unwrap(), 320, 180).unwrap();
    let out = d.join("out");
    let mut sink = LadderSink::create(&out, &renditions, (30, 1), Some(1.0)).unwrap();
    // Interleaved unevenly: rendition 0 runs ahead by up to 7 frames.
    let mut next = [0usize, 0];
    while next[1] < frames as usize {
        let r = if next[0] < frames as usize && next[0] < next[1] + 7 {
            0
        } else {
            1
        };
        let au = &streams[r][next[r]];
        sink.push(
            r,
            Packet {
                pts: au.pts,
                data: au.data.clone(),
            },
        )
        .unwrap();
        next[r] += 1;
    }
    let summaries = sink.finish().unwrap();
    assert_eq!(summaries.len(), 2);
    for s in &summaries {
        assert_eq!(s.frames, frames);
        assert_eq!(decoded_frames(&s.mp4), frames, "{}", s.mp4.display());
        // Cuts at the first keyframe at least a second (30 frames) into each segment:
        // frames 0, 30, 60, 90.
        assert_eq!(s.segments, 4, "{}", s.rendition.name);
    }
    let master = out.join("master.m3u8");
    let text = std::fs::read_to_string(&master).unwrap();
    assert!(
        text.contains("RESOLUTION=320x180") && text.contains("CODECS=\"avc1.42"),
        "{text}"
    );
    // Every variant of the master playlist decodes to every frame.
    let v = ffprobe_json(&["-show_entries", "stream=width,height"], &master);
    assert_eq!(v["streams"].as_array().unwrap().len(), 2, "{v}");
    for (name, ..) in [("180p", 0, 0), ("90p", 0, 0)] {
        let media = out.join(name).join("index.m3u8");
        assert_eq!(decoded_frames(&media), frames, "{name}");
        let playlist = std::fs::read_to_string(&media).unwrap();
        assert!(
            playlist.contains("#EXT-X-ENDLIST") && playlist.contains("#EXT-X-TARGETDURATION:1"),
            "{playlist}"
        );
        let mut total = 0.0;
        for seg in playlist.lines().filter(|l| l.ends_with(".ts")) {
            let path = out.join(name).join(seg);
            let v = ffprobe_json(
                &[
                    "-select_streams",
                    "v:0",
                    "-show_entries",
                    "frame=key_frame,pict_type",
                    "-read_intervals",
                    "%+#1",
                ],
                &path,
            );
            let first = &v["frames"][0];
            assert_eq!(
                first["key_frame"].as_i64(),
                Some(1),
                "{} starts with {first}",
                path.display()
            );
            let v = ffprobe_json(&["-show_entries", "format=duration"], &path);
            total += v["format"]["duration"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap();
        }
        assert!(
            (total - frames as f64 / 30.0).abs() < 0.2,
            "{name}: {total} s of segments"
        );
    }
}
