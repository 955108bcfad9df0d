//! Publishing changes: objects added and removed, and `PropertiesChanged` for the
//! properties that change, one signal per object carrying every property that changed
//! (values read from the daemon's state, not through the interface objects). The core
//! records what changed in `service::changes`; [`publish`] announces it here. Failures to
//! signal are logged and counted; they never fail the operation that caused them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::{ObjectPath, Variant};

use super::reservation::ReservationIface;
use super::session::SessionIface;
use crate::scheduler::CardState;
use crate::service::changes::Change;
use crate::service::reservation::{self, ReserveError};
use crate::service::state::{lock, Daemon, SessionEntry, ROOT_PATH};

const MANAGER: &str = "org.vpud.Vpud1.Manager";
const CARD: &str = "org.vpud.Vpud1.Card";
const SESSION: &str = "org.vpud.Vpud1.Session";
const RESERVATION: &str = "org.vpud.Vpud1.Reservation";

fn log_err(daemon: &Daemon, what: &str, r: zbus::Result<()>) {
    if let Err(e) = r {
        daemon.metrics.error("dbus.signal");
        tracing::debug!(error = %e, what, "emitting a change signal failed");
    }
}

/// One `PropertiesChanged` signal for `interface` at `path`.
async fn changed(
    daemon: &Daemon,
    path: &str,
    interface: &'static str,
    props: HashMap<&str, Variant<'_>>,
) {
    let Some(conn) = daemon.connection() else {
        return;
    };
    let r = async {
        let emitter = SignalEmitter::new(conn, path)?;
        zbus::fdo::Properties::properties_changed(
            &emitter,
            InterfaceName::from_static_str_unchecked(interface),
            props,
            Cow::Borrowed(&[]),
        )
        .await
    }
    .await;
    log_err(daemon, interface, r);
}

/// Manager.Sessions, Load and Capacity.
async fn manager(daemon: &Daemon) {
    let (load, capacity) = {
        let s = lock(&daemon.sched);
        (s.total_load(), s.total_capacity())
    };
    let sessions: Vec<ObjectPath<'static>> = daemon
        .session_paths()
        .into_iter()
        .map(|p| p.into_inner())
        .collect();
    let mut props = HashMap::new();
    props.insert("Sessions", Variant::from(sessions));
    props.insert("Load", Variant::U64(load));
    props.insert("Capacity", Variant::U64(capacity));
    changed(daemon, ROOT_PATH, MANAGER, props).await;
}

/// Card.Load and Card.ActiveSessions of one card.
async fn card_figures(daemon: &Daemon, card: usize) {
    if let Some(c) = daemon.cards.get(card) {
        let (load, sessions) = {
            let s = lock(&daemon.sched);
            (s.card_load(card), s.card_sessions(card))
        };
        let mut props = HashMap::new();
        props.insert("Load", Variant::U64(load));
        props.insert("ActiveSessions", Variant::U32(sessions));
        changed(daemon, c.path.as_str(), CARD, props).await;
    }
}

/// Reservation.Used of the reservations on one card.
async fn reservations_used(daemon: &Daemon, card: usize) {
    let used: Vec<(u64, u64)> = {
        let s = lock(&daemon.sched);
        s.reservations_on(card)
            .into_iter()
            .filter_map(|id| s.reservation(id).map(|r| (id, r.used)))
            .collect()
    };
    for (id, used) in used {
        let path = crate::service::reservation::path(id);
        let mut props = HashMap::new();
        props.insert("Used", Variant::U64(used));
        changed(daemon, path.as_str(), RESERVATION, props).await;
    }
}

/// Card.Errors.
async fn card_errors(daemon: &Daemon, card: usize) {
    if let Some(c) = daemon.cards.get(card) {
        let mut props = HashMap::new();
        props.insert("Errors", Variant::U64(c.errors_total()));
        changed(daemon, c.path.as_str(), CARD, props).await;
    }
}

