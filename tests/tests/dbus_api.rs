//! Whole-system tests of vpud's D-Bus API (`dbus-api.md`): a private `dbus-daemon` per
//! test, vpud with emulated cards on it, and real clients — `gdbus` and `busctl` as
//! subprocesses, zbus connections, and data-channel clients speaking the wire format.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use vpu_tests::clip::synthetic_clip;
use vpu_tests::daemon::*;
use vpu_tests::decode::decode_openh264;
use vpu_tests::quality::mean_psnr;
use vpud::channel::proto::{ClientRecord, DaemonRecord, ErrorCode, FrameRef};
use vpud::config::{Config, Policy};
use zbus::{OwnedObjectPath, Variant};

fn config() -> Config {
    Config::default()
}

async fn card_of(conn: &zbus::Connection, session: &OwnedObjectPath) -> String {
    let p: OwnedObjectPath = property(conn, session.as_str(), SESSION, "Card")
        .await
        .unwrap();
    p.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_matches_the_shipped_xml() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (session, _channel) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let reservation = reserve(&conn, 1000, None).await.unwrap();
    let paths = [
        ROOT,
        "/org/vpud/Vpud1/card/0",
        session.as_str(),
        reservation.as_str(),
    ];
    let mut served = HashMap::new();
    for path in paths {
        let (ok, xml, err) = run_async(
            "gdbus",
            &[
                "introspect",
                "--address",
                d.address(),
                "--dest",
                BUS_NAME,
                "--object-path",
                path,
                "--xml",
            ],
        )
        .await
        .unwrap();
        assert!(ok, "gdbus introspect {path}: {err}");
        served.extend(vpud_interfaces(&xml));
        // busctl reads the same objects.
        let (ok, out, err) = run_async(
            "busctl",
            &[
                &format!("--address={}", d.address()),
                "introspect",
                BUS_NAME,
                path,
            ],
        )
        .await
        .unwrap();
        assert!(
            ok && out.contains("org.vpud.Vpud1."),
            "busctl introspect {path}: {err}"
        );
    }
    let dist = workspace_root().join("daemon/dist/org.vpud.Vpud1.xml");
    // VPUD_BLESS=1 rewrites the shipped file from what the daemon serves (its one-line
    // comments, which the comparison ignores, are then to be written again).
    if std::env::var_os("VPUD_BLESS").is_some() {
        let mut names: Vec<_> = served.keys().cloned().collect();
        names.sort();
        let mut xml = String::from(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- vpud's D-Bus API, version 1 (bus name org.vpud.Vpud1). See dbus-api.md. -->\n<node>\n",
        );
        for path in paths {
            let (_, x, _) = run_async(
                "gdbus",
                &[
                    "introspect",
                    "--address",
                    d.address(),
                    "--dest",
                    BUS_NAME,
                    "--object-path",
                    path,
                    "--xml",
                ],
            )
            .await
            .unwrap();
            let mut rest = x.as_str();
            while let Some(s) = rest.find("<interface name=\"org.vpud.Vpud1.") {
                let block = &rest[s..];
                let e = block.find("</interface>").unwrap() + "</interface>".len();
                let name = block["<interface name=\"".len()..]
                    .split('"')
                    .next()
                    .unwrap();
                if !xml.contains(&format!("<interface name=\"{name}\">")) {
                    xml.push_str("  ");
                    xml.push_str(&block[..e]);
                    xml.push('\n');
                }
                rest = &block[e..];
            }
        }
        xml.push_str("</node>\n");
        std::fs::write(&dist, xml).unwrap();
    }
    let shipped = vpud_interfaces(&std::fs::read_to_string(&dist).unwrap());
    let mut names: Vec<_> = served.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "org.vpud.Vpud1.Card",
            "org.vpud.Vpud1.Emulator",
            "org.vpud.Vpud1.Manager",
            "org.vpud.Vpud1.Reservation",
            "org.vpud.Vpud1.Session"
        ]
    );
    for name in names {
        assert_eq!(
            served[&name], shipped[&name],
            "interface {name} differs from {dist:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_invalid_argument_errors() {
    let d = start(1, config()).await.unwrap();
    let addr = d.address().to_owned();
    // gdbus: a string where a uint32 belongs.
    let (ok, _, err) = run_async(
        "gdbus",
        &[
            "call",
            "--address",
            &addr,
            "--dest",
            BUS_NAME,
            "--object-path",
            ROOT,
            "--method",
            "org.vpud.Vpud1.Manager.CreateSession",
            "{'width': <'wide'>}",
        ],
    )
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("org.vpud.Vpud1.Error.InvalidArgument"),
        "{err}"
    );
    assert!(err.contains("width must be of type u"), "{err}");
    // busctl: an unknown key; its message lists the accepted keys.
    let (ok, _, err) = run_async(
        "busctl",
        &[
            &format!("--address={addr}"),
            "call",
            BUS_NAME,
            ROOT,
            MANAGER,
            "CreateSession",
            "a{sv}",
            "1",
            "colour",
            "s",
            "red",
        ],
    )
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("unknown key \"colour\"") && err.contains("framerate_num"),
        "{err}"
    );
    // zbus: out of range.
    let conn = connect(&d).await.unwrap();
    let mut p = params(640, 360, 30);
    p.insert("qp".into(), owned(Variant::U32(99)));
    let e = create_session(&conn, &p).await.unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.InvalidArgument")
    );
    assert_eq!(d.daemon().metrics.errors("InvalidArgument"), 3);
    // A fault kind that does not exist.
    let e = conn
        .call_method(
            Some(BUS_NAME),
            "/org/vpud/Vpud1/card/0",
            Some("org.vpud.Vpud1.Emulator"),
            "InjectFault",
            &("melt", HashMap::<String, zbus::OwnedVariant>::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.InvalidArgument")
    );
    // Nothing reached a card.
    let sessions: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await.unwrap();
    assert!(sessions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_across_two_cards_encode_decodable_streams() {
    let d = start(2, config()).await.unwrap();
    let sizes = [(320u32, 240u32), (352, 288), (320, 180), (256, 144)];
    let mut tasks = Vec::new();
    for (w, h) in sizes {
        let addr = d.address().to_owned();
        tasks.push(tokio::spawn(async move {
            let conn = zbus::connection::Builder::address(addr.as_str())
                .build()
                .await
                .unwrap();
            let (path, fd) = create_session(&conn, &params(w, h, 30)).await.unwrap();
            let card = card_of(&conn, &path).await;
            let mut ch = Channel::open(fd).await.unwrap();
            assert_eq!((ch.hello.width, ch.hello.height), (w, h));
            let clip = synthetic_clip(w, h, 20);
            let packets = ch.encode(&clip).await.unwrap();
            let (fin, fout) = ch.finish().await.unwrap();
            assert_eq!((fin, fout), (20, 20));
            assert_eq!(packets.len(), 20);
            assert!(packets.iter().enumerate().all(|(i, p)| p.pts == i as u64));
            assert!(packets[0].keyframe);
            let stream: Vec<u8> = packets.iter().flat_map(|p| p.data.clone()).collect();
            let decoded = decode_openh264(&stream).unwrap();
            assert_eq!(decoded.len(), 20);
            let psnr = mean_psnr(&clip, &decoded);
            assert!(psnr > 30.0, "{w}x{h}: PSNR {psnr}");
            card
        }));
    }
    let mut cards = Vec::new();
    for t in tasks {
        cards.push(t.await.unwrap());
    }
    cards.sort();
    cards.dedup();
    assert_eq!(cards.len(), 2, "spread uses both cards: {cards:?}");
}

async fn placements(policy: Policy) -> Vec<String> {
    let mut c = config();
    c.policy = policy;
    // Idle sessions measure no load; rank by the model alone for a predictable order.
    c.scheduler.measured_load_weight = 0.0;
    let d = start(2, c).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let mut keep = Vec::new();
    let mut cards = Vec::new();
    for _ in 0..4 {
        let (path, fd) = create_session(&conn, &params(1280, 720, 30)).await.unwrap();
        cards.push(card_of(&conn, &path).await);
        keep.push(fd);
    }
    let policy_name: String = property(&conn, ROOT, MANAGER, "Policy").await.unwrap();
    assert_eq!(policy_name, policy.as_str());
    cards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_alternates_cards_and_pack_fills_one() {
    let c0 = "/org/vpud/Vpud1/card/0".to_owned();
    let c1 = "/org/vpud/Vpud1/card/1".to_owned();
    assert_eq!(
        placements(Policy::Spread).await,
        [c0.clone(), c1.clone(), c0.clone(), c1]
    );
    assert_eq!(
        placements(Policy::Pack).await,
        [c0.clone(), c0.clone(), c0.clone(), c0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capacity_is_refused_before_any_card_is_touched() {
    let mut c = config();
    // No engine-log reads while the test counts the card's completions, and the load is
    // the model's.
    c.scheduler.load_sample_interval_ms = 60_000;
    c.scheduler.measured_load_weight = 0.0;
    let d = start(1, c).await.unwrap();
    let conn = connect(&d).await.unwrap();
    // 2160p60 takes a whole engine; the card has two.
    let big = params(3840, 2160, 60);
    let _a = create_session(&conn, &big).await.unwrap();
    let _b = create_session(&conn, &big).await.unwrap();
    let capacity: u64 = property(&conn, ROOT, MANAGER, "Capacity").await.unwrap();
    let load: u64 = property(&conn, ROOT, MANAGER, "Load").await.unwrap();
    let sessions: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await.unwrap();
    assert_eq!(
        load,
        capacity,
        "sessions {sessions:?} errors {:?}",
        d.daemon().metrics.error_counts()
    );
    let emu = d.daemon().cards[0].emulator.clone().unwrap();
    let before = emu.counters().completions;
    let e = create_session(&conn, &params(640, 360, 30))
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.NoCapacity"),
        "{e}"
    );
    assert_eq!(emu.counters().completions, before, "the card saw a command");
    let sessions: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await.unwrap();
    assert_eq!(sessions.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_limit_each_client() {
    let mut c = config();
    c.quotas.sessions_per_client = 2;
    let d = start(2, c).await.unwrap();
    let a = connect(&d).await.unwrap();
    let b = connect(&d).await.unwrap();
    let _s1 = create_session(&a, &params(320, 240, 30)).await.unwrap();
    let (s2, fd2) = create_session(&a, &params(320, 240, 30)).await.unwrap();
    let e = create_session(&a, &params(320, 240, 30)).await.unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.QuotaExceeded"),
        "{e}"
    );
    // Another client has its own quota.
    let _s3 = create_session(&b, &params(320, 240, 30)).await.unwrap();
    // Closing a session frees quota.
    session_call(&a, s2.as_str(), "Close").await.unwrap();
    drop(fd2);
    let _s4 = create_session(&a, &params(320, 240, 30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_loses_its_sessions_within_a_second() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let emu = d.daemon().cards[0].emulator.clone().unwrap();
    let mappings_idle = emu.dma_mappings();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vpu-hold-session"))
        .arg(d.address())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let path = lines.next_line().await.unwrap().unwrap();
    assert!(path.starts_with("/org/vpud/Vpud1/session/"));
    let load: u64 = property(&conn, ROOT, MANAGER, "Load").await.unwrap();
    assert!(load > 0);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        let s: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await?;
        let load: u64 = property(&conn, ROOT, MANAGER, "Load").await?;
        Ok(s.is_empty() && load == 0)
    })
    .await
    .unwrap();
    eprintln!("sessions of the killed client gone after {took:?}");
    let _ = child.wait().await;
    let card_load: u64 = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "Load")
        .await
        .unwrap();
    let active: u32 = property(&conn, "/org/vpud/Vpud1/card/0", CARD, "ActiveSessions")
        .await
        .unwrap();
    assert_eq!((card_load, active), (0, 0));
    // The card session and its mappings go right after the session leaves the bus.
    eventually(Duration::from_secs(1), || async {
        Ok(emu.dma_mappings() == mappings_idle)
    })
    .await
    .expect("DMA mappings released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_channel_closes_the_session() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let emu = d.daemon().cards[0].emulator.clone().unwrap();
    for _ in 0..2 {
        let (path, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
        let mut ch = Channel::open(fd).await.unwrap();
        ch.encode(&synthetic_clip(320, 240, 3)).await.unwrap();
        let frames_in: u64 = property(&conn, path.as_str(), SESSION, "FramesIn")
            .await
            .unwrap();
        assert_eq!(frames_in, 3);
        // The driver's buffer pools keep what they grew to; the session's own mapping (its
        // frame memfd) must go with it.
        let open_mappings = emu.dma_mappings();
        let mut closed = session_signals(&conn, path.as_str(), Some("Closed"))
            .await
            .unwrap();
        drop(ch);
        let took = eventually(Duration::from_secs(1), || async {
            let s: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await?;
            Ok(s.is_empty())
        })
        .await
        .unwrap();
        eprintln!("session closed {took:?} after its channel");
        let signal = tokio::time::timeout(
            Duration::from_secs(1),
            futures_util::StreamExt::next(&mut closed),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        let reason: String = signal.body().deserialize().unwrap();
        assert!(reason.contains("channel"), "{reason}");
        eventually(Duration::from_secs(1), || async {
            Ok(emu.dma_mappings() == open_mappings - 1)
        })
        .await
        .expect("the frame buffer unmapped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_controls_a_session() {
    let d = start(1, config()).await.unwrap();
    let owner = connect(&d).await.unwrap();
    let other = connect(&d).await.unwrap();
    let (path, _fd) = create_session(&owner, &params(320, 240, 30)).await.unwrap();
    for method in ["Close", "RequestKeyframe"] {
        let e = session_call(&other, path.as_str(), method)
            .await
            .unwrap_err();
        assert_eq!(
            error_name(&e).as_deref(),
            Some("org.vpud.Vpud1.Error.AccessDenied"),
            "{e}"
        );
    }
    let e = other
        .call_method(
            Some(BUS_NAME),
            path.as_str(),
            Some(SESSION),
            "Reconfigure",
            &(HashMap::from([(
                "bitrate".to_owned(),
                owned(Variant::U32(500_000)),
            )]),),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&e).as_deref(),
        Some("org.vpud.Vpud1.Error.AccessDenied")
    );
    // Properties are public; the owner's calls work.
    let who: String = property(&other, path.as_str(), SESSION, "Owner")
        .await
        .unwrap();
    assert_eq!(who, owner.unique_name().unwrap().as_str());
    owner
        .call_method(
            Some(BUS_NAME),
            path.as_str(),
            Some(SESSION),
            "Reconfigure",
            &(HashMap::from([(
                "bitrate".to_owned(),
                owned(Variant::U32(500_000)),
            )]),),
        )
        .await
        .unwrap();
    let bitrate: u32 = property(&owner, path.as_str(), SESSION, "Bitrate")
        .await
        .unwrap();
    assert_eq!(bitrate, 500_000);
    session_call(&owner, path.as_str(), "Close").await.unwrap();
    let e = session_call(&owner, path.as_str(), "Close")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("UnknownObject")
            || error_name(&e).as_deref() == Some("org.vpud.Vpud1.Error.NotFound"),
        "the closed session's object is gone: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_ends_only_that_session() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (bad_path, bad_fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let (good_path, good_fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let bad = Channel::open(bad_fd).await.unwrap();
    let mut good = Channel::open(good_fd).await.unwrap();
    let clip = synthetic_clip(320, 240, 10);
    good.encode(&clip[..5]).await.unwrap();
    bad.send_raw(&[0x03, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    match bad.recv().await.unwrap() {
        Some(DaemonRecord::Error { code, message }) => {
            assert_eq!(code, ErrorCode::MalformedRecord as u32);
            assert!(message.contains("frame"), "{message}");
        }
        other => panic!("expected an error record, got {other:?}"),
    }
    assert!(
        bad.recv().await.unwrap().is_none(),
        "channel closed after the error"
    );
    eventually(Duration::from_secs(1), || async {
        let s: Vec<OwnedObjectPath> = property(&conn, ROOT, MANAGER, "Sessions").await?;
        Ok(s == vec![good_path.clone()])
    })
    .await
    .unwrap();
    assert!(!bad_path.as_str().is_empty());
    // The other session goes on undisturbed.
    let rest = good.encode(&clip[5..]).await.unwrap();
    assert_eq!(rest.len(), 5);
    assert_eq!(good.finish().await.unwrap(), (10, 10));
    assert_eq!(d.daemon().metrics.errors("channel.malformed-record"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_beyond_the_window_are_a_protocol_violation() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let (_path, fd) = create_session(&conn, &params(1920, 1080, 30))
        .await
        .unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    ch.register_slots().await.unwrap();
    let window = u32::from(ch.hello.window);
    let mut saw_error = None;
    for i in 0..=window * 4 {
        let rec = ClientRecord::Frame(FrameRef {
            buffer_id: 0,
            flags: 0,
            offset: 0,
            length: ch.hello.frame_size,
            pts: u64::from(i),
        });
        if ch.send_raw(&rec.encode()).await.is_err() {
            break;
        }
    }
    while let Some(r) = ch.recv().await.unwrap() {
        if let DaemonRecord::Error { code, message } = r {
            saw_error = Some((code, message));
        }
    }
    let (code, message) = saw_error.expect("an error record");
    assert_eq!(code, ErrorCode::ProtocolViolation as u32);
    assert!(message.contains("window"), "{message}");
}

type Changed = (String, HashMap<String, zbus::OwnedVariant>, Vec<String>);

async fn next(s: &mut zbus::MessageStream) -> Changed {
    let m = tokio::time::timeout(Duration::from_secs(2), futures_util::StreamExt::next(s))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    m.body().deserialize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_signalled() {
    let d = start(1, config()).await.unwrap();
    let conn = connect(&d).await.unwrap();
    let rule = |path: &'static str| {
        zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path(path)
            .build()
            .unwrap()
    };
    let mut manager = zbus::MessageStream::for_match_rule(rule(ROOT), &conn, None)
        .await
        .unwrap();
    let mut card = zbus::MessageStream::for_match_rule(rule("/org/vpud/Vpud1/card/0"), &conn, None)
        .await
        .unwrap();
    let (path, fd) = create_session(&conn, &params(1280, 720, 30)).await.unwrap();
    let (iface, props, _) = next(&mut manager).await;
    assert_eq!(iface, MANAGER);
    let sessions: Vec<OwnedObjectPath> = props["Sessions"].clone().try_into().unwrap();
    assert_eq!(sessions, vec![path.clone()]);
    let load: u64 = props["Load"].clone().try_into().unwrap();
    assert_eq!(load, 125_000);
    let (iface, props, _) = next(&mut card).await;
    assert_eq!(iface, CARD);
    let active: u32 = props["ActiveSessions"].clone().try_into().unwrap();
    assert_eq!(active, 1);
    drop(fd);
    let (_, props, _) = next(&mut manager).await;
    let sessions: Vec<OwnedObjectPath> = props["Sessions"].clone().try_into().unwrap();
    assert!(sessions.is_empty());
    let load: u64 = props["Load"].clone().try_into().unwrap();
    assert_eq!(load, 0);
    let _ = path;
}

/// A second daemon on a bus where vpud already runs refuses to start, says why, and
/// leaves the first one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_bus_refuses_to_start() {
    let d = start(1, config()).await.unwrap();
    let opts = vpud::service::RunOptions {
        bus: vpud::service::BusChoice::Address(d.address().to_owned()),
        emulate: 1,
        ready: None,
        systemd_notify: false,
    };
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        vpud::service::run(config(), opts, std::future::pending()),
    )
    .await
    .expect("the second daemon gave up");
    let e = second.unwrap_err().to_string();
    assert!(
        e.contains("org.vpud.Vpud1 is taken (is another vpud running?)"),
        "{e}"
    );
    let conn = connect(&d).await.unwrap();
    let (_session, fd) = create_session(&conn, &params(320, 240, 30)).await.unwrap();
    let mut ch = Channel::open(fd).await.unwrap();
    assert_eq!(
        ch.encode(&synthetic_clip(320, 240, 3)).await.unwrap().len(),
        3
    );
    assert_eq!(ch.finish().await.unwrap(), (3, 3));
}
