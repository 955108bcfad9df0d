//! Card health: device faults lead to a reset (sessions on the card move to other cards,
//! or end with a `card-failed` error where none can take them), and a monitor samples each card's measured load and watches for
//! controller fatal status.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vpu_driver::card::CardError;

use super::state::{lock, Daemon};
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
    entry.errors.fetch_add(1, Ordering::Relaxed);
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

/// Resets a card: state `resetting`, its sessions end, controller reset and bring-up,
/// then back to its previous state (`online` or `draining`), or `failed`.
pub async fn reset_card(daemon: &Arc<Daemon>, card: usize, reason: &str) -> Result<(), CardError> {
    let entry = Arc::clone(&daemon.cards[card]);
    let Ok(_guard) = entry.reset_lock.try_lock() else {
        tracing::debug!(card = %entry.name, "reset already in progress");
        return Ok(());
    };
    let previous = lock(&daemon.sched).set_state(card, CardState::Resetting);
    tracing::warn!(card = %entry.name, reason, "resetting card");
    crate::dbus::signals::card_state(daemon, card).await;
    // Sessions move to other cards; those that cannot end with `card-failed`.
    let sessions = daemon.sessions_on(card);
    for s in &sessions {
        s.request_migrate(
            card,
            &format!("card {} is being reset ({reason})", entry.name),
        );
    }
    let deadline = tokio::time::Instant::now() + SESSIONS_END_WAIT;
    while tokio::time::Instant::now() < deadline
        && sessions
            .iter()
            .any(|s| s.card_index() == card && !*s.finished.borrow())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for s in daemon.sessions_on(card) {
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
        entry.errors.fetch_add(1, Ordering::Relaxed);
        daemon.metrics.error("card.reset");
        tracing::error!(card = %entry.name, error = %e, "reset failed; card is out of service");
    } else {
        tracing::info!(card = %entry.name, state = next.as_str(), "card reset and back");
    }
    lock(&daemon.sched).set_state(card, next);
    crate::dbus::signals::card_state(daemon, card).await;
    crate::dbus::signals::card_load(daemon, card).await;
    result
}

/// Samples every card's engine log for the measured load and checks for fatal status,
/// every `scheduler.load_sample_interval_ms`, until the daemon stops.
pub async fn monitor(daemon: Arc<Daemon>) {
    let interval = Duration::from_millis(daemon.config.scheduler.load_sample_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first sample comes one interval after start.
    tick.tick().await;
    loop {
        tick.tick().await;
        if daemon.shutting_down.load(Ordering::Acquire) {
            return;
        }
        for entry in &daemon.cards {
            let state = daemon.card_state(entry.index);
            if !matches!(state, CardState::Online | CardState::Draining) {
                continue;
            }
            if entry.card.fatal() {
                card_fault(&daemon, entry.index, "controller fatal status");
                continue;
            }
            if lock(&daemon.sched).card_sessions(entry.index) == 0 {
                continue;
            }
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
                        crate::dbus::signals::card_load(&daemon, entry.index).await;
                    }
                }
                Ok(Err(e)) if e.is_device_fault() => {
                    card_fault(&daemon, entry.index, &e.to_string())
                }
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
    }
}
