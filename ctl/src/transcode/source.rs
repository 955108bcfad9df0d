//! The input of `vpuctl transcode`: an H.264 Annex-B stream or an MP4 file, from a file, a
//! FIFO or standard input (`-`), recognised by its first bytes. Opening it reads as far as
//! the first sequence parameter set, so the size, frame rate and profile are known before
//! any card is asked for.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::annexb::{AccessUnit, AnnexbError, AnnexbReader};
use super::demux::{DemuxError, Mp4Reader};
use super::sps::{parse_sps, SpsError, SpsInfo};

/// Access units read before the first SPS that are skipped (a live stream joined between
/// keyframes); past this the input is refused.
const MAX_LEADING_SKIP: u64 = 1000;

/// Errors of opening and reading the input.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("reading {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The Annex-B stream is malformed.
    #[error("input {path}")]
    AnnexB {
        path: PathBuf,
        #[source]
        source: AnnexbError,
    },
    /// The MP4 file is malformed or unsupported.
    #[error("input {path}")]
    Mp4 {
        path: PathBuf,
        #[source]
        source: DemuxError,
    },
    /// The sequence parameter set is malformed.
    #[error("input {path}")]
    Sps {
        path: PathBuf,
        #[source]
        source: SpsError,
    },
    /// The stream is readable but not one a transcode can take.
    #[error("input {path}: {what}")]
    Unsupported { path: PathBuf, what: String },
}

/// The input's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    AnnexB,
    Mp4,
}

/// What is known of the input stream once it is open.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub container: Container,
    pub sps: SpsInfo,
    /// Frames per second: the MP4's sample durations, the SPS timing info, or the fallback
    /// given to [`Source::open`].
    pub fps: (u32, u32),
    /// Seconds per pts tick, as (numerator, denominator).
    pub time_base: (u64, u64),
    /// Frames in the input, when known up front (MP4).
    pub frames: Option<u64>,
    /// Bytes of the input, when it is a regular file.
    pub bytes: Option<u64>,
    /// Access units before the first SPS that were skipped.
    pub skipped: u64,
}

#[derive(Debug)]
enum Reader {
    AnnexB(Box<AnnexbReader<InputFile>>),
    Mp4(Box<Mp4Reader<BufReader<InputFile>>>),
}

/// An open input.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    reader: Reader,
    info: StreamInfo,
    /// The first access unit, read while opening.
    first: Option<AccessUnit>,
    read: u64,
}

impl Source {
    /// Opens `path` (`-` is standard input). `fps` is used for an Annex-B stream whose SPS
    /// carries no timing info.
    pub fn open(path: &Path, fps: (u32, u32)) -> Result<Source, SourceError> {
        let read_err = |source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = if path == Path::new("-") {
            File::open("/dev/stdin")
        } else {
            File::open(path)
        }
        .map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let bytes = meta.is_file().then_some(meta.len());
        let (input, head) = InputFile::open(file, bytes.is_some()).map_err(read_err)?;
        if head.is_empty() {
            return Err(SourceError::Unsupported {
                path: path.to_path_buf(),
                what: "it is empty".into(),
            });
        }
        let is_mp4 = head.len() >= 8
            && matches!(
                &head[4..8],
                b"ftyp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide"
            );
        if is_mp4 {
            Source::open_mp4(path, input, bytes)
        } else {
            Source::open_annexb(path, input, bytes, fps)
        }
    }

    fn open_mp4(path: &Path, input: InputFile, bytes: Option<u64>) -> Result<Source, SourceError> {
        let seekable = bytes.is_some();
        let input = BufReader::with_capacity(1 << 20, input);
        let mp4_err = |source| SourceError::Mp4 {
            path: path.to_path_buf(),
            source,
        };
        let reader = Mp4Reader::open(input, seekable).map_err(mp4_err)?;
        let track = reader.track().clone();
        let sps_nal = track.sps.first().ok_or_else(|| SourceError::Unsupported {
            path: path.to_path_buf(),
            what: "the avcC box has no sequence parameter set".into(),
        })?;
        let sps = parse_sps(sps_nal).map_err(|source| SourceError::Sps {
            path: path.to_path_buf(),
            source,
        })?;
        check_supported(path, &sps)?;
        if track.samples == 0 {
            return Err(SourceError::Unsupported {
                path: path.to_path_buf(),
                what: "the video track has no samples".into(),
            });
        }
        let info = StreamInfo {
            container: Container::Mp4,
            sps,
            fps: track.fps,
            time_base: (1, u64::from(track.timescale)),
            frames: Some(track.samples),
            bytes,
            skipped: 0,
        };
        Ok(Source {
            path: path.to_path_buf(),
            reader: Reader::Mp4(Box::new(reader)),
            info,
            first: None,
            read: 0,
        })
    }

