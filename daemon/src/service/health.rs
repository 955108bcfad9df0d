//! Card health: device faults lead to a reset (sessions on the card move to other cards;
//! those no other card can take wait for the reset and go back onto the card, or end with
//! a `card-failed` error if it fails), and a monitor samples each card's measured load,
//! watches for controller fatal status, and announces changes of `Card.Errors`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vpu_driver::card::CardError;

use super::changes::Change;
use super::state::{lock, CardEntry, Daemon};
use crate::channel::proto::ErrorCode;
use crate::scheduler::CardState;

/// How long a reset waits for the card's sessions to release their resources.
const SESSIONS_END_WAIT: Duration = Duration::from_secs(5);

/// Reacts to a device fault on `card`: counts it and starts a reset in the background
/// (unless one is running).
pub fn card_fault(daemon: &Arc<Daemon>, card: usize, reason: &str) {
    let Some(entry) = daemon.cards.get(card) else {
        return;
    };
    entry.count_error("fault");
    daemon.metrics.error("card.fault");
    if daemon.shutting_down.load(Ordering::Acquire) {
        return;
    }
    let d = Arc::clone(daemon);
    let reason = reason.to_owned();
    tokio::spawn(async move {
        if let Err(e) = reset_card(&d, card, &reason).await {
            tracing::error!(card = %d.cards[card].name, error = %e, "card recovery failed");
        }
    });
}

/// Resets a card: state `resetting`; its sessions move to other cards, or, where none can
/// take them, wait for the reset (see `session::migrate`); controller reset and bring-up;
/// then back to its previous state (`online` or `draining`), or `failed`; and the card's
/// reset epoch moves on, which lets the waiting sessions go back onto the card (or end
/// with `card-failed` if it failed).
pub async fn reset_card(daemon: &Arc<Daemon>, card: usize, reason: &str) -> Result<(), CardError> {
    let entry = Arc::clone(&daemon.cards[card]);
    let Ok(_guard) = entry.reset_lock.try_lock() else {
        tracing::debug!(card = %entry.name, "reset already in progress");
        return Ok(());
    };
    let previous = lock(&daemon.sched).set_state(card, CardState::Resetting);
    tracing::warn!(card = %entry.name, reason, "resetting card");
    daemon.changes.push(Change::CardState {
        card,
        state: CardState::Resetting,
    });
    // Sessions move to other cards; those that cannot wait for this reset (they are not
    // waited for here: they wait for us).
    let epoch = entry.reset_epoch();
    let sessions = daemon.sessions_on(card);
    for s in &sessions {
        s.request_migrate(
            card,
            epoch,
            &format!("card {} is being reset ({reason})", entry.name),
        );
    }
    let deadline = tokio::time::Instant::now() + SESSIONS_END_WAIT;
    while tokio::time::Instant::now() < deadline
        && sessions.iter().any(|s| {
            s.card_index() == card
                && !*s.finished.borrow()
                && !s.awaiting_reset.load(Ordering::Acquire)
        })
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for s in daemon.sessions_on(card) {
        if s.awaiting_reset.load(Ordering::Acquire) {
            continue;
        }
        s.request_close(
            Some(ErrorCode::CardFailed),
            &format!(
                "card {} is being reset ({reason}) and the session could not move",
                entry.name
            ),
        );
        let _ = tokio::time::timeout(SESSIONS_END_WAIT, s.wait_finished()).await;
    }
    let result = entry.card.reset().await;
    let next = match (&result, previous) {
        (Ok(()), Some(CardState::Draining)) => CardState::Draining,
        (Ok(()), _) => CardState::Online,
        (Err(_), _) => CardState::Failed,
    };
    if let Err(e) = &result {
        entry.count_error("reset");
        daemon.metrics.error("card.reset");
        tracing::error!(card = %entry.name, error = %e, "reset failed; card is out of service");
    } else {
        tracing::info!(card = %entry.name, state = next.as_str(), "card reset and back");
    }
    lock(&daemon.sched).set_state(card, next);
    // After the state: a session woken by the new epoch finds the card's new state.
    entry.resets.send_modify(|e| *e += 1);
    daemon.changes.push(Change::CardState { card, state: next });
    result
}

