//! What changed and must be announced: the one way the daemon's core (sessions, health,
//! recovery) tells the outside world about itself. The core records a [`Change`] (or
//! marks a card's figures changed) and goes on; the D-Bus layer's publishing task takes
//! them and turns them into signals (`dbus::signals`), so no core code waits on the bus or
//! knows it exists.
//!
//! Events are announced in the order they were recorded, each carrying what must not be
//! read later (a state that may have moved on by then); figures that only ever need
//! their latest value (a card's load and sessions, the Manager's totals, a session's
//! counters) are read when announced, and bursts of them are coalesced.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use zbus::OwnedObjectPath;

use super::state::{lock, SessionEntry};
use crate::scheduler::CardState;

/// One thing to announce, in order.
#[derive(Debug)]
pub enum Change {
    /// A card's state became `state` (its errors, load and sessions go with it).
    CardState { card: usize, state: CardState },
    /// A card's error count changed.
    CardErrors { card: usize },
    /// A session's counters (frames, bytes, keyframes) moved.
    SessionCounters { session: Arc<SessionEntry> },
    /// A session's state became `state` (`running`, `migrating`).
    SessionState {
        session: Arc<SessionEntry>,
        state: &'static str,
    },
    /// A session's bitrate was changed.
    SessionBitrate { session: Arc<SessionEntry> },
    /// A session moved from one card to another.
    SessionMigrated {
        session: Arc<SessionEntry>,
        from: usize,
        to: usize,
    },
    /// A session ended: `Closed(reason)`, then its object goes. `card` is the card whose
    /// figures changed with it, if it held a reservation.
    SessionRemoved {
        session: Arc<SessionEntry>,
        reason: String,
        card: Option<usize>,
    },
    /// A reservation ended; its object goes.
    ReservationRemoved { path: OwnedObjectPath },
}

/// The changes not yet announced.
#[derive(Debug, Default)]
pub struct Changes {
    events: Mutex<VecDeque<Change>>,
    cards: Mutex<BTreeSet<usize>>,
    manager: AtomicBool,
    /// Woken whenever something is recorded.
    pub notify: Notify,
}

impl Changes {
    /// Records an event to announce.
    pub fn push(&self, change: Change) {
        lock(&self.events).push_back(change);
        self.notify.notify_one();
    }

    /// Card `card`'s figures (and so the Manager's) changed.
    pub fn card(&self, card: usize) {
        lock(&self.cards).insert(card);
        self.manager();
    }

    /// The Manager's figures changed.
    pub fn manager(&self) {
        self.manager.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Takes the events recorded so far, oldest first.
    pub fn take_events(&self) -> VecDeque<Change> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Whether figures are waiting to be announced.
    pub fn figures_pending(&self) -> bool {
        self.manager.load(Ordering::Acquire)
    }

    /// Takes the figures that changed: (cards, manager).
    pub fn take_figures(&self) -> (Vec<usize>, bool) {
        let cards = std::mem::take(&mut *lock(&self.cards));
        (
            cards.into_iter().collect(),
            self.manager.swap(false, Ordering::AcqRel),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_order_and_figures_coalesce() {
        let c = Changes::default();
        c.push(Change::CardErrors { card: 1 });
        c.push(Change::CardState {
            card: 0,
            state: CardState::Resetting,
        });
        c.card(2);
        c.card(2);
        c.card(0);
        let events: Vec<_> = c.take_events().into_iter().collect();
        assert!(matches!(events[0], Change::CardErrors { card: 1 }));
        assert!(matches!(
            events[1],
            Change::CardState {
                card: 0,
                state: CardState::Resetting
            }
        ));
        assert!(c.take_events().is_empty());
        assert!(c.figures_pending());
        assert_eq!(c.take_figures(), (vec![0, 2], true));
        assert!(!c.figures_pending());
    }
}
