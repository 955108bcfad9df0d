//! `vpuctl demo`: a private bus, N emulated cards, M concurrent sessions of different
//! sizes, bitrates and codecs (H.264 and AV1 in turn) encoding a moving test pattern into
//! MP4 files, then the first H.264 session's MP4 transcoded on a card into an ABR ladder
//! with HLS, and a table per session, per card and per rendition.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cli::{CodecArg, DemoArgs, Ladder, TranscodeArgs};
use super::list::{card_index, percent};
use super::output::Output;
use super::private::PrivateDaemon;
use super::table::{bitrate, Table};
use super::transcode::ladder::parse_ladder;
use super::transcode::run::{self, TranscodeSummary};
use super::CtlError;
use vpu_driver::media::TestPattern;

use vpud_client::{CardInfo, Client, SessionParams};

/// Frame rate of every demo stream.
const DEMO_FPS: u32 = 30;

/// The streams the demo cycles through: size and bit rate. With the default codecs
/// (H.264, AV1 in turn), the AV1 sessions get the smaller sizes, which the software AV1
/// engines of the emulated cards keep up with.
const PROFILES: [(u32, u32, u32); 5] = [
    (1280, 720, 3_000_000),
    (640, 360, 1_000_000),
    (960, 540, 2_000_000),
    (320, 240, 500_000),
    (854, 480, 1_500_000),
];

/// One session's result.
#[derive(Debug, Clone)]
pub struct DemoSession {
    pub index: u32,
    pub card: String,
    pub codec: CodecArg,
    pub width: u32,
    pub height: u32,
    pub bitrate_target: u32,
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub file: PathBuf,
}

/// The ladder the demo transcodes the first session's output into.
const DEMO_LADDER: &str = "720p:2500k,480p:1200k,360p:700k,240p:400k";

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub out_dir: PathBuf,
    pub sessions: Vec<DemoSession>,
    /// Cards as seen while every session was open.
    pub cards: Vec<CardInfo>,
    pub seconds: f64,
    /// The ladder made from the first 720p H.264 session's file.
    pub ladder: Option<TranscodeSummary>,
    /// Which session's file the ladder was made from.
    pub ladder_session: Option<u32>,
}

/// Runs the demo.
pub async fn demo(args: &DemoArgs) -> Result<DemoReport, CtlError> {
    let out_dir = prepare_out_dir(args.out.as_deref())?;
    let daemon = PrivateDaemon::start(args.cards).await?;
    let result = match run_sessions(daemon.client(), args, &out_dir).await {
        Ok(mut report) => run_ladder(daemon.client(), &mut report)
            .await
            .map(|()| report),
        Err(e) => Err(e),
    };
    let stopped = daemon.stop().await;
    let report = result?;
    stopped?;
    Ok(report)
}

