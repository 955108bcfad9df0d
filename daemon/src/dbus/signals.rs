//! Publishing changes: objects added and removed, and `PropertiesChanged` for the
//! properties that change. Failures to signal are logged and counted; they never fail
//! the operation that caused them.

use std::sync::Arc;

use zbus::object_server::InterfaceRef;

use super::card::CardIface;
use super::manager::ManagerIface;
use super::session::SessionIface;
use crate::service::state::{Daemon, SessionEntry, ROOT_PATH};

fn log_err(daemon: &Daemon, what: &str, r: zbus::Result<()>) {
    if let Err(e) = r {
        daemon.metrics.error("dbus.signal");
        tracing::debug!(error = %e, what, "emitting a change signal failed");
    }
}

async fn manager(daemon: &Daemon) -> Option<InterfaceRef<ManagerIface>> {
    let conn = daemon.connection()?;
    conn.object_server()
        .interface::<_, ManagerIface>(ROOT_PATH)
        .await
        .ok()
}

async fn card_ref(daemon: &Daemon, card: usize) -> Option<InterfaceRef<CardIface>> {
    let conn = daemon.connection()?;
    let path = daemon.cards.get(card)?.path.clone();
    conn.object_server()
        .interface::<_, CardIface>(path)
        .await
        .ok()
}

/// Manager.Load and Manager.Capacity.
pub async fn manager_load(daemon: &Daemon) {
    if let Some(m) = manager(daemon).await {
        let iface = m.get().await;
        log_err(
            daemon,
            "Manager.Load",
            iface.load_changed(m.signal_emitter()).await,
        );
        log_err(
            daemon,
            "Manager.Capacity",
            iface.capacity_changed(m.signal_emitter()).await,
        );
    }
}

/// Card.Load and Card.ActiveSessions of one card, and the Manager's load.
pub async fn card_load(daemon: &Daemon, card: usize) {
    if let Some(c) = card_ref(daemon, card).await {
        let iface = c.get().await;
        log_err(
            daemon,
            "Card.Load",
            iface.load_changed(c.signal_emitter()).await,
        );
        log_err(
            daemon,
            "Card.ActiveSessions",
            iface.active_sessions_changed(c.signal_emitter()).await,
        );
    }
    manager_load(daemon).await;
}

/// Card.State and Card.Errors, and the Manager's capacity.
pub async fn card_state(daemon: &Daemon, card: usize) {
    if let Some(c) = card_ref(daemon, card).await {
        let iface = c.get().await;
        log_err(
            daemon,
            "Card.State",
            iface.state_changed(c.signal_emitter()).await,
        );
        log_err(
            daemon,
            "Card.Errors",
            iface.errors_changed(c.signal_emitter()).await,
        );
    }
    manager_load(daemon).await;
}

/// Puts a new session on the bus and announces it.
pub async fn session_added(daemon: &Arc<Daemon>, entry: &Arc<SessionEntry>) -> zbus::Result<()> {
    let Some(conn) = daemon.connection() else {
        return Err(zbus::Error::Failure("the daemon is not on the bus".into()));
    };
    let iface = SessionIface {
        daemon: Arc::clone(daemon),
        entry: Arc::clone(entry),
    };
    conn.object_server().at(entry.path.clone(), iface).await?;
    if let Some(m) = manager(daemon).await {
        let iface = m.get().await;
        log_err(
            daemon,
            "Manager.Sessions",
            iface.sessions_changed(m.signal_emitter()).await,
        );
    }
    card_load(daemon, entry.card_index()).await;
    Ok(())
}

/// Session counters (FramesIn, FramesOut, BytesOut, Keyframes).
pub async fn session_counters(daemon: &Daemon, entry: &SessionEntry) {
    let Some(conn) = daemon.connection() else {
        return;
    };
    let Ok(s) = conn
        .object_server()
        .interface::<_, SessionIface>(entry.path.clone())
        .await
    else {
        return;
    };
    let iface = s.get().await;
    let e = s.signal_emitter();
    log_err(daemon, "Session.FramesIn", iface.frames_in_changed(e).await);
    log_err(
        daemon,
        "Session.FramesOut",
        iface.frames_out_changed(e).await,
    );
    log_err(daemon, "Session.BytesOut", iface.bytes_out_changed(e).await);
    log_err(
        daemon,
        "Session.Keyframes",
        iface.keyframes_changed(e).await,
    );
}

/// Announces the end of a session (`State` "closed", `Closed(reason)`) and removes its
/// object.
pub async fn session_removed(
    daemon: &Daemon,
    entry: &SessionEntry,
    reason: &str,
    card: Option<usize>,
) {
    let Some(conn) = daemon.connection() else {
        return;
    };
    let server = conn.object_server();
    if let Ok(s) = server
        .interface::<_, SessionIface>(entry.path.clone())
        .await
    {
        let e = s.signal_emitter();
        {
            let iface = s.get().await;
            log_err(
                daemon,
                "Session.FramesOut",
                iface.frames_out_changed(e).await,
            );
            log_err(daemon, "Session.State", iface.state_changed(e).await);
        }
        log_err(
            daemon,
            "Session.Closed",
            SessionIface::closed(e, reason).await,
        );
    }
    if let Err(e) = server.remove::<SessionIface, _>(entry.path.clone()).await {
        daemon.metrics.error("dbus.remove-object");
        tracing::warn!(error = %e, session = entry.id, "removing the session object failed");
    }
    if let Some(m) = manager(daemon).await {
        let iface = m.get().await;
        log_err(
            daemon,
            "Manager.Sessions",
            iface.sessions_changed(m.signal_emitter()).await,
        );
    }
    if let Some(card) = card {
        card_load(daemon, card).await;
    }
}

/// Announces that a session moved (`Migrated`, `Card` changed) and the two cards' loads.
pub async fn session_migrated(daemon: &Daemon, entry: &SessionEntry, from: usize, to: usize) {
    if let Some(conn) = daemon.connection() {
        if let Ok(s) = conn
            .object_server()
            .interface::<_, SessionIface>(entry.path.clone())
            .await
        {
            let e = s.signal_emitter();
            {
                let iface = s.get().await;
                log_err(daemon, "Session.Card", iface.card_changed(e).await);
            }
            if let (Some(f), Some(t)) = (daemon.cards.get(from), daemon.cards.get(to)) {
                log_err(
                    daemon,
                    "Session.Migrated",
                    SessionIface::migrated(e, f.path.as_ref(), t.path.as_ref()).await,
                );
            }
        }
    }
    card_load(daemon, from).await;
    card_load(daemon, to).await;
}

/// Session.State (running, migrating, closed).
pub async fn session_state(daemon: &Daemon, entry: &SessionEntry) {
    let Some(conn) = daemon.connection() else {
        return;
    };
    if let Ok(s) = conn
        .object_server()
        .interface::<_, SessionIface>(entry.path.clone())
        .await
    {
        let iface = s.get().await;
        log_err(
            daemon,
            "Session.State",
            iface.state_changed(s.signal_emitter()).await,
        );
    }
}
