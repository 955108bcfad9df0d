//! The `--ladder` spec of `vpuctl transcode`: renditions as `SIZE:BITRATE`, comma separated,
//! such as `1080p:6M,720p:3M,480p:1500k,360p:800k`.
//!
//! A size is a height with `p` (the width follows the input's aspect ratio, rounded to an
//! even number) or an explicit `WIDTHxHEIGHT`. A bit rate takes the `k`/`M` suffixes of
//! `vpuctl encode --bitrate`.

use crate::cli::parse_bitrate;

/// Most renditions one ladder may have (a card admits a ladder whole; more rungs than this
/// is a typo rather than a ladder).
pub const MAX_RUNGS: usize = 8;

/// Errors of the ladder spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    /// Nothing was given.
    #[error("the ladder is empty; give renditions as SIZE:BITRATE,... (e.g. 720p:3M,360p:800k)")]
    Empty,
    /// A rung without the `:`.
    #[error("rendition `{0}` is not SIZE:BITRATE (e.g. 720p:3M or 1280x720:3000k)")]
    Syntax(String),
    /// A size that is neither `Hp` nor `WxH`, or out of range.
    #[error("rendition `{rung}`: {what}")]
    Size { rung: String, what: String },
    /// A bit rate that does not parse or is out of range.
    #[error("rendition `{rung}`: {what}")]
    Bitrate { rung: String, what: String },
    /// More rungs than [`MAX_RUNGS`].
    #[error("{0} renditions; a ladder has at most {MAX_RUNGS}")]
    TooMany(usize),
    /// The same size and bit rate twice.
    #[error("rendition `{0}` is given twice")]
    Duplicate(String),
    /// A rung larger than the input (a ladder never scales up).
    #[error("rendition `{rung}` ({width}x{height}) is larger than the {in_width}x{in_height} input; a ladder only scales down")]
    Upscale {
        rung: String,
        width: u32,
        height: u32,
        in_width: u32,
        in_height: u32,
    },
}

/// A rendition's size as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RungSize {
    /// `720p`: this height, the width from the input's aspect ratio.
    Height(u32),
    /// `1280x720`.
    Exact(u32, u32),
}

/// One rung as parsed, before the input's size is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rung {
    /// The text it was parsed from, for messages.
    pub spec: String,
    pub size: RungSize,
    /// Target bit rate, bit/s.
    pub bitrate: u32,
}

/// One rendition with its final size, for an input of known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    /// File and directory name: `720p`, or `1280x720`; made unique within the ladder.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Target bit rate, bit/s.
    pub bitrate: u32,
}

/// Parses a `--ladder` value (clap value parser).
pub fn parse_ladder(s: &str) -> Result<Vec<Rung>, LadderError> {
    let parts: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(LadderError::Empty);
    }
    if parts.len() > MAX_RUNGS {
        return Err(LadderError::TooMany(parts.len()));
    }
    let mut rungs: Vec<Rung> = Vec::with_capacity(parts.len());
    for part in parts {
        let rung = parse_rung(part)?;
        if rungs
            .iter()
            .any(|r| r.size == rung.size && r.bitrate == rung.bitrate)
        {
            return Err(LadderError::Duplicate(part.to_string()));
        }
        rungs.push(rung);
    }
    Ok(rungs)
}

fn parse_rung(part: &str) -> Result<Rung, LadderError> {
    let (size, rate) = part
        .split_once(':')
        .ok_or_else(|| LadderError::Syntax(part.to_string()))?;
    let size_err = |what: String| LadderError::Size {
        rung: part.to_string(),
        what,
    };
    let size = size.trim();
    let size = if let Some(h) = size.strip_suffix(['p', 'P']) {
        let h: u32 = h
            .parse()
            .map_err(|_| size_err(format!("`{size}` is not a size such as 720p or 1280x720")))?;
        check_dimension(h, "height").map_err(size_err)?;
        RungSize::Height(h)
    } else if size.contains(['x', 'X']) {
        let (w, h) = crate::cli::parse_size(size).map_err(size_err)?;
        RungSize::Exact(w, h)
    } else {
        return Err(size_err(format!(
            "`{size}` is not a size such as 720p or 1280x720"
        )));
    };
    let bitrate = parse_bitrate(rate.trim()).map_err(|what| LadderError::Bitrate {
        rung: part.to_string(),
        what,
    })?;
    Ok(Rung {
        spec: part.to_string(),
        size,
        bitrate,
    })
}

fn check_dimension(v: u32, what: &str) -> Result<(), String> {
    if !(16..=8192).contains(&v) || v % 2 != 0 {
        return Err(format!("{what} {v} must be even and between 16 and 8192"));
    }
    Ok(())
}

