//! Moving a whole ladder off a card that failed or is being reset: a new placement and
//! card sessions for the decoder and every encoder on one other card (or back on the same
//! card after its reset), the kept access units since the IDR before the oldest picture
//! not yet sent decoded again there, the pictures already sent dropped, and every
//! rendition restarting with a keyframe on the same picture. Every input picture still
//! comes out of every rendition once, in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ladder::CardLadder;
use super::worker::TranscodeWorker;
use crate::channel::proto::ErrorCode;
use crate::metrics::Metrics;
use crate::service::changes::Change;
use crate::service::state::lock;
use crate::session::buffers::Buffers;
use crate::session::migrate::await_reset;
use crate::session::worker::Ending;

impl TranscodeWorker {
    fn announce_state(&self) {
        self.daemon.changes.push(Change::SessionState {
            session: Arc::clone(&self.entry),
            state: self.entry.state_name(),
        });
    }

    /// Moves the ladder off its card (see the module's documentation). Without any card
    /// to go to, or if the reset fails, the session ends with `card-failed`.
    pub(super) async fn migrate(
        &mut self,
        reason: &str,
        buffers: &mut Buffers,
    ) -> Result<(), Ending> {
        self.entry.migrating.store(true, Ordering::Release);
        self.announce_state();
        // What was on the old card ends there (failed with it, or aborted once its
        // sessions are destroyed) and releases its frames; its pictures are made again.
        let stale = std::mem::take(&mut self.in_flight);
        let timeout = self.daemon.config.timeouts.command();
        tokio::spawn(async move { stale.finish(timeout).await });
        let result = self.move_ladder(reason, buffers).await;
        self.entry.awaiting_reset.store(false, Ordering::Release);
        self.entry.migrating.store(false, Ordering::Release);
        self.announce_state();
        result
    }

    async fn move_ladder(&mut self, reason: &str, buffers: &mut Buffers) -> Result<(), Ending> {
        let failed = |why: String| Ending {
            card_fault: true,
            ..Ending::error(ErrorCode::CardFailed, format!("{reason}; {why}"))
        };
        let Some(restart) = self.history.restart(self.decoded) else {
            return Err(failed(
                "the input had no IDR for too long to be decoded again on another card".into(),
            ));
        };
        let from = self.ladder.clone();
        let demand = self.req.ladder_demand();
        let mut exclude = vec![from.card.index];
        let mut waited = false;
        let to = loop {
            let placement = {
                let mut s = lock(&self.daemon.sched);
                s.release(self.entry.id);
                s.place_ladder(self.entry.id, &self.entry.owner, &demand, None, &exclude)
            };
            let placement = match placement {
                Ok(p) => p,
                Err(e) if waited => {
                    return Err(failed(format!(
                        "no card could take the ladder after the reset: {e}"
                    )))
                }
                Err(e) => {
                    let wait = await_reset(
                        &self.daemon,
                        &self.entry,
                        &mut self.control_rx,
                        &from.card,
                        from.epoch,
                    )
                    .await?;
                    if let Err(why) = wait {
                        return Err(failed(format!(
                            "no other card could take the ladder ({e}) and {why}"
                        )));
                    }
                    waited = true;
                    exclude.retain(|&c| c != from.card.index);
                    continue;
                }
            };
            let card = Arc::clone(&self.daemon.cards[placement.card]);
            match CardLadder::create(Arc::clone(&card), &self.req).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(card = %card.name, error = %e, "card refused the moving ladder");
                    lock(&self.daemon.sched).release(self.entry.id);
                    exclude.push(card.index);
                }
            }
        };
        let same_card = Arc::ptr_eq(&to.card, &from.card);
        // Back on the same card the buffers' mappings are still valid (a reset keeps the
        // card's DMA mappings).
        if !same_card {
            if let Err(e) = buffers.remap(&to.card.card) {
                let timeout = self.daemon.config.timeouts.command();
                tokio::spawn(async move { to.destroy(timeout).await });
                return Err(failed(format!("the ladder could not move: {e}")));
            }
        }
        let timeout = self.daemon.config.timeouts.command();
        tokio::spawn(async move { from.destroy(timeout).await });
        self.entry.card.store(to.card.index, Ordering::Release);
        self.entry
            .card_session
            .store(to.decoder.0, Ordering::Release);
        self.entry.card_epoch.store(to.epoch, Ordering::Release);
        let (from_index, to_index, to_name) =
            (self.ladder.card.index, to.card.index, to.card.name.clone());
        self.ladder = to;
        // Decode again from the IDR before the oldest picture not sent; drop what was
        // already sent; restart every rendition with a keyframe on the same picture.
        let replayed = restart.replay.len();
        self.replay = restart.replay;
        self.pending.clear();
        self.decoded = restart.first_picture;
        self.force_next = true;
        for turn in &mut self.turns {
            *turn = None;
        }
        Metrics::add(&self.daemon.metrics.sessions_migrated, 1);
        let skipped = self.sent.saturating_sub(restart.first_picture);
        tracing::warn!(to = %to_name, replayed, skipped, "ladder moved");
        self.daemon.changes.push(Change::SessionMigrated {
            session: Arc::clone(&self.entry),
            from: from_index,
            to: to_index,
        });
        Ok(())
    }
}
