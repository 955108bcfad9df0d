//! `vpud` as a child process on a private `dbus-daemon`, and samples of its resources:
//! resident memory (`VmRSS`), threads, open descriptors (`/proc/PID/fd`), client frame
//! buffers it has mapped (`memfd:vpud-frames` lines of `/proc/PID/maps`), and the DMA
//! mappings its emulated cards hold (`org.vpud.Vpud1.Emulator.DmaMappings`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vpud::bus::PrivateBus;
use vpud_client::Client;

/// Name of the client library's frame-pool memfds, as it appears in `/proc/PID/maps`.
const FRAME_POOL_MAP: &str = "memfd:vpud-frames";

/// The `vpud` binary of this build's profile: `VPUD_BIN` if set, else the one beside the
/// running executable, built first with `cargo build -p vpud --bin vpud` so it is current.
pub fn vpud_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VPUD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("locating the executable's directory")?
        .to_path_buf();
    // Test executables live in <target>/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .context("locating the profile directory")?
            .to_path_buf();
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("locating the workspace")?
        .to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "vpud", "--bin", "vpud"])
        .current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build -p vpud")?;
    if !status.success() {
        bail!("cargo build -p vpud --bin vpud failed");
    }
    Ok(dir.join("vpud"))
}

/// A `vpud` process serving emulated cards on a private bus of its own. Dropping it sends
/// SIGTERM (SIGKILL after 5 s) and stops the bus.
#[derive(Debug)]
pub struct VpudProcess {
    child: Child,
    bus: PrivateBus,
    cards: u32,
    _config: tempfile::NamedTempFile,
}

impl VpudProcess {
    /// Starts a private bus and `vpud --bus ADDRESS --emulate CARDS --config FILE` with
    /// `config` (TOML) as its configuration; returns once vpud answers on the bus.
    pub async fn start(cards: u32, config: &str) -> Result<VpudProcess> {
        let bus = PrivateBus::start().context("starting a private dbus-daemon (package dbus)")?;
        let mut file = tempfile::Builder::new()
            .prefix("vpud-load-")
            .suffix(".toml")
            .tempfile()?;
        std::io::Write::write_all(&mut file, config.as_bytes())?;
        let binary = vpud_binary()?;
        let child = Command::new(&binary)
            .args(["--bus", bus.address(), "--emulate", &cards.to_string()])
            .arg("--config")
            .arg(file.path())
            .env(
                "VPUD_LOG",
                std::env::var("VPUD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut p = VpudProcess {
            child,
            bus,
            cards,
            _config: file,
        };
        let start = Instant::now();
        loop {
            if Client::connect(Some(p.address())).await.is_ok() {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("vpud exited before serving: {status}");
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("vpud did not come up on the bus within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The private bus's address.
    pub fn address(&self) -> &str {
        self.bus.address()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of emulated cards.
    pub fn cards(&self) -> u32 {
        self.cards
    }

    /// Whether the daemon is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Takes a sample of the daemon's resources; `monitor` is a client used only for
    /// reading properties.
    pub async fn sample(&self, monitor: &Client, label: &str, started: Instant) -> Result<Sample> {
        sample_pid(self.pid(), monitor, label, started).await
    }
}

impl Drop for VpudProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
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

/// Takes a sample of the resources of the daemon with process id `pid`; `monitor` is a
/// client of it used for reading properties.
pub async fn sample_pid(
    pid: u32,
    monitor: &Client,
    label: &str,
    started: Instant,
) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let frame_maps = maps.lines().filter(|l| l.contains(FRAME_POOL_MAP)).count() as u64;
    let mut dma = 0u64;
    for card in monitor.card_paths().await? {
        dma += u64::from(monitor.dma_mappings(&card).await?);
    }
    let sessions = monitor.manager_info().await?.sessions as u64;
    Ok(Sample {
        label: label.to_owned(),
        at: started.elapsed(),
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds,
        frame_maps,
        dma_mappings: dma,
        sessions,
    })
}

/// One sample of the daemon's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// What the daemon was doing (`idle`, `warm`, `load`, `end`).
    pub label: String,
    /// Time since the run started.
    pub at: Duration,
    pub rss_kib: u64,
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Client frame pools mapped into the daemon.
    pub frame_maps: u64,
    /// DMA mappings held on all emulated cards together.
    pub dma_mappings: u64,
    /// Open sessions (`Manager.Sessions`).
    pub sessions: u64,
}

/// Prints samples as a table.
pub fn print_samples(samples: &[Sample]) {
    println!(
        "{:<6} {:>8} {:>10} {:>8} {:>6} {:>11} {:>9} {:>9}",
        "sample", "t (s)", "RSS (KiB)", "threads", "fds", "frame maps", "DMA maps", "sessions"
    );
    for s in samples {
        println!(
            "{:<6} {:>8.1} {:>10} {:>8} {:>6} {:>11} {:>9} {:>9}",
            s.label,
            s.at.as_secs_f64(),
            s.rss_kib,
            s.threads,
            s.fds,
            s.frame_maps,
            s.dma_mappings,
            s.sessions
        );
    }
}

/// The machine's load averages (`/proc/loadavg`: 1, 5 and 15 minutes) and CPU count.
pub fn machine_load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = avg.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {} on {cpus} CPUs", avg.join(" "))
}
