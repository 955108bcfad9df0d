//! Counters of the transport, readable by tests and the daemon.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one controller. Every error the transport sees is counted here.
#[derive(Debug, Default)]
pub struct NvmeMetrics {
    /// Commands submitted (admin and I/O).
    pub commands: AtomicU64,
    /// Completion entries rejected as protocol violations.
    pub protocol_errors: AtomicU64,
    /// Of `protocol_errors`, the entries that named no command in flight: dropped, with
    /// nobody to tell (the others fail their command).
    pub stray_completions: AtomicU64,
    /// Commands whose timeout passed.
    pub timeouts: AtomicU64,
    /// Abort commands sent for timed-out commands.
    pub aborts: AtomicU64,
    /// Completions of commands that had already timed out, discarded.
    pub late_completions: AtomicU64,
    /// Times completions were found by a sweep of a silent vector or by the check at a
    /// command timeout instead of by their interrupt.
    pub lost_interrupts: AtomicU64,
    /// Controller resets (disable and bring-up again).
    pub resets: AtomicU64,
}

/// A copy of [`NvmeMetrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NvmeMetricsSnapshot {
    pub commands: u64,
    pub protocol_errors: u64,
    pub stray_completions: u64,
    pub timeouts: u64,
    pub aborts: u64,
    pub late_completions: u64,
    pub lost_interrupts: u64,
    pub resets: u64,
}

impl NvmeMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> NvmeMetricsSnapshot {
        NvmeMetricsSnapshot {
            commands: self.commands.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            stray_completions: self.stray_completions.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            aborts: self.aborts.load(Ordering::Relaxed),
            late_completions: self.late_completions.load(Ordering::Relaxed),
            lost_interrupts: self.lost_interrupts.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
        }
    }
}
