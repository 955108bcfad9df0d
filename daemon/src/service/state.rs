//! The daemon's shared state: its cards, the scheduler's book, the live sessions, and
//! the metrics. Held in an `Arc<Daemon>` by the D-Bus objects and the session tasks.
//! Locks here are `std::sync::Mutex`es held for a few field updates, never across
//! `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{mpsc, watch};
use vpu_driver::card::{Card, Codec, EngineKind, SessionConfig, SessionId};
use vpu_driver::emu::EmulatedCard;
use vpu_driver::io::BackendKind;
use zbus::{Connection, OwnedObjectPath};

use crate::channel::proto::ErrorCode;
use crate::channel::spare::SparePairs;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::scheduler::cost::EncoderLimits;
use crate::scheduler::{CardLimits, CardState, Demand, Scheduler, TranscodeLimits};
use crate::service::changes::Changes;

/// Root object path.
pub const ROOT_PATH: &str = "/org/vpud/Vpud1";

/// Locks a mutex, taking the data even if a thread panicked while holding it: every
/// critical section here leaves the data consistent at each step.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One card the daemon drives.
#[derive(Debug)]
pub struct CardEntry {
    /// `N` of `/org/vpud/Vpud1/card/N`.
    pub index: usize,
    pub path: OwnedObjectPath,
    pub card: Arc<Card>,
    pub name: String,
    pub backend: BackendKind,
    pub pci_address: String,
    /// The emulated card behind `card`, for fault injection.
    pub emulator: Option<Arc<EmulatedCard>>,
    /// Errors the daemon met on the card (device faults it reacted to, failed encodes,
    /// failed resets). `Card.Errors` adds the anomalies the transport recovered from by
    /// itself: see [`CardEntry::errors_total`].
    pub errors: AtomicU64,
    /// `errors` by kind (`fault`, `encode`, `create-session`, `reset`), for the metrics.
    pub error_kinds: Mutex<BTreeMap<&'static str, u64>>,
    /// The `Card.Errors` value last announced with `PropertiesChanged`.
    pub errors_announced: AtomicU64,
    /// Serialises resets.
    pub reset_lock: tokio::sync::Mutex<()>,
    /// Counts finished resets (successful or not): bumped by `health::reset_card` once the
    /// card's state after the reset is set. A card session created at epoch `E` is gone
    /// once the epoch is past `E` (a reset wipes every card session).
    pub resets: watch::Sender<u64>,
}

impl CardEntry {
    /// The number of resets the card has finished ([`CardEntry::resets`]).
    pub fn reset_epoch(&self) -> u64 {
        *self.resets.borrow()
    }

    /// Counts an error the daemon met on the card, of `kind` (`fault`: a device fault it
    /// reacted to; `encode`: a failed encode; `create-session`: a device fault creating a
    /// session; `reset`: a failed reset).
    pub fn count_error(&self, kind: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.error_kinds).entry(kind).or_insert(0) += 1;
    }

    /// The errors counted with [`CardEntry::count_error`], per kind.
    pub fn error_counts(&self) -> Vec<(&'static str, u64)> {
        lock(&self.error_kinds)
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect()
    }

    /// `Card.Errors`: the errors the daemon met ([`CardEntry::errors`]) plus what the
    /// transport detected and recovered from on its own, which no caller saw fail:
    /// completions found without their interrupt (lost interrupts) and completion entries
    /// naming no command in flight. Timeouts and bad completions of a command reach its
    /// caller as an error and are counted in `errors` when they lead to a fault, so they
    /// are not added again.
    pub fn errors_total(&self) -> u64 {
        let nvme = self.card.nvme_metrics();
        self.errors
            .load(Ordering::Relaxed)
            .saturating_add(nvme.lost_interrupts)
            .saturating_add(nvme.stray_completions)
    }

    /// What the scheduler needs to know of the card.
    pub fn limits(&self) -> CardLimits {
        let id = self.card.identity();
        CardLimits {
            engines: id.encode_engines,
            capacity_per_engine: id.capacity_per_engine,
            pixel_rate_per_engine: id.pixel_rate_per_engine,
            codecs: id.codecs.clone(),
            max_width: u32::from(id.max_width),
            max_height: u32::from(id.max_height),
            max_sessions: u32::from(id.encode_engines) * u32::from(id.max_sessions_per_engine),
            encoders: id
                .engines_of(EngineKind::Encode)
                .filter_map(|e| {
                    Some(EncoderLimits {
                        engine: e.engine,
                        codec: e.codec?,
                        capacity: e.capacity,
                        pixel_rate: e.pixel_rate,
                        max_width: u32::from(e.max_width),
                        max_height: u32::from(e.max_height),
                    })
                })
                .collect(),
        }
    }
}

