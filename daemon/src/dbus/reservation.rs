//! `org.vpud.Vpud1.Reservation` at `/org/vpud/Vpud1/reservation/N`: load units of one
//! card set aside for one consumer. Only its owner (the connection that made it) may
//! release it; any client naming it in `CreateSession`'s `reservation` draws on it.

use std::sync::Arc;

use zbus::message::Header;
use zbus::{ObjectPath, OwnedObjectPath};

use super::access::caller;
use super::error::VpudError;
use super::{counted, signals};
use crate::service::reservation;
use crate::service::state::{lock, Daemon, ROOT_PATH};

/// A reservation object.
#[derive(Debug)]
pub struct ReservationIface {
    pub daemon: Arc<Daemon>,
    /// `N` of the path: the scheduler's number of the reservation.
    pub id: u64,
    pub path: OwnedObjectPath,
}

impl ReservationIface {
    fn owner(&self) -> Option<String> {
        lock(&self.daemon.sched)
            .reservation(self.id)
            .map(|r| r.owner.clone())
    }
}

#[zbus::interface(name = "org.vpud.Vpud1.Reservation", introspection_docs = false)]
impl ReservationIface {
    /// Ends the reservation: its units are free again; its sessions carry on outside it.
    async fn release(&self, #[zbus(header)] header: Header<'_>) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            let who = caller(&header)?;
            let Some(owner) = self.owner() else {
                return Err(VpudError::NotFound(format!(
                    "reservation {} is already released",
                    self.id
                )));
            };
            if who != owner {
                return Err(VpudError::AccessDenied(format!(
                    "reservation {} belongs to {owner}; only its owner may release it, not {who}",
                    self.id
                )));
            }
            reservation::release(&self.daemon, self.id, "released by its owner");
            // Gone from the bus before the owner hears it is released (the publisher's
            // removal that follows finds nothing to do).
            signals::reservation_removed(&self.daemon, &self.path).await;
            Ok(())
        })
        .await
    }

    /// Load units set aside.
    #[zbus(property(emits_changed_signal = "const"))]
    fn units(&self) -> u64 {
        lock(&self.daemon.sched)
            .reservation(self.id)
            .map_or(0, |r| r.units)
    }

    /// Load units its sessions take now.
    #[zbus(property)]
    fn used(&self) -> u64 {
        lock(&self.daemon.sched)
            .reservation(self.id)
            .map_or(0, |r| r.used)
    }

    /// The card the units are set aside on.
    #[zbus(property(emits_changed_signal = "const"))]
    fn card(&self) -> OwnedObjectPath {
        let card = lock(&self.daemon.sched)
            .reservation(self.id)
            .map(|r| r.card);
        match card.and_then(|c| self.daemon.cards.get(c)) {
            Some(c) => c.path.clone(),
            None => OwnedObjectPath::from(ObjectPath::from_static_str_unchecked(ROOT_PATH)),
        }
    }

    /// Unique bus name of the consumer that made it.
    #[zbus(property(emits_changed_signal = "const"), name = "Owner")]
    fn owner_name(&self) -> String {
        self.owner().unwrap_or_default()
    }
}
