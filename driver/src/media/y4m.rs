//! YUV4MPEG2 reading and writing, 4:2:0 8-bit only.
//!
//! A stream is a header line (`YUV4MPEG2 W.. H.. F..:.. I. A..:.. C... X...`) and frames,
//! each a `FRAME` line then the planes Y, U, V. Whatever is not 4:2:0 8-bit, and any
//! malformed header or frame, is a typed error: the input is someone else's file.

use std::io::{BufRead, Read, Write};

use super::error::MediaError;
use super::i420_frame_size;

const SIGNATURE: &str = "YUV4MPEG2";
const FRAME_TAG: &str = "FRAME";
/// Longest header line accepted.
const MAX_HEADER: usize = 4096;
/// Largest picture side accepted.
const MAX_SIDE: u32 = 16384;

/// Field order of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interlace {
    #[default]
    Progressive,
    TopFieldFirst,
    BottomFieldFirst,
    Mixed,
}

impl Interlace {
    fn tag(self) -> char {
        match self {
            Interlace::Progressive => 'p',
            Interlace::TopFieldFirst => 't',
            Interlace::BottomFieldFirst => 'b',
            Interlace::Mixed => 'm',
        }
    }
}

/// The stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Y4mHeader {
    pub width: u32,
    pub height: u32,
    pub fps_num: u32,
    pub fps_den: u32,
    pub interlace: Interlace,
    /// Pixel aspect ratio; (0, 0) when unknown.
    pub aspect: (u32, u32),
    /// The `C` tag as written (`420jpeg` when absent).
    pub colorspace: String,
}

impl Y4mHeader {
    /// A progressive 4:2:0 header.
    pub fn new(width: u32, height: u32, fps_num: u32, fps_den: u32) -> Self {
        Self {
            width,
            height,
            fps_num,
            fps_den,
            interlace: Interlace::Progressive,
            aspect: (1, 1),
            colorspace: "420jpeg".into(),
        }
    }

    /// Bytes of one frame as the reader returns it and the writer takes it (I420).
    pub fn frame_size(&self) -> usize {
        i420_frame_size(self.width, self.height)
    }

    /// Whether the stream is luma only (`Cmono`): read as I420 with neutral chroma.
    pub fn is_mono(&self) -> bool {
        self.colorspace == "mono"
    }

    /// Bytes of one frame in the stream.
    fn stored_frame_size(&self) -> usize {
        if self.is_mono() {
            self.width as usize * self.height as usize
        } else {
            self.frame_size()
        }
    }

    /// Parses the header line (without its newline).
    pub fn parse(line: &str) -> Result<Self, MediaError> {
        let mut fields = line.split(' ');
        if fields.next() != Some(SIGNATURE) {
            return Err(MediaError::NotY4m);
        }
        let (mut width, mut height, mut rate) = (None, None, None);
        let mut interlace = Interlace::Progressive;
        let mut aspect = (0, 0);
        let mut colorspace = "420jpeg".to_string();
        for field in fields.filter(|f| !f.is_empty()) {
            let mut chars = field.chars();
            let Some(tag) = chars.next() else { continue };
            let value = chars.as_str();
            let bad = || MediaError::BadHeaderField {
                field: tag,
                value: value.to_string(),
            };
            match tag {
                'W' => width = Some(value.parse::<u32>().map_err(|_| bad())?),
                'H' => height = Some(value.parse::<u32>().map_err(|_| bad())?),
                'F' => rate = Some(ratio(value).ok_or_else(bad)?),
                'A' => aspect = ratio(value).ok_or_else(bad)?,
                'I' => {
                    interlace = match value {
                        "p" | "?" => Interlace::Progressive,
                        "t" => Interlace::TopFieldFirst,
                        "b" => Interlace::BottomFieldFirst,
                        "m" => Interlace::Mixed,
                        _ => return Err(bad()),
                    }
                }
                'C' => colorspace = value.to_string(),
                'X' => {}
                _ => return Err(bad()),
            }
        }
        let width = width.ok_or(MediaError::MissingField("W (width)"))?;
        let height = height.ok_or(MediaError::MissingField("H (height)"))?;
        let (fps_num, fps_den) = rate.ok_or(MediaError::MissingField("F (frame rate)"))?;
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(MediaError::TooLarge { width, height });
        }
        if fps_num == 0 || fps_den == 0 {
            return Err(MediaError::BadHeaderField {
                field: 'F',
                value: format!("{fps_num}:{fps_den}"),
            });
        }
        if !matches!(
            colorspace.as_str(),
            "420" | "420jpeg" | "420paldv" | "420mpeg2" | "mono"
        ) {
            return Err(MediaError::UnsupportedColorspace(colorspace));
        }
        Ok(Self {
            width,
            height,
            fps_num,
            fps_den,
            interlace,
            aspect,
            colorspace,
        })
    }

    /// The header line, newline included.
    pub fn to_line(&self) -> String {
        format!(
            "{SIGNATURE} W{} H{} F{}:{} I{} A{}:{} C{}\n",
            self.width,
            self.height,
            self.fps_num,
            self.fps_den,
            self.interlace.tag(),
            self.aspect.0,
            self.aspect.1,
            self.colorspace
        )
    }
}

