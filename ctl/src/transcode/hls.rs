//! HLS output (RFC 8216): per rendition a directory of MPEG-TS segments and a media
//! playlist, and one master playlist naming every rendition with its bandwidth, resolution
//! and codec.
//!
//! Transport stream segments rather than fragmented MP4: they play in every HLS client
//! (protocol version 3, no `EXT-X-MAP`), each segment is a self-contained file that
//! `ffprobe` and `ffmpeg` read on its own, and the card's packets are already the Annex-B
//! that a transport stream carries. Playlists are rewritten (atomically, by rename) after
//! every segment as `EVENT` playlists, so a player can follow a live transcode, and end as
//! `VOD` playlists with `EXT-X-ENDLIST`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ts::{TsMuxer, CLOCK_HZ, PCR_DELAY};

/// Name of the master playlist in the output directory.
pub const MASTER_PLAYLIST: &str = "master.m3u8";
/// Name of each rendition's media playlist in its directory.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";

/// Errors of the HLS writer.
#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    /// A segment, playlist or directory could not be written.
    #[error("writing {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A finished segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// File name within the rendition's directory.
    pub name: String,
    pub seconds: f64,
    pub bytes: u64,
}

/// What the master playlist says about one rendition.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The media playlist's path relative to the master playlist.
    pub uri: String,
    /// Peak segment bit rate, bit/s (the attribute HLS requires).
    pub bandwidth: u64,
    /// Mean bit rate over all segments, bit/s.
    pub average_bandwidth: u64,
    pub width: u32,
    pub height: u32,
    /// RFC 6381 codec string, such as `avc1.42c01f`.
    pub codecs: String,
    pub fps: f64,
}

/// The master playlist.
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        s.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},CODECS=\"{}\",FRAME-RATE={:.3}\n{}\n",
            v.bandwidth, v.average_bandwidth, v.width, v.height, v.codecs, v.fps, v.uri
        ));
    }
    s
}