/// How often `Card.Errors` is compared with the value last announced. It reads counters
/// only, no device.
const ERRORS_INTERVAL: Duration = Duration::from_millis(250);

/// Until the daemon stops: samples every card's engine log for the measured load and
/// checks for fatal status, every `scheduler.load_sample_interval_ms`; and announces
/// `Card.Errors` when it changed (the transport's own recoveries change it without the
/// daemon noticing), every [`ERRORS_INTERVAL`].
pub async fn monitor(daemon: Arc<Daemon>) {
    let interval = Duration::from_millis(daemon.config.scheduler.load_sample_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors_tick = tokio::time::interval(ERRORS_INTERVAL);
    errors_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first sample comes one interval after start.
    tick.tick().await;
    loop {
        let sample = tokio::select! {
            _ = tick.tick() => true,
            _ = errors_tick.tick() => false,
        };
        if daemon.shutting_down.load(Ordering::Acquire) {
            return;
        }
        if sample {
            sample_cards(&daemon, interval).await;
        } else {
            announce_errors(&daemon).await;
        }
    }
}

/// Emits `PropertiesChanged` for each card whose `Card.Errors` changed since last time.
async fn announce_errors(daemon: &Arc<Daemon>) {
    for entry in &daemon.cards {
        let now = entry.errors_total();
        if entry.errors_announced.swap(now, Ordering::AcqRel) != now {
            daemon
                .changes
                .push(Change::CardErrors { card: entry.index });
        }
    }
}

/// One sample of every card in service: its status register (a fatal status or a removed
/// device starts a reset), then, for the cards with sessions, the engine log's load. The
/// status registers are read first and the logs concurrently, so a card whose log read
/// hangs does not delay what the others report.
async fn sample_cards(daemon: &Arc<Daemon>, interval: Duration) {
    let mut busy = Vec::new();
    for entry in &daemon.cards {
        let state = daemon.card_state(entry.index);
        if !matches!(state, CardState::Online | CardState::Draining) {
            continue;
        }
        match entry.card.check_status() {
            Ok(()) => {}
            Err(e) if e.is_device_fault() => {
                card_fault(daemon, entry.index, &e.to_string());
                continue;
            }
            Err(e) => {
                daemon.metrics.error("card.status");
                tracing::debug!(card = %entry.name, error = %e, "reading the card's status failed");
            }
        }
        if lock(&daemon.sched).card_sessions(entry.index) > 0 {
            busy.push(entry);
        }
    }
    futures_util::future::join_all(busy.into_iter().map(|e| sample_load(daemon, e, interval)))
        .await;
}

/// Reads `entry`'s engine log (within `interval`) into the scheduler's measured load.
async fn sample_load(daemon: &Arc<Daemon>, entry: &CardEntry, interval: Duration) {
    match tokio::time::timeout(interval, entry.card.engine_log()).await {
        Ok(Ok(engines)) => {
            let measured: u64 = engines.iter().map(|e| u64::from(e.load)).sum();
            let changed = {
                let mut s = lock(&daemon.sched);
                let before = s.card_load(entry.index);
                s.set_measured(entry.index, measured);
                before != s.card_load(entry.index)
            };
            if changed {
                daemon.changes.card(entry.index);
            }
        }
        Ok(Err(e)) if e.is_device_fault() => card_fault(daemon, entry.index, &e.to_string()),
        Ok(Err(e)) => {
            daemon.metrics.error("card.engine-log");
            tracing::debug!(card = %entry.name, error = %e, "reading the engine log failed");
        }
        Err(_) => {
            daemon.metrics.error("card.engine-log");
            tracing::debug!(card = %entry.name, "reading the engine log timed out");
        }
    }
}
