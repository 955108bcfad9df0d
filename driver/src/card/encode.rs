//! Encode Frame: input staging, output buffers that grow on OUTPUT_TOO_SMALL, and the
//! checks on what the card says it wrote.

use std::sync::atomic::Ordering;

use vpu_ffi::{VPU_ENCODE_FORCE_IDR, VPU_IO_ENCODE_FRAME};

use crate::io::DmaBuffer;
use crate::nvme::{Command, Completion, Status, VendorStatus};

use super::device::{bump, lock, Card, SessionState, OUTPUT_RETRIES, PTS_HISTORY};
use super::encoded::{check_encoded, BadEncoded};
use super::error::CardError;
use super::types::{FrameInput, Packet, SessionId};

impl Card {
    /// Encodes one frame and returns the card's output for it.
    pub async fn encode(
        &self,
        id: SessionId,
        frame: FrameInput<'_>,
        pts: u64,
        force_keyframe: bool,
    ) -> Result<Packet, CardError> {
        let state = self.session(id)?;
        let invalid = |reason: String| CardError::InvalidFrame {
            device: self.device.clone(),
            session: id.0,
            reason,
        };
        let copied;
        let (input, offset, len): (&DmaBuffer, usize, usize) = match frame {
            FrameInput::Bytes(bytes) => {
                if bytes.len() != state.frame_size {
                    return Err(invalid(format!(
                        "{} bytes, the session's frames have {}",
                        bytes.len(),
                        state.frame_size
                    )));
                }
                copied = self.inputs.get(bytes.len()).map_err(|e| self.dma_err(e))?;
                if !copied.write(0, bytes) {
                    return Err(invalid("input buffer not writable".into()));
                }
                (&copied, 0, bytes.len())
            }
            FrameInput::Dma {
                buffer,
                offset,
                len,
            } => {
                if offset.checked_add(len).is_none_or(|end| end > buffer.len()) {
                    return Err(invalid(format!(
                        "range {offset}+{len} outside a buffer of {}",
                        buffer.len()
                    )));
                }
                if len < state.frame_size || len > u32::MAX as usize {
                    return Err(invalid(format!(
                        "{len} bytes, the session's frames have {}",
                        state.frame_size
                    )));
                }
                (buffer, offset, len)
            }
        };
        let seq = {
            let mut h = lock(&state.history);
            let seq = h.next_seq;
            h.next_seq += 1;
            h.pts.push_back((seq, pts));
            if h.pts.len() > PTS_HISTORY {
                h.pts.pop_front();
            }
            seq
        };
        let flags = if force_keyframe {
            VPU_ENCODE_FORCE_IDR
        } else {
            0
        };
        let max_out = output_limit(state.frame_size);
        let mut out_size = state.out_size.load(Ordering::Relaxed);
        for _ in 0..=OUTPUT_RETRIES {
            let out = self.outputs.get(out_size).map_err(|e| self.dma_err(e))?;
            let capacity = out.len().min(u32::MAX as usize);
            let cmd = Command::new(VPU_IO_ENCODE_FRAME)
                .cdw10(id.0)
                .cdw11(flags)
                .cdw12(pts as u32)
                .cdw13((pts >> 32) as u32)
                .cdw14(capacity as u32)
                .cdw15(len as u32)
                .data(input, offset, len)
                .metadata(&out, 0);
            let c = self
                .controller
                .io(state.queue, cmd, self.opts.command_timeout)
                .await?;
            if c.status == Status::Vendor(VendorStatus::OutputTooSmall) {
                if out_size >= max_out {
                    break;
                }
                bump(&self.metrics.output_retries, 1);
                out_size = (out_size * 2).min(max_out);
                state.out_size.fetch_max(out_size, Ordering::Relaxed);
                tracing::debug!(card = %self.device, session = id.0, out_size, "output buffer grown");
                continue;
            }
            self.status(&c, || format!("encode session {id} pts {pts}"))?;
            return self.packet(&state, id, &c, &out, capacity, seq, pts);
        }
        bump(&self.metrics.rejected, 1);
        Err(CardError::OutputTooSmall {
            device: self.device.clone(),
            session: id.0,
            size: out_size,
        })
    }

    /// Reads and checks the output of a successful Encode Frame.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn packet(
        &self,
        state: &SessionState,
        id: SessionId,
        c: &Completion,
        out: &DmaBuffer,
        capacity: usize,
        seq: u64,
        pts: u64,
    ) -> Result<Packet, CardError> {
        let report = check_encoded(c, capacity, seq, pts, |n| {
            let h = lock(&state.history);
            h.pts.iter().find(|(s, _)| *s == n).map(|(_, p)| *p)
        });
        let report = match report {
            Ok(r) => r,
            Err(BadEncoded::ByteCount { written, capacity }) => {
                bump(&self.metrics.bad_completions, 1);
                tracing::warn!(card = %self.device, session = id.0, written, capacity,
                    "completion claims more bytes than the output buffer holds");
                return Err(CardError::BadByteCount {
                    device: self.device.clone(),
                    session: id.0,
                    written,
                    capacity,
                });
            }
            Err(other) => return Err(self.bad_completion(id.0, other.to_string())),
        };
        let written = report.written;
        let mut data = vec![0u8; written as usize];
        out.read(0, &mut data);
        bump(&self.metrics.frames, 1);
        bump(&self.metrics.bytes, u64::from(written));
        Ok(Packet {
            data,
            pts: report.pts,
            keyframe: report.keyframe,
            frame_type: report.frame_type,
            input_lag: report.input_lag,
        })
    }
}

/// First output buffer size for frames of `frame_size` bytes.
pub(super) fn initial_output_size(frame_size: usize) -> usize {
    (frame_size / 4).max(256 * 1024)
}

/// Largest output buffer tried: more than any sane encoder writes for one frame.
pub(super) fn output_limit(frame_size: usize) -> usize {
    (frame_size * 2 + (1 << 20)).min(u32::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_grow_to_a_bound() {
        let f = 1280 * 720 * 3 / 2;
        assert!(initial_output_size(f) >= 256 * 1024);
        assert!(output_limit(f) > 2 * f);
    }
}
