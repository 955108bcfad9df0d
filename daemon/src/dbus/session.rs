//! `org.vpud.Vpud1.Session` at `/org/vpud/Vpud1/session/N`. Only the session's owner
//! (the connection that created it) may control it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant};

use super::access::caller;
use super::error::VpudError;
use super::{counted, params};
use crate::service::state::{lock, Daemon, SessionEntry};
use crate::session::{self, ReconfigureError};

impl From<ReconfigureError> for VpudError {
    fn from(e: ReconfigureError) -> Self {
        match e {
            ReconfigureError::Resize(s) => s.into(),
            ReconfigureError::CardFailed { .. } => VpudError::CardFailed(e.to_string()),
            ReconfigureError::CardRejected { .. } => VpudError::InvalidArgument(e.to_string()),
        }
    }
}

/// A session object.
#[derive(Debug)]
pub struct SessionIface {
    pub daemon: Arc<Daemon>,
    pub entry: Arc<SessionEntry>,
}

impl SessionIface {
    fn check_owner(&self, header: &Header<'_>) -> Result<(), VpudError> {
        let who = caller(header)?;
        if who == self.entry.owner {
            Ok(())
        } else {
            Err(VpudError::AccessDenied(format!(
                "session {} belongs to {}; only its owner may control it, not {who}",
                self.entry.id, self.entry.owner
            )))
        }
    }

    fn check_open(&self) -> Result<(), VpudError> {
        if self.entry.closed.load(Ordering::Acquire) {
            Err(VpudError::NotFound(format!(
                "session {} is closing",
                self.entry.id
            )))
        } else {
            Ok(())
        }
    }
}

#[zbus::interface(name = "org.vpud.Vpud1.Session", introspection_docs = false)]
impl SessionIface {
    /// Change the bitrate or frame rate from the next frame on.
    async fn reconfigure(
        &self,
        #[zbus(header)] header: Header<'_>,
        params: HashMap<String, OwnedVariant>,
    ) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            self.check_owner(&header)?;
            self.check_open()?;
            let change = params::reconfigure_request(&params)?;
            if !self.entry.renditions.is_empty() {
                return Err(VpudError::NotSupported(format!(
                    "session {} is a transcode session; its renditions are fixed at CreateTranscode",
                    self.entry.id
                )));
            }
            session::reconfigure(&self.daemon, &self.entry, &change)
                .await
                .map_err(VpudError::from)
        })
        .await
    }

    /// Encode the next frame as a keyframe.
    async fn request_keyframe(&self, #[zbus(header)] header: Header<'_>) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            self.check_owner(&header)?;
            self.check_open()?;
            self.entry.force_keyframe.store(true, Ordering::Release);
            Ok(())
        })
        .await
    }

    /// End the session; returns once its reservation is released. It leaves the bus
    /// (`Closed`, `InterfacesRemoved`) right after the reply.
    async fn close(&self, #[zbus(header)] header: Header<'_>) -> Result<(), VpudError> {
        counted(&self.daemon, async {
            self.check_owner(&header)?;
            const REASON: &str = "closed by its owner";
            if self.entry.retired.load(Ordering::Acquire) {
                return Err(VpudError::NotFound(format!(
                    "session {} is already closed",
                    self.entry.id
                )));
            }
            // Off the books when this returns; off the bus, and its card session and the
            // client's buffers released, right after the reply.
            session::close(
                &self.daemon,
                &self.entry,
                crate::channel::proto::ErrorCode::SessionClosed,
                REASON,
            );
            Ok(())
        })
        .await
    }

    /// The session ended; `reason` says why.
    #[zbus(signal)]
    pub async fn closed(emitter: &SignalEmitter<'_>, reason: &str) -> zbus::Result<()>;

    /// The session moved to another card.
    #[zbus(signal)]
    pub async fn migrated(
        emitter: &SignalEmitter<'_>,
        from_card: ObjectPath<'_>,
        to_card: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn owner(&self) -> String {
        self.entry.owner.clone()
    }

    #[zbus(property)]
    fn card(&self) -> OwnedObjectPath {
        self.daemon.cards[self.entry.card_index()].path.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn codec(&self) -> String {
        lock(&self.entry.config).codec.as_str().to_owned()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn width(&self) -> u32 {
        lock(&self.entry.config).width
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn height(&self) -> u32 {
        lock(&self.entry.config).height
    }

    #[zbus(property)]
    fn bitrate(&self) -> u32 {
        lock(&self.entry.config).bitrate
    }

    #[zbus(property)]
    fn state(&self) -> String {
        self.entry.state_name().to_owned()
    }

    #[zbus(property)]
    fn frames_in(&self) -> u64 {
        self.entry.counters.frames_in.load(Ordering::Relaxed)
    }

    #[zbus(property)]
    fn frames_out(&self) -> u64 {
        self.entry.counters.frames_out.load(Ordering::Relaxed)
    }

    #[zbus(property)]
    fn bytes_out(&self) -> u64 {
        self.entry.counters.bytes_out.load(Ordering::Relaxed)
    }

    #[zbus(property)]
    fn keyframes(&self) -> u64 {
        self.entry.counters.keyframes.load(Ordering::Relaxed)
    }

    /// A transcode session's renditions (`width`, `height`, `bitrate`, `gop`); empty for
    /// an encode session.
    #[zbus(property(emits_changed_signal = "const"))]
    fn renditions(&self) -> Vec<HashMap<String, OwnedVariant>> {
        self.entry
            .renditions
            .iter()
            .map(|r| {
                [
                    ("width", r.width),
                    ("height", r.height),
                    ("bitrate", r.bitrate),
                    ("gop", r.gop),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), OwnedVariant::from(v)))
                .collect()
            })
            .collect()
    }
}
