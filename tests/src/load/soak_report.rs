//! The soak's report: samples, session counts, errors, and the verdict (flat or not).

use std::collections::BTreeMap;
use std::time::Duration;

use super::process::{print_samples, Sample};
use super::soak::SoakOptions;

/// How much a card's idle DMA mappings may grow between the reference and the end of a
/// run without a leak: the card's spare-buffer pools (input and output buffers, PRP list
/// pages) may still be reaching their working size after the warm-up. They are bounded
/// by the sizes and frames in flight the run uses, not by the number of sessions: a leak
/// of one mapping per session would add thousands in a run.
const DMA_GROWTH_PER_CARD: u64 = 32;

/// The outcome of a soak run.
#[derive(Debug, Clone)]
pub struct SoakReport {
    pub options: SoakOptions,
    pub samples: Vec<Sample>,
    pub created: u64,
    pub closed_by_close: u64,
    pub closed_by_channel: u64,
    pub closed_by_disconnect: u64,
    pub frames: u64,
    /// `NoCapacity`/`QuotaExceeded` replies (expected to be none at this concurrency).
    pub refused: u64,
    /// Everything that went wrong, client side.
    pub errors: Vec<String>,
    /// The daemon's `Manager.ErrorCounts` at the end.
    pub daemon_errors: BTreeMap<String, u64>,
    /// Why the cards could not be reset after the run (administrators only), if so.
    pub reset_denied: Option<String>,
    pub load_before: String,
    pub load_after: String,
    pub elapsed: Duration,
}

impl SoakReport {
    /// The reference sample (idle after the warm-up).
    pub fn reference(&self) -> Option<&Sample> {
        self.samples.iter().find(|s| s.label == "start")
    }

    /// The last sample (idle after the run).
    pub fn end(&self) -> Option<&Sample> {
        self.samples.iter().rev().find(|s| s.label == "end")
    }

    /// Why the run is not flat; empty when it is.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (Some(a), Some(b)) = (self.reference(), self.end()) else {
            return vec!["the run has no start or end sample".into()];
        };
        if b.fds != a.fds {
            out.push(format!(
                "open descriptors {} at start, {} at end",
                a.fds, b.fds
            ));
        }
        let allowed = DMA_GROWTH_PER_CARD * u64::from(self.options.cards);
        if b.dma_mappings > a.dma_mappings + allowed {
            out.push(format!(
                "DMA mappings {} at start, {} at end: grew by more than {allowed}",
                a.dma_mappings, b.dma_mappings
            ));
        }
        // After a reset (spare buffers unmapped), the daemon holds what it held before
        // any session.
        let idle = self.samples.iter().find(|s| s.label == "idle");
        let reset = self.samples.iter().find(|s| s.label == "reset");
        if let (Some(i), Some(r)) = (idle, reset) {
            if r.fds != i.fds {
                out.push(format!(
                    "open descriptors {} before any session, {} after the run and a card reset",
                    i.fds, r.fds
                ));
            }
        }
        if b.frame_maps != 0 {
            out.push(format!(
                "{} client frame pools still mapped at end",
                b.frame_maps
            ));
        }
        if b.sessions != 0 {
            out.push(format!("{} sessions still open at end", b.sessions));
        }
        let limit = a.rss_kib + a.rss_kib * self.options.rss_tolerance_percent / 100;
        if b.rss_kib > limit {
            out.push(format!(
                "RSS {} KiB at start, {} KiB at end (more than {} %)",
                a.rss_kib, b.rss_kib, self.options.rss_tolerance_percent
            ));
        }
        if self.closed() != self.created {
            out.push(format!(
                "{} sessions created, {} closed",
                self.created,
                self.closed()
            ));
        }
        if !self.errors.is_empty() {
            out.push(format!(
                "{} errors, first: {}",
                self.errors.len(),
                self.errors[0]
            ));
        }
        out
    }

    /// Sessions ended, all ways together.
    pub fn closed(&self) -> u64 {
        self.closed_by_close + self.closed_by_channel + self.closed_by_disconnect
    }

    /// Prints the table, the counts and the verdict.
    pub fn print(&self) {
        let o = &self.options;
        println!(
            "vpud soak: {} cards, {} clients, {} workers, {:.0} s warm-up + {:.0} s run ({:.0} s in all)",
            o.cards,
            o.clients,
            o.concurrency,
            o.warmup.as_secs_f64(),
            o.duration.as_secs_f64(),
            self.elapsed.as_secs_f64()
        );
        println!(
            "machine: before {}; after {}",
            self.load_before, self.load_after
        );
        print_samples(&self.samples);
        println!(
            "sessions created {}, closed {} (Close {}, channel closed {}, client disconnected {}), frames encoded {}, refused {}",
            self.created,
            self.closed(),
            self.closed_by_close,
            self.closed_by_channel,
            self.closed_by_disconnect,
            self.frames,
            self.refused
        );
        println!("daemon error counters: {:?}", self.daemon_errors);
        if let (Some(a), Some(b)) = (self.reference(), self.end()) {
            println!(
                "start → end: RSS {} → {} KiB ({:+} KiB), fds {} → {}, DMA mappings {} → {}, frame maps {} → {}",
                a.rss_kib,
                b.rss_kib,
                b.rss_kib as i64 - a.rss_kib as i64,
                a.fds,
                b.fds,
                a.dma_mappings,
                b.dma_mappings,
                a.frame_maps,
                b.frame_maps
            );
        }
        if let Some(r) = &self.reset_denied {
            println!("no reset sample: {r}");
        }
        println!("errors: {}", self.errors.len());
        for e in self.errors.iter().take(10) {
            println!("  {e}");
        }
        let failures = self.failures();
        if failures.is_empty() {
            println!(
                "verdict: FLAT (fds equal; DMA mappings within {} per card; RSS within {} %; errors 0)",
                DMA_GROWTH_PER_CARD,
                o.rss_tolerance_percent
            );
        } else {
            println!("verdict: NOT FLAT");
            for f in failures {
                println!("  {f}");
            }
        }
    }
}
