//! `vpuctl`'s command line (clap derive; the doc comments are the help text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operate and try out vpud, the VPU card daemon: list cards and sessions, encode files,
/// run a demo, inject faults into emulated cards.
#[derive(Debug, Parser)]
#[command(name = "vpuctl", version, propagate_version = true)]
pub struct Cli {
    /// Bus vpud is on: `system`, `session` or a D-Bus address
    /// [default: $VPUD_BUS_ADDRESS, else the system bus]
    #[arg(long, global = true, value_name = "BUS")]
    pub bus: Option<String>,

    /// Run a private vpud with N emulated cards for this one command
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub emulate: Option<u32>,

    #[command(subcommand)]
    pub command: Command,
}

/// What `vpuctl` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon's state: version, policy, load, and a line per card
    Status(ListArgs),
    /// Every card with its identity, engines, load and state
    Cards(ListArgs),
    /// Every open session with its card, size, bitrate and counters
    Sessions(ListArgs),
    /// Encode a Y4M or raw I420 file to H.264 (Annex-B or .mp4) or AV1 (.ivf, .mp4, .obu)
    Encode(EncodeArgs),
    /// Transcode H.264 (Annex-B or MP4, a file or a pipe) into an ABR ladder on one card:
    /// one MP4 per rendition, and HLS with --hls
    Transcode(TranscodeArgs),
    /// Private bus, emulated cards, concurrent sessions encoding a moving test pattern, and
    /// one of their outputs transcoded into a ladder
    Demo(DemoArgs),
    /// Inject a fault into an emulated card
    Inject(InjectArgs),
}

/// Options of the listing commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Options of `vpuctl encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Input: a Y4M file (4:2:0), or raw I420 frames with --size
    pub input: PathBuf,

    /// Output, by extension: .mp4 (either codec), .ivf or .obu (AV1: IVF, or the bare
    /// OBU stream), anything else Annex-B (H.264)
    #[arg(short, long, value_name = "OUTPUT")]
    pub output: PathBuf,

    /// Codec to encode to (a card with an engine for it must be present)
    #[arg(long, value_enum, default_value_t = CodecArg::H264)]
    pub codec: CodecArg,

    /// Target bit rate in bit/s; k and M suffixes accepted (2M = 2000000)
    #[arg(long, value_name = "B", value_parser = parse_bitrate)]
    pub bitrate: Option<u32>,

    /// Frames between keyframes
    #[arg(long, value_name = "G", value_parser = clap::value_parser!(u32).range(1..))]
    pub gop: Option<u32>,

    /// Frame size of raw I420 input, WIDTHxHEIGHT (ignored for Y4M, which carries its size)
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub size: Option<(u32, u32)>,

    /// Frame rate of raw I420 input, NUM or NUM/DEN
    #[arg(long, value_name = "FPS", default_value = "30", value_parser = parse_rate)]
    pub fps: (u32, u32),

    /// Pin the session to a card (index or object path)
    #[arg(long, value_name = "CARD")]
    pub card: Option<String>,
}

/// Options of `vpuctl transcode`.
#[derive(Debug, Args)]
pub struct TranscodeArgs {
    /// Input: H.264 Annex-B or MP4; `-` (standard input) or a FIFO for live input
    pub input: PathBuf,

    /// Output directory (created): NAME.mp4 per rendition, and with --hls master.m3u8 and
    /// NAME/index.m3u8 with its segments
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// Renditions as SIZE:BITRATE,... where SIZE is a height (720p, the width following
    /// the input's aspect ratio) or WIDTHxHEIGHT, e.g. 1080p:6M,720p:3M,480p:1500k,360p:800k
    #[arg(long, value_name = "LADDER", value_parser = parse_ladder_arg)]
    pub ladder: Ladder,

    /// Input frames between keyframes, the same in every rendition [default: 2 seconds]
    #[arg(long, value_name = "G", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub gop: Option<u32>,

    /// Also write HLS: transport stream segments cut at the keyframes every rendition
    /// shares, a media playlist per rendition and a master playlist
    #[arg(long)]
    pub hls: bool,

    /// Target HLS segment length in seconds; a segment ends at the first shared keyframe
    /// after it
    #[arg(long, value_name = "S", default_value_t = 4.0, value_parser = parse_segment_seconds)]
    pub segment_seconds: f64,

