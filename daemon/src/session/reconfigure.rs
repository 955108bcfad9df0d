//! `Reconfigure`: a running session's new bitrate or frame rate, from the next frame on.

use std::sync::Arc;

use vpu_driver::card::{CardError, Reconfigure};

use super::request::ReconfigureRequest;
use crate::scheduler::SchedError;
use crate::service::changes::Change;
use crate::service::state::{lock, Daemon, SessionEntry};

/// Why a session could not be reconfigured. Nothing changed when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    /// The new frame rate does not fit on the session's card.
    #[error(transparent)]
    Resize(#[from] SchedError),
    #[error("card {card} refused the change: {source}")]
    CardRejected {
        card: String,
        #[source]
        source: CardError,
    },
    #[error("card {card} failed changing the session: {source}")]
    CardFailed {
        card: String,
        #[source]
        source: CardError,
    },
}

/// Applies `change` to session `entry`. A new frame rate changes the session's demand,
/// which must fit on the card it runs on; if the card then refuses the change, the
/// reservation goes back to what it was.
pub async fn reconfigure(
    daemon: &Arc<Daemon>,
    entry: &Arc<SessionEntry>,
    change: &ReconfigureRequest,
) -> Result<(), ReconfigureError> {
    let card = Arc::clone(&daemon.cards[entry.card_index()]);
    let previous_demand = match change.framerate {
        Some((num, den)) => {
            let mut demand = lock(&entry.demand).clone();
            let previous = demand.clone();
            demand.fps_num = num;
            demand.fps_den = den;
            lock(&daemon.sched).resize(entry.id, &demand)?;
            *lock(&entry.demand) = demand;
            Some(previous)
        }
        None => None,
    };
    let command = Reconfigure {
        bitrate: change.bitrate,
        framerate: change.framerate,
        force_keyframe: false,
    };
    if let Err(e) = card
        .card
        .reconfigure(entry.card_session_id(), &command)
        .await
    {
        if let Some(previous) = previous_demand {
            // Give the reservation back as it was; it fitted before.
            let _ = lock(&daemon.sched).resize(entry.id, &previous);
            *lock(&entry.demand) = previous;
        }
        let card = card.name.clone();
        return Err(if e.is_device_fault() {
            ReconfigureError::CardFailed { card, source: e }
        } else {
            ReconfigureError::CardRejected { card, source: e }
        });
    }
    {
        let mut cfg = lock(&entry.config);
        if let Some(b) = change.bitrate {
            cfg.bitrate = b;
        }
        if let Some((n, d)) = change.framerate {
            cfg.fps_num = n;
            cfg.fps_den = d;
        }
    }
    if change.bitrate.is_some() {
        daemon.changes.push(Change::SessionBitrate {
            session: Arc::clone(entry),
        });
    }
    if change.framerate.is_some() {
        daemon.changes.card(card.index);
    }
    Ok(())
}
