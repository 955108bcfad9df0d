//! Faults met by the real `vpuctl encode`: a daemon with two emulated cards on a private
//! bus, `vpuctl encode` reading a generated Y4M clip from a pipe, and `vpuctl inject`
//! striking the card the session is on once the session has delivered frames. The output
//! must hold every frame (`ffprobe -count_frames`) and decode cleanly (`ffmpeg`, Debian
//! package `ffmpeg`); faults must show in the card's `Errors` count, read and announced.
//! With one card, a fault the reset cures sends the session back onto the card
//! (`Migrated` from the card to itself) and the output is complete; a card that does not
//! come back ends the session with `Closed` and a reason, which `vpuctl` reports.
//!
//! Also a daemon killed under its client: the client's next send or receive fails
//! promptly, and a new daemon on the same bus serves new sessions.

#![allow(clippy::unwrap_used)]

mod common;

use common::{decodes_cleanly, probe, write_y4m};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use vpu_driver::media::TestPattern;
use vpud::bus::PrivateBus;
use vpud::config::Config;
use vpud::service::Embedded;
use vpud_client::{Client, SessionParams};
use zbus::OwnedObjectPath;
use zbus::OwnedVariant;

const VPUCTL: &str = env!("CARGO_BIN_EXE_vpuctl");
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
/// Long enough that the fault lands mid-encode, however fast the machine (`vpuctl` reads
/// regular files only, so the clip cannot be paced through a pipe).
const FRAMES: u64 = 1200;
/// The fault waits until this many frames came out encoded.
const BEFORE: u64 = 30;
const DEADLINE: Duration = Duration::from_secs(120);
const SESSION: &str = "org.vpud.Vpud1.Session";
const CARD: &str = "org.vpud.Vpud1.Card";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

fn config() -> Config {
    let mut c = Config::default();
    // Hung commands are noticed within seconds, with room for a loaded machine.
    c.timeouts.command_ms = 1500;
    // No engine-log reads: the injected fault meets the session's own commands.
    c.scheduler.load_sample_interval_ms = 60_000;
    c.scheduler.measured_load_weight = 0.0;
    c
}

/// Polls `check` every 20 ms until it returns a value or `within` passes.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `vpuctl encode` of the clip struck by a fault: what it printed and wrote, and what the
/// bus said about its session and card.
struct Struck {
    daemon: Embedded,
    client: Client,
    _dir: tempfile::TempDir,
    output: PathBuf,
    /// The session's and its card's object paths.
    session: String,
    card: OwnedObjectPath,
    errors_before: u64,
    /// `Migrated` and `Closed` of the session, from before the fault.
    session_signals: zbus::MessageStream,
    /// `PropertiesChanged` of the card, from before the fault.
    card_signals: zbus::MessageStream,
    out: Output,
}

/// A stream of the signals of `interface` at `path`.
async fn signals(conn: &zbus::Connection, path: &str, interface: &str) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path(path.to_owned())
        .interface(interface.to_owned())
        .build()
        .unwrap();
    zbus::MessageStream::for_match_rule(rule, conn, std::num::NonZeroUsize::new(256))
        .await
        .unwrap()
}

