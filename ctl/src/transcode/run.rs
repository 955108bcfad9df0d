//! The `vpuctl transcode` command: the input read on its own thread, its access units sent
//! to one transcode session, every rendition's packets written by a [`LadderSink`], a
//! progress bar, and a table at the end.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use super::annexb::AccessUnit;
use super::ladder::{resolve, Rendition};
use super::sink::{LadderSink, Packet, RenditionSummary};
use super::source::{Container, Source, SourceError, StreamInfo};
use crate::cli::TranscodeArgs;
use crate::table::{bitrate, Table};
use crate::CtlError;
use vpud_client::{Client, RenditionParams, Transcode, TranscodeInput, TranscodeParams};

/// Access units read ahead of the session.
const READ_AHEAD: usize = 16;

/// An opened input and the ladder resolved for it.
#[derive(Debug)]
pub struct Prepared {
    pub source: Source,
    pub renditions: Vec<Rendition>,
}

/// What a transcode did.
#[derive(Debug, Clone)]
pub struct TranscodeSummary {
    pub input: StreamInfo,
    /// Access units sent to the card.
    pub frames_in: u64,
    pub renditions: Vec<RenditionSummary>,
    pub seconds: f64,
    pub card: String,
    pub out_dir: PathBuf,
    pub hls: bool,
}

/// Opens the input and resolves the ladder against its size, before any bus is touched,
/// so a bad input or ladder is reported first.
pub fn prepare(args: &TranscodeArgs) -> Result<Prepared, CtlError> {
    let source = Source::open(&args.input, args.fps)?;
    let sps = &source.info().sps;
    let renditions = resolve(&args.ladder.0, sps.width, sps.height)?;
    Ok(Prepared { source, renditions })
}

/// The session parameters of a ladder for `info`'s stream.
pub fn transcode_params(
    info: &StreamInfo,
    renditions: &[Rendition],
    gop: Option<u32>,
) -> TranscodeParams {
    let mut input = TranscodeInput::h264();
    input.width = Some(info.sps.width);
    input.height = Some(info.sps.height);
    input.framerate_num = Some(info.fps.0);
    input.framerate_den = Some(info.fps.1);
    // Two seconds of frames, the usual segment granularity of live ABR.
    let gop = gop.unwrap_or_else(|| {
        ((2 * u64::from(info.fps.0)).div_ceil(u64::from(info.fps.1.max(1)))).clamp(1, 100_000)
            as u32
    });
    let outputs = renditions
        .iter()
        .map(|r| {
            let mut p = RenditionParams::new(r.width, r.height, r.bitrate);
            p.gop = Some(gop);
            p
        })
        .collect();
    TranscodeParams { input, outputs }
}

/// Runs `vpuctl transcode` with a prepared input.
pub async fn transcode(
    client: &Client,
    args: &TranscodeArgs,
    prepared: Prepared,
) -> Result<TranscodeSummary, CtlError> {
    let Prepared { source, renditions } = prepared;
    let info = source.info().clone();
    let mut params = transcode_params(&info, &renditions, args.gop);
    if let Some(card) = &args.card {
        params.input.card = Some(client.resolve_card(card).await?);
    }
    let mut session = client.create_transcode(&params).await?;
    let card = client
        .session_info(session.path())
        .await
        .map(|i| i.card)
        .unwrap_or_default();
    let segment = args.hls.then_some(args.segment_seconds);
    let result = run_ladder(&mut session, source, &renditions, &args.output, segment).await;
    if let Err(e) = session.close().await {
        tracing::debug!(error = %e, "closing the finished transcode session");
    }
    let (frames_in, summaries, seconds) = match result {
        Ok(done) => done,
        Err(e) => {
            // An MP4 without its index is of no use; HLS segments written so far play.
            for r in &renditions {
                let _ = std::fs::remove_file(args.output.join(format!("{}.mp4", r.name)));
            }
            return Err(e);
        }
    };
    Ok(TranscodeSummary {
        input: info,
        frames_in,
        renditions: summaries,
        seconds,
        card,
        out_dir: args.output.clone(),
        hls: args.hls,
    })
}

type ReadItem = Result<(AccessUnit, u64), SourceError>;

/// Reads the input on a thread of its own (a pipe blocks), `READ_AHEAD` units ahead.
fn spawn_reader(mut source: Source) -> mpsc::Receiver<ReadItem> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    std::thread::spawn(move || loop {
        let item = match source.next_access_unit() {
            Ok(Some(au)) => Ok((au, source.position())),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    });
    rx
}

