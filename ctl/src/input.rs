//! Raw frames for `vpuctl encode`: Y4M files (read by `vpu_driver::media`) or headerless
//! I420 with a size given on the command line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use vpu_driver::media::Y4mReader;

use super::CtlError;

/// The first bytes of every Y4M file.
const Y4M_MAGIC: &[u8] = b"YUV4MPEG2 ";

/// An open input file.
#[derive(Debug)]
pub struct Input {
    path: PathBuf,
    width: u32,
    height: u32,
    fps: (u32, u32),
    frame_size: usize,
    frames: Option<u64>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Raw(BufReader<File>),
    /// The reader and a frame buffer it reads into.
    Y4m(Box<Y4mReader<BufReader<File>>>, Vec<u8>),
}

impl Input {
    /// Opens `path`: Y4M when it starts with the Y4M signature, raw I420 of `size`
    /// otherwise (and then `size` is required).
    pub fn open(path: &Path, size: Option<(u32, u32)>, fps: (u32, u32)) -> Result<Input, CtlError> {
        let read_err = |source| CtlError::ReadInput {
            path: path.to_path_buf(),
            source,
        };
        // One open, so that pipes and /dev/stdin work: the signature is peeked from the
        // buffer, not read and then read again. Only a regular file has a known length.
        let file = File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let len = meta.is_file().then_some(meta.len());
        let mut file = BufReader::with_capacity(1 << 20, file);
        if file.fill_buf().map_err(read_err)?.starts_with(Y4M_MAGIC) {
            return Input::open_y4m(path, file, len);
        }
        let Some((width, height)) = size else {
            return Err(CtlError::BadInput {
                path: path.to_path_buf(),
                what: "not a Y4M file (no YUV4MPEG2 signature); for raw I420 give --size WxH"
                    .into(),
            });
        };
        let (w, h) = (width as usize, height as usize);
        let frame_size = w * h + 2 * (w.div_ceil(2) * h.div_ceil(2));
        if len.is_some_and(|len| len == 0 || len % frame_size as u64 != 0) {
            let len = len.unwrap_or_default();
            return Err(CtlError::BadInput {
                path: path.to_path_buf(),
                what: format!(
                    "{len} bytes is not a whole number of {width}x{height} I420 frames ({frame_size} bytes each)"
                ),
            });
        }
        Ok(Input {
            path: path.to_path_buf(),
            width,
            height,
            fps,
            frame_size,
            frames: len.map(|len| len / frame_size as u64),
            source: Source::Raw(file),
        })
    }

    fn open_y4m(
        path: &Path,
        mut file: BufReader<File>,
        len: Option<u64>,
    ) -> Result<Input, CtlError> {
        let read_err = |source| CtlError::ReadInput {
            path: path.to_path_buf(),
            source,
        };
        let header_len = file
            .fill_buf()
            .map_err(read_err)?
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |p| p as u64 + 1);
        let reader = Y4mReader::new(file).map_err(|source| CtlError::Media {
            path: path.to_path_buf(),
            source,
        })?;
        let h = reader.header().clone();
        let frame_size = h.frame_size();
        // Exact when every frame header is a bare "FRAME\n", as nearly all files have.
        let per_frame = frame_size as u64 + 6;
        let frames = len.and_then(|len| {
            let body = len.saturating_sub(header_len);
            (body % per_frame == 0).then_some(body / per_frame)
        });
        if h.fps_num == 0 || h.fps_den == 0 {
            return Err(CtlError::BadInput {
                path: path.to_path_buf(),
                what: format!("frame rate {}:{} in the Y4M header", h.fps_num, h.fps_den),
            });
        }
        Ok(Input {
            path: path.to_path_buf(),
            width: h.width,
            height: h.height,
            fps: (h.fps_num, h.fps_den),
            frame_size,
            frames,
            source: Source::Y4m(Box::new(reader), Vec::with_capacity(frame_size)),
        })
    }

    /// Frame width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Frame rate as (numerator, denominator).
    pub fn fps(&self) -> (u32, u32) {
        self.fps
    }

    /// Bytes of one I420 frame.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Number of frames, when known up front.
    pub fn frame_count(&self) -> Option<u64> {
        self.frames
    }

    /// Reads the next frame into `buf` (exactly [`Input::frame_size`] bytes); `false` at
    /// the end of the input.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> Result<bool, CtlError> {
        if buf.len() != self.frame_size {
            return Err(CtlError::BadInput {
                path: self.path.clone(),
                what: format!(
                    "frame buffer of {} bytes for frames of {}",
                    buf.len(),
                    self.frame_size
                ),
            });
        }
        match &mut self.source {
            Source::Raw(r) => {
                let got = read_up_to(r, buf).map_err(|source| CtlError::ReadInput {
                    path: self.path.clone(),
                    source,
                })?;
                match got {
                    0 => Ok(false),
                    n if n == buf.len() => Ok(true),
                    n => Err(CtlError::BadInput {
                        path: self.path.clone(),
                        what: format!("truncated last frame ({n} of {} bytes)", buf.len()),
                    }),
                }
            }
            Source::Y4m(reader, frame) => {
                let more = reader.read_frame(frame).map_err(|source| CtlError::Media {
                    path: self.path.clone(),
                    source,
                })?;
                if !more {
                    return Ok(false);
                }
                if frame.len() != buf.len() {
                    return Err(CtlError::BadInput {
                        path: self.path.clone(),
                        what: format!("frame of {} bytes, expected {}", frame.len(), buf.len()),
                    });
                }
                buf.copy_from_slice(frame);
                Ok(true)
            }
        }
    }
}

/// Reads until `buf` is full or the end of input; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