/// Resolves the rungs for an input of `in_width`×`in_height`: widths from the input's
/// aspect ratio (even), names made unique, renditions larger than the input refused.
pub fn resolve(
    rungs: &[Rung],
    in_width: u32,
    in_height: u32,
) -> Result<Vec<Rendition>, LadderError> {
    let mut out: Vec<Rendition> = Vec::with_capacity(rungs.len());
    for r in rungs {
        let (width, height, name) = match r.size {
            RungSize::Height(h) => {
                // The nearest even width to h × in_width / in_height (4:2:0 chroma).
                let w = (u64::from(h) * u64::from(in_width) + u64::from(in_height))
                    / (2 * u64::from(in_height.max(1)))
                    * 2;
                let w = w.clamp(16, 8192) as u32;
                (w, h, format!("{h}p"))
            }
            RungSize::Exact(w, h) => (w, h, format!("{w}x{h}")),
        };
        if width > in_width || height > in_height {
            return Err(LadderError::Upscale {
                rung: r.spec.clone(),
                width,
                height,
                in_width,
                in_height,
            });
        }
        out.push(Rendition {
            name,
            width,
            height,
            bitrate: r.bitrate,
        });
    }
    // Two rungs of one size (different bit rates) get the rate in their names.
    let names: Vec<String> = out.iter().map(|r| r.name.clone()).collect();
    for r in &mut out {
        if names.iter().filter(|n| **n == r.name).count() > 1 {
            r.name = format!("{}-{}k", r.name, r.bitrate / 1000);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_ladder_and_resolves_widths() {
        let rungs = parse_ladder("1080p:6M,720p:3M,480p:1500k,360p:800k").unwrap();
        assert_eq!(rungs.len(), 4);
        assert_eq!(rungs[2].size, RungSize::Height(480));
        assert_eq!(rungs[2].bitrate, 1_500_000);
        let r = resolve(&rungs, 1920, 1080).unwrap();
        let sizes: Vec<_> = r
            .iter()
            .map(|r| (r.name.as_str(), r.width, r.height))
            .collect();
        assert_eq!(
            sizes,
            [
                ("1080p", 1920, 1080),
                ("720p", 1280, 720),
                ("480p", 854, 480),
                ("360p", 640, 360)
            ]
        );
        // 4:3 input; 240p of 640x360 is 426.7 wide: the nearest even width.
        let r = resolve(&parse_ladder("240p:300k").unwrap(), 640, 480).unwrap();
        assert_eq!((r[0].width, r[0].height), (320, 240));
        let r = resolve(&parse_ladder("240p:300k").unwrap(), 640, 360).unwrap();
        assert_eq!((r[0].width, r[0].height), (426, 240));
    }

    #[test]
    fn explicit_sizes_and_same_height_rungs() {
        let rungs = parse_ladder(" 1280x720:3M , 720p:2M,").unwrap();
        let r = resolve(&rungs, 1920, 1080).unwrap();
        assert_eq!(r[0].name, "1280x720");
        assert_eq!(r[1].name, "720p");
        let r = resolve(&parse_ladder("720p:3M,720p:2M").unwrap(), 1920, 1080).unwrap();
        assert_eq!(r[0].name, "720p-3000k");
        assert_eq!(r[1].name, "720p-2000k");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert_eq!(parse_ladder(""), Err(LadderError::Empty));
        assert_eq!(parse_ladder(" , "), Err(LadderError::Empty));
        assert!(matches!(parse_ladder("720p"), Err(LadderError::Syntax(_))));
        assert!(matches!(
            parse_ladder("720:3M"),
            Err(LadderError::Size { .. })
        ));
        assert!(matches!(
            parse_ladder("721p:3M"),
            Err(LadderError::Size { .. })
        ));
        assert!(matches!(
            parse_ladder("99999p:3M"),
            Err(LadderError::Size { .. })
        ));
        assert!(matches!(
            parse_ladder("1281x720:3M"),
            Err(LadderError::Size { .. })
        ));
        assert!(matches!(
            parse_ladder("720p:fast"),
            Err(LadderError::Bitrate { .. })
        ));
        assert!(matches!(
            parse_ladder("720p:0"),
            Err(LadderError::Bitrate { .. })
        ));
        assert_eq!(
            parse_ladder("720p:3M,720p:3000k"),
            Err(LadderError::Duplicate("720p:3000k".into()))
        );
        let nine = ["360p:1M"; 9].join(",");
        assert_eq!(parse_ladder(&nine), Err(LadderError::TooMany(9)));
        let e = resolve(&parse_ladder("1080p:6M").unwrap(), 1280, 720).unwrap_err();
        assert!(matches!(e, LadderError::Upscale { .. }));
        assert!(
            e.to_string().contains("larger than the 1280x720 input"),
            "{e}"
        );
    }
}
