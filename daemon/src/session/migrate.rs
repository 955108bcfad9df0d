//! Moving a session off a card that failed or is being reset: to another card, or, when
//! no other card can take it, back onto the same card once its reset is done.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use vpu_driver::card::{SessionConfig, SessionId};

use super::buffers::Buffers;
use super::worker::{Ending, InFlight, Worker};
use crate::channel::proto::{ErrorCode, FrameRef, FRAME_FORCE_KEYFRAME};
use crate::scheduler::{CardState, Demand};
use crate::service::changes::Change;
use crate::service::state::{lock, CardEntry, Control, Daemon, SessionEntry};
use tokio::sync::mpsc;

/// The shortest wait for a card's reset; longer when commands may take longer (a reset
/// first waits for the card's other sessions, then runs admin commands).
const RESET_WAIT_MIN: Duration = Duration::from_secs(30);

impl Worker {
    /// Announces the session's state as it is now.
    fn announce_state(&self) {
        self.daemon.changes.push(Change::SessionState {
            session: Arc::clone(&self.entry),
            state: self.entry.state_name(),
        });
    }

    /// Moves the session off its card: a new reservation and card session, the client's
    /// buffers mapped for the new card, the frames in flight resubmitted in order with the
    /// first forced to a keyframe, and `Migrated(from, to)` announced. Every frame still
    /// yields exactly one packet. When no other card can take the session and its card is
    /// being reset (or about to be), the session waits for the reset and goes back onto the
    /// same card (`Migrated` with `from` = `to`). Without any card to go to, or if the
    /// reset fails, the session ends with `card-failed`.
    pub(super) async fn migrate(
        &mut self,
        reason: &str,
        buffers: &mut Buffers,
        inflight: &mut InFlight,
    ) -> Result<(), Ending> {
        let from = Arc::clone(&self.card);
        let old_sid = self.sid;
        // What the failed card holds is abandoned; its reset cleans up.
        inflight.encodes = FuturesOrdered::new();
        let frames: Vec<FrameRef> = inflight.frames.drain(..).collect();
        for f in &frames {
            buffers.release(f.buffer_id);
        }
        let cfg = lock(&self.entry.config).clone();
        let demand = lock(&self.entry.demand).clone();
        self.entry.migrating.store(true, Ordering::Release);
        self.announce_state();
        let result = self
            .move_to_another_card(
                reason, buffers, inflight, from, old_sid, frames, cfg, demand,
            )
            .await;
        self.entry.awaiting_reset.store(false, Ordering::Release);
        self.entry.migrating.store(false, Ordering::Release);
        self.announce_state();
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn move_to_another_card(
        &mut self,
        reason: &str,
        buffers: &mut Buffers,
        inflight: &mut InFlight,
        from: Arc<CardEntry>,
        old_sid: SessionId,
        frames: Vec<FrameRef>,
        cfg: SessionConfig,
        demand: Demand,
    ) -> Result<(), Ending> {
        let failed = |why: String| Ending {
            card_fault: true,
            ..Ending::error(ErrorCode::CardFailed, format!("{reason}; {why}"))
        };
        let old_epoch = self.entry.card_epoch.load(Ordering::Acquire);
        let mut exclude = vec![from.index];
        let mut waited = false;
        let (to, sid, epoch) = loop {
            let placement = {
                let mut s = lock(&self.daemon.sched);
                s.release(self.entry.id);
                s.place(self.entry.id, &self.entry.owner, &demand, None, &exclude)
            };
            let placement = match placement {
                Ok(p) => p,
                Err(e) if waited => {
                    return Err(failed(format!(
                        "no card could take the session after the reset: {e}"
                    )))
                }
                Err(e) => {
                    if let Err(why) = self.await_reset(&from, old_epoch).await? {
                        return Err(failed(format!(
                            "no other card could take the session ({e}) and {why}"
                        )));
                    }
                    waited = true;
                    exclude.retain(|&c| c != from.index);
                    continue;
                }
            };
            let card = Arc::clone(&self.daemon.cards[placement.card]);
            // Read before the card session exists: a reset from here on wipes it.
            let epoch = card.reset_epoch();
            match card.card.create_session(&cfg).await {
                Ok(sid) => break (card, sid, epoch),
                Err(e) => {
                    tracing::warn!(card = %card.name, error = %e, "card refused the moving session");
                    lock(&self.daemon.sched).release(self.entry.id);
                    exclude.push(card.index);
                }
            }
        };
        let same_card = Arc::ptr_eq(&to, &from);
        // Back on the same card the buffers' mappings are still valid: a controller or
        // function reset does not touch the card's DMA (IOMMU) mappings, and mapping the
        // same memory again would only pin it twice.
        if !same_card {
            if let Err(e) = buffers.remap(&to.card) {
                let c = Arc::clone(&to.card);
                tokio::spawn(async move { c.destroy_session(sid).await });
                return Err(failed(format!("the session could not move: {e}")));
            }
        }
        // The old card session is destroyed unless a reset already wiped it: card session
        // ids are reused, so after a reset the old id may name a new session (this one's,
        // back on the same card, or another's).
        let old = Arc::clone(&from);
        let timeout = self.daemon.config.timeouts.command();
        tokio::spawn(async move {
            if old.reset_epoch() == old_epoch {
                let _ = tokio::time::timeout(timeout, old.card.destroy_session(old_sid)).await;
            }
        });
        self.card = Arc::clone(&to);
        self.sid = sid;
        self.entry.card.store(to.index, Ordering::Release);
        self.entry.card_session.store(sid.0, Ordering::Release);
        self.entry.card_epoch.store(epoch, Ordering::Release);
        if frames.is_empty() {
            self.entry.force_keyframe.store(true, Ordering::Release);
        }
        for (i, f) in frames.into_iter().enumerate() {
            let mut frame = f;
            if i == 0 {
                frame.flags |= FRAME_FORCE_KEYFRAME;
            }
            // The range was checked when the frame first arrived and buffers do not shrink.
            self.submit(buffers, inflight, frame, true)
                .map_err(|m| failed(format!("resubmitting: {m}")))?;
        }
        let codec = lock(&self.entry.config).codec.as_str();
        self.daemon.metrics.session_migrated(codec);
        if same_card {
            tracing::warn!(card = %to.name, resubmitted = inflight.len(), "session back on its card after the reset");
        } else {
            tracing::warn!(from = %from.name, to = %to.name, resubmitted = inflight.len(), "session moved");
        }
        self.daemon.changes.push(Change::SessionMigrated {
            session: Arc::clone(&self.entry),
            from: from.index,
            to: to.index,
        });
        Ok(())
    }

    /// Waits for card `from`'s reset; see [`await_reset`].
    async fn await_reset(
        &mut self,
        from: &CardEntry,
        created: u64,
    ) -> Result<Result<(), String>, Ending> {
        await_reset(
            &self.daemon,
            &self.entry,
            &mut self.control_rx,
            from,
            created,
        )
        .await
    }
}

/// Waits, when no other card can take the session, until card `from` is back in
/// service after a reset that wiped the session's card session (created at reset
/// epoch `created`). `Ok(Ok(()))` once it is, `Ok(Err(why))` if it will not be (the
/// reset failed, the card is draining, or no reset finished in time), `Err` if the
/// session was closed meanwhile.
pub(super) async fn await_reset(
    daemon: &Daemon,
    entry: &SessionEntry,
    control_rx: &mut mpsc::UnboundedReceiver<Control>,
    from: &CardEntry,
    created: u64,
) -> Result<Result<(), String>, Ending> {
    // Subscribe before looking at the state: a reset finishing in between still
    // shows as a changed epoch.
    let mut epochs = from.resets.subscribe();
    let wait = RESET_WAIT_MIN.max(daemon.config.timeouts.command() * 4);
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        let reset_since = *epochs.borrow_and_update() != created;
        match daemon.card_state(from.index) {
            CardState::Online if reset_since => {
                entry.awaiting_reset.store(false, Ordering::Release);
                return Ok(Ok(()));
            }
            s @ (CardState::Failed | CardState::Offline | CardState::Draining) => {
                return Ok(Err(format!("card {} is {}", from.name, s.as_str())))
            }
            // Resetting, or online with a reset asked for (the fault that moves the
            // session starts one) and about to start: wait for it to finish.
            _ => {}
        }
        if !entry.awaiting_reset.swap(true, Ordering::AcqRel) {
            tracing::info!(card = %from.name, "no other card can take the session; waiting for its card's reset");
        }
        tokio::select! {
            biased;
            c = control_rx.recv() => match c {
                // Already moving.
                Some(Control::Migrate { .. }) => {}
                Some(Control::Close(r)) => return Err(Ending::from_request(Some(r))),
                None => return Err(Ending::from_request(None)),
            },
            changed = epochs.changed() => {
                if changed.is_err() {
                    return Ok(Err(format!("card {} is gone", from.name)));
                }
            }
            _ = &mut deadline => {
                return Ok(Err(format!(
                    "card {} was not back from a reset within {} s",
                    from.name,
                    wait.as_secs()
                )))
            }
        }
    }
}
