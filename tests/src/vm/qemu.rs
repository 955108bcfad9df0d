//! Booting the VM and reading what the guest reported.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Prerequisites;

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
}
