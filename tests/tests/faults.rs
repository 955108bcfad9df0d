//! Card faults injected through `org.vpud.Vpud1.Emulator.InjectFault` while a session is
//! encoding: the session moves to the other card (`Migrated`), the client's output has
//! every frame exactly once in pts order and decodes cleanly, and the failed card is reset
//! and comes back. With no other card, the session waits for the reset and goes back onto
//! the card; if the reset fails, it ends with `card-failed`.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use futures_util::StreamExt;
use vpu_tests::clip::synthetic_clip;
use vpu_tests::daemon::*;
use vpu_tests::decode::decode_openh264;
use vpud::channel::proto::{ErrorCode, WirePacket};
use vpud::config::Config;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

fn config() -> Config {
    let mut c = Config::default();
    c.timeouts.command_ms = 500;
    // No engine-log reads: the injected fault meets the session's own commands.
    c.scheduler.load_sample_interval_ms = 60_000;
    c.scheduler.measured_load_weight = 0.0;
    c
}

async fn inject(
    conn: &zbus::Connection,
    card: &str,
    kind: &str,
    opts: HashMap<String, OwnedVariant>,
) {
    conn.call_method(
        Some(BUS_NAME),
        card,
        Some("org.vpud.Vpud1.Emulator"),
        "InjectFault",
        &(kind, opts),
    )
    .await
    .unwrap();
}

/// Encodes the 40-frame clip on `ch`, injecting `kind` into card 0 after 10 frames;
/// checks every frame came back once, in pts order, and the stream decodes to 40 frames.
async fn encode_through(
    conn: &zbus::Connection,
    ch: &mut Channel,
    kind: &str,
    opts: HashMap<String, OwnedVariant>,
) -> Vec<WirePacket> {
    let clip = synthetic_clip(320, 240, 40);
    let mut packets = ch.encode(&clip[..10]).await.unwrap();
    inject(conn, "/org/vpud/Vpud1/card/0", kind, opts).await;
    packets.extend(ch.encode(&clip[10..]).await.unwrap());
    let pts: Vec<u64> = packets.iter().map(|p| p.pts).collect();
    assert_eq!(
        pts,
        (0..40).collect::<Vec<u64>>(),
        "{kind}: every frame once, in order"
    );
    let stream: Vec<u8> = packets.iter().flat_map(|p| p.data.clone()).collect();
    assert_eq!(
        decode_openh264(&stream).unwrap().len(),
        40,
        "{kind}: decodes to every frame"
    );
    packets
}