/// Card.State (as it became), Load, ActiveSessions and Errors, and the Manager's figures.
async fn card_state(daemon: &Daemon, card: usize, state: CardState) {
    if let Some(c) = daemon.cards.get(card) {
        let (load, sessions) = {
            let s = lock(&daemon.sched);
            (s.card_load(card), s.card_sessions(card))
        };
        let mut props = HashMap::new();
        props.insert("State", Variant::from(state.as_str()));
        props.insert("Errors", Variant::U64(c.errors_total()));
        props.insert("Load", Variant::U64(load));
        props.insert("ActiveSessions", Variant::U32(sessions));
        changed(daemon, c.path.as_str(), CARD, props).await;
    }
    manager(daemon).await;
}

/// Puts a new session on the bus (`InterfacesAdded`); its card's and the Manager's
/// figures are announced by [`publish`], off the caller's reply path.
pub async fn session_added(daemon: &Arc<Daemon>, entry: &Arc<SessionEntry>) -> zbus::Result<()> {
    let Some(conn) = daemon.connection() else {
        return Err(zbus::Error::Failure("the daemon is not on the bus".into()));
    };
    let iface = SessionIface {
        daemon: Arc::clone(daemon),
        entry: Arc::clone(entry),
    };
    conn.object_server().at(entry.path.clone(), iface).await?;
    daemon.changes.card(entry.card_index());
    Ok(())
}

/// Puts reservation `id`, just made for `owner`, on the bus; its path. When that fails,
/// the reservation is given back. If the owner left (or released it) meanwhile, the
/// object goes again and the caller hears that the owner is gone.
pub async fn reservation_added(
    daemon: &Arc<Daemon>,
    id: u64,
    owner: &str,
) -> Result<zbus::OwnedObjectPath, ReserveError> {
    let path = reservation::path(id);
    let published = match daemon.connection() {
        Some(conn) => {
            let iface = ReservationIface {
                daemon: Arc::clone(daemon),
                id,
                path: path.clone(),
            };
            conn.object_server().at(path.clone(), iface).await
        }
        None => Err(zbus::Error::Failure("the daemon is not on the bus".into())),
    };
    if let Err(e) = published {
        reservation::abandon(daemon, id);
        return Err(e.into());
    }
    // Its release was announced before the object existed: the object goes now.
    if !reservation::stands(daemon, id) {
        reservation_removed(daemon, &path).await;
        return Err(ReserveError::OwnerGone {
            owner: owner.to_owned(),
        });
    }
    Ok(path)
}

/// Removes an ended reservation's object (`InterfacesRemoved`). An object that is not
/// there (removed already, or its release raced its publication) is not an error.
pub(super) async fn reservation_removed(daemon: &Daemon, path: &zbus::OwnedObjectPath) {
    let Some(conn) = daemon.connection() else {
        return;
    };
    match conn
        .object_server()
        .remove::<ReservationIface, _>(path.clone())
        .await
    {
        Ok(_) | Err(zbus::Error::InterfaceNotFound) => {}
        Err(e) => {
            daemon.metrics.error("dbus.remove-object");
            tracing::warn!(error = %e, path = %path, "removing the reservation object failed");
        }
    }
}

/// Session counters (FramesIn, FramesOut, BytesOut, Keyframes).
async fn session_counters(daemon: &Daemon, entry: &SessionEntry) {
    let c = &entry.counters;
    let mut props = HashMap::new();
    props.insert(
        "FramesIn",
        Variant::U64(c.frames_in.load(Ordering::Relaxed)),
    );
    props.insert(
        "FramesOut",
        Variant::U64(c.frames_out.load(Ordering::Relaxed)),
    );
    props.insert(
        "BytesOut",
        Variant::U64(c.bytes_out.load(Ordering::Relaxed)),
    );
    props.insert(
        "Keyframes",
        Variant::U64(c.keyframes.load(Ordering::Relaxed)),
    );
    changed(daemon, entry.path.as_str(), SESSION, props).await;
}

/// Session.State (as it became).
async fn session_state(daemon: &Daemon, entry: &SessionEntry, state: &'static str) {
    let mut props = HashMap::new();
    props.insert("State", Variant::from(state));
    changed(daemon, entry.path.as_str(), SESSION, props).await;
}

