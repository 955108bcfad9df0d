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
use vpud_client::{Client, ClientError, Session, SessionParams};

use super::process::{machine_load, VpudProcess};
pub use super::surge_report::{SurgeReport, WindowRate};

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
                        let Some(frame) = frames.get((pts as usize) % frames.len().max(1)) else {
                            anyhow::bail!("no frames to send");
                        };
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
