//! The `vpud` binary as a service: systemd readiness and watchdog, clean SIGTERM, the
//! error without cards, configuration errors, card administration (Drain, Resume, Reset)
//! and its authorisation.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpu_tests::daemon::*;
use vpud::config::Config;
use zbus::OwnedObjectPath;

fn vpud() -> Command {
    Command::new(workspace_binary("vpud").unwrap())
}

#[test]
fn without_cards_vpud_says_how_to_get_some() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vpud.toml");
    // No VFIO scan: this machine's PCI devices are not the test's business.
    std::fs::write(&cfg, "[vfio]\nenabled = false\n").unwrap();
    let out = vpud()
        .args(["--bus", "private", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vfio-pci") && err.contains("--emulate"),
        "{err}"
    );
}

#[test]
fn configuration_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vpud.toml");
    std::fs::write(&cfg, "[quotas]\nsessions = 3\n").unwrap();
    let out = vpud()
        .args([
            "--bus",
            "private",
            "--emulate",
            "1",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sessions") && err.contains("sessions_per_client"),
        "{err}"
    );
    // An explicit file that does not exist is an error too.
    let out = vpud()
        .args([
            "--bus",
            "private",
            "--emulate",
            "1",
            "--config",
            "/nonexistent/vpud.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vpud.toml"));
}

