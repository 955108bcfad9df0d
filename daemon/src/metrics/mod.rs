//! The daemon's counters, and their Prometheus exposition.
//!
//! [`Metrics`] holds what the daemon counts as it works: errors per kind (every error the
//! daemon returns or meets, under a short kind name: `InvalidArgument`,
//! `channel.malformed-record`, `card.encode`, …), sessions created, closed, migrated and
//! refused, frames in, packets and bytes out, and the encode latency of each frame. Tests
//! and `Manager.ErrorCounts` read them directly; the same counters are registered in a
//! `prometheus-client` registry ([`exposition`]), together with figures read from the
//! daemon's state at scrape time (cards' load, capacity, state, sessions, errors and
//! resets), and served over HTTP when `[metrics] enabled = true` ([`http`]).
//!
//! Session and frame counters carry a `codec` label (the session's codec as the API spells
//! it), so that sessions of new codecs and kinds appear as new label values, not new
//! names. What a session updates per frame is looked up once, when it is created
//! ([`SessionMetrics`]): counting a frame is an atomic add, and timing it (only while the
//! endpoint is on) one clock read on arrival and a histogram update on completion.

pub mod exposition;
pub mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Label set of the per-codec families: `[("codec", "h264")]`.
pub type CodecLabel = [(&'static str, &'static str); 1];

/// Upper bounds of the encode latency histogram's buckets, in seconds: from 1 ms (a small
/// frame on an idle engine) to 5 s (the default command timeout: a frame that took longer
/// went through a card reset and a migration).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.012, 0.016, 0.025, 0.033, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The daemon's counters.
#[derive(Debug)]
pub struct Metrics {
    errors: Mutex<BTreeMap<String, u64>>,
    /// Totals over every codec, for readers inside the daemon (the memory trimmer watches
    /// `sessions_closed`) and tests.
    pub sessions_created: AtomicU64,
    pub sessions_closed: AtomicU64,
    pub sessions_migrated: AtomicU64,
    pub frames_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// The same per codec, as exposed.
    pub(crate) created: Family<CodecLabel, Counter>,
    pub(crate) closed: Family<CodecLabel, Counter>,
    pub(crate) migrated: Family<CodecLabel, Counter>,
    /// `CreateSession` calls that failed, per D-Bus error name (`NoCapacity`, …).
    pub(crate) refused: Family<[(&'static str, &'static str); 1], Counter>,
    pub(crate) frames: Family<CodecLabel, Counter>,
    pub(crate) packets: Family<CodecLabel, Counter>,
    pub(crate) bytes: Family<CodecLabel, Counter>,
    /// Frame in (its record read from the data channel) to packet out (the packet's last
    /// record sent), in seconds.
    pub(crate) latency: Family<CodecLabel, Histogram, fn() -> Histogram>,
    /// Whether sessions time their frames: only while someone can read the histogram.
    timing: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

impl Metrics {
    /// Counters; `timing`: record each frame's encode latency (the endpoint is on).
    pub fn new(timing: bool) -> Metrics {
        Metrics {
            errors: Mutex::default(),
            sessions_created: AtomicU64::new(0),
            sessions_closed: AtomicU64::new(0),
            sessions_migrated: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            created: Family::default(),
            closed: Family::default(),
            migrated: Family::default(),
            refused: Family::default(),
            frames: Family::default(),
            packets: Family::default(),
            bytes: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            timing,
        }
    }

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

    /// Whether sessions time their frames.
    pub fn timing(&self) -> bool {
        self.timing
    }

    /// Creates the series of `codecs` (those the cards encode) at zero, so that they are
    /// exposed (and `rate()` works) before the first session of each.
    pub fn prepare_codecs(&self, codecs: impl IntoIterator<Item = &'static str>) {
        for codec in codecs {
            let label = [("codec", codec)];
            for family in [
                &self.created,
                &self.closed,
                &self.migrated,
                &self.frames,
                &self.packets,
                &self.bytes,
            ] {
                drop(family.get_or_create(&label));
            }
            if self.timing {
                drop(self.latency.get_or_create(&label));
            }
        }
    }

    /// Creates the refusal series of every `reason` (the API's error names) at zero.
    pub fn prepare_refusals<'a>(&self, reasons: impl IntoIterator<Item = &'a &'static str>) {
        for reason in reasons {
            drop(self.refused.get_or_create(&[("reason", *reason)]));
        }
    }

    /// Counts a new session of `codec`; returns the counters it updates per frame.
    pub fn session_created(&self, codec: &'static str) -> SessionMetrics {
        Metrics::add(&self.sessions_created, 1);
        let label = [("codec", codec)];
        self.created.get_or_create(&label).inc();
        SessionMetrics {
            frames_in: self.frames.get_or_create_owned(&label),
            packets_out: self.packets.get_or_create_owned(&label),
            bytes_out: self.bytes.get_or_create_owned(&label),
            latency: self
                .timing
                .then(|| self.latency.get_or_create_owned(&label)),
        }
    }

    /// Counts a session of `codec` that ended.
    pub fn session_closed(&self, codec: &'static str) {
        Metrics::add(&self.sessions_closed, 1);
        self.closed.get_or_create(&[("codec", codec)]).inc();
    }

    /// Counts a session of `codec` that moved to another card (or back onto its card
    /// after a reset).
    pub fn session_migrated(&self, codec: &'static str) {
        Metrics::add(&self.sessions_migrated, 1);
        self.migrated.get_or_create(&[("codec", codec)]).inc();
    }

    /// Counts a `CreateSession` that failed with the D-Bus error `reason` (`NoCapacity`,
    /// `QuotaExceeded`, …).
    pub fn session_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Sessions refused with `reason` so far.
    pub fn sessions_refused(&self, reason: &'static str) -> u64 {
        self.refused
            .get(&[("reason", reason)])
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

/// What one session updates per frame, looked up once when it is created.
#[derive(Debug, Clone)]
pub struct SessionMetrics {
    frames_in: Counter,
    packets_out: Counter,
    bytes_out: Counter,
    /// `None` while the endpoint is off: frames are then not timed at all.
    latency: Option<Histogram>,
}

impl SessionMetrics {
    /// Counts a frame received; its arrival time if frames are timed.
    pub fn frame_in(&self, daemon: &Metrics) -> Option<std::time::Instant> {
        Metrics::add(&daemon.frames_in, 1);
        self.frames_in.inc();
        self.latency.as_ref().map(|_| std::time::Instant::now())
    }

    /// Counts a packet of `bytes` sent, for a frame that arrived at `arrived`.
    pub fn packet_out(&self, daemon: &Metrics, bytes: u64, arrived: Option<std::time::Instant>) {
        Metrics::add(&daemon.packets_out, 1);
        Metrics::add(&daemon.bytes_out, bytes);
        self.packets_out.inc();
        self.bytes_out.inc_by(bytes);
        if let (Some(h), Some(t)) = (&self.latency, arrived) {
            h.observe(t.elapsed().as_secs_f64());
        }
    }
}
