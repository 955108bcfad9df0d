//! The client library against the real daemon on a private bus: typed errors, card
//! pinning, forced keyframes, the session ending under a client's feet, and finding the
//! bus.

#![allow(clippy::unwrap_used)]

use vpu_driver::media::TestPattern;
use vpud::bus::PrivateBus;
use vpud::config::Config;
use vpud::service::Embedded;
use vpud_client::{Client, ClientError, SessionParams};

fn params(w: u32, h: u32) -> SessionParams {
    let mut p = SessionParams::h264(w, h, 30);
    p.bitrate = Some(500_000);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_errors_arrive_typed() {
    let mut config = Config::default();
    config.quotas.sessions_per_client = 2;
    let daemon = Embedded::start(1, config).await.unwrap();
    let client = Client::connect(Some(daemon.address())).await.unwrap();

    let err = client.create_session(&params(0, 240)).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err:?}");
    assert_eq!(
        err.dbus_name().as_deref(),
        Some("org.vpud.Vpud1.Error.InvalidArgument")
    );
    let mut odd = params(320, 240);
    odd.rate_control = Some("turbo".into());
    let err = client.create_session(&odd).await.unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidArgument(ref m) if m.contains("cbr")),
        "{err:?}"
    );

    let err = client
        .create_session(&params(4096, 2304))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotSupported(_)), "{err:?}");
    let a = client.create_session(&params(160, 120)).await.unwrap();
    let b = client.create_session(&params(160, 120)).await.unwrap();
    let err = client.create_session(&params(160, 120)).await.unwrap_err();
    assert!(matches!(err, ClientError::QuotaExceeded(_)), "{err:?}");
    a.close().await.unwrap();
    b.close().await.unwrap();
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_card_answers_no_capacity() {
    let daemon = Embedded::start(1, Config::default()).await.unwrap();
    let client = Client::connect(Some(daemon.address())).await.unwrap();
    let mut big = params(1920, 1080);
    big.framerate_num = 60;
    let mut open = Vec::new();
    let err = loop {
        match client.create_session(&big).await {
            Ok(s) => open.push(s),
            Err(e) => break e,
        }
        assert!(
            open.len() < 64,
            "one emulated card took 64 1080p60 sessions"
        );
    };
    assert!(matches!(err, ClientError::NoCapacity(_)), "{err:?}");
    assert!(!open.is_empty());
    for s in open {
        s.close().await.unwrap();
    }
    // Capacity is back once the sessions are gone.
    client
        .create_session(&big)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_sessions_keyframes_and_counters() {
    let daemon = Embedded::start(2, Config::default()).await.unwrap();
    let client = Client::connect(Some(daemon.address())).await.unwrap();
    let card = client.resolve_card("1").await.unwrap();
    assert_eq!(card.as_str(), "/org/vpud/Vpud1/card/1");
    assert!(matches!(
        client.resolve_card("9").await,
        Err(ClientError::UnknownCard(_))
    ));

    let mut p = params(320, 240);
    p.card = Some(card.clone());
    p.gop = Some(1000);
    let mut s = client.create_session(&p).await.unwrap();
    let info = client.session_info(s.path()).await.unwrap();
    assert_eq!(info.card, card.as_str());
    assert_eq!((info.width, info.height), (320, 240));

    let pattern = TestPattern::new(320, 240);
    for n in 0..6 {
        s.send_frame(&pattern.frame(n), 100 + n, n == 4)
            .await
            .unwrap();
    }
    let packets = s.drain().await.unwrap();
    let keys: Vec<u64> = packets
        .iter()
        .filter(|p| p.keyframe)
        .map(|p| p.pts)
        .collect();
    assert_eq!(keys, [100, 104]);
    assert!(packets.iter().all(|p| !p.data.is_empty()));
    assert!(vpud_client::annexb::is_idr(&packets[4].data));
    let c = s.counters();
    assert_eq!((c.frames_sent, c.packets, c.keyframes), (6, 6, 2));
    s.close().await.unwrap();
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_over_dbus_ends_its_channel() {
    let daemon = Embedded::start(1, Config::default()).await.unwrap();
    let client = Client::connect(Some(daemon.address())).await.unwrap();
    let mut s = client.create_session(&params(160, 120)).await.unwrap();
    let pattern = TestPattern::new(160, 120);
    s.send_frame(&pattern.frame(0), 0, false).await.unwrap();
    s.proxy().close().await.unwrap();
    let mut err = None;
    for n in 1..1000 {
        if let Err(e) = s.send_frame(&pattern.frame(n), n, false).await {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("sending into a closed session fails");
    assert!(
        matches!(
            err,
            ClientError::SessionFailed { .. } | ClientError::ChannelClosed { .. }
        ),
        "{err:?}"
    );
    // Closing again is not an error.
    s.close().await.unwrap();
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_the_bus() {
    let bus = PrivateBus::start().unwrap();
    let err = Client::connect(Some(bus.address())).await.unwrap_err();
    assert!(matches!(err, ClientError::DaemonNotFound { .. }), "{err:?}");
    let err = Client::connect(Some("unix:path=/nonexistent/bus"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let err = Client::connect(Some("nonsense")).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err:?}");
}
