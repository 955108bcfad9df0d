//! The decode input path of on-card transcoding, with the fuzzer as the client sending the
//! compressed input: the bytes are an H.264 Annex-B stream, split into access units as the
//! client library splits them (`vpud_client::annexb::access_units`), and each goes through
//! the emulated card's Decode Frame (DMA from host memory, the card's decoder, its frame
//! memory) exactly as a transcode session sends it. Every picture that comes out is scaled
//! and both frames released; at the end the decoder is flushed and destroyed.
//!
//! Whatever the bytes, the card answers each command with success or a typed rejection
//! (bitstream error, picture too large or of an odd size, invalid frame), never a device
//! fault, a timeout or a panic, and stays healthy for the next input.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vpu_driver::card::{
    Card, CardError, CardFrame, CardOptions, Codec, DecoderConfig, FrameInput, ScaleFilter, VendorStatus,
    MAX_ACCESS_UNIT,
};
use vpu_driver::emu::{EmuConfig, EmulatedCard};
use vpu_driver::io::DeviceIo;
use vpud_client::annexb::access_units;

struct Rig {
    rt: tokio::runtime::Runtime,
    card: Arc<Card>,
    _emu: Arc<EmulatedCard>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let emu = EmulatedCard::new(EmuConfig {
            // Small enough that a hostile stream cannot make the fuzzer run out of memory.
            max_width: 1280,
            max_height: 1280,
            frame_memory: 64 << 20,
            ..EmuConfig::default()
        })
        .expect("emulated card");
        let io: Arc<dyn DeviceIo> = emu.clone();
        let card = rt
            .block_on(Card::open(
                io,
                CardOptions {
                    command_timeout: Duration::from_secs(8),
                    ..CardOptions::default()
                },
            ))
            .expect("open card");
        Rig {
            rt,
            card,
            _emu: emu,
        }
    })
}

/// A rejection the input may cause; anything else is a bug.
fn expected(e: &CardError) {
    match e.vendor_status() {
        Some(
            VendorStatus::BitstreamError
            | VendorStatus::TooLarge
            | VendorStatus::UnsupportedFormat,
        ) => {}
        _ if matches!(e, CardError::InvalidFrame { .. }) => {}
        _ => panic!("unexpected error for hostile input: {e}"),
    }
}

/// A decoded picture: a sane size, scalable, released.
async fn picture(card: &Card, p: CardFrame) {
    assert!(p.width % 2 == 0 && p.height % 2 == 0 && p.width <= 1280 && p.height <= 1280);
    let scaled = card
        .scale(p, 32, 32, ScaleFilter::Bilinear)
        .await
        .expect("scaling a decoded picture");
    card.release_frame(scaled).await.expect("release scaled");
    card.release_frame(p).await.expect("release decoded");
}

async fn one(card: &Card, data: &[u8]) {
    let decoder = card
        .create_decoder(&DecoderConfig {
            codec: Codec::H264,
            max_width: 0,
            max_height: 0,
            fps_num: 30,
            fps_den: 1,
        })
        .await
        .expect("create decoder");
    for (pts, unit) in access_units(data).into_iter().enumerate() {
        let unit = &unit[..unit.len().min(MAX_ACCESS_UNIT)];
        match card.decode(decoder, FrameInput::Bytes(unit), pts as u64).await {
            Ok(Some(p)) => picture(card, p).await,
            Ok(None) => {}
            Err(e) => {
                expected(&e);
                break;
            }
        }
    }
    for _ in 0..64 {
        match card.flush_decoder(decoder).await {
            Ok(Some(p)) => picture(card, p).await,
            Ok(None) => break,
            Err(e) => {
                expected(&e);
                break;
            }
        }
    }
    card.destroy_decoder(decoder).await.expect("destroy decoder");
    // The card is healthy for the next input.
    card.nop().await.expect("nop after the input");
    assert!(!card.fatal());
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    rig.rt.block_on(one(&rig.card, data));
});