impl CardEntry {
    /// What the card's decoders and scalers can do, if it has both (transcode ladders).
    pub fn transcode_limits(&self) -> Option<TranscodeLimits> {
        let id = self.card.identity();
        let decoders: Vec<_> = id
            .engines_of(EngineKind::Decode)
            .filter(|e| e.codec == Some(Codec::H264))
            .collect();
        let scalers: Vec<_> = id.engines_of(EngineKind::Scale).collect();
        // The weakest engine of each kind stands for all: a ladder may land on any.
        let decode_capacity = decoders.iter().map(|e| e.capacity).min()?;
        let decode_rate = decoders.iter().map(|e| e.pixel_rate).min()?;
        let scale_capacity = scalers.iter().map(|e| e.capacity).min()?;
        let scale_rate = scalers.iter().map(|e| e.pixel_rate).min()?;
        if decode_capacity == 0 || scale_capacity == 0 {
            return None;
        }
        Some(TranscodeLimits {
            decode_engines: decoders.len().min(usize::from(u8::MAX)) as u8,
            decode_capacity_per_engine: decode_capacity,
            decode_pixel_rate: decode_rate,
            scale_engines: scalers.len().min(usize::from(u8::MAX)) as u8,
            scale_capacity_per_engine: scale_capacity,
            scale_pixel_rate: scale_rate,
        })
    }
}

/// What a session's task is asked to do.
#[derive(Debug, Clone)]
pub enum Control {
    /// End the session.
    Close(CloseRequest),
    /// Move off card `card` (failing or being reset), if still on it with a card session
    /// made at reset epoch `epoch` or before (a session already back on the card after
    /// that reset stays).
    Migrate {
        card: usize,
        epoch: u64,
        reason: String,
    },
}

/// Asks a session's task to end.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    /// Sent to the client in an `ERROR` record; `None` for a normal end.
    pub code: Option<ErrorCode>,
    pub reason: String,
}

/// Counters of a session (`Session.FramesIn`, …).
#[derive(Debug, Default)]
pub struct SessionCounters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub keyframes: AtomicU64,
}

/// One rendition of a transcode session (`Session.Renditions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionInfo {
    pub width: u32,
    pub height: u32,
    pub bitrate: u32,
    /// Input frames between keyframes.
    pub gop: u32,
}

/// One live session.
#[derive(Debug)]
pub struct SessionEntry {
    /// `N` of `/org/vpud/Vpud1/session/N`.
    pub id: u64,
    pub path: OwnedObjectPath,
    /// Unique bus name of the creator.
    pub owner: String,
    /// What the session asks of a card (for placement when it moves or changes rate).
    pub demand: Mutex<Demand>,
    /// Set while the session moves to another card (`State` "migrating").
    pub migrating: AtomicBool,
    /// Set while the session, moving off a card being reset that no other card can take
    /// it from, waits for that reset to go back onto the card. `health::reset_card`
    /// neither waits for nor closes such a session.
    pub awaiting_reset: AtomicBool,
    /// The card it runs on (index into `Daemon::cards`) and its id there.
    pub card: AtomicUsize,
    pub card_session: AtomicU32,
    /// The card's reset epoch ([`CardEntry::reset_epoch`]) when the card session was
    /// created: once the card's epoch is past it, the card session is gone.
    pub card_epoch: AtomicU64,
    pub config: Mutex<SessionConfig>,
    /// A transcode session's renditions; empty for an encode session. A transcode
    /// session's `card_session` is its decoder and `config` its first rendition's.
    pub renditions: Vec<RenditionInfo>,
    pub counters: SessionCounters,
    /// Set by `RequestKeyframe`; the next frame is encoded as IDR.
    pub force_keyframe: AtomicBool,
    pub closed: AtomicBool,
    /// Off the books and the bus (see `session::retire`).
    pub retired: AtomicBool,
    pub control: mpsc::UnboundedSender<Control>,
    /// Becomes `true` once the session's resources are released.
    pub finished: watch::Receiver<bool>,
    /// Taken by `session::finish`.
    pub finished_tx: Mutex<Option<watch::Sender<bool>>>,
}

