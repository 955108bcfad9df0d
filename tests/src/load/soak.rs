//! The soak: for a fixed time, several workers keep creating sessions of varied sizes,
//! frame rates, bit rates and GOPs from a few client connections, encode a handful of
//! small frames on each through the data channel, and end them in turn by
//! `Session.Close`, by closing the data channel, or by closing the client's bus
//! connection. The daemon's resources are sampled while idle before any load, while idle
//! after a warm-up run (the reference), periodically under load, and while idle at the
//! end; the run is flat when the end matches the reference.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vpu_driver::media::TestPattern;
use vpud_client::{Client, ClientError, SessionParams};
use zbus::OwnedObjectPath;

use super::process::{machine_load, sample_pid, VpudProcess};
pub use super::soak_report::SoakReport;

/// What a soak run does.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Length of the measured run (after the warm-up).
    pub duration: Duration,
    /// Length of the warm-up run whose idle aftermath is the reference sample.
    pub warmup: Duration,
    /// Emulated cards.
    pub cards: u32,
    /// Long-lived client connections shared by the workers (sessions ended by closing
    /// the connection use a connection of their own).
    pub clients: usize,
    /// Workers, each with at most one session open at a time.
    pub concurrency: usize,
    /// Time between samples under load.
    pub sample_every: Duration,
    /// Allowed RSS growth from the reference to the end, percent of the reference.
    pub rss_tolerance_percent: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(600),
            warmup: Duration::from_secs(30),
            cards: 2,
            clients: 4,
            concurrency: 8,
            sample_every: Duration::from_secs(30),
            rss_tolerance_percent: 10,
        }
    }
}

/// How a session is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ending {
    /// `Session.Close`, then the channel is dropped.
    Close,
    /// The data channel is closed; nothing is said over D-Bus.
    Channel,
    /// The client's bus connection is closed with the channel still open.
    Disconnect,
}

const ENDINGS: [Ending; 3] = [Ending::Close, Ending::Channel, Ending::Disconnect];
const SIZES: [(u32, u32); 5] = [(160, 120), (176, 144), (128, 96), (240, 160), (320, 240)];
const RATES: [u32; 4] = [30, 25, 60, 15];
const BITRATES: [u32; 4] = [150_000, 400_000, 1_000_000, 80_000];
const GOPS: [u32; 3] = [30, 5, 60];

/// Counters of a run, shared by the workers.
#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    closed_by_close: AtomicU64,
    closed_by_channel: AtomicU64,
    closed_by_disconnect: AtomicU64,
    frames: AtomicU64,
    refused: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, what: String) {
        if let Ok(mut e) = self.errors.lock() {
            e.push(what);
        }
    }
}

/// Shared by the workers of one run.
struct Ctx {
    address: String,
    clients: Vec<Client>,
    monitor: Client,
    counters: Counters,
    patterns: BTreeMap<(u32, u32), Vec<Vec<u8>>>,
}

/// Runs a soak against a new `vpud` process.
pub async fn run(options: SoakOptions) -> Result<SoakReport> {
    let started = Instant::now();
    let load_before = machine_load();
    // Admission is by the model only, so that a slow machine does not turn sessions away.
    let config = "[vfio]\nenabled = false\n[scheduler]\nmeasured_load_weight = 0.0\n";
    let mut vpud = VpudProcess::start(options.cards, config).await?;
    let monitor = Client::connect(Some(vpud.address())).await?;
    let mut clients = Vec::new();
    for _ in 0..options.clients.max(1) {
        clients.push(Client::connect(Some(vpud.address())).await?);
    }
    let patterns = SIZES
        .iter()
        .map(|&(w, h)| {
            let p = TestPattern::new(w, h);
            ((w, h), (0..8).map(|n| p.frame(n * 3)).collect())
        })
        .collect();
    let ctx = Arc::new(Ctx {
        address: vpud.address().to_owned(),
        clients,
        monitor,
        counters: Counters::default(),
        patterns,
    });
    let mut samples = vec![vpud.sample(&ctx.monitor, "idle", started).await?];

    // Warm-up: allocator arenas, encoder code and the bus reach their working size.
    run_workers(&ctx, options.concurrency, options.warmup, None).await;
    quiesce(&ctx, vpud.pid()).await?;
    samples.push(vpud.sample(&ctx.monitor, "start", started).await?);

    let samples = Arc::new(Mutex::new(samples));
    let (shared, sctx, every, pid) = (
        Arc::clone(&samples),
        Arc::clone(&ctx),
        options.sample_every,
        vpud.pid(),
    );
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampling = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    _ = tick.tick() => {
                        match sample_pid(pid, &sctx.monitor, "load", started).await {
                            Ok(s) => if let Ok(mut v) = shared.lock() { v.push(s) },
                            Err(e) => sctx.counters.error(format!("sampling: {e:#}")),
                        }
                    }
                }
            }
        })
    };
    run_workers(
        &ctx,
        options.concurrency,
        options.duration,
        Some(&ctx.counters),
    )
    .await;
    stop.notify_one();
    let _ = sampling.await;
    quiesce(&ctx, vpud.pid()).await?;
    let end = vpud.sample(&ctx.monitor, "end", started).await?;
    if !vpud.alive() {
        ctx.counters.error("vpud exited during the run".into());
    }
    let daemon_errors = ctx
        .monitor
        .manager()
        .inner()
        .get_property::<std::collections::HashMap<String, u64>>("ErrorCounts")
        .await
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let mut samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
    samples.push(end);
    // A reset unmaps the cards' spare input and output buffers (the PRP list pages a
    // controller keeps stay): the sample after it shows what the spares held.
    let mut reset_denied = None;
    for card in ctx.monitor.card_paths().await? {
        if let Err(e) = ctx.monitor.card_proxy(&card).await?.reset().await {
            reset_denied = Some(format!("Card.Reset of {}: {e}", card.as_str()));
            break;
        }
    }
    if reset_denied.is_none() {
        samples.push(vpud.sample(&ctx.monitor, "reset", started).await?);
    }
    let c = &ctx.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(SoakReport {
        options,
        samples,
        created: get(&c.created),
        closed_by_close: get(&c.closed_by_close),
        closed_by_channel: get(&c.closed_by_channel),
        closed_by_disconnect: get(&c.closed_by_disconnect),
        frames: get(&c.frames),
        refused: get(&c.refused),
        errors: c.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        daemon_errors,
        reset_denied,
        load_before,
        load_after: machine_load(),
        elapsed: started.elapsed(),
    })
}

