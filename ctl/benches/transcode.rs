//! The 4-rung ABR ladder (1080p 6 Mb/s, 720p 3 Mb/s, 480p 1.5 Mb/s, 360p 800 kb/s) from a
//! 1080p30 H.264 input, five ways, paired in one run:
//!
//! - **on-card**: `vpuctl transcode` through vpud (a separate process, one emulated card):
//!   the card decodes once, scales and encodes every rendition; the host only moves
//!   compressed data. Twice: with `[transcode] pictures_in_flight = 1` (one picture at a
//!   time through decode, scale and encode) and with the default (several pictures on the
//!   card at once), each on its own vpud;
//! - **ffmpeg**: the same ladder on the host with ffmpeg's own decoder and scaler
//!   (bilinear) and libx264 (`ultrafast`, no B-frames, the same GOP and bit rates). Twice:
//!   one thread for the decoder, the filter graph and each encoder, and as many threads
//!   for each as the host has cores;
//! - **naive vpud**: decode (openh264) and scale (fast_image_resize, bilinear, as the card
//!   does) on the host, then four separate encode sessions through vpud.
//!
//! For each: wall-clock per input frame, and host CPU per input frame: the client's
//! process plus vpud's own threads. The emulated card's threads (`emuN-…`: its
//! controller, decoder, scaler and encoders, which are the card's silicon on real
//! hardware) are counted apart, as card CPU; on this machine they run on the same cores
//! as everything else.
//!
//! `cargo bench -p vpuctl --bench transcode` (env `VPUD_BENCH_FRAMES`, default 120, and
//! `VPUD_BENCH_ROUNDS`, default 3; medians over rounds, paths in rotating order).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// CPU seconds of one side of a measurement; `engines`: the card's share by thread kind
/// (controller, encoders, decoders, scalers).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    host: f64,
    card: f64,
    engines: [f64; 4],
}

const ENGINE_KINDS: [&str; 4] = ["ctrl", "eng", "dec", "scl"];

/// How many of the card's engine threads (encoders, decoders, scalers) had work, sampled
/// every few milliseconds while a transcode ran: samples with 0, 1, 2, 3 and 4 or more in
/// state R (running, or ready and waiting for a core).
#[derive(Debug, Clone, Copy, Default)]
struct Busy {
    samples: [u64; 5],
}

impl Busy {
    /// Engines with work on average, over the samples where any had.
    fn mean(&self) -> f64 {
        let busy: u64 = self.samples[1..].iter().sum();
        let engines: u64 = (1..5).map(|k| k as u64 * self.samples[k]).sum();
        engines as f64 / busy.max(1) as f64
    }

    /// Share of those samples with at least two engines with work.
    fn overlap(&self) -> f64 {
        let busy: u64 = self.samples[1..].iter().sum();
        self.samples[2..].iter().sum::<u64>() as f64 / busy.max(1) as f64
    }
}

/// Samples the engine threads of process `pid` until `stop`.
fn sample_engines(pid: u32, stop: &AtomicBool) -> Busy {
    let mut busy = Busy::default();
    let tasks = format!("/proc/{pid}/task");
    while !stop.load(Ordering::Relaxed) {
        let mut running = 0;
        for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let engine = comm.starts_with("emu") && !comm.ends_with("-ctrl");
            if engine && stat[close + 1..].trim_start().starts_with('R') {
                running += 1;
            }
        }
        busy.samples[running.min(4)] += 1;
        std::thread::sleep(Duration::from_millis(4));
    }
    busy
}

#[derive(Debug, Clone, Copy)]
struct Run {
    wall: f64,
    cpu: Cpu,
    busy: Busy,
}

/// A `vpud --emulate 1` process on a private bus.
struct Vpud {
    child: Child,
    bus: PrivateBus,
}

impl Vpud {
    async fn start(binary: &Path, config: &Path) -> Vpud {
        let bus = PrivateBus::start().expect("a private dbus-daemon (package dbus)");
        let child = Command::new(binary)
            .args(["--bus", bus.address(), "--emulate", "1", "--config"])
            .arg(config)
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
                let kind = comm.split('-').nth(1).unwrap_or("");
                if let Some(k) = ENGINE_KINDS.iter().position(|p| kind.starts_with(p)) {
                    cpu.engines[k] += secs;
                }
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
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (res, busy) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_engines(vpud.child.id(), &stop));
        let res = Command::new(vpuctl)
            .args(["--bus", vpud.bus.address(), "transcode"])
            .arg(input)
            .arg("-o")
            .arg(out)
            .args(["--ladder", LADDER, "--gop", &GOP.to_string()])
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        (res, sampler.join().unwrap())
    });
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
            engines: std::array::from_fn(|k| d.engines[k] - daemon.engines[k]),
        },
        busy,
    }
}

