//! What a successful Encode Frame completion reports, checked before it is believed.
//!
//! The device writes dword 0 (bytes of bitstream written) and dword 1 (frame type,
//! keyframe flag, input lag) of the completion; a broken or hostile card may put anything
//! there. Nothing is read from the output buffer until these are known to be consistent
//! with the command they complete.

use vpu_ffi::{
    VPU_ENCODED_INPUT_LAG_SHIFT, VPU_ENCODED_KEYFRAME, VPU_FRAME_TYPE_B, VPU_FRAME_TYPE_I,
    VPU_FRAME_TYPE_IDR, VPU_FRAME_TYPE_MASK, VPU_FRAME_TYPE_P, VPU_FRAME_TYPE_SKIPPED,
};

use crate::nvme::Completion;

use super::types::FrameType;

/// An Encode Frame completion's report, consistent with its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedReport {
    /// Bytes of bitstream at the start of the output buffer; at most its capacity.
    pub written: u32,
    pub frame_type: FrameType,
    pub keyframe: bool,
    /// How many inputs before this command's own the output belongs to.
    pub input_lag: u16,
    /// Presentation timestamp of the input the output belongs to.
    pub pts: u64,
}

/// Why an Encode Frame completion cannot be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEncoded {
    #[error("completion claims {written} bytes written to an output buffer of {capacity}")]
    ByteCount { written: u32, capacity: usize },
    #[error("unknown frame type {0}")]
    FrameType(u32),
    #[error("input lag {0} names no input")]
    InputLag(u16),
}

/// Checks the completion of the session's Encode Frame number `seq` (timestamp `pts`),
/// whose output buffer holds `capacity` bytes. `earlier(n)` is the timestamp of the
/// session's input number `n` if it is still remembered.
pub fn check_encoded(
    c: &Completion,
    capacity: usize,
    seq: u64,
    pts: u64,
    earlier: impl FnOnce(u64) -> Option<u64>,
) -> Result<EncodedReport, BadEncoded> {
    let written = c.dw0;
    if written as usize > capacity {
        return Err(BadEncoded::ByteCount { written, capacity });
    }
    let frame_type = match c.dw1 & VPU_FRAME_TYPE_MASK {
        VPU_FRAME_TYPE_SKIPPED => FrameType::Skipped,
        VPU_FRAME_TYPE_IDR => FrameType::Idr,
        VPU_FRAME_TYPE_I => FrameType::I,
        VPU_FRAME_TYPE_P => FrameType::P,
        VPU_FRAME_TYPE_B => FrameType::B,
        other => return Err(BadEncoded::FrameType(other)),
    };
    let input_lag = (c.dw1 >> VPU_ENCODED_INPUT_LAG_SHIFT) as u16;
    let pts = if input_lag == 0 {
        pts
    } else {
        seq.checked_sub(u64::from(input_lag))
            .and_then(earlier)
            .ok_or(BadEncoded::InputLag(input_lag))?
    };
    Ok(EncodedReport {
        written,
        frame_type,
        keyframe: c.dw1 & VPU_ENCODED_KEYFRAME != 0,
        input_lag,
        pts,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nvme::Status;

    fn done(dw0: u32, dw1: u32) -> Completion {
        Completion {
            dw0,
            dw1,
            status: Status::Success,
            dnr: false,
        }
    }

    #[test]
    fn a_byte_count_beyond_the_buffer_is_refused() {
        let c = done(4097, VPU_FRAME_TYPE_P);
        assert_eq!(
            check_encoded(&c, 4096, 0, 0, |_| None),
            Err(BadEncoded::ByteCount {
                written: 4097,
                capacity: 4096
            })
        );
        let r = check_encoded(&done(4096, VPU_FRAME_TYPE_P), 4096, 0, 9, |_| None).unwrap();
        assert_eq!((r.written, r.frame_type, r.pts), (4096, FrameType::P, 9));
    }

    #[test]
    fn frame_type_and_input_lag_must_make_sense() {
        assert_eq!(
            check_encoded(&done(0, VPU_FRAME_TYPE_MASK), 16, 0, 0, |_| None),
            Err(BadEncoded::FrameType(VPU_FRAME_TYPE_MASK))
        );
        let lag =
            |n: u32| VPU_FRAME_TYPE_IDR | VPU_ENCODED_KEYFRAME | (n << VPU_ENCODED_INPUT_LAG_SHIFT);
        // Input 5 lags by 2: the output is input 3's.
        let r = check_encoded(&done(8, lag(2)), 16, 5, 50, |n| (n == 3).then_some(30)).unwrap();
        assert_eq!((r.pts, r.input_lag, r.keyframe), (30, 2, true));
        // A lag before the first input, or to an input no longer remembered.
        assert_eq!(
            check_encoded(&done(8, lag(6)), 16, 5, 50, |_| Some(0)),
            Err(BadEncoded::InputLag(6))
        );
        assert_eq!(
            check_encoded(&done(8, lag(1)), 16, 5, 50, |_| None),
            Err(BadEncoded::InputLag(1))
        );
    }
}
