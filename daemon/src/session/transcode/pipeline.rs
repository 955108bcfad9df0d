//! A ladder's work in flight on its card: one decode at a time (a decoder takes its access
//! units in order), and up to `transcode.pictures_in_flight` pictures being scaled and
//! encoded behind it, so that the card's decode, scale and encode engines work on
//! different pictures at once. Pictures finish in order: each rendition's packets go out
//! in picture order, and a picture's encodes reach each rendition's encoder in that order
//! too (see [`super::ladder::Turn`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use vpu_driver::card::{CardError, CardFrame, VendorStatus};

use super::history::UnitRef;
use super::ladder::{self, Decode, Finished, Outcome, Picture, UnitInput};
use super::worker::{Flow, TranscodeWorker};
use crate::channel::proto::{packet_chunks, DaemonRecord, ErrorCode, WirePacket};
use crate::metrics::Metrics;
use crate::scheduler::CardState;
use crate::service::changes::Change;
use crate::session::buffers::Buffers;
use crate::session::worker::{wire_frame_type, Ending};

/// The decode on the card and what it was started with.
pub(super) struct Decoding {
    fut: Decode,
    /// The access unit's pts; `None` for a flush.
    unit: Option<u64>,
    /// The buffer whose `FRAME_DONE` the decode's end owes.
    owed: Option<u32>,
    /// The access unit among the kept ones.
    kept: Option<UnitRef>,
}

/// A decode that ended.
pub(super) struct Decoded {
    unit: Option<u64>,
    owed: Option<u32>,
    kept: Option<UnitRef>,
    result: Result<Option<CardFrame>, CardError>,
}

/// What ended first on the card.
pub(super) enum Event {
    Decoded(Decoded),
    Finished(Finished),
}

/// The decode and the pictures on the card, in picture order.
#[derive(Default)]
pub(super) struct InFlight {
    decoding: Option<Decoding>,
    pictures: FuturesOrdered<Picture>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("decoding", &self.decoding.is_some())
            .field("pictures", &self.pictures.len())
            .finish()
    }
}

impl InFlight {
    /// Nothing is on the card.
    pub fn is_idle(&self) -> bool {
        self.decoding.is_none() && self.pictures.is_empty()
    }

    /// The next decode or picture to end; pending while none is on the card. Dropping it
    /// leaves everything in flight.
    pub async fn next(&mut self) -> Event {
        let InFlight { decoding, pictures } = self;
        let decode = async {
            match decoding.as_mut() {
                Some(d) => (&mut d.fut).await,
                None => std::future::pending().await,
            }
        };
        let picture = async {
            match pictures.next().await {
                Some(done) => done,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = decode => match decoding.take() {
                Some(d) => Event::Decoded(Decoded {
                    unit: d.unit,
                    owed: d.owed,
                    kept: d.kept,
                    result,
                }),
                None => std::future::pending().await,
            },
            done = picture => Event::Finished(done),
        }
    }

    /// Waits (at most `timeout`) for everything still on the card to end, so that every
    /// frame it holds is released; commands of destroyed sessions end at once, aborted.
    pub async fn finish(mut self, timeout: Duration) {
        let all = async {
            if let Some(d) = self.decoding.take() {
                let _ = d.fut.await;
            }
            while self.pictures.next().await.is_some() {}
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("work in flight on the card did not finish; abandoning it");
        }
    }
}

impl TranscodeWorker {
    /// The smallest pts whose picture has not come out, if any.
    fn first_pending(&self) -> Option<u64> {
        self.pending.keys().next().copied()
    }

    fn add_pending(&mut self, pts: u64) {
        *self.pending.entry(pts).or_default() += 1;
    }