fn ffmpeg(input: &Path, out: &Path, threads: usize) -> Run {
    let threads = threads.to_string();
    std::fs::create_dir_all(out).unwrap();
    let mut graph = String::from("[0:v]split=4[s0][s1][s2][s3]");
    for (i, (w, h, _)) in RUNGS.iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale={w}:{h}:flags=bilinear[o{i}]"));
    }
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-threads", &threads, "-i"])
        .arg(input);
    cmd.args([
        "-filter_complex_threads",
        &threads,
        "-filter_complex",
        &graph,
    ]);
    for (i, (_, h, bps)) in RUNGS.iter().enumerate() {
        cmd.args([
            "-map",
            &format!("[o{i}]"),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ]);
        cmd.args(["-threads", &threads, "-bf", "0", "-g", &GOP.to_string()]);
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
            ..Cpu::default()
        },
        busy: Busy::default(),
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
            engines: std::array::from_fn(|k| d.engines[k] - daemon.engines[k]),
        },
        busy: Busy::default(),
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let serial_config = dir.path().join("serial.toml");
    std::fs::write(&serial_config, "[transcode]\npictures_in_flight = 1\n").unwrap();
    let default_config = dir.path().join("default.toml");
    std::fs::write(&default_config, "").unwrap();
    let serial = Vpud::start(&vpud_bin, &serial_config).await;
    let vpud = Vpud::start(&vpud_bin, &default_config).await;

    let names = [
        "on-card ladder, 1 picture in flight (before)".to_string(),
        "on-card ladder, default pictures in flight (4)".to_string(),
        "ffmpeg on the host (libx264), 1 thread each".to_string(),
        format!("ffmpeg on the host (libx264), {cores} threads each"),
        "naive vpud (host decode + scale, 4 sessions)".to_string(),
    ];
    let subs = ["card1", "card", "ffmpeg1", "ffmpeg", ""];
    let paths = names.len();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); paths];
    for round in 0..rounds {
        for k in 0..paths {
            let path = (round + k) % paths;
            let out = dir.path().join(subs[path]);
            let run = match path {
                0 => on_card(&vpuctl, &serial, &input, &out),
                1 => on_card(&vpuctl, &vpud, &input, &out),
                2 => ffmpeg(&input, &out, 1),
                3 => ffmpeg(&input, &out, cores),
                _ => naive(&vpud, &input, frames).await,
            };
            runs[path].push(run);
        }
    }
    for (h, _, _) in RUNGS.iter().map(|(w, h, b)| (h, w, b)) {
        for sub in &subs[..4] {
            let f = frames_of(&dir.path().join(sub).join(format!("{h}p.mp4")));
            assert_eq!(f, frames, "{sub} {h}p frames");
        }
    }
    let n = frames as f64;
    println!(
        "{frames} frames of 1080p30 into {LADDER}, GOP {GOP}, {rounds} rounds (medians), {cores} cores\n"
    );
    println!("| path | wall ms/frame | fps | host CPU ms/frame | card CPU ms/frame | host + card CPU ms/frame | fps per host CPU-second | fps per host + card CPU-second |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut host = vec![0.0; paths];
    let mut total = vec![0.0; paths];
    let mut fps = vec![0.0; paths];
    for (i, name) in names.iter().enumerate() {
        let wall = median(runs[i].iter().map(|r| r.wall).collect());
        let h = median(runs[i].iter().map(|r| r.cpu.host).collect());
        let c = median(runs[i].iter().map(|r| r.cpu.card).collect());
        let t = median(runs[i].iter().map(|r| r.cpu.host + r.cpu.card).collect());
        host[i] = h * 1e3 / n;
        total[i] = t * 1e3 / n;
        fps[i] = n / wall;
        println!(
            "| {name} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            wall * 1e3 / n,
            n / wall,
            host[i],
            c * 1e3 / n,
            total[i],
            n / h.max(1e-9),
            n / t.max(1e-9),
        );
    }
    println!();
    println!("card CPU ms/frame by thread (medians):\n");
    println!("| path | controller | encoders | decoder | scaler |");
    println!("|---|---|---|---|---|");
    for i in [0, 1, 4] {
        let k = |k: usize| median(runs[i].iter().map(|r| r.cpu.engines[k]).collect()) * 1e3 / n;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            names[i],
            k(0),
            k(1),
            k(2),
            k(3)
        );
    }
    println!();
    println!("card engines with work (state R: running or waiting for a core), sampled every 4 ms, all rounds:\n");
    println!("| path | engines with work, mean when any | samples with ≥ 2 |");
    println!("|---|---|---|");
    for i in [0, 1] {
        let mut all = Busy::default();
        for r in &runs[i] {
            for (a, b) in all.samples.iter_mut().zip(r.busy.samples) {
                *a += b;
            }
        }
        println!(
            "| {} | {:.2} | {:.0} % |",
            names[i],
            all.mean(),
            all.overlap() * 100.0
        );
    }
    println!();
    let ratio = |what: &str, v: f64, target: &str| println!("{what}: {v:.3}{target}");
    ratio(
        "host CPU per frame, on-card ÷ naive vpud",
        host[1] / host[4],
        " (target ≤ 0.8)",
    );
    ratio(
        "host CPU per frame, on-card ÷ ffmpeg (1 thread each)",
        host[1] / host[2],
        "",
    );
    ratio(
        "wall-clock throughput, on-card ÷ on-card with 1 picture in flight",
        fps[1] / fps[0],
        "",
    );
    ratio(
        "wall-clock throughput, on-card ÷ ffmpeg (1 thread each)",
        fps[1] / fps[2],
        "",
    );
    ratio(
        &format!("wall-clock throughput, on-card ÷ ffmpeg ({cores} threads each)"),
        fps[1] / fps[3],
        "",
    );
    ratio(
        "frames per host CPU-second, on-card ÷ ffmpeg (1 thread each)",
        host[2] / host[1],
        "",
    );
    ratio(
        "frames per host + card CPU-second, on-card ÷ ffmpeg (1 thread each)",
        total[2] / total[1],
        "",
    );
}
