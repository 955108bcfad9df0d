//! The surge's report: replies by kind, reply latencies, frame rates of the running
//! sessions per window, and the verdict.

use std::time::Duration;

use super::process::{print_samples, Sample};
use super::surge::SurgeOptions;

/// One running session's figures in one window.
#[derive(Debug, Clone, Copy)]
pub struct WindowRate {
    pub delivered: f64,
    pub sent: f64,
    pub longest_gap: Duration,
}

/// The outcome of a surge run.
#[derive(Debug, Clone)]
pub struct SurgeReport {
    pub options: SurgeOptions,
    /// Free sessions when the surge began.
    pub free: usize,
    pub successes: usize,
    pub no_capacity: usize,
    pub quota_exceeded: usize,
    /// Replies that were neither a session nor a typed refusal.
    pub other_errors: Vec<String>,
    /// Calls per second as issued, and the time from the first call to the last reply.
    pub issue_rate: f64,
    pub surge_time: Duration,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    /// Per running session: before, during, after.
    pub running: Vec<[WindowRate; 3]>,
    /// Per session the surge won: delivered rate after the surge.
    pub admitted_after: Vec<f64>,
    /// Failures of running or admitted sessions (data channel, close).
    pub session_errors: Vec<String>,
    pub samples: Vec<Sample>,
    pub load_before: String,
    pub load_after: String,
}

impl SurgeReport {
    /// The worst relative deviation of a running session's delivered rate from the
    /// nominal frame rate, over all windows.
    pub fn worst_deviation(&self) -> f64 {
        let fps = f64::from(self.options.fps);
        self.running
            .iter()
            .flat_map(|w| w.iter().map(|r| (r.delivered - fps).abs() / fps))
            .fold(0.0, f64::max)
    }

    /// Why the run fails on behaviour: refusals that are not typed, sessions the surge
    /// won beyond the free capacity, failed sessions. Frame-rate stability is reported by
    /// [`SurgeReport::rate_failures`].
    pub fn behaviour_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let o = &self.options;
        if !self.other_errors.is_empty() {
            out.push(format!(
                "{} replies were neither a session nor NoCapacity/QuotaExceeded, first: {}",
                self.other_errors.len(),
                self.other_errors[0]
            ));
        }
        if self.successes + self.no_capacity + self.quota_exceeded + self.other_errors.len()
            != o.calls
        {
            out.push("not every call was answered".into());
        }
        let expected = self.free.min(o.calls).min(o.clients * o.quota as usize);
        if self.successes != expected {
            out.push(format!(
                "{} sessions won by the surge, {expected} expected (free capacity {})",
                self.successes, self.free
            ));
        }
        if !self.session_errors.is_empty() {
            out.push(format!(
                "{} sessions failed, first: {}",
                self.session_errors.len(),
                self.session_errors[0]
            ));
        }
        out
    }

    /// Running sessions whose delivered rate left ±10 % of the nominal rate.
    pub fn rate_failures(&self) -> Vec<String> {
        let fps = f64::from(self.options.fps);
        let mut out = Vec::new();
        for (i, w) in self.running.iter().enumerate() {
            for (name, r) in ["before", "during", "after"].iter().zip(w) {
                if (r.delivered - fps).abs() > fps * 0.1 {
                    out.push(format!(
                        "running session {i}: {:.1} fps {name} the surge (nominal {fps})",
                        r.delivered
                    ));
                }
            }
        }
        out
    }

    /// Prints the figures and the verdict.
    pub fn print(&self) {
        let o = &self.options;
        println!(
            "vpud surge: {} card(s) × {} engines × {} sessions (paced), {}x{} at {} fps; {} running sessions, {} free",
            o.cards, o.engines, o.sessions_per_engine, o.width, o.height, o.fps, o.running, self.free
        );
        println!(
            "machine: before {}; after {}",
            self.load_before, self.load_after
        );
        println!(
            "surge: {} CreateSession calls from {} clients at {:.0}/s ({}× the normal {:.1}/s), issued at {:.0}/s; first call to last reply {:.2} s",
            o.calls,
            o.clients,
            o.normal_rate * o.factor,
            o.factor,
            o.normal_rate,
            self.issue_rate,
            self.surge_time.as_secs_f64()
        );
        println!(
            "replies: {} sessions, {} NoCapacity, {} QuotaExceeded, {} other errors; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.successes,
            self.no_capacity,
            self.quota_exceeded,
            self.other_errors.len(),
            self.latency_p50.as_secs_f64() * 1e3,
            self.latency_p99.as_secs_f64() * 1e3,
            self.latency_max.as_secs_f64() * 1e3
        );
        println!(
            "{:<8} {:>22} {:>22} {:>22}",
            "session", "before fps (gap ms)", "during fps (gap ms)", "after fps (gap ms)"
        );
        for (i, w) in self.running.iter().enumerate() {
            let cell = |r: &WindowRate| {
                format!(
                    "{:.1} ({:.0}) [sent {:.1}]",
                    r.delivered,
                    r.longest_gap.as_secs_f64() * 1e3,
                    r.sent
                )
            };
            println!(
                "{:<8} {:>22} {:>22} {:>22}",
                i,
                cell(&w[0]),
                cell(&w[1]),
                cell(&w[2])
            );
        }
        if !self.admitted_after.is_empty() {
            let rates: Vec<String> = self
                .admitted_after
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect();
            println!("sessions won by the surge, fps after: {}", rates.join(" "));
        }
        print_samples(&self.samples);
        println!(
            "worst deviation of a running session from {} fps: {:.1} %",
            o.fps,
            self.worst_deviation() * 100.0
        );
        let mut failures = self.behaviour_failures();
        failures.extend(self.rate_failures());
        if failures.is_empty() {
            println!("verdict: PASS (frame rates within ±10 %, excess refused with NoCapacity/QuotaExceeded, other errors 0)");
        } else {
            println!("verdict: FAIL");
            for f in failures {
                println!("  {f}");
            }
        }
    }
}
