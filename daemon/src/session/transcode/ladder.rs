//! A ladder on one card: its decoder and one encode session per rendition, and the work
//! on the card: access units decoded one after another, and each picture that comes out
//! scaled and encoded per rendition, its frames released, with only the access units going
//! in and packets coming out. Several pictures may be in flight at once; each rendition's
//! encodes reach the card in picture order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::oneshot;
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

/// A Decode Frame (or, at the end of the stream, a flush) in flight: the picture it
/// completes, if any.
pub(super) type Decode = Pin<Box<dyn Future<Output = Result<Option<CardFrame>, CardError>> + Send>>;

/// Starts decoding an access unit (or taking the next picture out at the end).
pub(super) fn decode(card: Arc<Card>, decoder: SessionId, input: UnitInput, pts: u64) -> Decode {
    Box::pin(async move {
        match &input {
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
                card.decode(decoder, unit, pts).await
            }
            UnitInput::Copy(bytes) => card.decode(decoder, FrameInput::Bytes(bytes), pts).await,
            UnitInput::Flush => card.flush_decoder(decoder).await,
        }
    })
}

/// What became of a picture.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Dropped: it had already been sent before the ladder moved.
    Skipped,
    /// One packet per rendition, in rendition order.
    Encoded(Vec<Packet>),
}

/// A picture's end: its pts and its outcome.
#[derive(Debug)]
pub(super) struct Finished {
    pub pts: u64,
    pub result: Result<Outcome, CardError>,
}

/// A picture in flight on the card.
pub(super) type Picture = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// The turn of one rendition's next encode: the previous picture's encode of that
/// rendition is on the card's queue (or failed) once it resolves. Encode Frame commands
/// of one session must reach the card in picture order, while scaling may finish in any.
pub(super) type Turn = oneshot::Receiver<()>;

/// Releases a picture that was already sent before the ladder moved.
pub(super) fn skip(card: Arc<Card>, picture: CardFrame, pts: u64) -> Picture {
    Box::pin(async move {
        let result = card.release_frame(picture).await.map(|()| Outcome::Skipped);
        Finished { pts, result }
    })
}

/// Starts a picture through every rendition: scaled (unless it already has the
/// rendition's size) and encoded, after the rendition's previous picture (`turns`, which
/// this picture's turns replace); then every frame is released.
pub(super) fn encode(
    card: &Arc<Card>,
    encoders: &[Encoder],
    picture: CardFrame,
    pts: u64,
    force: &[bool],
    turns: &mut [Option<Turn>],
) -> Picture {
    let renditions: Vec<_> = encoders
        .iter()
        .zip(force)
        .zip(turns.iter_mut())
        .map(|((e, &force), turn)| {
            let (next, mine) = oneshot::channel();
            let after = turn.replace(mine);
            rendition(Arc::clone(card), picture, *e, pts, force, after, next)
        })
        .collect();
    let card = Arc::clone(card);
    Box::pin(async move {
        let results = join_all(renditions).await;
        let released = card.release_frame(picture).await;
        let result = results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .and_then(|packets| released.map(|()| Outcome::Encoded(packets)));
        Finished { pts, result }
    })
}

/// One rendition of one picture: scaled when its size differs, encoded once the
/// rendition's previous picture is on its way (`after`), the scaled frame released.
/// Dropping `next` (at any return) lets the rendition's next picture go on.
async fn rendition(
    card: Arc<Card>,
    picture: CardFrame,
    e: Encoder,
    pts: u64,
    force: bool,
    after: Option<Turn>,
    next: oneshot::Sender<()>,
) -> Result<Packet, CardError> {
    let scaled = if (picture.width, picture.height) == (e.width, e.height) {
        None
    } else {
        Some(card.scale(picture, e.width, e.height, e.filter).await?)
    };
    if let Some(after) = after {
        // An error only means the previous picture's rendition ended early.
        let _ = after.await;
    }
    let source = scaled.unwrap_or(picture);
    let packet = {
        let mut encode = std::pin::pin!(card.encode_card_frame(e.sid, source, pts, force));
        // Polled once before the next picture may start: the command is then on the
        // card's queue, or first in line for a free slot.
        let first = std::future::poll_fn(|cx| Poll::Ready(encode.as_mut().poll(cx))).await;
        drop(next);
        match first {
            Poll::Ready(r) => r,
            Poll::Pending => encode.await,
        }
    };
    let Some(scaled) = scaled else {
        return packet;
    };
    let released = card.release_frame(scaled).await;
    let packet = packet?;
    released?;
    Ok(packet)
}

/// NAL unit type of an IDR slice.
pub(super) const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub(super) const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub(super) const NAL_PPS: u8 = 8;

/// The NAL units of an Annex-B buffer: each one's type and its bytes, from its start code
/// (3 or 4 bytes, as written) to the next one. Bytes before the first start code are
/// skipped.
pub(super) fn nal_units(unit: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    // Offsets of every 3-byte start code (0 0 1); a zero byte before one belongs to it.
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= unit.len() {
        if unit[i] == 0 && unit[i + 1] == 0 && unit[i + 2] == 1 {
            starts.push(if i > 0 && unit[i - 1] == 0 { i - 1 } else { i });
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts.iter().skip(1).copied().chain([unit.len()]).collect();
    starts
        .into_iter()
        .zip(ends)
        .filter_map(move |(start, end)| {
            let nal = &unit[start..end];
            let header = nal
                .iter()
                .position(|&b| b == 1)
                .and_then(|p| nal.get(p + 1))?;
            Some((header & 0x1f, nal))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idr_slices_are_found_behind_either_start_code() {
        let kinds = |unit: &[u8]| nal_units(unit).map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            kinds(&[0, 0, 0, 1, 0x67, 0, 0, 1, 0x65, 0x88]),
            [NAL_SPS, NAL_IDR]
        );
        assert_eq!(kinds(&[0, 0, 1, 0x25]), [NAL_IDR]);
        assert_eq!(kinds(&[0, 0, 0, 1, 0x41, 0x9a, 0, 0, 1, 0x06]), [1, 6]);
        assert!(kinds(&[0x65, 0x65]).is_empty());
    }

    #[test]
    fn nal_units_keep_their_start_codes() {
        let unit = [
            0x09, 0, 0, 0, 1, 0x67, 0xaa, 0, 0, 1, 0x68, 0xbb, 0, 0, 0, 1, 0x65, 0x88,
        ];
        let nals: Vec<(u8, &[u8])> = nal_units(&unit).collect();
        assert_eq!(
            nals,
            [
                (NAL_SPS, &unit[1..7]),
                (NAL_PPS, &unit[7..12]),
                (NAL_IDR, &unit[12..]),
            ]
        );
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
    }
}
