//! Shared pieces of vpud's benchmarks: a `vpud` process on a private bus, clips, the
//! direct-openh264 baseline (configured as the emulated card's engines configure it), and
//! percentiles.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode,
    UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use vpu_driver::media::{TestPattern, Y4mHeader, Y4mReader, Y4mWriter};
use vpud::bus::PrivateBus;
use vpud_client::Client;

/// A `vpud` process serving on a private bus of its own.
pub struct VpudProcess {
    child: Child,
    bus: PrivateBus,
}

impl VpudProcess {
    /// Starts a private bus and `vpud --bus ADDRESS --emulate cards`; returns once vpud
    /// answers on the bus.
    pub async fn start(cards: u32) -> VpudProcess {
        VpudProcess::start_with(cards, &[]).await
    }

    /// [`VpudProcess::start`] with more arguments for vpud (`--config FILE`, …).
    pub async fn start_with(cards: u32, extra: &[&std::ffi::OsStr]) -> VpudProcess {
        let bus = PrivateBus::start().expect("a private dbus-daemon (package dbus)");
        let child = Command::new(env!("CARGO_BIN_EXE_vpud"))
            .args(["--bus", bus.address(), "--emulate", &cards.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vpud starts");
        let start = Instant::now();
        loop {
            if Client::connect(Some(bus.address())).await.is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "vpud did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        VpudProcess { child, bus }
    }

    pub fn address(&self) -> &str {
        self.bus.address()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the vpud process, KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// CPU time the vpud process has used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may contain spaces) start at `state`.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / clock_ticks()
    }

    /// A `… kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssShmem`, …).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}

impl Drop for VpudProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `frames` frames of the moving test pattern as Y4M.
pub fn write_clip(path: &Path, width: u32, height: u32, fps: u32, frames: u64) {
    let header = Y4mHeader::new(width, height, fps, 1);
    let mut w = Y4mWriter::new(BufWriter::new(File::create(path).unwrap()), &header).unwrap();
    let pattern = TestPattern::new(width, height);
    let mut frame = vec![0u8; pattern.frame_size()];
    for n in 0..frames {
        pattern.fill(n, &mut frame);
        w.write_frame(&frame).unwrap();
    }
    w.finish().unwrap();
}

/// An openh264 encoder set up as the emulated card's engine sets one up for a CBR session.
pub fn baseline_encoder(bitrate: u32, fps: u32, gop: u32) -> Encoder {
    let config = EncoderConfig::new()
        .skip_frames(false)
        .usage_type(UsageType::CameraVideoRealTime)
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(gop))
        .num_threads(1)
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Bitrate)
        .bitrate(BitRate::from_bps(bitrate));
    Encoder::with_api_config(OpenH264API::from_source(), config).unwrap()
}

/// Encodes one I420 frame with `enc`, appending Annex-B to `out`.
pub fn encode_i420(
    enc: &mut Encoder,
    frame: &[u8],
    width: usize,
    height: usize,
    out: &mut Vec<u8>,
) {
    let (y, uv) = frame.split_at(width * height);
    let (u, v) = uv.split_at(width / 2 * height / 2);
    let yuv = YUVSlices::new((y, u, v), (width, height), (width, width / 2, width / 2));
    enc.encode(&yuv).unwrap().write_vec(out);
}

/// The direct path `vpuctl encode` is compared with: read the Y4M, encode with openh264
/// in this process, write Annex-B. Returns (frames, seconds).
pub fn direct_encode_file(input: &Path, output: &Path, bitrate: u32, gop: u32) -> (u64, f64) {
    let start = Instant::now();
    let mut reader = Y4mReader::new(BufReader::new(File::open(input).unwrap())).unwrap();
    let h = reader.header().clone();
    let mut enc = baseline_encoder(bitrate, h.fps_num / h.fps_den.max(1), gop);
    let mut out = BufWriter::new(File::create(output).unwrap());
    let mut frame = Vec::new();
    let mut packet = Vec::new();
    let mut frames = 0;
    while reader.read_frame(&mut frame).unwrap() {
        packet.clear();
        encode_i420(
            &mut enc,
            &frame,
            h.width as usize,
            h.height as usize,
            &mut packet,
        );
        out.write_all(&packet).unwrap();
        frames += 1;
    }
    out.flush().unwrap();
    (frames, start.elapsed().as_secs_f64())
}

/// The `p`-th percentile (0–100) of `values` (sorted in place), nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The median of `values`.
pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Whose CPU time [`rusage_seconds`] reads.
#[derive(Clone, Copy)]
pub enum Usage {
    /// This process.
    Own,
    /// Its children that have been waited for.
    Children,
}

/// CPU time (user + system) of this process, or of its waited-for children, seconds.
pub fn rusage_seconds(who: Usage) -> f64 {
    let who = match who {
        Usage::Own => libc::RUSAGE_SELF,
        Usage::Children => libc::RUSAGE_CHILDREN,
    };
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the valid, writable pointer it is given.
    let rc = unsafe { libc::getrusage(who, u.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: zero-initialised and, on success, filled in by getrusage.
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The `vpuctl` binary of this build (its own crate), built next to `vpud` if it is not there.
#[allow(dead_code)]
pub fn vpuctl_binary() -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vpud")).with_file_name("vpuctl");
    let profile = path
        .parent()
        .and_then(Path::file_name)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "vpuctl", "--bin", "vpuctl"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build -p vpuctl");
    assert!(status.success(), "cargo build -p vpuctl failed");
    path
}
