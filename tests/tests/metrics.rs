//! The Prometheus endpoint of vpud on a private bus with emulated cards: scraped over
//! real TCP during encodes (counters move, `promtool check metrics` accepts the text),
//! under load (sessions lose nothing), with bad requests and bad configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vpu_tests::clip::synthetic_clip;
use vpu_tests::daemon::start;
use vpud::config::Config;
use vpud::service::Embedded;
use vpud_client::{Client, Session, SessionParams};

const W: u32 = 320;
const H: u32 = 240;

/// A configuration with the endpoint on a free loopback port.
fn config_with_metrics() -> Config {
    let mut c = Config::default();
    c.metrics.enabled = true;
    c.metrics.address = "127.0.0.1:0".into();
    c
}

/// One HTTP response: status, headers (lowercase names), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Sends `request` (a whole HTTP/1.1 request) and reads the reply until the server closes.
async fn http(addr: SocketAddr, request: &[u8]) -> Result<Reply> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .context("no complete reply within 10 s")??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET /metrics` as `curl` would ask (classic text format).
async fn scrape(addr: SocketAddr) -> Result<String> {
    let r = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    )
    .await?;
    ensure!(r.status == 200, "status {}: {}", r.status, r.body);
    ensure!(
        r.headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    Ok(r.body)
}

/// The value of the sample `series` (name and labels exactly as exposed, e.g.
/// `vpud_frames_in_total{codec="h264"}`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn value(text: &str, series: &str) -> Result<f64> {
    sample(text, series).with_context(|| format!("no sample {series} in:\n{text}"))
}

/// Runs `promtool check metrics` on `text`.
fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all_sync(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics failed: {}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

trait WriteAllSync {
    fn write_all_sync(self, data: &[u8]) -> std::io::Result<()>;
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, data: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self, data)
    }
}

async fn client(d: &Embedded) -> Result<Client> {
    Ok(Client::connect(Some(d.address())).await?)
}

/// Sends `frames` and collects every packet (in order); returns the bitstream bytes.
async fn encode(session: &mut Session, frames: &[Vec<u8>], first_pts: u64) -> Result<u64> {
    let mut bytes = 0u64;
    let mut got = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        session.send_frame(f, first_pts + i as u64, false).await?;
        for p in session.ready_packets() {
            bytes += p.data.len() as u64;
            got.push(p.pts);
        }
    }
    while got.len() < frames.len() {
        match session.next_packet().await? {
            Some(p) => {
                bytes += p.data.len() as u64;
                got.push(p.pts);
            }
            None => bail!("{} packets for {} frames", got.len(), frames.len()),
        }
    }
    let want: Vec<u64> = (first_pts..first_pts + frames.len() as u64).collect();
    ensure!(got == want, "packets out of order: {got:?}");
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_during_an_encode_shows_the_counters_moving_and_passes_promtool() -> Result<()> {
    let d = start(2, config_with_metrics()).await?;
    let addr = d.metrics_address().context("endpoint enabled")?;
    let before = scrape(addr).await?;
    promtool_check(&before)?;
    ensure!(value(&before, "vpud_build_info{version=\"0.1.0\"}")? == 1.0);
    for c in &d.daemon().cards {
        let card = format!("card=\"{}\"", c.name);
        ensure!(value(&before, &format!("vpud_card_sessions{{{card}}}"))? == 0.0);
        ensure!(
            value(
                &before,
                &format!("vpud_card_state{{{card},state=\"online\"}}")
            )? == 1.0
        );
        ensure!(
            value(
                &before,
                &format!("vpud_card_state{{{card},state=\"failed\"}}")
            )? == 0.0
        );
        ensure!(value(&before, &format!("vpud_card_capacity_units{{{card}}}"))? > 0.0);
        ensure!(value(&before, &format!("vpud_card_resets_total{{{card}}}"))? == 0.0);
    }
    // Known codecs and refusal reasons are exposed at zero before the first session.
    ensure!(value(&before, "vpud_frames_in_total{codec=\"h264\"}")? == 0.0);
    ensure!(
        value(
            &before,
            "vpud_sessions_refused_total{reason=\"NoCapacity\"}"
        )? == 0.0
    );
    ensure!(value(&before, "vpud_encode_latency_seconds_count{codec=\"h264\"}")? == 0.0);

    let clip = synthetic_clip(W, H, 30);
    let vpud = client(&d).await?;
    let mut s = vpud.create_session(&SessionParams::h264(W, H, 30)).await?;
    let mut bytes = encode(&mut s, &clip[..10], 0).await?;
    let mid1 = scrape(addr).await?;
    let frames1 = value(&mid1, "vpud_frames_in_total{codec=\"h264\"}")?;
    ensure!(frames1 == 10.0, "{frames1}");
    ensure!(value(&mid1, "vpud_sessions_created_total{codec=\"h264\"}")? == 1.0);
    ensure!(value(&mid1, "vpud_sessions{codec=\"h264\"}")? == 1.0);
    let on_cards: f64 = d
        .daemon()
        .cards
        .iter()
        .map(|c| sample(&mid1, &format!("vpud_card_sessions{{card=\"{}\"}}", c.name)))
        .sum::<Option<f64>>()
        .context("every card's sessions")?;
    ensure!(on_cards == 1.0, "{on_cards}");
    ensure!(
        value(&mid1, "vpud_card_load_units{card=\"emu0\"}")
            .or_else(|_| value(&mid1, "vpud_card_load_units{card=\"emu1\"}"))?
            >= 0.0
    );

    bytes += encode(&mut s, &clip[10..], 10).await?;
    let mid2 = scrape(addr).await?;
    promtool_check(&mid2)?;
    ensure!(value(&mid2, "vpud_frames_in_total{codec=\"h264\"}")? == 30.0);
    ensure!(value(&mid2, "vpud_packets_out_total{codec=\"h264\"}")? == 30.0);
    ensure!(value(&mid2, "vpud_output_bytes_total{codec=\"h264\"}")? == bytes as f64);
    ensure!(value(&mid2, "vpud_encode_latency_seconds_count{codec=\"h264\"}")? == 30.0);
    let sum = value(&mid2, "vpud_encode_latency_seconds_sum{codec=\"h264\"}")?;
    ensure!(sum > 0.0 && sum < 30.0, "latency sum {sum} s");
    ensure!(
        value(
            &mid2,
            "vpud_encode_latency_seconds_bucket{codec=\"h264\",le=\"+Inf\"}"
        )? == 30.0
    );

    s.close().await?;
    let closed = Instant::now();
    loop {
        let after = scrape(addr).await?;
        if sample(&after, "vpud_sessions_closed_total{codec=\"h264\"}") == Some(1.0) {
            ensure!(sample(&after, "vpud_sessions{codec=\"h264\"}").is_none());
            break;
        }
        ensure!(
            closed.elapsed() < Duration::from_secs(5),
            "close not counted:\n{after}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Prometheus asks for OpenMetrics and gets it.
    let om = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .await?;
    ensure!(om.status == 200);
    ensure!(
        om.headers["content-type"].starts_with("application/openmetrics-text"),
        "{:?}",
        om.headers
    );
    ensure!(om.body.ends_with("# EOF\n"), "{}", om.body);
    ensure!(om.body.contains("# TYPE vpud_frames_in counter\n"));
    ensure!(om
        .body
        .contains("# UNIT vpud_encode_latency_seconds seconds\n"));
    d.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason() -> Result<()> {
    let d = start(1, config_with_metrics()).await?;
    let addr = d.metrics_address().context("endpoint enabled")?;
    let vpud = client(&d).await?;
    let mut huge = SessionParams::h264(W, H, 30);
    huge.width = 100_000;
    ensure!(vpud.create_session(&huge).await.is_err());
    let text = scrape(addr).await?;
    ensure!(
        value(
            &text,
            "vpud_sessions_refused_total{reason=\"InvalidArgument\"}"
        )? == 1.0,
        "{text}"
    );
    ensure!(value(&text, "vpud_errors_total{kind=\"InvalidArgument\"}")? == 1.0);
    promtool_check(&text)?;
    d.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_under_load_do_not_disturb_sessions() -> Result<()> {
    let d = start(2, config_with_metrics()).await?;
    let addr = d.metrics_address().context("endpoint enabled")?;
    let clip = synthetic_clip(W, H, 60);
    // More idle connections than the endpoint serves at once, held open throughout.
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(TcpStream::connect(addr).await?);
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut scrapers = Vec::new();
    for _ in 0..3 {
        let done = std::sync::Arc::clone(&done);
        scrapers.push(tokio::spawn(async move {
            let mut n = 0u32;
            // Bounded: at most 2000 scrapes per scraper, and only while sessions run.
            while !done.load(std::sync::atomic::Ordering::Acquire) && n < 2000 {
                // Idle connections time out after 5 s; until then some scrapes may be
                // turned away (connection closed) while slots are taken: count those
                // that got through.
                if let Ok(r) = http(
                    addr,
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
                {
                    anyhow::ensure!(r.status == 200, "status {}", r.status);
                    n += 1;
                }
            }
            Ok::<u32, anyhow::Error>(n)
        }));
    }
    let vpud = client(&d).await?;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut s = vpud.create_session(&SessionParams::h264(W, H, 30)).await?;
        let clip = clip.clone();
        sessions.push(tokio::spawn(async move {
            encode(&mut s, &clip, 0).await?;
            s.close().await?;
            Ok::<(), anyhow::Error>(())
        }));
    }
    for s in sessions {
        s.await??;
    }
    // Past the header timeout the idle connections are gone and scrapes get through.
    tokio::time::sleep(Duration::from_secs(6)).await;
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut scrapes = 0;
    for s in scrapers {
        scrapes += s.await??;
    }
    ensure!(scrapes > 0, "no scrape got through");
    for mut c in idle {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut b)).await??;
        ensure!(n == 0, "an idle connection was not closed");
    }
    let text = scrape(addr).await?;
    ensure!(value(&text, "vpud_frames_in_total{codec=\"h264\"}")? == 240.0);
    ensure!(value(&text, "vpud_packets_out_total{codec=\"h264\"}")? == 240.0);
    ensure!(
        d.daemon().metrics.error_counts().is_empty(),
        "{:?}",
        d.daemon().metrics.error_counts()
    );
    d.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_get_metrics_is_refused_and_the_endpoint_stays_up() -> Result<()> {
    let d = start(1, config_with_metrics()).await?;
    let addr = d.metrics_address().context("endpoint enabled")?;
    let r = http(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    ensure!(r.status == 404, "{r:?}");
    let r = http(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await?;
    ensure!(r.status == 405, "{r:?}");
    ensure!(r.headers.get("allow").map(String::as_str) == Some("GET, HEAD"));
    let r = http(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    ensure!(r.status == 200 && r.body.is_empty(), "{r:?}");
    // A request head beyond the limit: refused (431) or cut, never served.
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    // (An error here is the connection closed before a reply, which is fine too.)
    if let Ok(r) = http(addr, &big).await {
        ensure!(r.status == 431 || r.status == 400, "{r:?}");
    }
    // Not HTTP at all.
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await??;
    ensure!(!String::from_utf8_lossy(&raw).contains(" 200 "));
    // A client that sends half a request and stops is closed after the header timeout.
    let mut slow = TcpStream::connect(addr).await?;
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
    let t = Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut raw)).await??;
    ensure!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    // Still serving.
    let text = scrape(addr).await?;
    ensure!(text.contains("vpud_card_state"));
    d.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_and_bad_addresses_are_clear_errors() -> Result<()> {
    let d = start(1, Config::default()).await?;
    ensure!(d.metrics_address().is_none());
    ensure!(!d.daemon().metrics.timing());
    d.stop().await?;

    // The address taken by another listener: the daemon does not start, and says why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut c = config_with_metrics();
    c.metrics.address = taken.local_addr()?.to_string();
    let e = match Embedded::start(1, c).await {
        Ok(_) => bail!("started on a taken port"),
        Err(e) => e.to_string(),
    };
    ensure!(
        e.contains("metrics.address") && e.contains(&taken.local_addr()?.to_string()),
        "{e}"
    );

    // Not an address: named in the configuration error.
    let mut c = config_with_metrics();
    c.metrics.address = "localhost:9478".into();
    let e = match Embedded::start(1, c).await {
        Ok(_) => bail!("started with a host name"),
        Err(e) => e.to_string(),
    };
    ensure!(
        e.contains("metrics.address") && e.contains("IP address and port"),
        "{e}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_only_for_exposed_metrics() -> Result<()> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/dist/vpud-grafana.json");
    let dashboard = std::fs::read_to_string(&path)?;
    let d = start(1, config_with_metrics()).await?;
    let text = scrape(d.metrics_address().context("endpoint enabled")?).await?;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut asked = 0;
    for (i, _) in dashboard.match_indices("vpud_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        ensure!(
            families.contains(&family),
            "the dashboard asks for {name}, which vpud does not expose ({families:?})"
        );
        asked += 1;
    }
    ensure!(asked > 10, "{asked} queries found");
    d.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_fault_shows_in_the_card_and_migration_metrics() -> Result<()> {
    let mut c = config_with_metrics();
    c.timeouts.command_ms = 500;
    // No engine-log reads: the injected fault meets the session's own commands.
    c.scheduler.load_sample_interval_ms = 60_000;
    c.scheduler.measured_load_weight = 0.0;
    let d = start(2, c).await?;
    let addr = d.metrics_address().context("endpoint enabled")?;
    let conn = vpu_tests::daemon::connect(&d).await?;
    let vpud = client(&d).await?;
    let mut s = vpud.create_session(&SessionParams::h264(W, H, 30)).await?;
    let clip = synthetic_clip(W, H, 40);
    encode(&mut s, &clip[..10], 0).await?;
    let text = scrape(addr).await?;
    ensure!(
        value(&text, "vpud_card_sessions{card=\"emu0\"}")? == 1.0,
        "{text}"
    );
    let opts: std::collections::HashMap<String, zbus::OwnedVariant> = Default::default();
    conn.call_method(
        Some(vpu_tests::daemon::BUS_NAME),
        "/org/vpud/Vpud1/card/0",
        Some("org.vpud.Vpud1.Emulator"),
        "InjectFault",
        &("fatal-status", opts),
    )
    .await?;
    encode(&mut s, &clip[10..], 10).await?;
    let t = Instant::now();
    let text = loop {
        let text = scrape(addr).await?;
        let card_errors: u64 = vpu_tests::daemon::property(
            &conn,
            "/org/vpud/Vpud1/card/0",
            vpu_tests::daemon::CARD,
            "Errors",
        )
        .await?;
        let exposed: f64 = text
            .lines()
            .filter(|l| l.starts_with("vpud_card_errors_total{card=\"emu0\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if sample(&text, "vpud_card_state{card=\"emu0\",state=\"online\"}") == Some(1.0)
            && sample(&text, "vpud_card_resets_total{card=\"emu0\"}") >= Some(1.0)
            && exposed == card_errors as f64
        {
            break text;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "Card.Errors {card_errors}, exposed {exposed}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(value(&text, "vpud_sessions_migrated_total{codec=\"h264\"}")? == 1.0);
    ensure!(
        value(
            &text,
            "vpud_card_errors_total{card=\"emu0\",kind=\"fault\"}"
        )? >= 1.0
    );
    ensure!(value(&text, "vpud_card_sessions{card=\"emu0\"}")? == 0.0);
    ensure!(value(&text, "vpud_card_sessions{card=\"emu1\"}")? == 1.0);
    ensure!(value(&text, "vpud_card_resets_total{card=\"emu1\"}")? == 0.0);
    ensure!(value(&text, "vpud_errors_total{kind=\"card.fault\"}")? >= 1.0);
    ensure!(value(&text, "vpud_frames_in_total{codec=\"h264\"}")? == 40.0);
    ensure!(value(&text, "vpud_packets_out_total{codec=\"h264\"}")? == 40.0);
    ensure!(value(&text, "vpud_encode_latency_seconds_count{codec=\"h264\"}")? == 40.0);
    promtool_check(&text)?;
    s.close().await?;
    d.stop().await?;
    Ok(())
}