impl SessionEntry {
    pub fn card_index(&self) -> usize {
        self.card.load(Ordering::Acquire)
    }

    pub fn card_session_id(&self) -> SessionId {
        SessionId(self.card_session.load(Ordering::Acquire))
    }

    /// Asks the session's task to end; `false` if it already is ending.
    pub fn request_close(&self, code: Option<ErrorCode>, reason: &str) -> bool {
        if !self.begin_close() {
            return false;
        }
        self.send_close(code, reason);
        true
    }

    /// Marks the session as ending (`State` "closed"); `false` if it already was. The one
    /// who marks it tells its task with [`SessionEntry::send_close`].
    pub fn begin_close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Tells the session's task to end.
    pub fn send_close(&self, code: Option<ErrorCode>, reason: &str) {
        let _ = self.control.send(Control::Close(CloseRequest {
            code,
            reason: reason.to_owned(),
        }));
    }

    /// Asks the session's task to move off card `card`, which is being reset from epoch
    /// `epoch`; `false` if it is ending.
    pub fn request_migrate(&self, card: usize, epoch: u64, reason: &str) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.control
            .send(Control::Migrate {
                card,
                epoch,
                reason: reason.to_owned(),
            })
            .is_ok()
    }

    /// Whether a migration request for `card` at reset epoch `epoch` concerns this
    /// session: it is on that card, with a card session the reset wipes.
    pub fn migrate_applies(&self, card: usize, epoch: u64) -> bool {
        card == self.card_index() && epoch >= self.card_epoch.load(Ordering::Acquire)
    }

    /// The session's state as the API names it: `closed`, `migrating` or `running`.
    pub fn state_name(&self) -> &'static str {
        if self.closed.load(Ordering::Acquire) {
            "closed"
        } else if self.migrating.load(Ordering::Acquire) {
            "migrating"
        } else {
            "running"
        }
    }

    /// Waits until the session's resources are released.
    pub async fn wait_finished(&self) {
        let mut rx = self.finished.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// Why [`Daemon::insert_session`] did not add a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The owner left the bus.
    OwnerGone,
    /// The card was reset (or is being reset) since the card session was created, which
    /// wiped it.
    CardReset,
}

/// Everything the daemon shares between its tasks.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    pub cards: Vec<Arc<CardEntry>>,
    pub sched: Mutex<Scheduler>,
    pub sessions: Mutex<BTreeMap<u64, Arc<SessionEntry>>>,
    /// Unique names that left the bus, most recent last (bounded). Locked after
    /// `sessions` when both are held.
    departed: Mutex<Departed>,
    next_session: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Figures to announce.
    pub changes: Changes,
    conn: OnceLock<Connection>,
    pub shutting_down: AtomicBool,
    /// Channel socket pairs ready for the next sessions.
    pub spare_channels: Arc<SparePairs>,
}

impl Daemon {
    /// The state for `cards` (already opened), all online.
    pub fn new(config: Config, cards: Vec<Arc<CardEntry>>, metrics: Arc<Metrics>) -> Daemon {
        let mut sched = Scheduler::new(
            config.policy,
            config.scheduler.realtime_reserve_percent,
            config.scheduler.measured_load_weight,
            config.quotas.clone(),
        );
        for c in &cards {
            let index = sched.add_card(c.limits());
            sched.set_transcode_limits(index, c.transcode_limits());
        }
        Daemon {
            config,
            cards,
            sched: Mutex::new(sched),
            sessions: Mutex::new(BTreeMap::new()),
            departed: Mutex::new(Departed::default()),
            next_session: AtomicU64::new(0),
            metrics,
            changes: Changes::default(),
            conn: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            spare_channels: Arc::default(),
        }
    }

    /// Records the bus connection once it exists.
    pub fn set_connection(&self, conn: Connection) {
        let _ = self.conn.set(conn);
    }

