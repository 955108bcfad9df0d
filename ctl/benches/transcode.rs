//! The 4-rung ABR ladder (1080p 6 Mb/s, 720p 3 Mb/s, 480p 1.5 Mb/s, 360p 800 kb/s) from a
//! 1080p30 H.264 input, three ways, paired in one run:
//!
//! - **on-card**: `vpuctl transcode` through vpud (a separate process, one emulated card):
//!   the card decodes once, scales and encodes every rendition; the host only moves
//!   compressed data;
//! - **ffmpeg**: the same ladder on the host with ffmpeg's own decoder and scaler
//!   (bilinear) and libx264 (`ultrafast`, no B-frames, the same GOP and bit rates), one
//!   thread for the decoder, the filter graph and each encoder;
//! - **naive vpud**: decode (openh264) and scale (fast_image_resize, bilinear, as the card
//!   does) on the host, then four separate encode sessions through vpud.
//!
//! For each: wall-clock per input frame, and host CPU per input frame: the client's
//! process plus vpud's own threads. The emulated card's threads (`emuN-…`: its decoder,
//! scaler and encoders, which are the card's silicon on real hardware) are counted apart,
//! as card CPU.
//!
//! `cargo bench -p vpuctl --bench transcode` (env `VPUD_BENCH_FRAMES`, default 120, and
//! `VPUD_BENCH_ROUNDS`, default 3; medians over rounds, paths in rotating order).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use vpuctl::transcode::source::Source;
use vpud::bus::PrivateBus;
use vpud_client::{Client, SessionParams};

const LADDER: &str = "1080p:6M,720p:3M,480p:1500k,360p:800k";
const RUNGS: [(u32, u32, u32); 4] = [
    (1920, 1080, 6_000_000),
    (1280, 720, 3_000_000),
    (854, 480, 1_500_000),
    (640, 360, 800_000),
];
const FPS: u32 = 30;
const GOP: u32 = 60;

/// CPU seconds of one side of a measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    host: f64,
    card: f64,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    wall: f64,
    cpu: Cpu,
}

/// A `vpud --emulate 1` process on a private bus.
struct Vpud {
    child: Child,
    bus: PrivateBus,
}