/// Session.Bitrate.
async fn session_bitrate(daemon: &Daemon, entry: &SessionEntry) {
    let mut props = HashMap::new();
    props.insert("Bitrate", Variant::U32(lock(&entry.config).bitrate));
    changed(daemon, entry.path.as_str(), SESSION, props).await;
}

/// Announces the end of a session (`Closed(reason)`) and removes its object
/// (`InterfacesRemoved`). The card's and the Manager's figures follow through [`publish`].
async fn session_removed(daemon: &Daemon, entry: &SessionEntry, reason: &str, card: Option<usize>) {
    let Some(conn) = daemon.connection() else {
        return;
    };
    match SignalEmitter::new(conn, entry.path.as_str()) {
        Ok(e) => log_err(
            daemon,
            "Session.Closed",
            SessionIface::closed(&e, reason).await,
        ),
        Err(e) => log_err(daemon, "Session.Closed", Err(e)),
    }
    if let Err(e) = conn
        .object_server()
        .remove::<SessionIface, _>(entry.path.clone())
        .await
    {
        daemon.metrics.error("dbus.remove-object");
        tracing::warn!(error = %e, session = entry.id, "removing the session object failed");
    }
    match card {
        Some(card) => daemon.changes.card(card),
        None => daemon.changes.manager(),
    }
}

/// Announces that a session moved (`Migrated`, `Card` changed) and the two cards' loads.
async fn session_migrated(daemon: &Daemon, entry: &SessionEntry, from: usize, to: usize) {
    if let (Some(f), Some(t)) = (daemon.cards.get(from), daemon.cards.get(to)) {
        let mut props = HashMap::new();
        props.insert("Card", Variant::ObjectPath(t.path.as_ref()));
        changed(daemon, entry.path.as_str(), SESSION, props).await;
        if let Some(conn) = daemon.connection() {
            let r = match SignalEmitter::new(conn, entry.path.as_str()) {
                Ok(e) => SessionIface::migrated(&e, f.path.as_ref(), t.path.as_ref()).await,
                Err(e) => Err(e),
            };
            log_err(daemon, "Session.Migrated", r);
        }
    }
    card_figures(daemon, from).await;
    card_figures(daemon, to).await;
    manager(daemon).await;
}

/// How long changes are gathered before they are announced: a burst of sessions created
/// or closed yields one `PropertiesChanged` per object, not one per session.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);

/// Announces one event.
async fn announce(daemon: &Daemon, change: Change) {
    match change {
        Change::CardState { card, state } => card_state(daemon, card, state).await,
        Change::CardErrors { card } => card_errors(daemon, card).await,
        Change::SessionCounters { session } => session_counters(daemon, &session).await,
        Change::SessionState { session, state } => session_state(daemon, &session, state).await,
        Change::SessionBitrate { session } => session_bitrate(daemon, &session).await,
        Change::SessionMigrated { session, from, to } => {
            session_migrated(daemon, &session, from, to).await
        }
        Change::SessionRemoved {
            session,
            reason,
            card,
        } => session_removed(daemon, &session, &reason, card).await,
        Change::ReservationRemoved { path } => reservation_removed(daemon, &path).await,
    }
}

/// Announces what the daemon records in `service::changes` until the daemon stops: events
/// at once and in order; changed figures (card load and sessions, the Manager's sessions,
/// load and capacity) after [`COALESCE`], one signal per object for a burst.
/// Once `stop` turns true, what is still recorded (the `Closed` of the sessions the daemon
/// ended on its way out) is announced, and publishing ends.
pub async fn publish(daemon: Arc<Daemon>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = daemon.changes.notify.notified() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        for change in daemon.changes.take_events() {
            announce(&daemon, change).await;
        }
        if stopping {
            return;
        }
        if !daemon.changes.figures_pending() {
            continue;
        }
        tokio::time::sleep(COALESCE).await;
        // Events recorded meanwhile go first: figures are read now, after them.
        for change in daemon.changes.take_events() {
            announce(&daemon, change).await;
        }
        let (cards, manager_changed) = daemon.changes.take_figures();
        for card in cards {
            card_figures(&daemon, card).await;
            reservations_used(&daemon, card).await;
        }
        if manager_changed {
            manager(&daemon).await;
        }
    }
}