fn ratio(s: &str) -> Option<(u32, u32)> {
    let (n, d) = s.split_once(':')?;
    Some((n.parse().ok()?, d.parse().ok()?))
}

/// Reads a line of at most `limit` bytes. `None` at a clean end; otherwise the line
/// without its newline and whether it had one.
fn read_line<R: BufRead>(r: &mut R, limit: usize) -> Result<Option<(Vec<u8>, bool)>, MediaError> {
    let mut line = Vec::new();
    let n = r.take(limit as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    let terminated = line.last() == Some(&b'\n');
    if terminated {
        line.pop();
    }
    Ok(Some((line, terminated)))
}

/// Reads I420 frames from a Y4M stream.
#[derive(Debug)]
pub struct Y4mReader<R> {
    inner: R,
    header: Y4mHeader,
    frames: u64,
}

impl<R: BufRead> Y4mReader<R> {
    /// Reads and checks the stream header.
    pub fn new(mut inner: R) -> Result<Self, MediaError> {
        let (line, terminated) = read_line(&mut inner, MAX_HEADER)?.ok_or(MediaError::NotY4m)?;
        if !line.starts_with(SIGNATURE.as_bytes()) {
            return Err(MediaError::NotY4m);
        }
        if !terminated {
            return Err(MediaError::HeaderTooLong { limit: MAX_HEADER });
        }
        let line = std::str::from_utf8(&line).map_err(|_| MediaError::HeaderNotText)?;
        let header = Y4mHeader::parse(line)?;
        Ok(Self {
            inner,
            header,
            frames: 0,
        })
    }

    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    /// Frames read so far.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Reads the next frame into `buf` (resized to the frame size). `Ok(false)` at the
    /// end of the stream.
    pub fn read_frame(&mut self, buf: &mut Vec<u8>) -> Result<bool, MediaError> {
        let frame = self.frames;
        let Some((line, terminated)) = read_line(&mut self.inner, MAX_HEADER)? else {
            return Ok(false);
        };
        if !terminated {
            return Err(MediaError::FrameHeader {
                frame,
                reason: "frame header too long or truncated".into(),
            });
        }
        let tag_ok = line.starts_with(FRAME_TAG.as_bytes())
            && matches!(line.get(FRAME_TAG.len()), None | Some(b' '));
        if !tag_ok {
            let shown = String::from_utf8_lossy(&line[..line.len().min(16)]).into_owned();
            return Err(MediaError::FrameHeader {
                frame,
                reason: format!("expected FRAME, found {shown:?}"),
            });
        }
        let expected = self.header.stored_frame_size();
        // The buffer grows with the bytes that arrive (its capacity is kept from frame to
        // frame), so a header declaring a huge picture costs memory only if the data is
        // really there.
        buf.clear();
        let got = (&mut self.inner).take(expected as u64).read_to_end(buf)?;
        if got < expected {
            return Err(MediaError::TruncatedFrame {
                frame,
                got,
                expected,
            });
        }
        if self.header.is_mono() {
            // Neutral chroma turns a luma-only picture into a grey I420 one.
            buf.resize(self.header.frame_size(), 128);
        }
        self.frames += 1;
        Ok(true)
    }
}

/// Writes I420 frames as a Y4M stream.
#[derive(Debug)]
pub struct Y4mWriter<W: Write> {
    inner: W,
    frame_size: usize,
    /// Bytes of each frame written: the luma plane only for `Cmono` streams.
    stored: usize,
}

impl<W: Write> Y4mWriter<W> {
    /// Writes the stream header.
    pub fn new(mut inner: W, header: &Y4mHeader) -> Result<Self, MediaError> {
        inner.write_all(header.to_line().as_bytes())?;
        Ok(Self {
            inner,
            frame_size: header.frame_size(),
            stored: header.stored_frame_size(),
        })
    }

    /// Writes one I420 frame of exactly the stream's frame size.
    pub fn write_frame(&mut self, frame: &[u8]) -> Result<(), MediaError> {
        if frame.len() != self.frame_size {
            return Err(MediaError::FrameSize {
                expected: self.frame_size,
                got: frame.len(),
            });
        }
        self.inner.write_all(b"FRAME\n")?;
        self.inner.write_all(&frame[..self.stored])?;
        Ok(())
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, MediaError> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stream(header: &str, frames: &[&[u8]]) -> Vec<u8> {
        let mut v = header.as_bytes().to_vec();
        for f in frames {
            v.extend_from_slice(b"FRAME\n");
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn round_trip() {
        let h = Y4mHeader::new(4, 2, 25, 1);
        let frame: Vec<u8> = (0..12).collect();
        let mut w = Y4mWriter::new(Vec::new(), &h).unwrap();
        w.write_frame(&frame).unwrap();
        w.write_frame(&frame).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = Y4mReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header(), &h);
        let mut buf = Vec::new();
        assert!(r.read_frame(&mut buf).unwrap());
        assert_eq!(buf, frame);
        assert!(r.read_frame(&mut buf).unwrap());
        assert!(!r.read_frame(&mut buf).unwrap());
        assert_eq!(r.frames_read(), 2);
    }

    #[test]
    fn mono_reads_as_grey_i420_and_writes_back_luma_only() {
        let s = stream("YUV4MPEG2 W4 H2 F25:1 Cmono\n", &[&[7; 8]]);
        let mut r = Y4mReader::new(&s[..]).unwrap();
        assert!(r.header().is_mono());
        let mut buf = Vec::new();
        assert!(r.read_frame(&mut buf).unwrap());
        assert_eq!(&buf[..8], &[7; 8]);
        assert_eq!(&buf[8..], &[128; 4]);
        assert!(!r.read_frame(&mut buf).unwrap());
        let mut w = Y4mWriter::new(Vec::new(), r.header()).unwrap();
        w.write_frame(&buf).unwrap();
        let written = w.finish().unwrap();
        assert!(written.ends_with(b" Cmono\nFRAME\n\x07\x07\x07\x07\x07\x07\x07\x07"));
    }

    #[test]
    fn header_fields_are_parsed() {
        let h = Y4mHeader::parse("YUV4MPEG2 W720 H576 F25:1 It A16:15 C420paldv XYSCSS=420PALDV")
            .unwrap();
        assert_eq!((h.width, h.height, h.fps_num, h.fps_den), (720, 576, 25, 1));
        assert_eq!(h.interlace, Interlace::TopFieldFirst);
        assert_eq!(h.aspect, (16, 15));
        assert_eq!(h.colorspace, "420paldv");
        // Odd sizes round chroma up.
        let h = Y4mHeader::parse("YUV4MPEG2 W3 H3 F30000:1001").unwrap();
        assert_eq!(h.frame_size(), 9 + 2 * 4);
    }

    #[test]
    fn unsupported_and_malformed_input_is_a_typed_error() {
        let e = |s: &str| Y4mReader::new(s.as_bytes()).unwrap_err();
        assert!(matches!(e("RIFF...."), MediaError::NotY4m));
        assert!(matches!(e(""), MediaError::NotY4m));
        assert!(
            matches!(e("YUV4MPEG2 W4 H2 F25:1 C444\n"), MediaError::UnsupportedColorspace(c) if c == "444")
        );
        assert!(matches!(
            e("YUV4MPEG2 W4 H2 F25:1 C420p10\n"),
            MediaError::UnsupportedColorspace(_)
        ));
        assert!(matches!(
            e("YUV4MPEG2 W4 H2 F25:1 Cmono16\n"),
            MediaError::UnsupportedColorspace(_)
        ));
        assert!(matches!(
            e("YUV4MPEG2 H2 F25:1\n"),
            MediaError::MissingField(_)
        ));
        assert!(matches!(
            e("YUV4MPEG2 W4 H2\n"),
            MediaError::MissingField(_)
        ));
        assert!(matches!(
            e("YUV4MPEG2 Wx H2 F25:1\n"),
            MediaError::BadHeaderField { field: 'W', .. }
        ));
        assert!(matches!(
            e("YUV4MPEG2 W4 H2 F25:0\n"),
            MediaError::BadHeaderField { field: 'F', .. }
        ));
        assert!(matches!(
            e("YUV4MPEG2 W4 H2 F25:1 Iq\n"),
            MediaError::BadHeaderField { field: 'I', .. }
        ));
        assert!(matches!(
            e("YUV4MPEG2 W0 H2 F25:1\n"),
            MediaError::TooLarge { .. }
        ));
        assert!(matches!(
            e("YUV4MPEG2 W99999 H2 F25:1\n"),
            MediaError::TooLarge { .. }
        ));
        assert!(matches!(
            e("YUV4MPEG2 W4 H2 F25:1"),
            MediaError::HeaderTooLong { .. }
        ));
        let long = format!("YUV4MPEG2 W4 H2 F25:1 X{}\n", "a".repeat(10_000));
        assert!(matches!(e(&long), MediaError::HeaderTooLong { .. }));
    }

    #[test]
    fn a_huge_declared_frame_costs_only_the_bytes_that_arrive() {
        let s = stream("YUV4MPEG2 W16384 H16384 F25:1\n", &[&[7; 1000]]);
        let mut r = Y4mReader::new(&s[..]).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            r.read_frame(&mut buf).unwrap_err(),
            MediaError::TruncatedFrame {
                frame: 0,
                got: 1000,
                expected: 402_653_184
            }
        ));
        assert!(
            buf.capacity() < 1 << 20,
            "{} bytes reserved",
            buf.capacity()
        );
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let h = "YUV4MPEG2 W4 H2 F25:1\n";
        let mut buf = Vec::new();
        let s = stream(h, &[&[0; 5]]);
        let mut r = Y4mReader::new(&s[..]).unwrap();
        assert!(matches!(
            r.read_frame(&mut buf).unwrap_err(),
            MediaError::TruncatedFrame {
                frame: 0,
                got: 5,
                expected: 12
            }
        ));
        let mut s = stream(h, &[&[0; 12]]);
        s.extend_from_slice(b"FRAMX\n");
        let mut r = Y4mReader::new(&s[..]).unwrap();
        assert!(r.read_frame(&mut buf).unwrap());
        assert!(matches!(
            r.read_frame(&mut buf).unwrap_err(),
            MediaError::FrameHeader { frame: 1, .. }
        ));
        let s = format!("{h}FRAME Ixyz");
        let mut r = Y4mReader::new(s.as_bytes()).unwrap();
        assert!(matches!(
            r.read_frame(&mut buf).unwrap_err(),
            MediaError::FrameHeader { frame: 0, .. }
        ));
        let mut w = Y4mWriter::new(Vec::new(), &Y4mHeader::new(4, 2, 25, 1)).unwrap();
        assert!(matches!(
            w.write_frame(&[0; 11]),
            Err(MediaError::FrameSize {
                expected: 12,
                got: 11
            })
        ));
    }
}
