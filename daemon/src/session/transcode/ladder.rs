//! A ladder on one card: its decoder and one encode session per rendition, and the work
//! of one access unit through them (decode; per rendition scale and encode; frames
//! released), all on the card, with only the access unit going in and packets coming out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use vpu_driver::card::{Card, CardError, CardFrame, FrameInput, Packet, ScaleFilter, SessionId};
use vpu_driver::io::DmaBuffer;

use super::request::TranscodeRequest;
use crate::service::state::CardEntry;

/// One rendition's encoder on the card.
#[derive(Debug, Clone, Copy)]
pub(super) struct Encoder {
    pub sid: SessionId,
    pub width: u32,
    pub height: u32,
    pub filter: ScaleFilter,
    /// Input frames between keyframes (0: only the first).
    pub gop: u32,
}

/// The ladder's sessions on one card.
#[derive(Debug, Clone)]
pub(super) struct CardLadder {
    pub card: Arc<CardEntry>,
    pub decoder: SessionId,
    pub encoders: Vec<Encoder>,
    /// The card's reset epoch when the sessions were created.
    pub epoch: u64,
}

impl CardLadder {
    /// Creates the decoder and every encoder on `card`; on an error, what was created is
    /// destroyed again.
    pub async fn create(
        card: Arc<CardEntry>,
        req: &TranscodeRequest,
    ) -> Result<CardLadder, CardError> {
        // Read before the card sessions exist: a reset from here on wipes them.
        let epoch = card.reset_epoch();
        let decoder = card.card.create_decoder(&req.decoder_config()).await?;
        let mut encoders = Vec::with_capacity(req.outputs.len());
        for (cfg, spec) in req.encoder_configs().iter().zip(&req.outputs) {
            match card.card.create_session(cfg).await {
                Ok(sid) => encoders.push(Encoder {
                    sid,
                    width: spec.width,
                    height: spec.height,
                    filter: spec.filter,
                    gop: spec.gop,
                }),
                Err(e) => {
                    let partial = CardLadder {
                        card,
                        decoder,
                        encoders,
                        epoch,
                    };
                    partial.destroy(Duration::from_secs(5)).await;
                    return Err(e);
                }
            }
        }
        Ok(CardLadder {
            card,
            decoder,
            encoders,
            epoch,
        })
    }

    /// Destroys the ladder's card sessions, unless a reset already wiped them (their ids
    /// may name other sessions by now).
    pub async fn destroy(&self, timeout: Duration) {
        if self.card.reset_epoch() != self.epoch {
            return;
        }
        let card = &self.card.card;
        type Destroy<'a> = Pin<Box<dyn Future<Output = Result<(), CardError>> + Send + 'a>>;
        let mut all: Vec<Destroy<'_>> = vec![Box::pin(card.destroy_decoder(self.decoder))];
        for e in &self.encoders {
            all.push(Box::pin(card.destroy_session(e.sid)));
        }
        let all = all.into_iter().map(|f| tokio::time::timeout(timeout, f));
        for (i, r) in join_all(all).await.into_iter().enumerate() {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(card = %self.card.name, session = i, error = %e,
                    "destroying a ladder session failed"),
                Err(_) => tracing::debug!(card = %self.card.name, session = i,
                    "destroying a ladder session timed out"),
            }
        }
    }
}

/// Where an access unit is: the client's memory mapped for the card, or a copy (an access
/// unit decoded again after the ladder moved).
#[derive(Debug, Clone)]
pub(super) enum UnitInput {
    Dma {
        buffer: Arc<DmaBuffer>,
        offset: usize,
        len: usize,
    },
    Copy(Arc<[u8]>),
    /// End of stream: take the next picture the decoder still holds.
    Flush,
}

/// What one step did with its input.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The decoder produced no picture (parameter sets, or a picture held for reordering;
    /// after a flush: the decoder is empty).
    NoPicture,
    /// A picture came out and was dropped: it had already been sent before the ladder
    /// moved.
    Skipped,
    /// A picture came out: one packet per rendition, in rendition order.
    Encoded(Vec<Packet>),
}