/// Runs `workers` workers for `time`; counts into the run's counters only when `counted`
/// (the warm-up's sessions are not part of the figures, but its errors are).
async fn run_workers(ctx: &Arc<Ctx>, workers: usize, time: Duration, counted: Option<&Counters>) {
    let until = Instant::now() + time;
    let scratch = Arc::new(Counters::default());
    let count_into_run = counted.is_some();
    let mut tasks = Vec::new();
    for id in 0..workers.max(1) {
        let ctx = Arc::clone(ctx);
        let scratch = Arc::clone(&scratch);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let counters = if count_into_run {
                    &ctx.counters
                } else {
                    &*scratch
                };
                if let Err(e) = one_session(&ctx, counters, id, n).await {
                    ctx.counters
                        .error(format!("worker {id} session {n}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            ctx.counters.error(format!("worker task failed: {e}"));
        }
    }
}

/// Creates one session, encodes a few frames on it and ends it.
async fn one_session(ctx: &Ctx, counters: &Counters, worker: usize, n: u64) -> Result<()> {
    let pick = worker as u64 * 7 + n;
    let (w, h) = SIZES[(pick % SIZES.len() as u64) as usize];
    let mut params = SessionParams::h264(w, h, RATES[(pick / 5 % 4) as usize]);
    params.bitrate = Some(BITRATES[(pick / 3 % 4) as usize]);
    params.gop = Some(GOPS[(pick % 3) as usize]);
    let ending = ENDINGS[((worker as u64 + n) % 3) as usize];
    let own;
    let client = match ending {
        Ending::Disconnect => {
            own = Client::connect(Some(&ctx.address)).await?;
            &own
        }
        _ => &ctx.clients[(pick as usize) % ctx.clients.len()],
    };
    let mut session = match client.create_session(&params).await {
        Ok(s) => s,
        Err(ClientError::NoCapacity(_) | ClientError::QuotaExceeded(_)) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    counters.created.fetch_add(1, Ordering::Relaxed);
    let frames = ctx
        .patterns
        .get(&(w, h))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let count = 2 + (pick % 7);
    for pts in 0..count {
        let Some(frame) = frames.get((pts as usize) % frames.len().max(1)) else {
            bail!("no frames of {w}x{h}");
        };
        session.send_frame(frame, pts, false).await?;
    }
    let mut got = Vec::new();
    while (got.len() as u64) < count {
        match session.next_packet().await? {
            Some(p) => got.push(p.pts),
            None => bail!(
                "{}: {} packets for {count} frames",
                session.path().as_str(),
                got.len()
            ),
        }
    }
    if got != (0..count).collect::<Vec<_>>() {
        bail!("{}: packets out of order: {got:?}", session.path().as_str());
    }
    counters.frames.fetch_add(count, Ordering::Relaxed);
    let path = session.path().clone();
    match ending {
        Ending::Close => {
            session.close().await?;
            counters.closed_by_close.fetch_add(1, Ordering::Relaxed);
        }
        Ending::Channel => {
            drop(session);
            counters.closed_by_channel.fetch_add(1, Ordering::Relaxed);
        }
        Ending::Disconnect => {
            client.connection().clone().close().await?;
            gone(&ctx.monitor, &path).await?;
            drop(session);
            counters
                .closed_by_disconnect
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Waits until the daemon no longer lists `path` (its owner left the bus).
async fn gone(monitor: &Client, path: &OwnedObjectPath) -> Result<()> {
    let start = Instant::now();
    loop {
        let open = monitor.manager().sessions().await?;
        if !open.contains(path) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "{} still open 20 s after its client left the bus",
                path.as_str()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no session is open, every frame pool is unmapped and the daemon has had
/// time to trim its heap, so that a sample sees the idle daemon.
async fn quiesce(ctx: &Ctx, pid: u32) -> Result<()> {
    let start = Instant::now();
    loop {
        if ctx.monitor.manager().sessions().await?.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("sessions still open 30 s after the workers stopped");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sessions leave the list before their task has released everything; a leak shows
    // as frame pools that stay mapped (and fails the run's verdict).
    while start.elapsed() < Duration::from_secs(40) {
        let s = sample_pid(pid, &ctx.monitor, "idle", Instant::now()).await?;
        if s.frame_maps == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An idle daemon gives the heap its sessions freed back within one trim period.
    tokio::time::sleep(vpud::service::memory::TRIM_EVERY + Duration::from_secs(1)).await;
    Ok(())
}