    /// Frame rate of an Annex-B input whose SPS carries no timing info, NUM or NUM/DEN
    #[arg(long, value_name = "FPS", default_value = "30", value_parser = parse_rate)]
    pub fps: (u32, u32),

    /// Pin the ladder to a card (index or object path)
    #[arg(long, value_name = "CARD")]
    pub card: Option<String>,
}

/// A parsed `--ladder` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder(pub Vec<crate::transcode::ladder::Rung>);

fn parse_ladder_arg(s: &str) -> Result<Ladder, String> {
    crate::transcode::ladder::parse_ladder(s)
        .map(Ladder)
        .map_err(|e| e.to_string())
}

fn parse_segment_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.5..=60.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "segment length `{s}` must be a number of seconds from 0.5 to 60"
        )),
    }
}

/// A codec as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecArg {
    H264,
    Av1,
}

impl CodecArg {
    /// The name the D-Bus API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecArg::H264 => "h264",
            CodecArg::Av1 => "av1",
        }
    }
}

/// Options of `vpuctl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Emulated cards
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub cards: u32,

    /// Concurrent sessions, of different sizes and bitrates
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sessions: u32,

    /// Frames per session
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub frames: u32,

    /// Codecs the sessions take in turn (each emulated card has H.264 and AV1 engines)
    #[arg(long, value_enum, value_delimiter = ',', default_value = "h264,av1")]
    pub codecs: Vec<CodecArg>,

    /// Directory for the output files [default: a new vpud-demo-* directory here, or in /tmp]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Options of `vpuctl inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The card: index (as `vpuctl cards` lists) or object path
    pub card: String,

    /// hang-engine, lost-interrupt, fatal-status, corrupt-completion, slow-engine or
    /// surprise-removal
    pub kind: String,

    /// Engine the fault applies to (hang-engine, slow-engine) [default: all]
    #[arg(long, value_name = "E")]
    pub engine: Option<u32>,

    /// How many events the fault affects (lost-interrupt, corrupt-completion)
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,

    /// How long the fault lasts, in milliseconds (hang-engine, slow-engine)
    #[arg(long, value_name = "D")]
    pub duration_ms: Option<u32>,
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not WIDTHxHEIGHT (e.g. 1280x720)"))?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("width `{w}` is not a number"))?;
    let h: u32 = h
        .parse()
        .map_err(|_| format!("height `{h}` is not a number"))?;
    if w < 16 || h < 16 || w > 8192 || h > 8192 || w % 2 != 0 || h % 2 != 0 {
        return Err(format!(
            "size {w}x{h}: width and height must be even and between 16 and 8192"
        ));
    }
    Ok((w, h))
}

/// Parses `NUM` or `NUM/DEN`.
pub fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let (n, d) = s.split_once('/').unwrap_or((s, "1"));
    let n: u32 = n
        .parse()
        .map_err(|_| format!("frame rate `{s}` is not NUM or NUM/DEN"))?;
    let d: u32 = d
        .parse()
        .map_err(|_| format!("frame rate `{s}` is not NUM or NUM/DEN"))?;
    if n == 0 || d == 0 {
        return Err(format!("frame rate `{s}` must be positive"));
    }
    Ok((n, d))
}

/// Parses a bit rate with an optional `k`/`M` suffix.
pub fn parse_bitrate(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1_000.0),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1_000_000.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bit rate `{s}` is not a number (e.g. 2000000, 2000k, 2M)"))?;
    let bps = v * mult;
    if !(1_000.0..=1_000_000_000.0).contains(&bps) {
        return Err(format!("bit rate `{s}` is out of range (1 kb/s to 1 Gb/s)"));
    }
    Ok(bps as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_values() {
        assert_eq!(parse_size("1280x720"), Ok((1280, 720)));
        assert!(parse_size("1280").is_err());
        assert!(parse_size("1281x720").is_err());
        assert_eq!(parse_rate("30000/1001"), Ok((30000, 1001)));
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_bitrate("2M"), Ok(2_000_000));
        assert_eq!(parse_bitrate("500k"), Ok(500_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("0").is_err());
    }
}