    fn take_pending(&mut self, pts: u64) {
        if let Some(n) = self.pending.get_mut(&pts) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&pts);
            }
        }
    }

    /// Which renditions get a keyframe on picture `index`.
    fn keyframes(&mut self, index: u64) -> Vec<bool> {
        let forced = std::mem::take(&mut self.force_next)
            | self.entry.force_keyframe.swap(false, Ordering::AcqRel);
        self.ladder
            .encoders
            .iter()
            .map(|e| forced || index == 0 || (e.gop != 0 && index % u64::from(e.gop) == 0))
            .collect()
    }

    /// Starts the next decode when the decoder is free and fewer than the window of
    /// pictures are on the card: a kept access unit to decode again, a queued one, or, at
    /// the end of the stream, a flush of the decoder.
    pub(super) fn start_decode(&mut self, buffers: &mut Buffers) -> Result<(), Ending> {
        if self.in_flight.decoding.is_some()
            || self.failed.is_some()
            || self.in_flight.pictures.len() >= self.depth
        {
            return Ok(());
        }
        let card = Arc::clone(&self.ladder.card.card);
        let decoder = self.ladder.decoder;
        while let Some(at) = self.replay.pop_front() {
            let Some(kept) = self.history.get(at) else {
                continue;
            };
            let (data, pts, owed) = (Arc::clone(&kept.data), kept.pts, kept.owed);
            self.in_flight.decoding = Some(Decoding {
                fut: ladder::decode(card, decoder, UnitInput::Copy(data), pts),
                unit: Some(pts),
                owed,
                kept: Some(at),
            });
            return Ok(());
        }
        if let Some(unit) = self.queue.pop_front() {
            let dma = buffers
                .acquire(unit.buffer_id, unit.offset, unit.length)
                .map_err(|m| self.violation(m))?;
            // Released at once: the buffer stays registered (and mapped) while the decode
            // holds its own reference.
            buffers.release(unit.buffer_id);
            let len = unit.length as usize;
            let offset = usize::try_from(unit.offset).unwrap_or(usize::MAX);
            let mut copy = vec![0u8; len];
            if !dma.region().read(offset, &mut copy) {
                return Err(self.violation(format!(
                    "access unit pts {} lies outside its buffer",
                    unit.pts
                )));
            }
            let kept = self.history.keep(copy, unit.pts, unit.buffer_id);
            let input = UnitInput::Dma {
                buffer: dma,
                offset,
                len,
            };
            self.in_flight.decoding = Some(Decoding {
                fut: ladder::decode(card, decoder, input, unit.pts),
                unit: Some(unit.pts),
                owed: Some(unit.buffer_id),
                kept,
            });
            return Ok(());
        }
        if self.eos && !self.flushed {
            self.in_flight.decoding = Some(Decoding {
                fut: ladder::decode(card, decoder, UnitInput::Flush, 0),
                unit: None,
                owed: None,
                kept: None,
            });
        }
        Ok(())
    }

    /// Whether this session's card is out of service.
    fn card_is_down(&self) -> bool {
        !matches!(
            self.daemon.card_state(self.ladder.card.index),
            CardState::Online | CardState::Draining
        )
    }

    fn card_error(&mut self, e: &CardError) -> Option<Flow> {
        if e.is_device_fault() || self.card_is_down() {
            self.daemon.metrics.error("card.device-fault");
            tracing::warn!(error = %e, "card fault while transcoding; moving the ladder");
            crate::service::health::card_fault(
                &self.daemon,
                self.ladder.card.index,
                &e.to_string(),
            );
            return Some(Flow::Migrate(format!(
                "card {} failed: {e}",
                self.ladder.card.name
            )));
        }
        None
    }

    /// Handles what ended on the card.
    pub(super) async fn event(&mut self, event: Event) -> Result<(), Flow> {
        match event {
            Event::Decoded(d) => self.decoded(d).await,
            Event::Finished(f) => self.finished(f).await,
        }
    }

    /// A decode ended: `FRAME_DONE` for its access unit, and its picture, if any, starts
    /// through the renditions (or is dropped, when it was sent before the ladder moved).
    /// A decode error stops decoding; the session ends with it once the pictures before
    /// it are out.
    async fn decoded(&mut self, done: Decoded) -> Result<(), Flow> {
        let picture = match done.result {
            Ok(p) => p,
            Err(e) => {
                if let Some(flow) = self.card_error(&e) {
                    return Err(flow);
                }
                self.daemon.metrics.error("card.decode");
                let at = done
                    .unit
                    .map_or("at the end of the stream".to_string(), |p| {
                        format!("access unit pts {p}")
                    });
                let (code, what) = match e.vendor_status() {
                    Some(VendorStatus::NoFrameMemory) => {
                        (ErrorCode::Resource, "the card's frame memory is full")
                    }
                    Some(VendorStatus::SessionNotFound | VendorStatus::SessionAborted) => {
                        (ErrorCode::CardFailed, "the card lost the decoder")
                    }
                    _ => (ErrorCode::DecodeFailed, "the input could not be decoded"),
                };
                self.failed = Some(Ending::error(code, format!("{at}: {what}: {e}")));
                return Ok(());
            }
        };
        // The card has read the access unit: its slot is free again.
        if let Some(pts) = done.unit {
            self.add_pending(pts);
            if let Some(buffer_id) = done.owed {
                if let Some(k) = done.kept.and_then(|at| self.history.get_mut(at)) {
                    k.owed = None;
                }
                self.owed = self.owed.saturating_sub(1);
                self.send(&DaemonRecord::FrameDone { buffer_id, pts })
                    .await?;
            }
        }
        let Some(picture) = picture else {
            if done.unit.is_none() {
                // The decoder is empty: the flush is over.
                self.flushed = true;
            }
            return Ok(());
        };
        let card = Arc::clone(&self.ladder.card.card);
        let Some(pts) = self.first_pending() else {
            self.in_flight
                .pictures
                .push_back(ladder::skip(card, picture, 0));
            self.failed = Some(Ending::error(
                ErrorCode::DecodeFailed,
                "the decoder produced more pictures than access units went in",
            ));
            return Ok(());
        };
        self.take_pending(pts);
        let index = self.decoded;
        self.decoded += 1;
        self.history.picture_out(index, pts);
        let work = if index < self.sent {
            ladder::skip(card, picture, pts)
        } else {
            let force = self.keyframes(index);
            ladder::encode(
                &card,
                &self.ladder.encoders,
                picture,
                pts,
                &force,
                &mut self.turns,
            )
        };
        self.in_flight.pictures.push_back(work);
        Ok(())
    }

    /// The oldest picture on the card ended: its packets go out.
    async fn finished(&mut self, done: Finished) -> Result<(), Flow> {
        let packets = match done.result {
            Ok(Outcome::Skipped) => return Ok(()),
            Ok(Outcome::Encoded(packets)) => packets,
            Err(e) => {
                if let Some(flow) = self.card_error(&e) {
                    return Err(flow);
                }
                self.ladder.card.errors.fetch_add(1, Ordering::Relaxed);
                self.daemon.metrics.error("card.encode");
                self.daemon.changes.push(Change::CardErrors {
                    card: self.ladder.card.index,
                });
                let code = if e.vendor_status() == Some(VendorStatus::NoFrameMemory) {
                    ErrorCode::Resource
                } else {
                    ErrorCode::EncodeFailed
                };
                return Err(Flow::End(Ending::error(
                    code,
                    format!("picture pts {}: {e}", done.pts),
                )));
            }
        };
        self.sent += 1;
        self.history.sent(self.sent);
        for (r, packet) in packets.into_iter().enumerate() {
            let c = &self.entry.counters;
            Metrics::add(&c.frames_out, 1);
            Metrics::add(&c.bytes_out, packet.data.len() as u64);
            if packet.keyframe {
                Metrics::add(&c.keyframes, 1);
            }
            Metrics::add(&self.daemon.metrics.packets_out, 1);
            Metrics::add(&self.daemon.metrics.bytes_out, packet.data.len() as u64);
            let wire = WirePacket {
                pts: done.pts,
                rendition: r as u16,
                keyframe: packet.keyframe,
                frame_type: wire_frame_type(packet.frame_type),
                data: packet.data,
            };
            for chunk in packet_chunks(&wire) {
                self.send(&chunk).await?;
            }
        }
        Ok(())
    }

    /// At the end: access units whose picture never came out mean the input was cut.
    pub(super) fn leftover_check(&mut self) -> Option<Ending> {
        let left: u32 = self.pending.values().sum();
        (left > 0).then(|| {
            self.daemon.metrics.error("card.decode");
            Ending::error(
                ErrorCode::DecodeFailed,
                format!(
                    "{left} access units yielded no picture (first pts {}): the input is truncated or corrupt",
                    self.first_pending().unwrap_or_default()
                ),
            )
        })
    }
}
