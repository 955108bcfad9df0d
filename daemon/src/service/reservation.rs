//! Reservations of capacity as the daemon keeps them: made by `Manager.Reserve`, published
//! at `/org/vpud/Vpud1/reservation/N` (`N` never reused within a daemon's life), ended by
//! their owner's `Release()` or by their owner leaving the bus. The books are the
//! scheduler's ([`crate::scheduler::reserve`]); the D-Bus layer puts a new reservation's
//! object on the bus, and an ended one's object leaves it through the change publisher
//! ([`Change::ReservationRemoved`]).

use zbus::OwnedObjectPath;

use crate::scheduler::{Released, SchedError};
use crate::service::changes::Change;
use crate::service::state::{lock, Daemon};

/// Object path prefix of reservations (`…/reservation/N`).
pub const PATH_PREFIX: &str = "/org/vpud/Vpud1/reservation/";

/// Why a reservation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Place(#[from] SchedError),
    #[error("no card {path}; cards are {known}")]
    UnknownCard { path: String, known: String },
    #[error("{owner} left the bus")]
    OwnerGone { owner: String },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("publishing the reservation on the bus failed: {0}")]
    Bus(#[from] zbus::Error),
}

/// The object path of reservation `id`.
pub fn path(id: u64) -> OwnedObjectPath {
    // The fixed prefix and a decimal number always make a valid path.
    OwnedObjectPath::try_from(format!("{PATH_PREFIX}{id}")).unwrap_or_else(|_| {
        OwnedObjectPath::from(zbus::ObjectPath::from_static_str_unchecked(
            crate::service::state::ROOT_PATH,
        ))
    })
}

/// The number of the reservation at `path`, if it is a reservation's path.
pub fn number(path: &str) -> Option<u64> {
    let digits = path.strip_prefix(PATH_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Sets `units` load units aside for `owner` (on `card` if given); returns the
/// reservation's number. The caller publishes it, or gives it back with [`abandon`].
pub fn reserve(
    daemon: &Daemon,
    owner: &str,
    units: u64,
    card: Option<&str>,
) -> Result<u64, ReserveError> {
    if daemon
        .shutting_down
        .load(std::sync::atomic::Ordering::Acquire)
    {
        return Err(ReserveError::ShuttingDown);
    }
    let pinned = match card {
        None => None,
        Some(p) => Some(daemon.card_by_path(p).ok_or_else(|| {
            ReserveError::UnknownCard {
                path: p.to_owned(),
                known: daemon
                    .cards
                    .iter()
                    .map(|c| c.path.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?),
    };
    let mut sched = lock(&daemon.sched);
    // Checked under the scheduler's lock: `owner_left` records the departure before it
    // collects the owner's reservations from the scheduler, so a reservation is either
    // refused here or collected there.
    if daemon.has_departed(owner) {
        return Err(ReserveError::OwnerGone {
            owner: owner.to_owned(),
        });
    }
    let id = sched.reserve(owner, units, pinned)?;
    let card = sched.reservation(id).map_or(0, |r| r.card);
    tracing::info!(reservation = id, owner, units, card, "reservation made");
    Ok(id)
}

/// Whether reservation `id` still stands (its owner may have left, or released it, since
/// it was made).
pub fn stands(daemon: &Daemon, id: u64) -> bool {
    lock(&daemon.sched).reservation(id).is_some()
}

/// Gives back a reservation that could not be published; nothing was announced.
pub fn abandon(daemon: &Daemon, id: u64) {
    lock(&daemon.sched).unreserve(id);
}

/// Ends reservation `id`: its units are free again, its sessions carry on outside any
/// reservation, and its object is to leave the bus. `None` if it was already gone.
pub fn release(daemon: &Daemon, id: u64, reason: &str) -> Option<Released> {
    let released = lock(&daemon.sched).unreserve(id)?;
    for s in &released.sessions {
        if let Some(entry) = daemon.session(*s) {
            lock(&entry.demand).reservation = None;
        }
    }
    tracing::info!(reservation = id, owner = %released.reservation.owner,
        units = released.reservation.units, sessions = released.sessions.len(), reason,
        "reservation released");
    daemon
        .changes
        .push(Change::ReservationRemoved { path: path(id) });
    Some(released)
}

/// Ends every reservation of `owner`, who left the bus (after [`Daemon::owner_left`]
/// recorded the departure).
pub fn owner_left(daemon: &Daemon, owner: &str) {
    let ids = lock(&daemon.sched).reservations_of(owner);
    for id in ids {
        release(daemon, id, "the owner left the bus");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_numbers() {
        assert_eq!(path(7).as_str(), "/org/vpud/Vpud1/reservation/7");
        assert_eq!(number("/org/vpud/Vpud1/reservation/7"), Some(7));
        for bad in [
            "/org/vpud/Vpud1/reservation/",
            "/org/vpud/Vpud1/reservation/+7",
            "/org/vpud/Vpud1/reservation/7/x",
            "/org/vpud/Vpud1/session/7",
            "/org/vpud/Vpud1/reservation/99999999999999999999999",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }
}