async fn run_sessions(
    client: &Client,
    args: &DemoArgs,
    out_dir: &Path,
) -> Result<DemoReport, CtlError> {
    let start = Instant::now();
    // Open every session first, so they run concurrently and the card loads show them all.
    let mut sessions = Vec::new();
    for i in 0..args.sessions {
        let (w, h, bps) = PROFILES[i as usize % PROFILES.len()];
        let codec = args
            .codecs
            .get(i as usize % args.codecs.len().max(1))
            .copied()
            .unwrap_or(CodecArg::H264);
        let mut params = SessionParams::h264(w, h, DEMO_FPS);
        params.codec = codec.as_str().into();
        params.bitrate = Some(bps);
        params.gop = Some(DEMO_FPS * 2);
        let session = client.create_session(&params).await?;
        let card = client.session_info(session.path()).await?.card;
        let file = out_dir.join(format!("session{i}-{}-{w}x{h}.mp4", codec.as_str()));
        let output = Output::create(&file, codec, w, h, (DEMO_FPS, 1))?;
        sessions.push((i, session, card, codec, file, output, (w, h, bps)));
    }
    let cards = client.cards().await?;

    let frames = u64::from(args.frames);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut session, card, codec, file, mut output, (w, h, bps)) in sessions {
        tasks.spawn(async move {
            let started = Instant::now();
            let pattern = TestPattern::new(w, h);
            for pts in 0..frames {
                let mut slot = session.reserve(pts).await?;
                // Sessions start at different points of the pattern's motion.
                pattern.fill(pts + u64::from(index) * 17, slot.frame());
                slot.send(pts, false).await?;
                for p in session.ready_packets() {
                    output.write(&p.data)?;
                }
            }
            for p in session.drain().await? {
                output.write(&p.data)?;
            }
            let seconds = started.elapsed().as_secs_f64();
            output.finish()?;
            let c = session.counters();
            let _ = session.close().await;
            Ok::<_, CtlError>(DemoSession {
                index,
                card,
                codec,
                width: w,
                height: h,
                bitrate_target: bps,
                frames: c.packets,
                keyframes: c.keyframes,
                bytes: c.bytes,
                seconds,
                file,
            })
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let session = joined.map_err(|e| CtlError::Session {
            session: "demo".into(),
            what: format!("the session task failed: {e}"),
        })??;
        done.push(session);
    }
    done.sort_by_key(|s| s.index);
    Ok(DemoReport {
        out_dir: out_dir.to_path_buf(),
        sessions: done,
        cards,
        seconds: start.elapsed().as_secs_f64(),
        ladder: None,
        ladder_session: None,
    })
}

/// Transcodes the first 720p H.264 session's MP4 (session 0 with the default codecs) into
/// [`DEMO_LADDER`] with HLS, in `OUT/ladder`. The card decodes H.264 only, and the ladder's
/// top rung is 720p, so with no such session there is no ladder.
async fn run_ladder(client: &Client, report: &mut DemoReport) -> Result<(), CtlError> {
    let Some(first) = report
        .sessions
        .iter()
        .find(|s| s.codec == CodecArg::H264 && s.height >= 720)
    else {
        return Ok(());
    };
    report.ladder_session = Some(first.index);
    eprintln!(
        "transcoding {} into the ladder {DEMO_LADDER} with HLS",
        first.file.display()
    );
    let args = TranscodeArgs {
        input: first.file.clone(),
        output: report.out_dir.join("ladder"),
        ladder: Ladder(parse_ladder(DEMO_LADDER)?),
        gop: Some(DEMO_FPS * 2),
        hls: true,
        segment_seconds: 2.0,
        fps: (DEMO_FPS, 1),
        card: None,
    };
    let prepared = run::prepare(&args)?;
    report.ladder = Some(run::transcode(client, &args, prepared).await?);
    Ok(())
}

/// The demo's tables and where its files are.
pub fn render(report: &DemoReport) -> String {
    let mut s = Table::new(&[
        "session",
        "card",
        "codec",
        "size",
        "frames",
        "fps",
        "bitrate",
        "target",
        "keyframes",
        "file",
    ]);
    for d in &report.sessions {
        let duration = d.frames as f64 / f64::from(DEMO_FPS);
        s.row(vec![
            d.index.to_string(),
            card_index(&d.card),
            d.codec.as_str().to_string(),
            format!("{}x{}", d.width, d.height),
            d.frames.to_string(),
            format!("{:.1}", d.frames as f64 / d.seconds.max(1e-9)),
            bitrate(d.bytes as f64 * 8.0 / duration.max(1e-9)),
            bitrate(f64::from(d.bitrate_target)),
            d.keyframes.to_string(),
            d.file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ]);
    }
    let mut c = Table::new(&["card", "name", "engines", "sessions", "load", "capacity"]);
    for card in &report.cards {
        c.row(vec![
            card_index(&card.path),
            card.name.clone(),
            card.engines.to_string(),
            card.active_sessions.to_string(),
            percent(card.load, card.capacity),
            card.capacity.to_string(),
        ]);
    }
    let total: u64 = report.sessions.iter().map(|s| s.frames).sum();
    let ladder = match (&report.ladder, report.ladder_session) {
        (Some(l), Some(i)) => format!(
            "\nsession {i}'s file as an ABR ladder on one card:\n{}",
            run::render(l)
        ),
        _ => String::new(),
    };
    format!(
        "{}\n{}{ladder}\n{} sessions on {} emulated cards: {} frames in {:.1} s ({:.1} fps together)\noutput files in {}\n",
        s.render(),
        c.render(),
        report.sessions.len(),
        report.cards.len(),
        total,
        report.seconds,
        total as f64 / report.seconds.max(1e-9),
        report.out_dir.display()
    )
}

/// `--out DIR` (created if missing), or a new `vpud-demo-*` directory in the current
/// directory, or in the temporary directory when the current one is not writable.
fn prepare_out_dir(out: Option<&Path>) -> Result<PathBuf, CtlError> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|source| CtlError::CreateOutput {
            path: dir.to_path_buf(),
            source,
        })?;
        return Ok(dir.to_path_buf());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!("vpud-demo-{stamp}-{}", std::process::id());
    let here = std::env::current_dir().map(|d| d.join(&name));
    if let Ok(dir) = here {
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir(&dir).map_err(|source| CtlError::CreateOutput {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}