/// A 320x240 session, placed on card 0 (the first of the free cards).
async fn session_on_card_0(conn: &zbus::Connection) -> (OwnedObjectPath, OwnedFd) {
    let (path, fd) = create_session(conn, &params(320, 240, 30)).await.unwrap();
    let card: OwnedObjectPath = property(conn, path.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/0");
    (path, fd)
}

/// Encodes 40 frames on card 0, injecting `kind` after 10; checks the session moved to
/// card 1 with every frame delivered once, and card 0 ends in `final_state`.
async fn survives(kind: &str, opts: HashMap<String, OwnedVariant>, final_state: &str) {
    let d = start(2, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (path, fd) = session_on_card_0(&conn).await;
    let mut migrated = session_signals(&conn, path.as_str(), Some("Migrated"))
        .await
        .unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    encode_through(&conn, &mut ch, kind, opts).await;
    let signal = tokio::time::timeout(Duration::from_secs(5), migrated.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (from, to): (OwnedObjectPath, OwnedObjectPath) = signal.body().deserialize().unwrap();
    assert_eq!(
        (from.as_str(), to.as_str()),
        ("/org/vpud/Vpud1/card/0", "/org/vpud/Vpud1/card/1")
    );
    let card: OwnedObjectPath = property(&conn, path.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/1");
    assert_eq!(ch.finish().await.unwrap(), (40, 40));
    // The failed card is reset and back in service (or out of it, if it is gone), its
    // errors counted.
    eventually(Duration::from_secs(10), || async {
        let s: String = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "State").await?;
        Ok(s == final_state)
    })
    .await
    .unwrap();
    let errors: u64 = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "Errors")
        .await
        .unwrap();
    assert!(errors > 0, "{kind}: errors counted");
    assert!(d.daemon().metrics.errors("card.fault") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_status_moves_the_session() {
    survives("fatal-status", HashMap::new(), "online").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_engines_move_the_session() {
    survives("hang-engine", HashMap::new(), "online").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surprise_removal_moves_the_session() {
    // A removed card cannot be brought back: it is marked failed.
    survives("surprise-removal", HashMap::new(), "failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_completions_move_the_session() {
    let mut o = HashMap::new();
    o.insert("count".to_owned(), owned(Variant::U32(1)));
    survives("corrupt-completion", o, "online").await;
}

/// The health monitor reads each card's status register every 100 ms; commands would
/// take a minute to time out.
fn monitored() -> Config {
    let mut c = Config::default();
    c.timeouts.command_ms = 60_000;
    c.scheduler.load_sample_interval_ms = 100;
    c.scheduler.measured_load_weight = 0.0;
    c
}

/// A controller that reports a fatal status completes nothing more, so a card with no
/// command in flight would never time one out: the health monitor finds the status in
/// the card's registers, resets the card and puts it back in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cards_fatal_status_is_found_and_the_card_reset() {
    let d = start(1, monitored()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let card = "/org/vpud/Vpud1/card/0";
    inject(&conn, card, "fatal-status", HashMap::new()).await;
    let took = eventually(Duration::from_secs(10), || async {
        let errors: u64 = property(&conn, card, CARD, "Errors").await?;
        let state: String = property(&conn, card, CARD, "State").await?;
        Ok(errors > 0 && state == "online")
    })
    .await
    .unwrap();
    eprintln!("idle card reset and back after {took:?}");
    // The card serves sessions again.
    let (_path, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    let packets = ch.encode(&synthetic_clip(320, 240, 5)).await.unwrap();
    assert_eq!(packets.len(), 5);
    assert_eq!(ch.finish().await.unwrap(), (5, 5));
}

/// A session whose frames are on a card that failed moves when the monitor finds the
/// card's status, not a command timeout (a minute) later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_leaves_a_failed_card_before_its_commands_time_out() {
    let d = start(2, monitored()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (path, fd) = session_on_card_0(&conn).await;
    let mut signals = session_signals(&conn, path.as_str(), None).await.unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        encode_through(&conn, &mut ch, "fatal-status", HashMap::new()),
    )
    .await
    .expect("the session moved before its commands timed out");
    let (member, _) = next_signal(&mut signals).await;
    assert_eq!(member, "Migrated");
    assert_eq!(ch.finish().await.unwrap(), (40, 40));
}

async fn next_signal(stream: &mut zbus::MessageStream) -> (String, zbus::Message) {
    let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (m.header().member().unwrap().to_string(), m)
}

/// With no other card, a session on a card that faults waits for the card's reset and
/// goes back onto it: `Migrated(card, card)`, every frame once in order.
async fn returns_after_the_reset(kind: &str) {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (path, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let mut signals = session_signals(&conn, path.as_str(), None).await.unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    let packets = encode_through(&conn, &mut ch, kind, HashMap::new()).await;
    assert!(
        packets[10..].iter().any(|p| p.keyframe),
        "{kind}: a keyframe after the reset"
    );
    let (member, m) = next_signal(&mut signals).await;
    assert_eq!(member, "Migrated", "{kind}");
    let (from, to): (OwnedObjectPath, OwnedObjectPath) = m.body().deserialize().unwrap();
    assert_eq!(
        (from.as_str(), to.as_str()),
        ("/org/vpud/Vpud1/card/0", "/org/vpud/Vpud1/card/0"),
        "{kind}"
    );
    assert_eq!(ch.finish().await.unwrap(), (40, 40));
    let state: String = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "State")
        .await
        .unwrap();
    assert_eq!(state, "online", "{kind}");
    let errors: u64 = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "Errors")
        .await
        .unwrap();
    assert!(errors > 0, "{kind}: errors counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_card_the_session_returns_after_fatal_status() {
    returns_after_the_reset("fatal-status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_card_the_session_returns_after_a_hang() {
    returns_after_the_reset("hang-engine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_card_and_a_failed_reset_the_session_ends_with_card_failed() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (path, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let mut signals = session_signals(&conn, path.as_str(), None).await.unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    let clip = synthetic_clip(320, 240, 10);
    ch.encode(&clip[..5]).await.unwrap();
    inject(
        &conn,
        "/org/vpud/Vpud1/card/0",
        "surprise-removal",
        HashMap::new(),
    )
    .await;
    let err = ch.encode(&clip[5..]).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("channel error {}", ErrorCode::CardFailed as u32)),
        "{err}"
    );
    let (member, m) = next_signal(&mut signals).await;
    assert_eq!(member, "Closed");
    let reason: String = m.body().deserialize().unwrap();
    assert!(
        reason.contains("no other card could take the session") && reason.contains("failed"),
        "{reason}"
    );
    eventually(Duration::from_secs(10), || async {
        let s: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await?;
        let state: String = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "State").await?;
        Ok(s.is_empty() && state == "failed")
    })
    .await
    .unwrap();
}
