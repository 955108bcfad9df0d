//! Where encoded packets go: an Annex-B file or an MP4 file, chosen by extension.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::mp4::Mp4Writer;
use super::CtlError;

/// An open output file.
#[derive(Debug)]
pub enum Output {
    /// Raw H.264 Annex-B byte stream.
    AnnexB {
        path: PathBuf,
        file: BufWriter<File>,
    },
    /// MP4 with one H.264 track.
    Mp4 {
        path: PathBuf,
        writer: Box<Mp4Writer<BufWriter<File>>>,
    },
}

impl Output {
    /// Creates `path`; MP4 when it ends in `.mp4` (any case), Annex-B otherwise.
    pub fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: (u32, u32),
    ) -> Result<Output, CtlError> {
        let file = File::create(path).map_err(|source| CtlError::CreateOutput {
            path: path.to_path_buf(),
            source,
        })?;
        let file = BufWriter::with_capacity(1 << 20, file);
        if is_mp4(path) {
            let (w, h) = (u16::try_from(width), u16::try_from(height));
            let (Ok(w), Ok(h)) = (w, h) else {
                return Err(CtlError::Usage(format!(
                    "{width}x{height} is too large for an mp4 track header"
                )));
            };
            let writer =
                Mp4Writer::new(file, w, h, fps.0, fps.1).map_err(|source| CtlError::Mp4 {
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(Output::Mp4 {
                path: path.to_path_buf(),
                writer: Box::new(writer),
            })
        } else {
            Ok(Output::AnnexB {
                path: path.to_path_buf(),
                file,
            })
        }
    }

    /// Appends one encoded frame (Annex-B bytes; empty for a skipped frame).
    pub fn write(&mut self, packet: &[u8]) -> Result<(), CtlError> {
        match self {
            Output::AnnexB { path, file } => {
                file.write_all(packet)
                    .map_err(|source| CtlError::WriteOutput {
                        path: path.clone(),
                        source,
                    })
            }
            Output::Mp4 { path, writer } => {
                writer
                    .write_access_unit(packet)
                    .map_err(|source| CtlError::Mp4 {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// Finishes the file (the MP4 index) and flushes it.
    pub fn finish(self) -> Result<(), CtlError> {
        match self {
            Output::AnnexB { path, mut file } => file
                .flush()
                .map_err(|source| CtlError::WriteOutput { path, source }),
            Output::Mp4 { path, writer } => writer
                .finish()
                .map(|_| ())
                .map_err(|source| CtlError::Mp4 { path, source }),
        }
    }
}

/// Whether `path` names an MP4 file.
pub fn is_mp4(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mp4"))
}
