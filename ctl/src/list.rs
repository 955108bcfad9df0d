//! `vpuctl status`, `cards` and `sessions`: tables or JSON.

use serde::Serialize;

use super::table::{bitrate, Table};
use super::CtlError;
use vpud_client::{CardInfo, Client, ManagerInfo, SessionInfo};

/// What `vpuctl status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub bus: String,
    pub daemon: ManagerInfo,
    pub cards: Vec<CardInfo>,
}

/// `vpuctl status`.
pub async fn status(client: &Client, json: bool) -> Result<String, CtlError> {
    let report = StatusReport {
        bus: client.bus().to_string(),
        daemon: client.manager_info().await?,
        cards: client.cards().await?,
    };
    if json {
        return to_json(&report);
    }
    let d = &report.daemon;
    let mut out = format!(
        "vpud {} on {}\npolicy {}, {} card(s), {} session(s), load {} of {} ({})\n\n",
        d.version,
        report.bus,
        d.policy,
        d.cards,
        d.sessions,
        d.load,
        d.capacity,
        percent(d.load, d.capacity)
    );
    out.push_str(&cards_table(&report.cards).render());
    Ok(out)
}

/// `vpuctl cards`.
pub async fn cards(client: &Client, json: bool) -> Result<String, CtlError> {
    let cards = client.cards().await?;
    if json {
        return to_json(&cards);
    }
    if cards.is_empty() {
        return Ok("no cards\n".into());
    }
    let mut t = Table::new(&[
        "card", "name", "backend", "pci", "model", "serial", "firmware", "codecs", "engines",
        "sessions", "load", "capacity", "state", "errors",
    ]);
    for c in &cards {
        t.row(vec![
            card_index(&c.path),
            c.name.clone(),
            c.backend.clone(),
            c.pci_address.clone(),
            c.model.clone(),
            c.serial.clone(),
            c.firmware_version.clone(),
            c.codecs.join(","),
            c.engines.to_string(),
            c.active_sessions.to_string(),
            percent(c.load, c.capacity),
            c.capacity.to_string(),
            c.state.clone(),
            c.errors.to_string(),
        ]);
    }
    Ok(t.render())
}

/// `vpuctl sessions`.
pub async fn sessions(client: &Client, json: bool) -> Result<String, CtlError> {
    let sessions = client.sessions().await?;
    if json {
        return to_json(&sessions);
    }
    if sessions.is_empty() {
        return Ok("no sessions\n".into());
    }
    Ok(sessions_table(&sessions).render())
}

fn sessions_table(sessions: &[SessionInfo]) -> Table {
    let mut t = Table::new(&[
        "session",
        "owner",
        "card",
        "codec",
        "size",
        "bitrate",
        "state",
        "in",
        "out",
        "bytes",
        "keyframes",
    ]);
    for s in sessions {
        t.row(vec![
            last_segment(&s.path),
            s.owner.clone(),
            card_index(&s.card),
            s.codec.clone(),
            format!("{}x{}", s.width, s.height),
            bitrate(f64::from(s.bitrate)),
            s.state.clone(),
            s.frames_in.to_string(),
            s.frames_out.to_string(),
            s.bytes_out.to_string(),
            s.keyframes.to_string(),
        ]);
    }
    t
}

fn cards_table(cards: &[CardInfo]) -> Table {
    let mut t = Table::new(&[
        "card", "name", "backend", "state", "engines", "sessions", "load", "errors",
    ]);
    for c in cards {
        t.row(vec![
            card_index(&c.path),
            c.name.clone(),
            c.backend.clone(),
            c.state.clone(),
            c.engines.to_string(),
            c.active_sessions.to_string(),
            percent(c.load, c.capacity),
            c.errors.to_string(),
        ]);
    }
    t
}

/// `load` as a percentage of `capacity`.
pub fn percent(load: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".into();
    }
    format!("{:.1}%", load as f64 * 100.0 / capacity as f64)
}

/// The `N` of `/org/vpud/Vpud1/card/N`.
pub fn card_index(path: &str) -> String {
    last_segment(path)
}

fn last_segment(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn to_json<T: Serialize>(value: &T) -> Result<String, CtlError> {
    let mut s = serde_json::to_string_pretty(value).map_err(CtlError::Json)?;
    s.push('\n');
    Ok(s)
}