/// Where a step failed: the input (decoding), or the card's work on a picture.
#[derive(Debug)]
pub(super) enum StepError {
    Decode(CardError),
    Picture(CardError),
}

/// The plan for one step, fixed when it starts.
#[derive(Debug, Clone)]
pub(super) struct StepPlan {
    pub card: Arc<Card>,
    pub decoder: SessionId,
    pub encoders: Vec<Encoder>,
    pub input: UnitInput,
    /// The pts the access unit carries (ignored for a flush).
    pub unit_pts: u64,
    /// The pts a picture coming out now has (the smallest not yet output).
    pub picture_pts: u64,
    /// Per rendition: force an IDR on the picture.
    pub force: Vec<bool>,
    /// Drop a picture that comes out (already sent).
    pub skip: bool,
}

pub(super) type Step = Pin<Box<dyn Future<Output = Result<Outcome, StepError>> + Send>>;

/// Runs one step: decode, then for every rendition scale (unless the picture already
/// has its size) and encode, the renditions side by side; every frame is released.
pub(super) fn run(plan: StepPlan) -> Step {
    Box::pin(async move {
        let StepPlan {
            card,
            decoder,
            encoders,
            input,
            unit_pts,
            picture_pts,
            force,
            skip,
        } = plan;
        let picture = match &input {
            UnitInput::Dma {
                buffer,
                offset,
                len,
            } => {
                let unit = FrameInput::Dma {
                    buffer,
                    offset: *offset,
                    len: *len,
                };
                card.decode(decoder, unit, unit_pts).await
            }
            UnitInput::Copy(bytes) => {
                card.decode(decoder, FrameInput::Bytes(bytes), unit_pts)
                    .await
            }
            UnitInput::Flush => card.flush_decoder(decoder).await,
        }
        .map_err(StepError::Decode)?;
        let Some(picture) = picture else {
            return Ok(Outcome::NoPicture);
        };
        if skip {
            card.release_frame(picture)
                .await
                .map_err(StepError::Picture)?;
            return Ok(Outcome::Skipped);
        }
        let renditions = encoders.iter().zip(force).map(|(e, force)| {
            let card = Arc::clone(&card);
            let e = *e;
            async move { rendition(&card, picture, e, picture_pts, force).await }
        });
        let results = join_all(renditions).await;
        let released = card.release_frame(picture).await;
        let packets = results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(StepError::Picture)?;
        released.map_err(StepError::Picture)?;
        Ok(Outcome::Encoded(packets))
    })
}

/// One rendition of one picture: scaled when its size differs, encoded, the scaled frame
/// released.
async fn rendition(
    card: &Card,
    picture: CardFrame,
    e: Encoder,
    pts: u64,
    force: bool,
) -> Result<Packet, CardError> {
    if (picture.width, picture.height) == (e.width, e.height) {
        return card.encode_card_frame(e.sid, picture, pts, force).await;
    }
    let scaled = card.scale(picture, e.width, e.height, e.filter).await?;
    let packet = card.encode_card_frame(e.sid, scaled, pts, force).await;
    let released = card.release_frame(scaled).await;
    let packet = packet?;
    released?;
    Ok(packet)
}

/// Whether an Annex-B access unit holds an IDR slice (a point the decoder can start
/// from). Only start codes and NAL headers are looked at.
pub(super) fn has_idr(unit: &[u8]) -> bool {
    unit.windows(4)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && w[3] & 0x1f == 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idr_slices_are_found_behind_either_start_code() {
        assert!(has_idr(&[0, 0, 0, 1, 0x67, 0, 0, 1, 0x65, 0x88]));
        assert!(has_idr(&[0, 0, 1, 0x25]));
        assert!(!has_idr(&[0, 0, 0, 1, 0x41, 0x9a, 0, 0, 1, 0x06]));
        assert!(!has_idr(&[0x65, 0x65]));
    }
}