    fn open_annexb(
        path: &Path,
        input: InputFile,
        bytes: Option<u64>,
        fps: (u32, u32),
    ) -> Result<Source, SourceError> {
        let annexb_err = |source| SourceError::AnnexB {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = AnnexbReader::new(input);
        let mut skipped = 0u64;
        let first = loop {
            let Some(au) = reader.next_access_unit().map_err(annexb_err)? else {
                return Err(SourceError::Unsupported {
                    path: path.to_path_buf(),
                    what: if skipped == 0 {
                        "no coded picture in the stream".into()
                    } else {
                        format!("{skipped} pictures and no sequence parameter set (SPS) with a keyframe")
                    },
                });
            };
            if au.keyframe && reader.sps().is_some() && reader.pps().is_some() {
                break au;
            }
            skipped += 1;
            if skipped > MAX_LEADING_SKIP {
                return Err(SourceError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!(
                        "no keyframe with a sequence parameter set (SPS) in the first {MAX_LEADING_SKIP} pictures"
                    ),
                });
            }
        };
        let sps_nal = reader.sps().unwrap_or_default().to_vec();
        let sps = parse_sps(&sps_nal).map_err(|source| SourceError::Sps {
            path: path.to_path_buf(),
            source,
        })?;
        check_supported(path, &sps)?;
        let fps = sps.fps.unwrap_or(fps);
        let mut first = first;
        first.pts = 0;
        Ok(Source {
            path: path.to_path_buf(),
            reader: Reader::AnnexB(Box::new(reader)),
            info: StreamInfo {
                container: Container::AnnexB,
                sps,
                fps,
                time_base: (u64::from(fps.1), u64::from(fps.0)),
                frames: None,
                bytes,
                skipped,
            },
            first: Some(first),
            read: 0,
        })
    }

    /// The stream's description.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The input's path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How far the input has been read: frames of an MP4, bytes of an Annex-B stream.
    pub fn position(&self) -> u64 {
        match &self.reader {
            Reader::AnnexB(r) => r.position(),
            Reader::Mp4(r) => r.position(),
        }
    }

    /// Access units returned so far.
    pub fn access_units_read(&self) -> u64 {
        self.read
    }

    /// The next access unit in decode order, or `None` at the end of the input. Annex-B
    /// pts count frames from the first keyframe.
    pub fn next_access_unit(&mut self) -> Result<Option<AccessUnit>, SourceError> {
        let au = match self.first.take() {
            Some(au) => Some(au),
            None => match &mut self.reader {
                Reader::AnnexB(r) => r
                    .next_access_unit()
                    .map_err(|source| SourceError::AnnexB {
                        path: self.path.clone(),
                        source,
                    })?
                    .map(|mut au| {
                        au.pts -= self.info.skipped;
                        au
                    }),
                Reader::Mp4(r) => r.next_access_unit().map_err(|source| SourceError::Mp4 {
                    path: self.path.clone(),
                    source,
                })?,
            },
        };
        if au.is_some() {
            self.read += 1;
        }
        Ok(au)
    }
}

/// The input file with its first bytes read ahead to recognise the container. A regular
/// file is rewound after the peek (`head` is then empty and seeking works); a pipe cannot
/// be, so its first bytes are served from `head` and it cannot seek.
#[derive(Debug)]
struct InputFile {
    head: Vec<u8>,
    at: usize,
    file: File,
}

impl InputFile {
    /// The input and its first (up to 8) bytes.
    fn open(mut file: File, regular: bool) -> io::Result<(InputFile, Vec<u8>)> {
        let mut head = vec![0u8; 8];
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(got);
        if regular {
            file.seek(SeekFrom::Start(0))?;
            let input = InputFile {
                head: Vec::new(),
                at: 0,
                file,
            };
            return Ok((input, head));
        }
        let input = InputFile {
            head: head.clone(),
            at: 0,
            file,
        };
        Ok((input, head))
    }
}

impl Read for InputFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.head.len() {
            let n = buf.len().min(self.head.len() - self.at);
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        self.file.read(buf)
    }
}

impl Seek for InputFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        if !self.head.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a pipe cannot seek",
            ));
        }
        self.file.seek(pos)
    }
}

/// Refuses what the card's decoder does not take: anything but 8-bit 4:2:0 progressive.
fn check_supported(path: &Path, sps: &SpsInfo) -> Result<(), SourceError> {
    let what = if sps.chroma_format_idc != 1 {
        format!(
            "chroma format {} ({}); the card decodes 4:2:0 only",
            sps.chroma_format_idc,
            ["monochrome", "4:2:0", "4:2:2", "4:4:4"][sps.chroma_format_idc.min(3) as usize]
        )
    } else if sps.bit_depth != 8 {
        format!("{}-bit samples; the card decodes 8-bit only", sps.bit_depth)
    } else if sps.interlaced {
        "interlaced (field) coding; the card decodes progressive frames only".into()
    } else if sps.width % 2 != 0 || sps.height % 2 != 0 || sps.width < 16 || sps.height < 16 {
        format!(
            "{}x{}: width and height must be even and at least 16",
            sps.width, sps.height
        )
    } else {
        return Ok(());
    };
    Err(SourceError::Unsupported {
        path: path.to_path_buf(),
        what,
    })
}
