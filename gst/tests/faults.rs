//! `vpuh264enc` when vpud fails it: the daemon killed mid-stream ends the pipeline with an
//! error within 2 s, a hung one after the element's `timeout`; a card without capacity
//! fails the state change with a readable message; no daemon on the bus fails it at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{init, pipeline, wait_until, Daemon};
use gst::prelude::*;
use vpud::bus::PrivateBus;
use vpud_client::{Client, ClientError, SessionParams};

/// A `vpud` child process on `bus` with one emulated card, once it serves.
fn spawn_vpud(bus: &str) -> Child {
    let mut child = Command::new(common::vpud_binary())
        .args(["--bus", bus, "--emulate", "1", "--print-address"])
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

/// A live 640x360 source into `vpuh264enc` (on `bus`, with `properties`), playing and
/// past its 30th encoded frame.
fn playing_live(bus: &str, properties: &str) -> gst::Pipeline {
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! vpuh264enc bus-address={bus} {properties} ! fakesink name=sink"
    ));
    let out = Arc::new(AtomicU64::new(0));
    let o = out.clone();
    p.by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            o.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    p.set_state(gst::State::Playing).unwrap();
    wait_until("30 encoded frames", Duration::from_secs(60), || {
        out.load(Ordering::Relaxed) >= 30
    });
    p
}

/// The first error message on the bus within `within`.
fn next_error(p: &gst::Pipeline, within: Duration) -> Option<String> {
    let msg = p.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_mseconds(within.as_millis() as u64),
        &[gst::MessageType::Error],
    )?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    }
}

#[test]
fn vpud_killed_mid_stream_ends_the_pipeline_with_an_error_within_2_s() {
    init();
    let bus = PrivateBus::start().unwrap();
    let mut vpud = spawn_vpud(bus.address());
    // A live source: without the error the pipeline would run for ever.
    let p = playing_live(bus.address(), "");
    vpud.kill().unwrap();
    let killed = Instant::now();
    vpud.wait().unwrap();
    let error = next_error(&p, Duration::from_secs(10)).expect("no error after vpud died");
    let took = killed.elapsed();
    p.set_state(gst::State::Null).unwrap();
    assert!(
        took < Duration::from_secs(2),
        "the error took {took:?}: {error}"
    );
    assert!(error.contains("vpud stopped encoding"), "{error}");
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to `child`.
fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {}", child.id());
}

#[test]
fn a_hung_vpud_ends_the_pipeline_with_an_error_after_the_timeout() {
    init();
    let bus = PrivateBus::start().unwrap();
    let mut vpud = spawn_vpud(bus.address());
    let p = playing_live(bus.address(), "timeout=1000");
    // Stopped, not killed: its sockets stay open and nothing ever comes back.
    signal(&vpud, "STOP");
    let hung = Instant::now();
    let error = next_error(&p, Duration::from_secs(10));
    let took = hung.elapsed();
    // The pipeline stops even though vpud still holds the channel open.
    let stopped = p.set_state(gst::State::Null);
    signal(&vpud, "KILL");
    vpud.wait().unwrap();
    let error = error.expect("no error while vpud was stopped");
    stopped.unwrap();
    assert!(error.contains("did not answer for 1000 ms"), "{error}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the error took {took:?}: {error}"
    );
}

#[test]
fn no_capacity_fails_the_state_change_with_a_readable_message() {
    init();
    let daemon = Daemon::start(1);
    // Fill the card with 720p sessions of another client.
    let client = daemon
        .rt
        .block_on(Client::connect(Some(&daemon.address())))
        .unwrap();
    let mut held = Vec::new();
    loop {
        let params = SessionParams::h264(1280, 720, 30);
        match daemon.rt.block_on(client.create_session(&params)) {
            Ok(s) => held.push(s),
            Err(ClientError::NoCapacity(_)) => break,
            Err(e) => panic!("filling the card: {e}"),
        }
        assert!(held.len() < 100, "the card never filled");
    }
    let p = pipeline(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=1280,height=720,framerate=30/1 \
         ! vpuh264enc bus-address={} ! fakesink",
        daemon.address()
    ));
    let _ = p.set_state(gst::State::Playing);
    let (result, _, _) = p.state(gst::ClockTime::from_seconds(30));
    let error = next_error(&p, Duration::from_secs(1));
    p.set_state(gst::State::Null).unwrap();
    assert!(result.is_err(), "the state change succeeded: {result:?}");
    let error = error.expect("no error message");
    assert!(
        error.contains("no VPU card has capacity for an H.264 encode of 1280x720"),
        "{error}"
    );
    drop(held);
}

#[test]
fn no_daemon_on_the_bus_fails_the_state_change_at_once() {
    init();
    let bus = PrivateBus::start().unwrap();
    let p = pipeline(&format!(
        "videotestsrc num-buffers=30 ! vpuh264enc bus-address={} ! fakesink",
        bus.address()
    ));
    let result = p.set_state(gst::State::Paused);
    let error = next_error(&p, Duration::from_secs(1));
    p.set_state(gst::State::Null).unwrap();
    assert!(result.is_err(), "{result:?}");
    let error = error.expect("no error message");
    assert!(error.contains("cannot reach vpud"), "{error}");
}
