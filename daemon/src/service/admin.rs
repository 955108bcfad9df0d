//! Card administration: draining a card (no new sessions; those on it finish) and
//! resuming it. Reset is recovery's ([`super::health::reset_card`]).

use std::sync::Arc;

use super::changes::Change;
use super::state::{lock, Daemon};
use crate::scheduler::CardState;

/// Why a card's state could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("card {card} is {state}; only an online card can be drained")]
    NotDrainable { card: String, state: &'static str },
    #[error("card {card} is {state}; Resume applies to a draining card (Reset brings a failed one back)")]
    NotResumable { card: String, state: &'static str },
}

/// Drains card `card`: no new sessions go to it. Draining a draining card does nothing.
pub fn drain(daemon: &Arc<Daemon>, card: usize) -> Result<(), AdminError> {
    change_state(
        daemon,
        card,
        CardState::Online,
        CardState::Draining,
        |card, state| AdminError::NotDrainable { card, state },
    )?;
    Ok(())
}

/// Resumes a draining card `card`. Resuming an online card does nothing.
pub fn resume(daemon: &Arc<Daemon>, card: usize) -> Result<(), AdminError> {
    change_state(
        daemon,
        card,
        CardState::Draining,
        CardState::Online,
        |card, state| AdminError::NotResumable { card, state },
    )?;
    Ok(())
}

/// Moves card `card` from `from` to `to`; already at `to` is no change; any other state
/// is refused with `refused`.
fn change_state(
    daemon: &Arc<Daemon>,
    card: usize,
    from: CardState,
    to: CardState,
    refused: fn(String, &'static str) -> AdminError,
) -> Result<(), AdminError> {
    let Some(entry) = daemon.cards.get(card) else {
        return Ok(());
    };
    {
        let mut s = lock(&daemon.sched);
        match s.state(card) {
            Some(state) if state == from => {
                s.set_state(card, to);
            }
            Some(state) if state == to => return Ok(()),
            Some(other) => return Err(refused(entry.name.clone(), other.as_str())),
            None => return Ok(()),
        }
    }
    tracing::info!(card = %entry.name, state = to.as_str(), "card state changed by an administrator");
    daemon.changes.push(Change::CardState { card, state: to });
    Ok(())
}