    /// The bus connection (`None` before the daemon is on the bus).
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.get()
    }

    /// A new session number; never reused.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session(&self, id: u64) -> Option<Arc<SessionEntry>> {
        lock(&self.sessions).get(&id).cloned()
    }

    pub fn session_paths(&self) -> Vec<OwnedObjectPath> {
        lock(&self.sessions)
            .values()
            .map(|s| s.path.clone())
            .collect()
    }

    /// Adds a session, unless its owner has already left the bus or its card has been
    /// reset since `epoch` (the card's [`CardEntry::reset_epoch`] read before the card
    /// session was created) or is being reset: the session is then not added. Together with
    /// [`Daemon::owner_left`] this closes the race between a client's `CreateSession` and its
    /// departure; checking the card under the sessions lock closes the one with a reset
    /// (which marks the card `resetting` before it collects the card's sessions).
    pub fn insert_session(&self, entry: Arc<SessionEntry>, epoch: u64) -> Result<(), Refused> {
        let mut sessions = lock(&self.sessions);
        if lock(&self.departed).contains(&entry.owner) {
            return Err(Refused::OwnerGone);
        }
        let card = entry.card_index();
        let up = matches!(
            self.card_state(card),
            CardState::Online | CardState::Draining
        );
        if !up || self.cards.get(card).map(|c| c.reset_epoch()) != Some(epoch) {
            return Err(Refused::CardReset);
        }
        sessions.insert(entry.id, entry);
        Ok(())
    }

    /// Records that `owner` left the bus; returns its sessions.
    pub fn owner_left(&self, owner: &str) -> Vec<Arc<SessionEntry>> {
        let sessions = lock(&self.sessions);
        lock(&self.departed).insert(owner);
        sessions
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect()
    }

    /// Whether `name` was seen leaving the bus.
    pub fn has_departed(&self, name: &str) -> bool {
        lock(&self.departed).contains(name)
    }

    /// Sessions owned by `owner`.
    pub fn sessions_of(&self, owner: &str) -> Vec<Arc<SessionEntry>> {
        lock(&self.sessions)
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect()
    }

    /// Sessions running on card `card`.
    pub fn sessions_on(&self, card: usize) -> Vec<Arc<SessionEntry>> {
        lock(&self.sessions)
            .values()
            .filter(|s| s.card_index() == card)
            .cloned()
            .collect()
    }

    pub fn all_sessions(&self) -> Vec<Arc<SessionEntry>> {
        lock(&self.sessions).values().cloned().collect()
    }

    pub fn card_state(&self, card: usize) -> CardState {
        lock(&self.sched).state(card).unwrap_or(CardState::Offline)
    }

    /// Card index of an object path.
    pub fn card_by_path(&self, path: &str) -> Option<usize> {
        self.cards.iter().position(|c| c.path.as_str() == path)
    }
}

/// Unique names that left the bus. Unique names are never reused on a bus, so a name
/// seen leaving stays gone. The race this guards against lasts one `CreateSession` call,
/// so a name is remembered for [`Departed::KEEP_FOR`] and at most [`Departed::KEEP`] names
/// are held: memory stays bounded however many clients come and go. (A session created
/// for a name forgotten sooner still ends: the bus drops the reply carrying the client's
/// end of the channel, and the channel closing ends the session.)
#[derive(Debug, Default)]
struct Departed {
    order: std::collections::VecDeque<(std::time::Instant, Arc<str>)>,
    names: std::collections::HashSet<Arc<str>>,
}

impl Departed {
    const KEEP: usize = 65_536;
    const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(120);

    fn insert(&mut self, name: &str) {
        let now = std::time::Instant::now();
        while let Some((at, old)) = self.order.front() {
            if self.order.len() < Self::KEEP && now.duration_since(*at) < Self::KEEP_FOR {
                break;
            }
            self.names.remove(old);
            self.order.pop_front();
        }
        if !self.names.contains(name) {
            let name: Arc<str> = Arc::from(name);
            self.names.insert(Arc::clone(&name));
            self.order.push_back((now, name));
        }
        if self.order.len() * 4 < self.order.capacity() && self.order.capacity() > 1024 {
            self.order.shrink_to_fit();
            self.names.shrink_to_fit();
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}
