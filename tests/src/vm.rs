//! Host side of the VFIO test tier: find QEMU, a Debian kernel with its vfio modules and a
//! static busybox; build the static guest program and an initramfs; boot a q35 VM with a
//! virtual IOMMU, two NVMe controllers and `edu` devices; collect what the guest reports.
//!
//! The guest prints `RESULT <name> ok|fail <detail>` and `BENCH <name> <value> <unit>`
//! lines on its second serial port; the kernel console goes to the first.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The modules the guest loads, with their dependencies resolved from `modules.dep`.
const GUEST_MODULES: &[&str] = &["vfio_iommu_type1", "vfio_pci"];

/// What the tier needs from the host.
#[derive(Debug, Clone)]
pub struct Prerequisites {
    pub qemu: PathBuf,
    /// `vmlinuz` of a Debian amd64 kernel.
    pub kernel: PathBuf,
    /// `/lib/modules/<version>` of the same kernel.
    pub modules: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

/// How to get what is missing, for the skip message.
pub const HOW_TO_ENABLE: &str = "install the VM tier's packages: \
    `apt-get install qemu-system-x86 linux-image-cloud-amd64 busybox-static` \
    (or point VPU_VM_QEMU at qemu-system-x86_64, VPU_VM_KERNEL at a vmlinuz and \
    VPU_VM_MODULES at its /lib/modules/<version>)";

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether an ELF file has no program interpreter (is statically linked).
fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    let data = std::fs::read(path)?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let phoff = u64_at(0x20).context("ELF header")? as usize;
    let phentsize = usize::from(u16_at(0x36).context("ELF header")?);
    let phnum = usize::from(u16_at(0x38).context("ELF header")?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize) == Some(PT_INTERP) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn has_vfio_modules(modules: &Path) -> bool {
    modules.join("modules.dep").is_file() && modules.join("kernel/drivers/vfio").is_dir()
}

/// Finds a kernel and its modules: `VPU_VM_KERNEL`/`VPU_VM_MODULES`, an installed
/// `/boot/vmlinuz-*` (cloud flavour first), or a `linux-image-*amd64` package in apt's
/// cache unpacked with `dpkg-deb -x` into `work`.
fn find_kernel(work: &Path) -> Result<(PathBuf, PathBuf), String> {
    if let (Some(k), Some(m)) = (
        std::env::var_os("VPU_VM_KERNEL"),
        std::env::var_os("VPU_VM_MODULES"),
    ) {
        return Ok((k.into(), m.into()));
    }
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    versions.sort_by_key(|v| (!v.contains("cloud"), v.clone()));
    for v in versions {
        let kernel = PathBuf::from(format!("/boot/vmlinuz-{v}"));
        let modules = PathBuf::from(format!("/lib/modules/{v}"));
        if has_vfio_modules(&modules) && std::fs::File::open(&kernel).is_ok() {
            return Ok((kernel, modules));
        }
    }
    let debs: Vec<PathBuf> = std::fs::read_dir("/var/cache/apt/archives")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("linux-image-")
                    && n.ends_with(".deb")
                    && n.contains("amd64")
                    && !n.contains("-dbg")
            })
        })
        .collect();
    for deb in debs {
        let dir = work.join("kernel-pkg");
        let _ = std::fs::remove_dir_all(&dir);
        let ok = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            continue;
        }
        let boot = std::fs::read_dir(dir.join("boot"))
            .into_iter()
            .flatten()
            .flatten();
        for e in boot {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                let modules = dir.join("lib/modules").join(v);
                if has_vfio_modules(&modules) {
                    return Ok((e.path(), modules));
                }
            }
        }
    }
    Err(format!(
        "no readable Debian amd64 kernel with vfio modules found; {HOW_TO_ENABLE}"
    ))
}

impl Prerequisites {
    /// Finds everything, or says what is missing and how to get it.
    pub fn find(work: &Path) -> Result<Self, String> {
        let qemu = match std::env::var_os("VPU_VM_QEMU") {
            Some(q) => Some(PathBuf::from(q)).filter(|q| q.is_file()),
            None => in_path("qemu-system-x86_64"),
        }
        .ok_or_else(|| format!("qemu-system-x86_64 not found; {HOW_TO_ENABLE}"))?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_static_elf(p).unwrap_or(false))
            .ok_or_else(|| format!("no statically linked busybox; {HOW_TO_ENABLE}"))?;
        let (kernel, modules) = find_kernel(work)?;
        Ok(Self {
            qemu,
            kernel,
            modules,
            busybox,
        })
    }
}

