//! Where encoded packets go, chosen by extension: MP4 (H.264 or AV1), IVF or a bare OBU
//! stream (AV1), Annex-B (H.264).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::av1::IvfWriter;
use super::cli::CodecArg;
use super::mp4::{Mp4Codec, Mp4Writer};
use super::CtlError;

/// An open output file.
#[derive(Debug)]
pub enum Output {
    /// Raw H.264 Annex-B byte stream.
    AnnexB {
        path: PathBuf,
        file: BufWriter<File>,
    },
    /// MP4 with one H.264 or AV1 track.
    Mp4 {
        path: PathBuf,
        writer: Box<Mp4Writer<BufWriter<File>>>,
    },
    /// AV1 temporal units in IVF.
    Ivf {
        path: PathBuf,
        writer: IvfWriter<BufWriter<File>>,
        frames: u64,
    },
    /// AV1 temporal units one after the other (the low-overhead bitstream format).
    Obu {
        path: PathBuf,
        file: BufWriter<File>,
    },
}

impl Output {
    /// Creates `path` for `codec`: MP4 when it ends in `.mp4` (any case); for AV1 IVF
    /// (`.ivf`) or a bare OBU stream (`.obu`); for H.264 Annex-B otherwise. The names
    /// are checked against the codec before anything is created.
    pub fn create(
        path: &Path,
        codec: CodecArg,
        width: u32,
        height: u32,
        fps: (u32, u32),
    ) -> Result<Output, CtlError> {
        let kind = kind(path, codec)?;
        let (w, h) = (u16::try_from(width), u16::try_from(height));
        let (Ok(w), Ok(h)) = (w, h) else {
            return Err(CtlError::Usage(format!(
                "{width}x{height} is too large for a container header"
            )));
        };
        let file = File::create(path).map_err(|source| CtlError::CreateOutput {
            path: path.to_path_buf(),
            source,
        })?;
        let file = BufWriter::with_capacity(1 << 20, file);
        let path = path.to_path_buf();
        Ok(match kind {
            Kind::Mp4 => {
                let mp4_codec = match codec {
                    CodecArg::H264 => Mp4Codec::H264,
                    CodecArg::Av1 => Mp4Codec::Av1,
                };
                let writer = Mp4Writer::with_codec(file, mp4_codec, w, h, fps.0, fps.1).map_err(
                    |source| CtlError::Mp4 {
                        path: path.clone(),
                        source,
                    },
                )?;
                Output::Mp4 {
                    path,
                    writer: Box::new(writer),
                }
            }
            Kind::Ivf => {
                let writer = IvfWriter::new(file, w, h, fps.0, fps.1).map_err(|source| {
                    CtlError::WriteOutput {
                        path: path.clone(),
                        source,
                    }
                })?;
                Output::Ivf {
                    path,
                    writer,
                    frames: 0,
                }
            }
            Kind::Obu => Output::Obu { path, file },
            Kind::AnnexB => Output::AnnexB { path, file },
        })
    }

    /// Appends one encoded frame (Annex-B bytes or an AV1 temporal unit; empty for a
    /// skipped frame).
    pub fn write(&mut self, packet: &[u8]) -> Result<(), CtlError> {
        match self {
            Output::AnnexB { path, file } | Output::Obu { path, file } => file
                .write_all(packet)
                .map_err(|source| CtlError::WriteOutput {
                    path: path.clone(),
                    source,
                }),
            Output::Mp4 { path, writer } => {
                writer.write_packet(packet).map_err(|source| CtlError::Mp4 {
                    path: path.clone(),
                    source,
                })
            }
            Output::Ivf {
                path,
                writer,
                frames,
            } => {
                let pts = *frames;
                *frames += 1;
                writer
                    .write(pts, packet)
                    .map_err(|source| CtlError::WriteOutput {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// Finishes the file (the MP4 index) and flushes it.
    pub fn finish(self) -> Result<(), CtlError> {
        match self {
            Output::AnnexB { path, mut file } | Output::Obu { path, mut file } => file
                .flush()
                .map_err(|source| CtlError::WriteOutput { path, source }),
            Output::Ivf { path, writer, .. } => writer
                .finish()
                .map(|_| ())
                .map_err(|source| CtlError::WriteOutput { path, source }),
            Output::Mp4 { path, writer } => writer
                .finish()
                .map(|_| ())
                .map_err(|source| CtlError::Mp4 { path, source }),
        }
    }
}

/// Checks that `path`'s extension names a container for `codec`.
pub fn check(path: &Path, codec: CodecArg) -> Result<(), CtlError> {
    kind(path, codec).map(|_| ())
}

fn kind(path: &Path, codec: CodecArg) -> Result<Kind, CtlError> {
    let ext = extension(path);
    Ok(match (codec, ext.as_str()) {
        (_, "mp4") => Kind::Mp4,
        (CodecArg::Av1, "ivf") => Kind::Ivf,
        (CodecArg::Av1, "obu") => Kind::Obu,
        (CodecArg::Av1, _) => {
            return Err(CtlError::Usage(format!(
                "{}: AV1 goes to .ivf, .mp4 or .obu",
                path.display()
            )))
        }
        (CodecArg::H264, "ivf" | "obu") => {
            return Err(CtlError::Usage(format!(
                "{}: .{ext} holds AV1; use --codec av1, or .mp4 or .h264 for H.264",
                path.display()
            )))
        }
        (CodecArg::H264, _) => Kind::AnnexB,
    })
}

/// The container an output name asks for.
enum Kind {
    AnnexB,
    Mp4,
    Ivf,
    Obu,
}

/// `path`'s extension, lowercase ("" when none).
fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}
