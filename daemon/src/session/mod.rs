//! Encode sessions: the validated request ([`request`]), creation (admission, placement, the card session, the data channel),
//! the task serving each channel ([`worker`]), the client's frame buffers ([`buffers`]),
//! and the one place every session ends ([`finish`]).

pub mod buffers;
mod migrate;
mod reconfigure;
pub mod request;
pub mod transcode;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use vpu_driver::card::{CardError, VendorStatus};
use zbus::OwnedObjectPath;

use crate::channel::proto::{ErrorCode, Hello, MAX_BUFFERS, MAX_RECORD_LEN, VERSION};
use crate::channel::socket::SocketError;
use crate::scheduler::SchedError;
use crate::service::changes::Change;
use crate::service::state::{lock, Daemon, Refused, SessionCounters, SessionEntry, ROOT_PATH};
use request::SessionRequest;

pub use reconfigure::{reconfigure, ReconfigureError};

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Place(#[from] SchedError),
    #[error("no card {path}; cards are {known}")]
    UnknownCard { path: String, known: String },
    #[error("card {card} rejected the session: {source}")]
    CardRejected {
        card: String,
        #[source]
        source: CardError,
    },
    #[error("card {card} failed creating the session: {source}")]
    CardFailed {
        card: String,
        #[source]
        source: CardError,
    },
    #[error("creating the data channel failed: {0}")]
    Channel(#[from] SocketError),
    #[error("publishing the session on the bus failed: {0}")]
    Bus(#[from] zbus::Error),
    #[error("card {card} was reset while the session was being created; try again")]
    CardReset { card: String },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("{owner} left the bus")]
    OwnerGone { owner: String },
}

/// A new session, on the books and on its card but not yet served: the caller publishes
/// it (its bus object), then [`start`](Created::start)s it, or [`abandon`](Created::abandon)s
/// it if it could not be published.
#[derive(Debug)]
pub struct Created {
    pub entry: Arc<SessionEntry>,
    channel: std::os::fd::OwnedFd,
    worker: worker::Worker,
    units: u64,
}

impl Created {
    /// Starts serving the session's data channel; returns its object path and the
    /// client's end of the channel.
    pub fn start(self) -> (OwnedObjectPath, std::os::fd::OwnedFd) {
        let Created {
            entry,
            channel,
            worker,
            units,
        } = self;
        // Logged by the session's task, which first runs once the reply is on its way.
        let (id, owner) = (entry.id, entry.owner.clone());
        let (width, height) = {
            let cfg = lock(&entry.config);
            (cfg.width, cfg.height)
        };
        tokio::spawn(async move {
            tracing::info!(session = id, card = %worker.card.name, owner, units, width, height,
                "session created");
            worker.serve().await
        });
        (entry.path.clone(), channel)
    }

    /// Undoes a session that could not be published: off the books, its card session
    /// destroyed, its channel closed.
    pub fn abandon(self, daemon: &Arc<Daemon>) {
        let id = self.entry.id;
        lock(&daemon.sessions).remove(&id);
        lock(&daemon.sched).release(id);
        let (card, sid) = (Arc::clone(&self.worker.card.card), self.worker.sid);
        tokio::spawn(async move {
            let _ = card.destroy_session(sid).await;
        });
    }
}

/// Creates a session for `owner`: admission and placement first (no card is touched if
/// they fail), then the card session (another card is tried if the chosen one has no
/// engine for it), then the channel, the bus object and the serving task.
pub async fn create(
    daemon: &Arc<Daemon>,
    owner: &str,
    req: SessionRequest,
) -> Result<Created, SessionError> {
    if daemon.shutting_down.load(Ordering::Acquire) {
        return Err(SessionError::ShuttingDown);
    }
    let pinned = match &req.card {
        None => None,
        Some(p) => Some(daemon.card_by_path(p).ok_or_else(|| {
            SessionError::UnknownCard {
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
    let cfg = req.card_config();
    let codec = cfg.codec.as_str();
    let demand = req.demand();
    let id = daemon.next_session_id();
    let mut exclude = Vec::new();
    let (placement, sid, epoch) = loop {
        let placement = lock(&daemon.sched).place(id, owner, &demand, pinned, &exclude)?;
        let card = &daemon.cards[placement.card];
        // Read before the card session exists: a reset from here on wipes it.
        let epoch = card.reset_epoch();
        // The card checks the configuration against what it can do.
        match card.card.create_session(&cfg).await {
            Ok(sid) => break (placement, sid, epoch),
            Err(e) => {
                lock(&daemon.sched).release(id);
                if e.is_device_fault() {
                    card.count_error("create-session");
                }
                let no_engine = e.vendor_status() == Some(VendorStatus::NoCapacity);
                if no_engine && pinned.is_none() {
                    tracing::info!(card = %card.name, session = id, "card has no engine for the session; trying another");
                    exclude.push(placement.card);
                    continue;
                }
                daemon.metrics.error("card.create-session");
                if e.is_device_fault() {
                    crate::service::health::card_fault(daemon, placement.card, &e.to_string());
                    return Err(SessionError::CardFailed {
                        card: card.name.clone(),
                        source: e,
                    });
                }
                return Err(SessionError::CardRejected {
                    card: card.name.clone(),
                    source: e,
                });
            }
        }
    };
    let card = Arc::clone(&daemon.cards[placement.card]);
    let cleanup_card_session = |e: SessionError| {
        lock(&daemon.sched).release(id);
        let c = Arc::clone(&card.card);
        tokio::spawn(async move {
            let _ = c.destroy_session(sid).await;
        });
        e
    };
    let (sock, theirs) = daemon
        .spare_channels
        .take()
        .map_err(|e| cleanup_card_session(e.into()))?;
    daemon.spare_channels.refill_later();
    let path = OwnedObjectPath::try_from(format!("{ROOT_PATH}/session/{id}"))
        .map_err(|e| cleanup_card_session(SessionError::Bus(e)))?;
    let (control, control_rx) = mpsc::unbounded_channel();
    let (finished_tx, finished) = watch::channel(false);
    let identity = card.card.identity();
    let hello = Hello {
        version: u16::from(VERSION),
        window: identity.max_frames_in_flight.max(1),
        max_buffers: MAX_BUFFERS,
        max_record_len: MAX_RECORD_LEN as u32,
        frame_size: cfg.frame_size() as u32,
        width: cfg.width,
        height: cfg.height,
        pixel_format: cfg.pixel_format.code() as u8,
        session: id as u32,
        renditions: 0,
    };
    let entry = Arc::new(SessionEntry {
        id,
        path: path.clone(),
        owner: owner.to_owned(),
        demand: Mutex::new(demand),
        migrating: AtomicBool::new(false),
        awaiting_reset: AtomicBool::new(false),
        card: AtomicUsize::new(card.index),
        card_session: AtomicU32::new(sid.0),
        card_epoch: AtomicU64::new(epoch),
        config: Mutex::new(cfg),
        renditions: Vec::new(),
        counters: SessionCounters::default(),
        force_keyframe: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        retired: AtomicBool::new(false),
        control,
        finished,
        finished_tx: Mutex::new(Some(finished_tx)),
    });
    match daemon.insert_session(Arc::clone(&entry), epoch) {
        Ok(()) => {}
        Err(Refused::OwnerGone) => {
            return Err(cleanup_card_session(SessionError::OwnerGone {
                owner: owner.to_owned(),
            }))
        }
        Err(Refused::CardReset) => {
            // The reset wipes (or wiped) the card session; its id may already be reused.
            lock(&daemon.sched).release(id);
            return Err(SessionError::CardReset {
                card: card.name.clone(),
            });
        }
    }
    let metrics = daemon.metrics.session_created(codec);
    let worker = worker::Worker {
        daemon: Arc::clone(daemon),
        entry: Arc::clone(&entry),
        sock,
        card,
        sid,
        hello,
        control_rx,
        pending_migrate: None,
        metrics,
    };
    Ok(Created {
        entry,
        channel: theirs,
        worker,
        units: placement.units,
    })
}

/// The error for a `card` argument that names no card.
fn unknown_card(daemon: &Daemon, path: &str) -> SessionError {
    SessionError::UnknownCard {
        path: path.to_owned(),
        known: daemon
            .cards
            .iter()
            .map(|c| c.path.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A client left the bus (its unique name `owner`): its sessions end at once.
pub fn owner_left(daemon: &Arc<Daemon>, owner: &str) {
    for s in daemon.owner_left(owner) {
        if s.request_close(None, "the owner left the bus") {
            tracing::info!(session = s.id, owner, "owner left the bus; closing");
        }
    }
}

/// Takes a session off the books and off the bus: its reservation is returned, it leaves
/// `Manager.Sessions`, and its object goes with `Closed(reason)`. Done once, by whichever
/// comes first: the owner's `Close` ([`close`]) or the session's task ending.
pub fn retire(daemon: &Arc<Daemon>, entry: &Arc<SessionEntry>, reason: &str) {
    if let Some(card) = retire_books(daemon, entry) {
        tracing::info!(session = entry.id, reason, "session closed");
        // The announcements go out after the caller's reply (Close returns sooner); the
        // books are already right for the next request.
        daemon.changes.push(Change::SessionRemoved {
            session: Arc::clone(entry),
            reason: reason.to_owned(),
            card,
        });
    }
}

/// The owner's `Close`: the session is off the books when this returns, so the next
/// request sees its capacity free. Telling its task to end and taking it off the bus
/// (`Closed`, `InterfacesRemoved`) is left to one task spawned here: it runs once the
/// method has returned and its reply is on its way, so that neither waking the session's
/// task nor the signals stand between the caller and the reply. The task destroys the
/// card session and unmaps the client's buffers right after.
pub fn close(daemon: &Arc<Daemon>, entry: &Arc<SessionEntry>, code: ErrorCode, reason: &str) {
    let removed = retire_books(daemon, entry);
    let first = entry.begin_close();
    if removed.is_none() && !first {
        return;
    }
    let (d, e, r) = (Arc::clone(daemon), Arc::clone(entry), reason.to_owned());
    tokio::spawn(async move {
        if removed.is_some() {
            tracing::info!(session = e.id, reason = r, "session closed");
        }
        if first {
            e.send_close(Some(code), &r);
        }
        if let Some(card) = removed {
            d.changes.push(Change::SessionRemoved {
                session: e,
                reason: r,
                card,
            });
        }
    });
}

/// The bookkeeping half of [`retire`]: returns the card whose reservation was released
/// (`Some(None)` if the session held none), or `None` if the session was already retired.
fn retire_books(daemon: &Arc<Daemon>, entry: &Arc<SessionEntry>) -> Option<Option<usize>> {
    if entry.retired.swap(true, Ordering::AcqRel) {
        return None;
    }
    let placement = lock(&daemon.sched).release(entry.id);
    lock(&daemon.sessions).remove(&entry.id);
    let codec = lock(&entry.config).codec.as_str();
    daemon.metrics.session_closed(codec);
    Some(placement.map(|p| p.card))
}

/// The end of every session's task, once the card session is destroyed and the client's
/// buffers unmapped: waiters are told.
pub async fn finish(daemon: &Arc<Daemon>, entry: &Arc<SessionEntry>, reason: &str) {
    retire(daemon, entry, reason);
    if let Some(tx) = lock(&entry.finished_tx).take() {
        let _ = tx.send(true);
    }
}
