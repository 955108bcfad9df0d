//! Card frame memory: the decoded and scaled pictures of on-card transcoding.
//!
//! Pictures are I420 with tight strides, held in the card's own memory (here: heap buffers
//! of the device model) and named by handles that Decode Frame and Scale Frame return and
//! Release Frame frees. The host never reads them; Encode Frame with
//! `VPU_ENCODE_CARD_FRAME` encodes from them. The memory has a fixed size: a command that
//! needs more gets `NO_FRAME_MEMORY`. A controller reset frees every picture; handles are
//! never reused within a card's life, so a stale handle is `FRAME_NOT_FOUND`, not another
//! picture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vpu_ffi::*;

use super::lock;
use super::queues::Status;

/// One picture in frame memory.
#[derive(Debug)]
pub(super) struct CardFrame {
    pub width: usize,
    pub height: usize,
    /// Y, then U, then V, tight strides.
    pub data: Vec<u8>,
}

impl CardFrame {
    /// Bytes of an I420 picture of `width` × `height` (both even).
    pub fn size(width: usize, height: usize) -> usize {
        width * height + 2 * ((width / 2) * (height / 2))
    }

    /// A black picture (luma 16, chroma 128) of the given size.
    pub fn new(width: usize, height: usize) -> CardFrame {
        let luma = width * height;
        let mut data = vec![128u8; Self::size(width, height)];
        data[..luma].fill(16);
        CardFrame {
            width,
            height,
            data,
        }
    }

    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = self.width * self.height;
        let chroma = (self.width / 2) * (self.height / 2);
        let (y, rest) = self.data.split_at(luma);
        let (u, v) = rest.split_at(chroma);
        (y, u, v)
    }

    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let luma = self.width * self.height;
        let chroma = (self.width / 2) * (self.height / 2);
        let (y, rest) = self.data.split_at_mut(luma);
        let (u, v) = rest.split_at_mut(chroma);
        (y, u, v)
    }
}

#[derive(Debug, Default)]
struct Store {
    frames: HashMap<u32, Arc<CardFrame>>,
    used: usize,
    next: u32,
}

/// The card's frame memory.
#[derive(Debug)]
pub(super) struct FrameMemory {
    capacity: usize,
    store: Mutex<Store>,
}

impl FrameMemory {
    pub fn new(capacity: usize) -> FrameMemory {
        FrameMemory {
            capacity,
            store: Mutex::new(Store::default()),
        }
    }

    /// Stores a picture; its handle, or `NO_FRAME_MEMORY` when it does not fit.
    pub fn store(&self, frame: CardFrame) -> Result<u32, Status> {
        let mut s = lock(&self.store);
        let bytes = frame.data.len();
        if s.used + bytes > self.capacity {
            return Err(Status::vendor(VPU_SC_NO_FRAME_MEMORY));
        }
        let mut handle = s.next;
        while handle == VPU_FRAME_HANDLE_NONE || s.frames.contains_key(&handle) {
            handle = handle.wrapping_add(1);
        }
        s.next = handle.wrapping_add(1);
        s.used += bytes;
        s.frames.insert(handle, Arc::new(frame));
        Ok(handle)
    }

    pub fn get(&self, handle: u32) -> Result<Arc<CardFrame>, Status> {
        lock(&self.store)
            .frames
            .get(&handle)
            .cloned()
            .ok_or(Status::vendor(VPU_SC_FRAME_NOT_FOUND))
    }

    /// Frees a picture (its memory returns once no engine still reads it).
    pub fn release(&self, handle: u32) -> Result<(), Status> {
        let mut s = lock(&self.store);
        let frame = s
            .frames
            .remove(&handle)
            .ok_or(Status::vendor(VPU_SC_FRAME_NOT_FOUND))?;
        s.used = s.used.saturating_sub(frame.data.len());
        Ok(())
    }

    /// Pictures held now.
    pub fn count(&self) -> usize {
        lock(&self.store).frames.len()
    }

    /// Controller reset: every picture is gone.
    pub fn reset(&self) {
        let mut s = lock(&self.store);
        s.frames.clear();
        s.used = 0;
    }
}
