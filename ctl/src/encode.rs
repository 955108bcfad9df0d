//! `vpuctl encode INPUT -o OUTPUT`: a file through one vpud session.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cli::EncodeArgs;
pub use super::input::Input;
use super::output::Output;
use super::table::bitrate;
use super::CtlError;
use vpud_client::{Client, Session, SessionParams};

/// What an encode did.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeSummary {
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub width: u32,
    pub height: u32,
    pub fps: (u32, u32),
    pub card: String,
}

impl EncodeSummary {
    /// Frames encoded per second of wall time.
    pub fn encode_fps(&self) -> f64 {
        self.frames as f64 / self.seconds.max(1e-9)
    }

    /// Bit rate of the stream at its nominal frame rate.
    pub fn bitrate(&self) -> f64 {
        let duration = self.frames as f64 * f64::from(self.fps.1) / f64::from(self.fps.0);
        self.bytes as f64 * 8.0 / duration.max(1e-9)
    }
}

/// Opens the input of `vpuctl encode` (before any bus is touched, so a bad file is
/// reported first).
pub fn open_input(args: &EncodeArgs) -> Result<Input, CtlError> {
    super::output::check(&args.output, args.codec)?;
    Input::open(&args.input, args.size, args.fps)
}

/// Encodes `input` (opened by [`open_input`]) into `args.output` through `client`.
pub async fn encode(
    client: &Client,
    args: &EncodeArgs,
    mut input: Input,
) -> Result<EncodeSummary, CtlError> {
    let (width, height, fps) = (input.width(), input.height(), input.fps());
    let mut params = SessionParams::h264(width, height, fps.0);
    params.codec = args.codec.as_str().into();
    params.framerate_den = fps.1;
    params.bitrate = args.bitrate;
    params.gop = args.gop;
    if let Some(card) = &args.card {
        params.card = Some(client.resolve_card(card).await?);
    }
    let expected = params.frame_size();
    if input.frame_size() != expected {
        return Err(CtlError::BadInput {
            path: args.input.clone(),
            what: format!(
                "frames of {} bytes, an I420 frame of {width}x{height} has {expected}",
                input.frame_size()
            ),
        });
    }
    let mut session = client.create_session(&params).await?;
    let card = client
        .session_info(session.path())
        .await
        .map(|i| i.card)
        .unwrap_or_default();
    // Created only once the daemon took the session, so a refused session leaves no file.
    let output = Output::create(&args.output, args.codec, width, height, fps)?;
    let result = run_session(&mut session, &mut input, output).await;
    let counters = session.counters();
    if let Err(e) = session.close().await {
        tracing::debug!(error = %e, "closing the finished session");
    }
    let result = result.and_then(|seconds| match counters.frames_sent {
        0 => Err(CtlError::BadInput {
            path: args.input.clone(),
            what: "no frames".into(),
        }),
        _ => Ok(seconds),
    });
    let seconds = match result {
        Ok(seconds) => seconds,
        Err(e) => {
            // A partial stream is of no use; do not leave it looking like a result.
            let _ = std::fs::remove_file(&args.output);
            return Err(e);
        }
    };
    Ok(EncodeSummary {
        frames: counters.packets,
        keyframes: counters.keyframes,
        bytes: counters.bytes,
        seconds,
        width,
        height,
        fps,
        card,
    })
}

/// Feeds every frame of `input` to `session` and writes its packets; returns the seconds
/// it took.
async fn run_session(
    session: &mut Session,
    input: &mut Input,
    mut output: Output,
) -> Result<f64, CtlError> {
    let progress = progress_bar(input.frame_count());
    let start = Instant::now();
    let mut pts = 0u64;
    loop {
        let mut slot = session.reserve(pts).await?;
        if !input.read_frame(slot.frame())? {
            break;
        }
        slot.send(pts, false).await?;
        pts += 1;
        for packet in session.ready_packets() {
            output.write(&packet.data)?;
            progress.inc(1);
        }
    }
    for packet in session.drain().await? {
        output.write(&packet.data)?;
        progress.inc(1);
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    output.finish()?;
    Ok(seconds)
}

/// The line `vpuctl encode` ends with.
pub fn summary_line(s: &EncodeSummary, output: &std::path::Path) -> String {
    format!(
        "{} frames {}x{} in {:.2} s ({:.1} fps), {} keyframes, {} bytes, {} at {} fps, card {} -> {}\n",
        s.frames,
        s.width,
        s.height,
        s.seconds,
        s.encode_fps(),
        s.keyframes,
        s.bytes,
        bitrate(s.bitrate()),
        format_rate(s.fps),
        s.card.rsplit('/').next().unwrap_or(""),
        output.display()
    )
}

fn format_rate((num, den): (u32, u32)) -> String {
    if den == 1 {
        num.to_string()
    } else {
        format!("{:.3}", f64::from(num) / f64::from(den))
    }
}

/// A progress bar on a terminal, nothing otherwise.
fn progress_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{bar:40.cyan/blue} {pos}/{len} frames  {fps}  eta {eta}"
    } else {
        "{spinner} {pos} frames  {fps}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "fps",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} fps", state.per_sec());
            },
        ));
    }
    bar
}
