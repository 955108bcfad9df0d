//! The surge: `running` sessions encode at their real frame rate on paced emulated cards
//! (the card's capacity is its declared pixel rate and session count, not the host CPU's),
//! while `clients` other clients fire `CreateSession` at `factor` × the normal arrival
//! rate. Every reply is classified (success, `NoCapacity`, `QuotaExceeded`, anything
//! else); sessions the surge wins start encoding at the same frame rate. Each running
//! session's delivered frame rate is measured before, during and after the surge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{watch, Mutex};
use tokio::time::MissedTickBehavior;
use vpu_driver::media::TestPattern;
use vpud::client::{Client, ClientError, Session, SessionParams};

use super::process::{machine_load, print_samples, Sample, VpudProcess};

/// What a surge run does.
#[derive(Debug, Clone)]
pub struct SurgeOptions {
    pub cards: u32,
    /// Engines per card.
    pub engines: u8,
    /// Sessions one engine accepts (the card's capacity, with the pixel rate set so that
    /// one more session than this would still fit: engines stay below full load).
    pub sessions_per_engine: u16,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Sessions encoding before the surge, each from a client of its own.
    pub running: usize,
    /// Normal arrival rate of `CreateSession`, calls per second.
    pub normal_rate: f64,
    /// The surge's rate as a multiple of the normal rate.
    pub factor: f64,
    /// `CreateSession` calls in the surge.
    pub calls: usize,
    /// Clients the surge's calls come from (round robin).
    pub clients: usize,
    /// Sessions one client may hold (`[quotas] sessions_per_client`).
    pub quota: u32,
    /// Measured windows before and after the surge (after a warm-up of `warmup`).
    pub warmup: Duration,
    pub before: Duration,
    pub after: Duration,
}

impl Default for SurgeOptions {
    fn default() -> Self {
        SurgeOptions {
            cards: 1,
            engines: 2,
            sessions_per_engine: 4,
            width: 176,
            height: 144,
            fps: 30,
            running: 4,
            normal_rate: 2.0,
            factor: 100.0,
            calls: 300,
            clients: 30,
            quota: 1,
            warmup: Duration::from_secs(3),
            before: Duration::from_secs(5),
            after: Duration::from_secs(5),
        }
    }
}

impl SurgeOptions {
    /// Sessions all cards accept together.
    pub fn capacity(&self) -> usize {
        self.cards as usize * usize::from(self.engines) * usize::from(self.sessions_per_engine)
    }

    /// The daemon's configuration for this run.
    fn config(&self) -> String {
        let luma_rate = u64::from(self.width) * u64::from(self.height) * u64::from(self.fps);
        format!(
            "[vfio]\nenabled = false\n\
             [scheduler]\nmeasured_load_weight = 0.0\n\
             [quotas]\nsessions_per_client = {}\n\
             [emulated]\nengines = {}\npace = true\nmax_sessions_per_engine = {}\n\
             pixel_rate_per_engine = {}\n",
            self.quota,
            self.engines,
            self.sessions_per_engine,
            luma_rate * (u64::from(self.sessions_per_engine) + 1)
        )
    }
}

/// Packet and frame times of one session.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    pub sent: Vec<Instant>,
    pub packets: Vec<Instant>,
    pub error: Option<String>,
}

impl Timeline {
    /// Packets per second delivered in `[from, to)`.
    pub fn rate(&self, from: Instant, to: Instant) -> f64 {
        let n = self
            .packets
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count();
        n as f64 / to.duration_since(from).as_secs_f64().max(1e-3)
    }

    /// Frames per second sent in `[from, to)`.
    pub fn sent_rate(&self, from: Instant, to: Instant) -> f64 {
        let n = self.sent.iter().filter(|t| **t >= from && **t < to).count();
        n as f64 / to.duration_since(from).as_secs_f64().max(1e-3)
    }

    /// The longest time between two packets in `[from, to)`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let inside: Vec<Instant> = self
            .packets
            .iter()
            .copied()
            .filter(|t| *t >= from && *t < to)
            .collect();
        inside
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    }
}

/// A measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub name: &'static str,
    pub from: Instant,
    pub to: Instant,
}

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

/// A session encoding at its frame rate until told to stop.
struct Runner {
    task: tokio::task::JoinHandle<Timeline>,
}

fn start_runner(
    mut session: Session,
    frames: Arc<Vec<Vec<u8>>>,
    fps: u32,
    mut stop: watch::Receiver<bool>,
) -> Runner {
    let task = tokio::spawn(async move {
        let mut tl = Timeline::default();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(fps)));
        // A live source holds frames it could not hand over in time and sends them late.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut pts = 0u64;
        let result: Result<()> = async {
            loop {
                let waiting = {
                    let c = session.counters();
                    c.packets < c.frames_sent
                };
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    p = session.next_packet(), if waiting => {
                        if p?.is_some() {
                            tl.packets.push(Instant::now());
                        }
                    }
                    _ = tick.tick() => {
                        let frame = &frames[(pts as usize) % frames.len()];
                        session.send_frame(frame, pts, false).await?;
                        tl.sent.push(Instant::now());
                        pts += 1;
                        let now = Instant::now();
                        tl.packets.extend(session.ready_packets().map(|_| now));
                    }
                }
            }
            session.close().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tl.error = Some(format!("{e:#}"));
        }
        tl
    });
    Runner { task }
}