/// Encodes the clip with `vpuctl encode` against a daemon with `cards` emulated cards,
/// injecting `kind` (with `extra` flags) into the session's card after `BEFORE` frames
/// came out, and waits for `vpuctl` to exit.
async fn encode_with_fault(cards: u32, kind: &str, extra: &[&str]) -> Struck {
    let daemon = Embedded::start(cards, config()).await.unwrap();
    let bus = daemon.address().to_string();
    let client = Client::connect(Some(&bus)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.h264");
    let input = dir.path().join("clip.y4m");
    write_y4m(&input, WIDTH, HEIGHT, FRAMES);

    let child = Command::new(VPUCTL)
        .args(["--bus", &bus, "encode"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(["--bitrate", "500k", "--gop", "30"])
        .env_remove("VPUD_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The session vpuctl opened, once it has delivered BEFORE frames.
    let session = wait_for("the session's first frames", DEADLINE, || async {
        let sessions = client.sessions().await.ok()?;
        let s = sessions.into_iter().find(|s| s.frames_out >= BEFORE)?;
        Some((s.path, s.card, s.frames_out))
    })
    .await;
    let (session, card, out_at_fault) = session;
    let card_path = OwnedObjectPath::try_from(card.clone()).unwrap();
    let session_signals = signals(client.connection(), &session, SESSION).await;
    let card_signals = signals(client.connection(), &card, PROPERTIES).await;
    let errors_before = client.card_info(&card_path).await.unwrap().errors;

    let mut args = vec!["--bus", &bus, "inject", &card, kind];
    args.extend_from_slice(extra);
    let inject = Command::new(VPUCTL)
        .args(&args)
        .env_remove("VPUD_BUS_ADDRESS")
        .output()
        .unwrap();
    assert!(
        inject.status.success(),
        "vpuctl inject {kind}: {}",
        String::from_utf8_lossy(&inject.stderr)
    );

    // The fault struck while the session was encoding, not after it.
    assert!(
        out_at_fault < FRAMES - BEFORE,
        "{kind}: the encode was nearly done ({out_at_fault} frames) before the fault"
    );
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind}: vpuctl encode did not finish"))
    .unwrap();
    Struck {
        daemon,
        client,
        _dir: dir,
        output,
        session,
        card: card_path,
        errors_before,
        session_signals,
        card_signals,
        out,
    }
}

impl Struck {
    /// `vpuctl` succeeded, and its output has every frame and decodes cleanly.
    fn assert_complete(&self, kind: &str) {
        let stdout = String::from_utf8_lossy(&self.out.stdout);
        let stderr = String::from_utf8_lossy(&self.out.stderr);
        assert!(
            self.out.status.success(),
            "{kind}: vpuctl encode failed: {stdout}{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{kind}: {stderr}");
        assert!(
            stdout.contains(&format!("{FRAMES} frames {WIDTH}x{HEIGHT}")),
            "{kind}: {stdout}"
        );
        assert_eq!(
            probe(&self.output).3,
            FRAMES,
            "{kind}: frames in the output"
        );
        decodes_cleanly(&self.output);
    }

    /// The card's `Errors` rose, and a `PropertiesChanged` of the card said so.
    async fn assert_errors_counted(&mut self, kind: &str) {
        let before = self.errors_before;
        let errors = wait_for("the card's error count", DEADLINE, || async {
            let e = self.client.card_info(&self.card).await.ok()?.errors;
            (e > before).then_some(e)
        })
        .await;
        assert!(errors > before, "{kind}");
        let signalled = tokio::time::timeout(DEADLINE, async {
            while let Some(m) = self.card_signals.next().await {
                let m = m.unwrap();
                if m.header().member().map(|n| n.as_str()) != Some("PropertiesChanged") {
                    continue;
                }
                let (iface, changed, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
                    m.body().deserialize().unwrap();
                if iface != CARD {
                    continue;
                }
                if let Some(e) = changed.get("Errors") {
                    let e = u64::try_from(e).unwrap();
                    if e > before {
                        return e;
                    }
                }
            }
            panic!("{kind}: the card's signal stream ended");
        })
        .await
        .unwrap_or_else(|_| panic!("{kind}: no PropertiesChanged announced the errors"));
        assert!(signalled > before, "{kind}");
    }

    /// The next `Migrated` or `Closed` of the session: (member, body).
    async fn next_session_signal(&mut self, kind: &str) -> zbus::Message {
        tokio::time::timeout(DEADLINE, self.session_signals.next())
            .await
            .unwrap_or_else(|_| panic!("{kind}: no signal from the session"))
            .unwrap()
            .unwrap()
    }

    /// The session is gone with vpuctl; the daemon stops.
    async fn finish(self) {
        let (client, session) = (&self.client, &self.session);
        wait_for("the session to close", DEADLINE, || async {
            let sessions = client.sessions().await.ok()?;
            (!sessions.iter().any(|s| &s.path == session)).then_some(())
        })
        .await;
        drop(self.client);
        self.daemon.stop().await.unwrap();
    }
}

/// Encodes the clip with `vpuctl encode` against a two-card daemon, injecting `kind` (with
/// `extra` flags) into the session's card after `BEFORE` frames came out. `counted` says
/// whether the fault must show in the card's `Errors` (read, and announced).
async fn encode_through(kind: &str, extra: &[&str], counted: bool) {
    let mut struck = encode_with_fault(2, kind, extra).await;
    struck.assert_complete(kind);
    if counted {
        // The fault is counted on the card it struck (the reset may still be running).
        struck.assert_errors_counted(kind).await;
    }
    struck.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_hang_engine() {
    encode_through("hang-engine", &[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_lost_interrupt() {
    // One interrupt lost while other frames are in flight is made up for by the next
    // one: the host cannot tell it from interrupt coalescing, and nothing is lost. Losing
    // as many interrupts in a row as the emulated card's window of frames in flight (8)
    // leaves the session's queue silent with completions posted: the transport's sweep
    // finds them, and the card's Errors counts it.
    encode_through("lost-interrupt", &["--count", "16"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_fatal_status() {
    encode_through("fatal-status", &[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_corrupt_completion() {
    encode_through("corrupt-completion", &["--count", "1"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_slow_engine() {
    // A slow engine is not a fault to recover from: the encode only takes longer.
    encode_through("slow-engine", &["--duration-ms", "2000"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_surprise_removal() {
    encode_through("surprise-removal", &[], true).await;
}

/// With one card, a fault the reset cures: the session waits for the reset and goes back
/// onto the card (`Migrated` from the card to itself), and the output is complete.
async fn encode_through_reset_of_the_only_card(kind: &str) {
    let mut struck = encode_with_fault(1, kind, &[]).await;
    struck.assert_complete(kind);
    let m = struck.next_session_signal(kind).await;
    assert_eq!(
        m.header().member().map(|n| n.to_string()).as_deref(),
        Some("Migrated"),
        "{kind}"
    );
    let (from, to): (OwnedObjectPath, OwnedObjectPath) = m.body().deserialize().unwrap();
    assert_eq!(from, struck.card, "{kind}: Migrated from");
    assert_eq!(to, struck.card, "{kind}: Migrated to");
    struck.assert_errors_counted(kind).await;
    let state = struck.client.card_info(&struck.card).await.unwrap().state;
    assert_eq!(state, "online", "{kind}");
    struck.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_fatal_status_of_the_only_card() {
    encode_through_reset_of_the_only_card("fatal-status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_through_hang_engine_of_the_only_card() {
    encode_through_reset_of_the_only_card("hang-engine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_of_the_only_card_ends_the_session_with_a_reason() {
    let kind = "surprise-removal";
    let mut struck = encode_with_fault(1, kind, &[]).await;
    // The client's channel says the card failed; vpuctl reports it and fails.
    let stderr = String::from_utf8_lossy(&struck.out.stderr).into_owned();
    assert!(
        !struck.out.status.success(),
        "{kind}: vpuctl encode succeeded"
    );
    assert!(!stderr.contains("panicked"), "{kind}: {stderr}");
    assert!(stderr.contains("card-failed"), "{kind}: {stderr}");
    // The session ends with Closed and a reason: no card could take it and the reset
    // did not bring the card back.
    let m = struck.next_session_signal(kind).await;
    assert_eq!(
        m.header().member().map(|n| n.to_string()).as_deref(),
        Some("Closed"),
        "{kind}"
    );
    let reason: String = m.body().deserialize().unwrap();
    assert!(
        reason.contains("no other card could take the session") && reason.contains("failed"),
        "{kind}: {reason}"
    );
    assert!(
        stderr.contains("no other card could take the session"),
        "{kind}: {stderr}"
    );
    let info = struck.client.card_info(&struck.card).await.unwrap();
    assert_eq!(info.state, "failed", "{kind}");
    assert!(info.errors > struck.errors_before, "{kind}");
    struck.finish().await;
}

/// A `vpud` child process on `bus` with two emulated cards, once it serves.
fn spawn_vpud(bus: &str) -> Child {
    let mut child = Command::new(common::vpud_binary())
        .args(["--bus", bus, "--emulate", "2", "--print-address"])
        .env("VPUD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), bus, "vpud did not report serving");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_daemon_fail_promptly_and_a_new_daemon_serves() {
    let bus = PrivateBus::start().unwrap();
    let mut vpud = spawn_vpud(bus.address());
    let client = Client::connect(Some(bus.address())).await.unwrap();
    let params = SessionParams::h264(WIDTH, HEIGHT, 30);
    let pattern = TestPattern::new(WIDTH, HEIGHT);
    let mut session = client.create_session(&params).await.unwrap();
    for n in 0..5 {
        session
            .send_frame(&pattern.frame(n), n, false)
            .await
            .unwrap();
    }
    let packets = session.drain().await.unwrap();
    assert_eq!(packets.len(), 5);

    vpud.kill().unwrap();
    vpud.wait().unwrap();

    // The next send, or the receive after it, fails; neither hangs.
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        for n in 5..20 {
            if let Err(e) = session.send_frame(&pattern.frame(n), n, false).await {
                return e;
            }
            if let Err(e) = session.next_packet().await {
                return e;
            }
        }
        panic!("15 frames went to a killed daemon without an error");
    })
    .await
    .expect("the client hung on a killed daemon");
    assert!(!failed.to_string().is_empty());

    // A new daemon on the same bus serves new sessions, to the same client.
    let mut vpud = spawn_vpud(bus.address());
    let mut session = wait_for("a session on the new daemon", DEADLINE, || async {
        client.create_session(&params).await.ok()
    })
    .await;
    for n in 0..10 {
        session
            .send_frame(&pattern.frame(n), n, false)
            .await
            .unwrap();
    }
    let packets = session.drain().await.unwrap();
    assert_eq!(packets.len(), 10);
    assert!(packets[0].keyframe);
    session.close().await.unwrap();
    vpud.kill().unwrap();
    vpud.wait().unwrap();
}
