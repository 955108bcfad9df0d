//! Moving a session to another card when its card fails or is reset.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::FuturesOrdered;
use vpu_driver::card::{SessionConfig, SessionId};

use super::buffers::Buffers;
use super::worker::{Ending, InFlight, Worker};
use crate::channel::proto::{ErrorCode, FrameRef, FRAME_FORCE_KEYFRAME};
use crate::metrics::Metrics;
use crate::scheduler::Demand;
use crate::service::state::{lock, CardEntry};

impl Worker {
    /// Moves the session to another card: a new reservation and card session, the
    /// client's buffers mapped for the new card, the frames in flight resubmitted in order
    /// with the first forced to a keyframe, and `Migrated` announced. Every frame still
    /// yields exactly one packet. Without a card to go to, the session ends with
    /// `card-failed`.
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
        crate::dbus::signals::session_state(&self.daemon, &self.entry).await;
        let result = self
            .move_to_another_card(
                reason, buffers, inflight, from, old_sid, frames, cfg, demand,
            )
            .await;
        self.entry.migrating.store(false, Ordering::Release);
        crate::dbus::signals::session_state(&self.daemon, &self.entry).await;
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
            ..Ending::error(
                ErrorCode::CardFailed,
                format!("{reason}; the session could not move to another card: {why}"),
            )
        };
        let mut exclude = vec![from.index];
        let (to, sid) = loop {
            let placement = {
                let mut s = lock(&self.daemon.sched);
                s.release(self.entry.id);
                s.place(self.entry.id, &self.entry.owner, &demand, None, &exclude)
            };
            let placement = placement.map_err(|e| failed(e.to_string()))?;
            let card = Arc::clone(&self.daemon.cards[placement.card]);
            let created = match cfg.validate(card.card.identity()) {
                Ok(()) => card.card.create_session(&cfg).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(sid) => break (card, sid),
                Err(e) => {
                    tracing::warn!(card = %card.name, error = %e, "card refused the moving session");
                    lock(&self.daemon.sched).release(self.entry.id);
                    exclude.push(card.index);
                }
            }
        };
        if let Err(e) = buffers.remap(&to.card) {
            let c = Arc::clone(&to.card);
            tokio::spawn(async move { c.destroy_session(sid).await });
            return Err(failed(e.to_string()));
        }
        let old = Arc::clone(&from.card);
        let timeout = self.daemon.config.timeouts.command();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, old.destroy_session(old_sid)).await;
        });
        self.card = Arc::clone(&to);
        self.sid = sid;
        self.entry.card.store(to.index, Ordering::Release);
        self.entry.card_session.store(sid.0, Ordering::Release);
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
        Metrics::add(&self.daemon.metrics.sessions_migrated, 1);
        tracing::warn!(from = %from.name, to = %to.name, resubmitted = inflight.len(), "session moved");
        crate::dbus::signals::session_migrated(&self.daemon, &self.entry, from.index, to.index)
            .await;
        Ok(())
    }
}
