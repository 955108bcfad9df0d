//! `org.vpud.Vpud1.Manager` at `/org/vpud/Vpud1`: creates sessions and reservations,
//! reports the cards,
//! sessions, policy, capacity and load.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::{OwnedObjectPath, OwnedVariant};

use super::access::caller;
use super::error::VpudError;
use super::{counted, params, signals, transcode_params};
use crate::service::reservation::{self, ReserveError};
use crate::service::state::{lock, Daemon};
use crate::session::{self, SessionError};

/// The Manager object.
#[derive(Debug)]
pub struct ManagerIface {
    pub daemon: Arc<Daemon>,
}

impl From<SessionError> for VpudError {
    fn from(e: SessionError) -> Self {
        let msg = e.to_string();
        match e {
            SessionError::Place(s) => s.into(),
            SessionError::UnknownCard { .. } => VpudError::NotFound(msg),
            SessionError::CardRejected { .. } => VpudError::InvalidArgument(msg),
            SessionError::CardFailed { .. } | SessionError::CardReset { .. } => {
                VpudError::CardFailed(msg)
            }
            SessionError::Channel(_) | SessionError::Bus(_) => VpudError::CardFailed(msg),
            SessionError::ShuttingDown => VpudError::NoCapacity(msg),
            SessionError::OwnerGone { .. } => VpudError::AccessDenied(msg),
        }
    }
}

impl From<ReserveError> for VpudError {
    fn from(e: ReserveError) -> Self {
        let msg = e.to_string();
        match e {
            ReserveError::Place(s) => s.into(),
            ReserveError::UnknownCard { .. } => VpudError::NotFound(msg),
            ReserveError::OwnerGone { .. } => VpudError::AccessDenied(msg),
            ReserveError::ShuttingDown => VpudError::NoCapacity(msg),
            ReserveError::Bus(_) => VpudError::CardFailed(msg),
        }
    }
}

#[zbus::interface(name = "org.vpud.Vpud1.Manager", introspection_docs = false)]
impl ManagerIface {
    /// Creates an encode session; returns its object and its data channel.
    #[zbus(out_args("session", "channel"))]
    async fn create_session(
        &self,
        #[zbus(header)] header: Header<'_>,
        params: HashMap<String, OwnedVariant>,
    ) -> Result<(OwnedObjectPath, zbus::OwnedFd), VpudError> {
        let result = counted(&self.daemon, async {
            let owner = caller(&header)?;
            let req = params::session_request(&params)?;
            let created = session::create(&self.daemon, &owner, req).await?;
            if let Err(e) = signals::session_added(&self.daemon, &created.entry).await {
                created.abandon(&self.daemon);
                return Err(SessionError::Bus(e).into());
            }
            let (path, channel) = created.start();
            Ok((path, zbus::OwnedFd::from(channel)))
        })
        .await;
        if let Err(e) = &result {
            self.daemon.metrics.session_refused(e.kind());
        }
        result
    }

    /// Creates a transcode session: one compressed input, one rendition per entry of
    /// `outputs`, all on one card; returns its object and its data channel.
    #[zbus(out_args("session", "channel"))]
    async fn create_transcode(
        &self,
        #[zbus(header)] header: Header<'_>,
        input: HashMap<String, OwnedVariant>,
        outputs: Vec<HashMap<String, OwnedVariant>>,
    ) -> Result<(OwnedObjectPath, zbus::OwnedFd), VpudError> {
        counted(&self.daemon, async {
            let owner = caller(&header)?;
            transcode_params::rendition_codecs(&outputs)?;
            let req = transcode_params::transcode_request(&input, &outputs)?;
            let created = session::transcode::create(&self.daemon, &owner, req).await?;
            if let Err(e) = signals::session_added(&self.daemon, &created.entry).await {
                created.abandon(&self.daemon);
                return Err(SessionError::Bus(e).into());
            }
            let (path, channel) = created.start();
            Ok((path, zbus::OwnedFd::from(channel)))
        })
        .await
    }

    /// Sets load units of a card aside for one consumer; returns the reservation.
    #[zbus(out_args("reservation"))]
    async fn reserve(
        &self,
        #[zbus(header)] header: Header<'_>,
        params: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, VpudError> {
        counted(&self.daemon, async {
            let owner = caller(&header)?;
            let req = params::reserve_request(&params)?;
            let card = req.card.as_deref();
            let id = reservation::reserve(&self.daemon, &owner, req.units, card)?;
            Ok(signals::reservation_added(&self.daemon, id, &owner).await?)
        })
        .await
    }

    /// Version of the daemon.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn cards(&self) -> Vec<OwnedObjectPath> {
        self.daemon.cards.iter().map(|c| c.path.clone()).collect()
    }

    #[zbus(property)]
    fn sessions(&self) -> Vec<OwnedObjectPath> {
        self.daemon.session_paths()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn policy(&self) -> String {
        lock(&self.daemon.sched).policy().as_str().to_owned()
    }

    #[zbus(property)]
    fn capacity(&self) -> u64 {
        lock(&self.daemon.sched).total_capacity()
    }

    #[zbus(property)]
    fn load(&self) -> u64 {
        lock(&self.daemon.sched).total_load()
    }

    /// Errors counted since start, per kind (for operators and tests).
    #[zbus(property(emits_changed_signal = "false"))]
    fn error_counts(&self) -> HashMap<String, u64> {
        self.daemon.metrics.error_counts().into_iter().collect()
    }
}
