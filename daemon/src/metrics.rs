//! Counters that tests and operators can read: errors per kind, sessions, frames.
//! Every error the daemon returns or meets is counted here under a short kind name
//! (`InvalidArgument`, `channel.malformed-record`, `card.encode`, …).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The daemon's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    errors: Mutex<BTreeMap<String, u64>>,
    pub sessions_created: AtomicU64,
    pub sessions_closed: AtomicU64,
    pub sessions_migrated: AtomicU64,
    pub frames_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Metrics {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: &str) {
        if let Ok(mut map) = self.errors.lock() {
            *map.entry(kind.to_owned()).or_insert(0) += 1;
        }
    }

    /// How many errors of `kind` were counted.
    pub fn errors(&self, kind: &str) -> u64 {
        self.errors
            .lock()
            .ok()
            .and_then(|m| m.get(kind).copied())
            .unwrap_or(0)
    }

    /// Every error counter.
    pub fn error_counts(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