impl Vpud {
    async fn start(binary: &Path) -> Vpud {
        let bus = PrivateBus::start().expect("a private dbus-daemon (package dbus)");
        let child = Command::new(binary)
            .args(["--bus", bus.address(), "--emulate", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vpud starts");
        let start = Instant::now();
        while Client::connect(Some(bus.address())).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "vpud did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vpud { child, bus }
    }

    /// vpud's CPU seconds so far: its own threads (host) and the emulated card's.
    fn cpu(&self) -> Cpu {
        let mut cpu = Cpu::default();
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(tasks).unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
            let comm = &stat[open + 1..close];
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let secs = (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks();
            if comm.starts_with("emu") {
                cpu.card += secs;
            } else {
                cpu.host += secs;
            }
        }
        // Threads that ended are in the process total but in no task: count them as host.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let total = (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks();
        cpu.host = total - cpu.card;
        cpu
    }
}

impl Drop for Vpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU seconds (user + system) of this process, or of its waited-for children.
fn rusage(who: libc::c_int) -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the valid, writable pointer it is given.
    assert_eq!(unsafe { libc::getrusage(who, u.as_mut_ptr()) }, 0);
    // SAFETY: zero-initialised and filled in by getrusage.
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn binaries() -> (PathBuf, PathBuf) {
    let vpuctl = PathBuf::from(env!("CARGO_BIN_EXE_vpuctl"));
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "vpud",
            "--bin",
            "vpud",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p vpud");
    let vpud = vpuctl.with_file_name("vpud");
    (vpuctl, vpud)
}

/// Frames ffprobe decodes from `path`.
fn frames_of(path: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn on_card(vpuctl: &Path, vpud: &Vpud, input: &Path, out: &Path) -> Run {
    let _ = std::fs::remove_dir_all(out);
    let (children, daemon) = (rusage(libc::RUSAGE_CHILDREN), vpud.cpu());
    let start = Instant::now();
    let res = Command::new(vpuctl)
        .args(["--bus", vpud.bus.address(), "transcode"])
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--ladder", LADDER, "--gop", &GOP.to_string()])
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let d = vpud.cpu();
    Run {
        wall,
        cpu: Cpu {
            host: rusage(libc::RUSAGE_CHILDREN) - children + d.host - daemon.host,
            card: d.card - daemon.card,
        },
    }
}

fn ffmpeg(input: &Path, out: &Path) -> Run {
    std::fs::create_dir_all(out).unwrap();
    let mut graph = String::from("[0:v]split=4[s0][s1][s2][s3]");
    for (i, (w, h, _)) in RUNGS.iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale={w}:{h}:flags=bilinear[o{i}]"));
    }
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-threads", "1", "-i"])
        .arg(input);
    cmd.args(["-filter_complex_threads", "1", "-filter_complex", &graph]);
    for (i, (_, h, bps)) in RUNGS.iter().enumerate() {
        cmd.args([
            "-map",
            &format!("[o{i}]"),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ]);
        cmd.args(["-threads", "1", "-bf", "0", "-g", &GOP.to_string()]);
        cmd.args(["-b:v", &bps.to_string()]);
        cmd.arg(out.join(format!("{h}p.mp4")));
    }
    let children = rusage(libc::RUSAGE_CHILDREN);
    let start = Instant::now();
    let res = cmd.output().unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    Run {
        wall,
        cpu: Cpu {
            host: rusage(libc::RUSAGE_CHILDREN) - children,
            card: 0.0,
        },
    }
}

/// Copies one plane of `w`×`h` out of a strided buffer.
fn tight(src: &[u8], stride: usize, w: usize, h: usize, dst: &mut [u8]) {
    for row in 0..h {
        dst[row * w..(row + 1) * w].copy_from_slice(&src[row * stride..row * stride + w]);
    }
}

fn scale_plane(
    r: &mut Resizer,
    src: &[u8],
    sw: usize,
    sh: usize,
    dst: &mut [u8],
    dw: usize,
    dh: usize,
) {
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let src = ImageRef::new(sw as u32, sh as u32, src, PixelType::U8).unwrap();
    let mut dst = Image::from_slice_u8(dw as u32, dh as u32, dst, PixelType::U8).unwrap();
    r.resize(&src, &mut dst, &options).unwrap();
}

/// Scales a tight I420 frame of `sw`×`sh` into `dst` of `dw`×`dh`.
fn scale_i420(
    r: &mut Resizer,
    src: &[u8],
    (sw, sh): (usize, usize),
    dst: &mut [u8],
    (dw, dh): (usize, usize),
) {
    if (sw, sh) == (dw, dh) {
        dst.copy_from_slice(src);
        return;
    }
    let (sy, sc) = (sw * sh, (sw / 2) * (sh / 2));
    let (dy, dc) = (dw * dh, (dw / 2) * (dh / 2));
    let (s_y, s_uv) = src.split_at(sy);
    let (d_y, d_uv) = dst.split_at_mut(dy);
    scale_plane(r, s_y, sw, sh, d_y, dw, dh);
    let (d_u, d_v) = d_uv.split_at_mut(dc);
    scale_plane(r, &s_uv[..sc], sw / 2, sh / 2, d_u, dw / 2, dh / 2);
    scale_plane(r, &s_uv[sc..], sw / 2, sh / 2, d_v, dw / 2, dh / 2);
}

async fn naive(vpud: &Vpud, input: &Path, frames: u64) -> Run {
    let own = rusage(libc::RUSAGE_SELF);
    let daemon = vpud.cpu();
    let start = Instant::now();
    let client = Client::connect(Some(vpud.bus.address())).await.unwrap();
    let mut sessions = Vec::new();
    for (w, h, bps) in RUNGS {
        let mut p = SessionParams::h264(w, h, FPS);
        p.bitrate = Some(bps);
        p.gop = Some(GOP);
        sessions.push((
            client.create_session(&p).await.unwrap(),
            (w as usize, h as usize),
        ));
    }
    let mut source = Source::open(input, (FPS, 1)).unwrap();
    let mut decoder = Decoder::new().unwrap();
    let mut resizer = Resizer::new();
    let mut frame = vec![0u8; 1920 * 1080 * 3 / 2];
    let (mut pts, mut packets) = (0u64, 0u64);
    while let Some(au) = source.next_access_unit().unwrap() {
        let Some(yuv) = decoder.decode(&au.data).unwrap() else {
            continue;
        };
        let (w, h) = yuv.dimensions();
        let (ys, us, vs) = yuv.strides();
        let (luma, chroma) = frame.split_at_mut(w * h);
        let (u, v) = chroma.split_at_mut((w / 2) * (h / 2));
        tight(yuv.y(), ys, w, h, luma);
        tight(yuv.u(), us, w / 2, h / 2, u);
        tight(yuv.v(), vs, w / 2, h / 2, v);
        for (session, size) in &mut sessions {
            let mut slot = session.reserve(pts).await.unwrap();
            scale_i420(&mut resizer, &frame, (w, h), slot.frame(), *size);
            slot.send(pts, false).await.unwrap();
            packets += session.ready_packets().count() as u64;
        }
        pts += 1;
    }
    for (mut session, _) in sessions {
        packets += session.drain().await.unwrap().len() as u64;
        let _ = session.close().await;
    }
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(pts, frames, "host-decoded frames");
    assert_eq!(packets, 4 * frames, "packets of the four sessions");
    let d = vpud.cpu();
    Run {
        wall,
        cpu: Cpu {
            host: rusage(libc::RUSAGE_SELF) - own + d.host - daemon.host,
            card: d.card - daemon.card,
        },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let frames = env("VPUD_BENCH_FRAMES", 120);
    let rounds = env("VPUD_BENCH_ROUNDS", 3) as usize;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.h264");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30",
        ])
        .args([
            "-frames:v",
            &frames.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ])
        .args(["-bf", "0", "-g", "60", "-b:v", "8M", "-pix_fmt", "yuv420p"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(made.success(), "ffmpeg makes the input");
    let (vpuctl, vpud_bin) = binaries();
    let vpud = Vpud::start(&vpud_bin).await;

    let names = [
        "on-card ladder (vpud)",
        "ffmpeg on the host (libx264)",
        "naive vpud (host decode + scale, 4 sessions)",
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        for k in 0..3 {
            let path = (round + k) % 3;
            let run = match path {
                0 => on_card(&vpuctl, &vpud, &input, &dir.path().join("card")),
                1 => ffmpeg(&input, &dir.path().join("ffmpeg")),
                _ => naive(&vpud, &input, frames).await,
            };
            runs[path].push(run);
        }
    }
    for (h, _, _) in RUNGS.iter().map(|(w, h, b)| (h, w, b)) {
        for sub in ["card", "ffmpeg"] {
            let f = frames_of(&dir.path().join(sub).join(format!("{h}p.mp4")));
            assert_eq!(f, frames, "{sub} {h}p frames");
        }
    }
    let n = frames as f64;
    println!("{frames} frames of 1080p30 into {LADDER}, GOP {GOP}, {rounds} rounds (medians)\n");
    println!("| path | wall ms/frame | fps | host CPU ms/frame | card CPU ms/frame | fps per host CPU-second |");
    println!("|---|---|---|---|---|---|");
    let mut host = [0.0; 3];
    let mut fps = [0.0; 3];
    for (i, name) in names.iter().enumerate() {
        let wall = median(runs[i].iter().map(|r| r.wall).collect());
        let h = median(runs[i].iter().map(|r| r.cpu.host).collect());
        let c = median(runs[i].iter().map(|r| r.cpu.card).collect());
        host[i] = h * 1e3 / n;
        fps[i] = n / wall;
        println!(
            "| {name} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} |",
            wall * 1e3 / n,
            n / wall,
            host[i],
            c * 1e3 / n,
            n / h.max(1e-9)
        );
    }
    println!();
    println!(
        "host CPU per frame, on-card ÷ naive vpud: {:.3} (target ≤ 0.8)",
        host[0] / host[2]
    );
    println!(
        "host CPU per frame, on-card ÷ ffmpeg: {:.3}",
        host[0] / host[1]
    );
    println!(
        "wall-clock throughput, on-card ÷ ffmpeg: {:.3}",
        fps[0] / fps[1]
    );
    println!(
        "frames per host CPU-second, on-card ÷ ffmpeg: {:.2}",
        host[1] / host[0]
    );
}