/// Sends every access unit and writes every packet; returns the units sent, the
/// renditions' summaries and the seconds it took.
async fn run_ladder(
    session: &mut Transcode,
    source: Source,
    renditions: &[Rendition],
    out_dir: &Path,
    segment: Option<f64>,
) -> Result<(u64, Vec<RenditionSummary>, f64), CtlError> {
    let info = source.info().clone();
    let input = source.path().to_path_buf();
    let mut sink = LadderSink::create(out_dir, renditions, info.fps, segment)?;
    let progress = progress_bar(&info);
    let mut units = spawn_reader(source);
    let start = Instant::now();
    let max = session.max_access_unit();
    let mut sent = 0u64;
    while let Some(item) = units.recv().await {
        let (au, position) = item?;
        if au.data.len() > max {
            return Err(CtlError::BadInput {
                path: input,
                what: format!(
                    "access unit {sent} has {} bytes; the card takes at most {max}",
                    au.data.len()
                ),
            });
        }
        session.send_access_unit(&au.data, au.pts).await?;
        sent += 1;
        for p in session.ready_packets() {
            sink.push(
                usize::from(p.rendition),
                Packet {
                    pts: p.pts,
                    data: p.data,
                },
            )?;
        }
        match info.container {
            Container::Mp4 => progress.set_position(sent),
            Container::AnnexB if info.bytes.is_some() => progress.set_position(position),
            Container::AnnexB => progress.set_position(sent),
        }
        progress.set_message(format!("{} frames out", sink.frames()));
    }
    for p in session.drain().await? {
        sink.push(
            usize::from(p.rendition),
            Packet {
                pts: p.pts,
                data: p.data,
            },
        )?;
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    if sent == 0 {
        return Err(CtlError::BadInput {
            path: input,
            what: "no frames".into(),
        });
    }
    let summaries = sink.finish()?;
    if let Some(s) = summaries.iter().find(|s| s.frames != sent) {
        return Err(CtlError::Session {
            session: session.path().to_string(),
            what: format!(
                "rendition {} has {} frames for {sent} input frames",
                s.rendition.name, s.frames
            ),
        });
    }
    Ok((sent, summaries, seconds))
}

/// A progress bar on a terminal (frames of an MP4, bytes of an Annex-B file, a spinner for
/// a pipe), nothing otherwise.
fn progress_bar(info: &StreamInfo) -> ProgressBar {
    let (total, template) = match (info.container, info.frames, info.bytes) {
        (Container::Mp4, Some(frames), _) => (
            Some(frames),
            "{bar:40.cyan/blue} {pos}/{len} frames in  {msg}  {per_sec}  eta {eta}",
        ),
        (Container::AnnexB, _, Some(bytes)) => (
            Some(bytes),
            "{bar:40.cyan/blue} {bytes}/{total_bytes}  {msg}  eta {eta}",
        ),
        _ => (None, "{spinner} {pos} frames in  {msg}  {per_sec}"),
    };
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The table and line `vpuctl transcode` ends with.
pub fn render(s: &TranscodeSummary) -> String {
    let mut t = Table::new(&[
        "rendition",
        "size",
        "target",
        "bitrate",
        "frames",
        "keyframes",
        "segments",
        "file",
    ]);
    let duration = s.frames_in as f64 * f64::from(s.input.fps.1) / f64::from(s.input.fps.0);
    for r in &s.renditions {
        t.row(vec![
            r.rendition.name.clone(),
            format!("{}x{}", r.rendition.width, r.rendition.height),
            bitrate(f64::from(r.rendition.bitrate)),
            bitrate(r.bytes as f64 * 8.0 / duration.max(1e-9)),
            r.frames.to_string(),
            r.keyframes.to_string(),
            if s.hls {
                r.segments.to_string()
            } else {
                "-".into()
            },
            r.mp4
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ]);
    }
    let hls = if s.hls {
        format!(
            ", HLS {}",
            s.out_dir.join(super::hls::MASTER_PLAYLIST).display()
        )
    } else {
        String::new()
    };
    format!(
        "{}{} frames {}x{} in {:.2} s ({:.1} fps) through {} renditions, card {} -> {}{hls}\n",
        t.render(),
        s.frames_in,
        s.input.sps.width,
        s.input.sps.height,
        s.seconds,
        s.frames_in as f64 / s.seconds.max(1e-9),
        s.renditions.len(),
        s.card.rsplit('/').next().unwrap_or(""),
        s.out_dir.display(),
    )
}