#[test]
fn systemd_readiness_watchdog_and_clean_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = vpud()
        .args(["--bus", "private", "--emulate", "1", "--print-address"])
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    let start = Instant::now();
    while !(seen.iter().any(|m: &String| m.starts_with("READY=1"))
        && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "got only {seen:?}"
        );
        let n = sock.recv(&mut buf).unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY comes first: the bus name is owned by then.
    assert!(seen[0].starts_with("READY=1"), "{seen:?}");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_resume_and_reset_cards() {
    let mut config = Config::default();
    config.scheduler.measured_load_weight = 0.0;
    let d = start(2, config).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let card0 = "/org/vpud/Vpud1/card/0";
    let call = |method: &'static str| {
        let conn = conn.clone();
        async move {
            conn.call_method(Some(BUS_NAME), card0, Some(CARD), method, &())
                .await
                .map(|_| ())
        }
    };
    call("Drain").await.unwrap();
    let state: String = property(&conn, card0, CARD, "State").await.unwrap();
    assert_eq!(state, "draining");
    for _ in 0..3 {
        let (path, _fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
        let card: OwnedObjectPath = property(&conn, path.as_str(), SESSION, "Card")
            .await
            .unwrap();
        assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/1");
    }
    call("Resume").await.unwrap();
    let state: String = property(&conn, card0, CARD, "State").await.unwrap();
    assert_eq!(state, "online");

    // A reset moves the card's sessions to the other card; the card comes back.
    let (path, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let card: OwnedObjectPath = property(&conn, path.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), card0);
    let mut ch = Channel::open(fd).await.unwrap();
    let clip = vpu_tests::clip::synthetic_clip(320, 240, 6);
    assert_eq!(ch.encode(&clip[..3]).await.unwrap().len(), 3);
    call("Reset").await.unwrap();
    let state: String = property(&conn, card0, CARD, "State").await.unwrap();
    assert_eq!(state, "online");
    let card: OwnedObjectPath = property(&conn, path.as_str(), SESSION, "Card")
        .await
        .unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/1");
    let packets = ch.encode(&clip[3..]).await.unwrap();
    assert_eq!(packets.iter().map(|p| p.pts).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(
        packets[0].keyframe,
        "the first frame after a move is a keyframe"
    );
    // New sessions work on the reset card.
    call("Drain").await.unwrap();
    let e = conn
        .call_method(
            Some(BUS_NAME),
            "/org/vpud/Vpud1/card/1",
            Some(CARD),
            "Drain",
            &(),
        )
        .await;
    e.unwrap();
    let e = create_session(&conn, &params(320, 240, 30))
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.NoCapacity")
    );
    call("Resume").await.unwrap();
    let (p, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let card: OwnedObjectPath = property(&conn, p.as_str(), SESSION, "Card").await.unwrap();
    assert_eq!(card.as_str(), card0);
    let mut ch = Channel::open(fd).await.unwrap();
    assert_eq!(ch.encode(&clip).await.unwrap().len(), 6);
}

/// Card administration by a caller who is not root, with no polkit on the bus, is refused
/// with a message naming the polkit action; Manager calls stay open to everyone the bus
/// lets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_administration_needs_root_or_polkit() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let d = start(1, Config::default()).await.unwrap();
    // Let an unprivileged user reach the private bus socket.
    let bus_dir = std::path::Path::new(d.address().trim_start_matches("unix:path="))
        .parent()
        .unwrap()
        .to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bus_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(bus_dir.join("bus"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let addr = format!("--address={}", d.address().split(',').next().unwrap());
    let as_nobody = |args: Vec<String>| {
        let mut full = vec![
            "--reuid=65534".to_owned(),
            "--regid=65534".to_owned(),
            "--clear-groups".to_owned(),
            "busctl".to_owned(),
        ];
        full.extend(args);
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            run_async("setpriv", &refs).await.unwrap()
        }
    };
    let (ok, _, err) = as_nobody(vec![
        addr.clone(),
        "call".into(),
        BUS_NAME.into(),
        "/org/vpud/Vpud1/card/0".into(),
        CARD.into(),
        "Drain".into(),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("org.vpud.Vpud1.manage-cards"), "{err}");
    let (ok, out, err) = as_nobody(vec![
        addr,
        "get-property".into(),
        BUS_NAME.into(),
        ROOT.into(),
        MANAGER.into(),
        "Capacity".into(),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("2000000"), "{out}");
    assert_eq!(d.daemon().metrics.errors("AccessDenied"), 1);
    let conn = connect(&d).await.unwrap();
    let state: String = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "State")
        .await
        .unwrap();
    assert_eq!(state, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_daemon_tells_every_session() {
    let d = start(1, Config::default()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (path, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let mut closed = session_signals(&conn, path.as_str(), Some("Closed"))
        .await
        .unwrap();
    let ch = Channel::open(fd).await.unwrap();
    let emu = d.daemon().cards[0].emulator.clone().unwrap();
    d.stop().await.unwrap();
    // The session's Closed signal went out before the daemon left the bus.
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut closed),
    )
    .await
    .expect("Closed before the daemon stopped")
    .unwrap()
    .unwrap();
    let reason: String = m.body().deserialize().unwrap();
    assert!(reason.contains("the daemon is stopping"), "{reason}");
    match ch.recv().await.unwrap() {
        Some(vpud::channel::proto::DaemonRecord::Error { code, .. }) => {
            assert_eq!(code, vpud::channel::proto::ErrorCode::Shutdown as u32)
        }
        other => panic!("expected a shutdown error, got {other:?}"),
    }
    assert!(ch.recv().await.unwrap().is_none());
    // The card was shut down: nothing of the session is mapped any more.
    assert_eq!(emu.dma_mappings(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faster_frame_rate_must_fit_the_card() {
    let mut config = Config::default();
    config.scheduler.measured_load_weight = 0.0;
    let d = start(1, config).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (path, _fd) = create_session(&conn, &params(1920, 1080, 30))
        .await
        .unwrap();
    let reconfigure = |num: u32| {
        let conn = conn.clone();
        let path = path.clone();
        async move {
            let p = std::collections::HashMap::from([(
                "framerate_num".to_owned(),
                owned(zbus::Variant::U32(num)),
            )]);
            conn.call_method(
                Some(BUS_NAME),
                path.as_str(),
                Some(SESSION),
                "Reconfigure",
                &(p,),
            )
            .await
            .map(|_| ())
        }
    };
    reconfigure(60).await.unwrap();
    let load: u64 = property(&conn, ROOT, MANAGER, "Load").await.unwrap();
    assert_eq!(load, 562_500);
    // Fill the rest of the card, then ask for more than is left.
    let _others: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(
                create_session(&conn, &params(1920, 1080, 60))
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let e = reconfigure(120).await.unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.NoCapacity"),
        "{e}"
    );
    let load: u64 = property(&conn, ROOT, MANAGER, "Load").await.unwrap();
    assert_eq!(load, 3 * 562_500);
}
