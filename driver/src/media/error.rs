//! Errors of the media module.

/// Errors reading or writing raw video.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("reading or writing the stream failed")]
    Io(#[from] std::io::Error),
    #[error("not a Y4M stream (no \"YUV4MPEG2 \" signature)")]
    NotY4m,
    #[error("y4m header is longer than {limit} bytes or not terminated")]
    HeaderTooLong { limit: usize },
    #[error("y4m header is not ASCII text")]
    HeaderNotText,
    #[error("y4m header field {field:?} has a bad value {value:?}")]
    BadHeaderField { field: char, value: String },
    #[error("y4m header lacks the {0} field")]
    MissingField(&'static str),
    #[error("y4m colourspace {0:?} is not supported (only 4:2:0 8-bit: C420, C420jpeg, C420paldv, C420mpeg2)")]
    UnsupportedColorspace(String),
    #[error("y4m frame size {width}x{height} is too large")]
    TooLarge { width: u32, height: u32 },
    #[error("frame {frame}: bad frame header: {reason}")]
    FrameHeader { frame: u64, reason: String },
    #[error("frame {frame}: truncated after {got} of {expected} bytes")]
    TruncatedFrame {
        frame: u64,
        got: usize,
        expected: usize,
    },
    #[error("frame of {got} bytes does not match the stream's {expected}")]
    FrameSize { expected: usize, got: usize },
}