/// A media playlist: `ended` makes it a `VOD` playlist with `EXT-X-ENDLIST`, else `EVENT`.
pub fn media_playlist(segments: &[Segment], target_seconds: f64, ended: bool) -> String {
    let longest = segments
        .iter()
        .map(|s| s.seconds)
        .fold(target_seconds, f64::max);
    // EXTINF rounded to the nearest integer must not exceed the target duration.
    let target = longest.round().max(1.0) as u64;
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:{}\n",
        if ended { "VOD" } else { "EVENT" }
    );
    for seg in segments {
        s.push_str(&format!("#EXTINF:{:.6},\n{}\n", seg.seconds, seg.name));
    }
    if ended {
        s.push_str("#EXT-X-ENDLIST\n");
    }
    s
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees
/// a half-written playlist.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), HlsError> {
    let tmp = path.with_extension("m3u8.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| HlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// The 90 kHz decode time of frame `index` at `fps`, offset so the PCR never goes below 0.
pub fn frame_time_90k(index: u64, fps: (u32, u32)) -> u64 {
    2 * PCR_DELAY
        + (u128::from(index) * u128::from(CLOCK_HZ) * u128::from(fps.1) / u128::from(fps.0.max(1)))
            as u64
}

/// One rendition's segments: the open segment file and the finished ones.
#[derive(Debug)]
pub struct HlsRendition {
    dir: PathBuf,
    fps: (u32, u32),
    muxer: TsMuxer,
    /// The open segment: file, name, first frame index, bytes so far.
    current: Option<(BufWriter<File>, String, u64, u64)>,
    segments: Vec<Segment>,
    buf: Vec<u8>,
}

impl HlsRendition {
    /// Segments go into `dir`, which is created.
    pub fn create(dir: &Path, fps: (u32, u32)) -> Result<Self, HlsError> {
        std::fs::create_dir_all(dir).map_err(|source| HlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(HlsRendition {
            dir: dir.to_path_buf(),
            fps,
            muxer: TsMuxer::new(),
            current: None,
            segments: Vec::new(),
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// Ends the open segment (if any) before frame `frame` and opens the next one.
    pub fn cut(&mut self, frame: u64) -> Result<(), HlsError> {
        self.close_segment(frame)?;
        let name = format!("seg{:05}.ts", self.segments.len());
        let path = self.dir.join(&name);
        let file = File::create(&path).map_err(|source| HlsError::Write {
            path: path.clone(),
            source,
        })?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        self.buf.clear();
        self.muxer.write_tables(&mut self.buf);
        file.write_all(&self.buf)
            .map_err(|source| HlsError::Write { path, source })?;
        self.current = Some((file, name, frame, self.buf.len() as u64));
        Ok(())
    }

    /// Adds frame `frame`'s access unit to the open segment (none is open before the
    /// first [`HlsRendition::cut`]: the frame is then dropped from HLS).
    pub fn write(&mut self, frame: u64, annexb: &[u8], keyframe: bool) -> Result<(), HlsError> {
        let Some((file, name, _, bytes)) = &mut self.current else {
            return Ok(());
        };
        if annexb.is_empty() {
            return Ok(());
        }
        let t = frame_time_90k(frame, self.fps);
        self.buf.clear();
        self.muxer
            .write_access_unit(&mut self.buf, annexb, t, t, keyframe);
        file.write_all(&self.buf)
            .map_err(|source| HlsError::Write {
                path: self.dir.join(&*name),
                source,
            })?;
        *bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Closes the open segment, which ends before frame `end`.
    pub fn close_segment(&mut self, end: u64) -> Result<(), HlsError> {
        let Some((mut file, name, start, bytes)) = self.current.take() else {
            return Ok(());
        };
        file.flush().map_err(|source| HlsError::Write {
            path: self.dir.join(&name),
            source,
        })?;
        let seconds =
            end.saturating_sub(start) as f64 * f64::from(self.fps.1) / f64::from(self.fps.0.max(1));
        self.segments.push(Segment {
            name,
            seconds,
            bytes,
        });
        Ok(())
    }

    /// The finished segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Writes the media playlist of the finished segments.
    pub fn write_playlist(&self, target_seconds: f64, ended: bool) -> Result<(), HlsError> {
        write_atomically(
            &self.dir.join(MEDIA_PLAYLIST),
            &media_playlist(&self.segments, target_seconds, ended),
        )
    }

    /// Peak and mean bit rate of the finished segments, bit/s.
    pub fn bandwidth(&self) -> Option<(u64, u64)> {
        let peak = self
            .segments
            .iter()
            .filter(|s| s.seconds > 0.0)
            .map(|s| s.bytes as f64 * 8.0 / s.seconds)
            .fold(0.0, f64::max);
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let seconds: f64 = self.segments.iter().map(|s| s.seconds).sum();
        (seconds > 0.0).then(|| {
            (
                peak.ceil() as u64,
                (bytes as f64 * 8.0 / seconds).ceil() as u64,
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn playlists_have_the_required_tags() {
        let segs = [
            Segment {
                name: "seg00000.ts".into(),
                seconds: 4.0,
                bytes: 100,
            },
            Segment {
                name: "seg00001.ts".into(),
                seconds: 4.4,
                bytes: 100,
            },
        ];
        let live = media_playlist(&segs, 4.0, false);
        assert!(live.contains("#EXT-X-TARGETDURATION:4\n"), "{live}");
        assert!(live.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"));
        assert!(!live.contains("ENDLIST"));
        let vod = media_playlist(&segs, 2.0, true);
        assert!(vod.contains("#EXTINF:4.400000,\nseg00001.ts\n"), "{vod}");
        assert!(vod.ends_with("#EXT-X-ENDLIST\n"));
        let m = master_playlist(&[Variant {
            uri: "720p/index.m3u8".into(),
            bandwidth: 3_300_000,
            average_bandwidth: 3_000_000,
            width: 1280,
            height: 720,
            codecs: "avc1.42c01f".into(),
            fps: 30.0,
        }]);
        assert!(m.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=3300000,AVERAGE-BANDWIDTH=3000000,RESOLUTION=1280x720,CODECS=\"avc1.42c01f\",FRAME-RATE=30.000\n720p/index.m3u8\n"
        ), "{m}");
    }

    #[test]
    fn frame_times_are_exact_at_ntsc_rates() {
        assert_eq!(frame_time_90k(0, (30, 1)), 2 * PCR_DELAY);
        assert_eq!(
            frame_time_90k(30, (30, 1)) - frame_time_90k(0, (30, 1)),
            90_000
        );
        assert_eq!(
            frame_time_90k(30000, (30000, 1001)) - 2 * PCR_DELAY,
            90_090_000
        );
    }
}
