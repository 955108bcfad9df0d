//! The program the VFIO test tier runs inside its VM, as PID 1's child, against QEMU's
//! `edu` device and NVMe controllers behind a virtual IOMMU.
//!
//! Every check prints one structured line, `RESULT <name> ok|fail <detail>`, and
//! benchmark figures print as `BENCH <name> <value> <unit>`; the lines go to stdout and to
//! the file given with `--results` (the VM's second serial port), and `GUEST-DONE` ends
//! the run. The host side (`tests/tests/vfio_vm.rs`) asserts on them. A check that panics
//! is reported as failed and the others still run.

mod bench;
mod discovery;
mod edu;
mod errors;
mod nvme;
mod util;

use std::fs::File;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

/// Where the VM's devices are, as the init script passes them.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// `edu` alone in its IOMMU group.
    pub edu: String,
    /// `edu` sharing a group with a function bound to the kernel's nvme driver.
    pub edu_shared: String,
    /// The NVMe controller bound to vfio-pci.
    pub nvme: String,
    /// The identical NVMe controller left to the kernel's nvme driver.
    pub kernel_nvme: String,
}

/// Prints results to stdout and the results file.
#[derive(Debug)]
pub struct Reporter {
    file: Mutex<Option<File>>,
}

impl Reporter {
    fn line(&self, text: &str) {
        println!("{text}");
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = file.as_mut() {
            // The host reads this file; a failed write shows up as a missing result.
            let _ = writeln!(f, "{text}");
            let _ = f.flush();
        }
    }

    /// Runs one check and reports it; a panic counts as a failure.
    pub fn check(&self, name: &str, f: impl FnOnce() -> anyhow::Result<String>) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
        let (status, detail) = match outcome {
            Ok(Ok(detail)) => ("ok", detail),
            Ok(Err(e)) => ("fail", format!("{e:#}")),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                ("fail", format!("panicked: {msg}"))
            }
        };
        let detail = detail.replace('\n', " ");
        self.line(&format!("RESULT {name} {status} {detail}"));
    }

    /// Reports a benchmark figure.
    pub fn bench(&self, name: &str, value: f64, unit: &str) {
        self.line(&format!("BENCH {name} {value:.2} {unit}"));
    }
}

fn parse_args() -> anyhow::Result<(Layout, Option<String>)> {
    let mut layout = Layout::default();
    let mut results = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--edu" => layout.edu = value,
            "--edu-shared" => layout.edu_shared = value,
            "--nvme" => layout.nvme = value,
            "--kernel-nvme" => layout.kernel_nvme = value,
            "--results" => results = Some(value),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok((layout, results))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VPU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,vfio_ioctls=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (layout, results) = parse_args()?;
    let file = match results {
        Some(path) => Some(File::options().append(true).create(true).open(path)?),
        None => None,
    };
    let r = Reporter {
        file: Mutex::new(file),
    };
    r.line("GUEST-START");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    edu::run(&r, &layout);
    errors::run(&r, &layout);
    nvme::run(&r, &layout, &rt);
    discovery::run(&r, &layout, &rt);
    bench::run(&r, &layout, &rt);
    r.line("GUEST-DONE");
    Ok(())
}