/// Runs a surge against a new `vpud` process.
pub async fn run(options: SurgeOptions) -> Result<SurgeReport> {
    let started = Instant::now();
    let load_before = machine_load();
    let vpud = VpudProcess::start(options.cards, &options.config()).await?;
    let monitor = Client::connect(Some(vpud.address())).await?;
    let pattern = TestPattern::new(options.width, options.height);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new((0..30).map(|n| pattern.frame(n)).collect());
    let mut params = SessionParams::h264(options.width, options.height, options.fps);
    params.bitrate = Some(300_000);
    let mut samples = vec![vpud.sample(&monitor, "idle", started).await?];

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    let mut keep = Vec::new();
    for i in 0..options.running {
        let client = Client::connect(Some(vpud.address())).await?;
        let session = client
            .create_session(&params)
            .await
            .with_context(|| format!("creating running session {i}"))?;
        running.push(start_runner(
            session,
            Arc::clone(&frames),
            options.fps,
            stop_rx.clone(),
        ));
        keep.push(client);
    }
    let mut surge_clients = Vec::new();
    for _ in 0..options.clients.max(1) {
        surge_clients.push(Client::connect(Some(vpud.address())).await?);
    }
    let free = options
        .capacity()
        .saturating_sub(monitor.manager_info().await?.sessions);
    tokio::time::sleep(options.warmup).await;
    let before_from = Instant::now();
    tokio::time::sleep(options.before).await;
    samples.push(vpud.sample(&monitor, "before", started).await?);

    // The surge.
    let interval = Duration::from_secs_f64(1.0 / (options.normal_rate * options.factor));
    let surge_start = Instant::now();
    let results = Arc::new(Mutex::new(Vec::new()));
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let mut calls = Vec::new();
    let mut last_issue = surge_start;
    for i in 0..options.calls {
        tokio::time::sleep_until((surge_start + interval * i as u32).into()).await;
        last_issue = Instant::now();
        let client = surge_clients[i % surge_clients.len()].clone();
        let params = params.clone();
        let results = Arc::clone(&results);
        let admitted = Arc::clone(&admitted);
        let frames = Arc::clone(&frames);
        let stop = stop_rx.clone();
        let fps = options.fps;
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client.create_session(&params).await;
            let latency = t.elapsed();
            let outcome = match r {
                Ok(session) => {
                    admitted
                        .lock()
                        .await
                        .push(start_runner(session, frames, fps, stop));
                    Ok(())
                }
                Err(e) => Err(e),
            };
            results
                .lock()
                .await
                .push((latency, Instant::now(), outcome));
        }));
    }
    for c in calls {
        c.await?;
    }
    let issue_span = last_issue.duration_since(surge_start).as_secs_f64();
    let results = std::mem::take(&mut *results.lock().await);
    let last_reply = results.iter().map(|r| r.1).max().unwrap_or(surge_start);
    // At least a second, so that a rate over the window means something.
    let during_to = last_reply.max(surge_start + Duration::from_secs(1));
    samples.push(vpud.sample(&monitor, "surge", started).await?);
    tokio::time::sleep_until(during_to.into()).await;
    let after_from = Instant::now();
    tokio::time::sleep(options.after).await;
    let after_to = Instant::now();
    samples.push(vpud.sample(&monitor, "after", started).await?);
    let _ = stop_tx.send(true);

    let windows = [
        Window {
            name: "before",
            from: before_from,
            to: surge_start,
        },
        Window {
            name: "during",
            from: surge_start,
            to: during_to,
        },
        Window {
            name: "after",
            from: after_from,
            to: after_to,
        },
    ];
    let mut session_errors = Vec::new();
    let mut running_rates = Vec::new();
    for (i, r) in running.into_iter().enumerate() {
        let tl = r.task.await?;
        if let Some(e) = &tl.error {
            session_errors.push(format!("running session {i}: {e}"));
        }
        running_rates.push(windows.map(|w| WindowRate {
            delivered: tl.rate(w.from, w.to),
            sent: tl.sent_rate(w.from, w.to),
            longest_gap: tl.longest_gap(w.from, w.to),
        }));
    }
    let mut admitted_after = Vec::new();
    for (i, r) in std::mem::take(&mut *admitted.lock().await)
        .into_iter()
        .enumerate()
    {
        let tl = r.task.await?;
        if let Some(e) = &tl.error {
            session_errors.push(format!("admitted session {i}: {e}"));
        }
        admitted_after.push(tl.rate(after_from, after_to));
    }

    let mut successes = 0;
    let mut no_capacity = 0;
    let mut quota_exceeded = 0;
    let mut other_errors = Vec::new();
    let mut latencies = Vec::new();
    for (latency, _, outcome) in &results {
        latencies.push(*latency);
        match outcome {
            Ok(()) => successes += 1,
            Err(ClientError::NoCapacity(_)) => no_capacity += 1,
            Err(ClientError::QuotaExceeded(_)) => quota_exceeded += 1,
            Err(e) => other_errors.push(format!("{e:#}")),
        }
    }
    latencies.sort();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    drop(keep);
    drop(surge_clients);
    Ok(SurgeReport {
        free,
        successes,
        no_capacity,
        quota_exceeded,
        other_errors,
        issue_rate: if issue_span > 0.0 {
            (options.calls.saturating_sub(1)) as f64 / issue_span
        } else {
            0.0
        },
        surge_time: last_reply.duration_since(surge_start),
        latency_p50: pct(0.5),
        latency_p99: pct(0.99),
        latency_max: latencies.last().copied().unwrap_or_default(),
        running: running_rates,
        admitted_after,
        session_errors,
        samples,
        load_before,
        load_after: machine_load(),
        options,
    })
}
