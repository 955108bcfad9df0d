//! Transcode sessions: one compressed input decoded once on a card, scaled and encoded to
//! every rendition of a ladder on the same card, the pictures never leaving the card.
//!
//! [`request`] is the validated request; [`create`] admits the whole ladder on one card
//! (decode, scale and every encode; `NoCapacity` when no single card can take it) and
//! creates its card sessions ([`ladder`]); the session's task ([`worker`]) takes access
//! units from the data channel, keeps several pictures in flight on the card
//! ([`pipeline`]) and sends every rendition's packets back; when the card fails, the whole
//! ladder moves ([`migrate`]), starting again from the access units kept for it
//! ([`history`]).

mod history;
mod ladder;
mod migrate;
mod pipeline;
pub mod request;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use vpu_driver::card::VendorStatus;
use zbus::OwnedObjectPath;

use super::SessionError;
use crate::channel::proto::{Hello, MAX_BUFFERS, MAX_RECORD_LEN, VERSION};
use crate::metrics::Metrics;
use crate::service::state::{
    lock, Daemon, Refused, RenditionInfo, SessionCounters, SessionEntry, ROOT_PATH,
};
use ladder::CardLadder;
use request::TranscodeRequest;

/// The largest access unit a transcode session takes (`HELLO.frame_size`).
pub const MAX_ACCESS_UNIT: u32 = 4 << 20;

/// A new transcode session, on the books and on its card but not yet served; see
/// [`super::Created`].
#[derive(Debug)]
pub struct CreatedTranscode {
    pub entry: Arc<SessionEntry>,
    channel: std::os::fd::OwnedFd,
    worker: worker::TranscodeWorker,
    units: u64,
}

impl CreatedTranscode {
    /// Starts serving the session's data channel; returns its object path and the
    /// client's end of the channel.
    pub fn start(self) -> (OwnedObjectPath, std::os::fd::OwnedFd) {
        let CreatedTranscode {
            entry,
            channel,
            worker,
            units,
        } = self;
        let (id, owner) = (entry.id, entry.owner.clone());
        let renditions = entry.renditions.len();
        tokio::spawn(async move {
            tracing::info!(session = id, card = %worker.ladder.card.name, owner, units,
                renditions, "transcode session created");
            worker.serve().await
        });
        (entry.path.clone(), channel)
    }

    /// Undoes a session that could not be published.
    pub fn abandon(self, daemon: &Arc<Daemon>) {
        let id = self.entry.id;
        lock(&daemon.sessions).remove(&id);
        lock(&daemon.sched).release(id);
        let ladder = self.worker.ladder.clone();
        let timeout = daemon.config.timeouts.command();
        tokio::spawn(async move { ladder.destroy(timeout).await });
    }
}

/// Creates a transcode session for `owner`: admission and placement of the whole ladder
/// first (no card is touched if they fail), then its card sessions (another card is tried
/// if the chosen one has no engine for them), then the channel and the serving task.
pub async fn create(
    daemon: &Arc<Daemon>,
    owner: &str,
    req: TranscodeRequest,
) -> Result<CreatedTranscode, SessionError> {
    if daemon.shutting_down.load(Ordering::Acquire) {
        return Err(SessionError::ShuttingDown);
    }
    let pinned = match &req.card {
        None => None,
        Some(p) => Some(
            daemon
                .card_by_path(p)
                .ok_or_else(|| super::unknown_card(daemon, p))?,
        ),
    };
    let demand = req.ladder_demand();
    let id = daemon.next_session_id();
    let mut exclude = Vec::new();
    let (placement, ladder) = loop {
        let placement = lock(&daemon.sched).place_ladder(id, owner, &demand, pinned, &exclude)?;
        let card = Arc::clone(&daemon.cards[placement.card]);
        match CardLadder::create(Arc::clone(&card), &req).await {
            Ok(ladder) => break (placement, ladder),
            Err(e) => {
                lock(&daemon.sched).release(id);
                card.errors
                    .fetch_add(u64::from(e.is_device_fault()), Ordering::Relaxed);
                let no_engine = e.vendor_status() == Some(VendorStatus::NoCapacity);
                if no_engine && pinned.is_none() {
                    tracing::info!(card = %card.name, session = id, "card has no engines for the ladder; trying another");
                    exclude.push(placement.card);
                    continue;
                }
                daemon.metrics.error("card.create-transcode");
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
    let card = Arc::clone(&ladder.card);
    let timeout = daemon.config.timeouts.command();
    let undo = |e: SessionError, ladder: &CardLadder| {
        lock(&daemon.sched).release(id);
        let l = ladder.clone();
        tokio::spawn(async move { l.destroy(timeout).await });
        e
    };
    let (sock, theirs) = match daemon.spare_channels.take() {
        Ok(pair) => pair,
        Err(e) => return Err(undo(e.into(), &ladder)),
    };
    daemon.spare_channels.refill_later();
    let path = match OwnedObjectPath::try_from(format!("{ROOT_PATH}/session/{id}")) {
        Ok(p) => p,
        Err(e) => return Err(undo(SessionError::Bus(e), &ladder)),
    };
    let (control, control_rx) = mpsc::unbounded_channel();
    let (finished_tx, finished) = watch::channel(false);
    let (in_w, in_h) = req.input.size.unwrap_or((0, 0));
    let hello = Hello {
        version: u16::from(VERSION),
        window: card.card.identity().max_frames_in_flight.max(1),
        max_buffers: MAX_BUFFERS,
        max_record_len: MAX_RECORD_LEN as u32,
        frame_size: MAX_ACCESS_UNIT,
        width: in_w,
        height: in_h,
        pixel_format: 0,
        session: id as u32,
        renditions: req.outputs.len() as u8,
    };
    let configs = req.encoder_configs();
    let renditions = req
        .outputs
        .iter()
        .map(|o| RenditionInfo {
            width: o.width,
            height: o.height,
            bitrate: o.bitrate,
            gop: o.gop,
        })
        .collect();
    let entry = Arc::new(SessionEntry {
        id,
        path: path.clone(),
        owner: owner.to_owned(),
        demand: Mutex::new(demand.representative()),
        migrating: AtomicBool::new(false),
        awaiting_reset: AtomicBool::new(false),
        card: AtomicUsize::new(card.index),
        card_session: AtomicU32::new(ladder.decoder.0),
        card_epoch: AtomicU64::new(ladder.epoch),
        config: Mutex::new(configs.into_iter().next().unwrap_or_default()),
        renditions,
        counters: SessionCounters::default(),
        force_keyframe: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        retired: AtomicBool::new(false),
        control,
        finished,
        finished_tx: Mutex::new(Some(finished_tx)),
    });
    match daemon.insert_session(Arc::clone(&entry), ladder.epoch) {
        Ok(()) => {}
        Err(Refused::OwnerGone) => {
            return Err(undo(
                SessionError::OwnerGone {
                    owner: owner.to_owned(),
                },
                &ladder,
            ))
        }
        Err(Refused::CardReset) => {
            lock(&daemon.sched).release(id);
            return Err(SessionError::CardReset {
                card: card.name.clone(),
            });
        }
    }
    Metrics::add(&daemon.metrics.sessions_created, 1);
    let worker = worker::TranscodeWorker::new(
        Arc::clone(daemon),
        Arc::clone(&entry),
        sock,
        ladder,
        req,
        hello,
        control_rx,
    );
    Ok(CreatedTranscode {
        entry,
        channel: theirs,
        worker,
        units: placement.units,
    })
}