/// Builds the guest program statically (glibc, `+crt-static`) in its own target
/// directory so the workspace's normal build is untouched. Returns the binary.
pub fn build_guest(workspace: &Path, target_dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "vpu-tests",
            "--bin",
            "vfio-guest",
        ])
        .args(["--target", target])
        .args(["--config", "profile.release.debug=0"])
        .args(["--config", "profile.release.strip=true"])
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("running cargo build for the guest program")?;
    if !status.success() {
        bail!("building the guest program failed ({status})");
    }
    let bin = target_dir.join(target).join("release/vfio-guest");
    if !is_static_elf(&bin)? {
        bail!("{} is not statically linked", bin.display());
    }
    Ok(bin)
}

/// A `newc` cpio archive, written entry by entry.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let mut h = String::from("070701");
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        for f in fields {
            let _ = write!(h, "{f:08x}");
        }
        self.ino += 1;
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Module files to load, dependencies first, resolved from `modules.dep`.
fn module_order(modules: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules.display()))?;
    let table: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let stem = |p: &str| {
        let file = p.rsplit('/').next().unwrap_or(p);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    fn visit(
        m: &str,
        table: &[(String, Vec<String>)],
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if order.iter().any(|o| o == m) {
            return Ok(());
        }
        if depth > 32 {
            bail!("module dependency loop at {m}");
        }
        let deps = table
            .iter()
            .find(|(p, _)| p == m)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        for d in deps.iter().rev() {
            visit(d, table, order, depth + 1)?;
        }
        order.push(m.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for want in GUEST_MODULES {
        let path = table
            .iter()
            .find(|(p, _)| stem(p) == *want)
            .map(|(p, _)| p.clone())
            .with_context(|| format!("module {want} not in modules.dep"))?;
        visit(&path, &table, &mut order, 0)?;
    }
    Ok(order.into_iter().map(|p| modules.join(p)).collect())
}

/// Reads a module, decompressing `.ko.xz`/`.ko.zst` with the host's tools (busybox's
/// insmod takes plain `.ko` files).
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).with_context(|| format!("reading {name}")),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-dc"])
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} for {name}"))?;
            if !out.status.success() {
                bail!("{tool} -dc {name} failed");
            }
            Ok(out.stdout)
        }
    }
}

/// Writes the initramfs: busybox, `init`, the guest program, the vfio modules.
pub fn build_initramfs(
    pre: &Prerequisites,
    init: &Path,
    guest: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let mut cpio = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "modules"] {
        cpio.dir(d);
    }
    // The console must exist before devtmpfs is mounted, for init's stdout.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, &std::fs::read(&pre.busybox)?);
    cpio.file("init", 0o755, &std::fs::read(init)?);
    cpio.file("vfio-guest", 0o755, &std::fs::read(guest)?);
    let mut order = String::new();
    for m in module_order(&pre.modules)? {
        let file = m
            .file_name()
            .context("module path")?
            .to_string_lossy()
            .replace(".xz", "")
            .replace(".zst", "");
        cpio.file(&format!("modules/{file}"), 0o644, &read_module(&m)?);
        order.push_str(&file);
        order.push('\n');
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    std::fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

/// One reported check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a VM run produced.
#[derive(Debug, Clone, Default)]
pub struct VmRun {
    pub results: Vec<GuestResult>,
    /// `(name, value, unit)`.
    pub bench: Vec<(String, f64, String)>,
    /// The guest printed `GUEST-DONE`.
    pub done: bool,
    /// Lines that are neither (init's `VM-ERROR` reports, say).
    pub other: Vec<String>,
    pub console: String,
    pub elapsed: Duration,
}

impl VmRun {
    pub fn result(&self, name: &str) -> Option<&GuestResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Parses the results port's text.
pub fn parse_results(text: &str, run: &mut VmRun) {
    for line in text.lines().map(str::trim) {
        let mut parts = line.splitn(4, ' ');
        match parts.next() {
            Some("RESULT") => {
                let name = parts.next().unwrap_or_default().to_owned();
                let ok = parts.next() == Some("ok");
                let detail = parts.next().unwrap_or_default().to_owned();
                run.results.push(GuestResult { name, ok, detail });
            }
            Some("BENCH") => {
                let name = parts.next().unwrap_or_default().to_owned();
                let value = parts
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                let unit = parts.next().unwrap_or_default().to_owned();
                run.bench.push((name, value, unit));
            }
            Some("GUEST-DONE") => run.done = true,
            Some("GUEST-START") | Some("") | None => {}
            Some(_) => run.other.push(line.to_owned()),
        }
    }
}

/// VM settings.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Size of each NVMe controller's namespace.
    pub nvme_bytes: u64,
    pub timeout: Duration,
    /// Extra kernel arguments (`VPU_LOG=debug` reaches the guest program's environment).
    pub extra_append: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            memory_mib: 1024,
            cpus: 2,
            nvme_bytes: 80 << 20,
            timeout: Duration::from_secs(240),
            extra_append: String::new(),
        }
    }
}

