//! vpud's card discovery inside the VM: it must see the NVMe controller bound to
//! vfio-pci, bring it up, find no VPU block in its Identify data and skip it with one
//! informative log line, and leave it closed for the next user.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context};
use vpu_driver::vfio::{PciScanner, VfioOptions};
use vpud::config::Config;

use crate::util::open_when_released;
use crate::{Layout, Reporter};

/// How long a function given up may stay busy.
const RELEASE: Duration = Duration::from_secs(5);

/// A log sink the check reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn run(r: &Reporter, layout: &Layout, rt: &tokio::runtime::Runtime) {
    r.check("vpud_discovery_skips_plain_nvme", || {
        // The function must be free before discovery tries it.
        let (d, waited) = open_when_released(&layout.nvme, &VfioOptions::default(), RELEASE)?;
        drop(d);
        let mut config = Config::default();
        config.vfio.enabled = true;
        config.vfio.nvme_class = true;
        let log = Captured::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let scanner = PciScanner::new();
        let found = tracing::subscriber::with_default(subscriber, || {
            rt.block_on(vpud::discovery::vfio(&config, &scanner))
        })?;
        let text =
            String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        ensure!(
            found.is_empty(),
            "{} cards found on a machine with none",
            found.len()
        );
        let skip = text
            .lines()
            .find(|l| l.contains(&layout.nvme) && l.contains("skipping"))
            .with_context(|| format!("no skip line for {} in: {text}", layout.nvme))?;
        ensure!(
            skip.contains("without a VPU block"),
            "skipped for another reason: {skip}"
        );
        ensure!(
            !text.contains(&layout.edu),
            "discovery touched edu (not NVMe, not configured)"
        );
        // Discovery closes the function again.
        let (d, released) = open_when_released(&layout.nvme, &VfioOptions::default(), RELEASE)?;
        drop(d);
        Ok(format!(
            "{} (group free after {} ms; {} ms before discovery)",
            skip.trim(),
            released.as_millis(),
            waited.as_millis()
        ))
    });
}