/// Boots the VM and waits for it to power off (or kills it at the timeout).
pub fn boot(
    pre: &Prerequisites,
    initramfs: &Path,
    work: &Path,
    cfg: &VmConfig,
) -> anyhow::Result<VmRun> {
    let console = work.join("console.log");
    let results = work.join("results.txt");
    let mut drives = Vec::new();
    for name in ["nvme-vfio.raw", "nvme-kernel.raw", "nvme-shared.raw"] {
        let p = work.join(name);
        let f = std::fs::File::create(&p)?;
        // Sparse: both benchmark devices read the same (unwritten) blocks.
        f.set_len(if name == "nvme-shared.raw" {
            1 << 20
        } else {
            cfg.nvme_bytes
        })?;
        drives.push(p);
    }
    let append = format!(
        "intel_iommu=on no_timer_check console=ttyS0 panic=-1 {}",
        cfg.extra_append
    );
    let mut cmd = Command::new(&pre.qemu);
    cmd.args(["-machine", "q35", "-accel", "tcg"])
        .args(["-m", &cfg.memory_mib.to_string()])
        .args(["-smp", &cfg.cpus.to_string()])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
        .arg("-kernel")
        .arg(&pre.kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append]);
    // 00:04.0 for vfio-pci and 00:05.0 for the kernel's nvme driver: identical
    // controllers. 00:06.0 edu alone in its group; behind the bridge at 00:07.0, an edu
    // sharing its group with a controller the kernel drives.
    let devices = [
        (0, "nvme,drive=d0,serial=vpu-vfio,addr=0x4"),
        (1, "nvme,drive=d1,serial=vpu-kernel,addr=0x5"),
        (2, "nvme,drive=d2,serial=vpu-shared,bus=br0,addr=0x2"),
    ];
    cmd.args(["-device", "edu,addr=0x6"])
        .args(["-device", "pci-bridge,id=br0,chassis_nr=1,addr=0x7"])
        .args(["-device", "edu,bus=br0,addr=0x1"]);
    for (i, dev) in devices {
        cmd.arg("-drive").arg(format!(
            "file={},if=none,id=d{i},format=raw",
            drives[i].display()
        ));
        cmd.args(["-device", dev]);
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > cfg.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut run = VmRun {
        elapsed: start.elapsed(),
        console: std::fs::read_to_string(&console).unwrap_or_default(),
        ..VmRun::default()
    };
    parse_results(
        &std::fs::read_to_string(&results).unwrap_or_default(),
        &mut run,
    );
    match status {
        None => run
            .other
            .push(format!("VM-ERROR killed after {:?}", cfg.timeout)),
        Some(s) if !s.success() => {
            let out = child.wait_with_output()?;
            run.other.push(format!(
                "VM-ERROR qemu exited with {s}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Some(_) => {}
    }
    Ok(run)
}

/// Writes to the test's stderr past libtest's output capture, so CI logs always show it.
pub fn show(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.write_all(b"\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_and_bench_lines() {
        let mut run = VmRun::default();
        parse_results(
            "GUEST-START\nRESULT edu_dma ok 3 round trips\nRESULT x fail bad thing: 3\n\
             BENCH nvme_vfio_4k_read 1234.5 IOPS\nVM-ERROR oops\nGUEST-DONE\n",
            &mut run,
        );
        assert!(run.done);
        assert!(run.result("edu_dma").unwrap().ok);
        assert_eq!(run.result("x").unwrap().detail, "bad thing: 3");
        assert!(!run.result("x").unwrap().ok);
        assert_eq!(run.bench[0].1, 1234.5);
        assert_eq!(run.other, ["VM-ERROR oops"]);
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }
}
