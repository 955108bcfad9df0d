//! The buffer pool `vpuh264enc` proposes upstream: its buffers are slots of one sealed
//! memfd ([`vpud_client::FramePool`]) that the element registers with each session it
//! opens, so a producer writes frames straight into memory the card reads, and the
//! element sends them by reference.
//!
//! A slot belongs to at most one live buffer memory ([`SlotMem`]); it goes back to the
//! arena when that memory is freed, so the pool may discard and re-allocate buffers as
//! GStreamer pools do.

use std::sync::{Arc, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use vpud_client::FramePool;

/// The memfd and which of its slots are free.
#[derive(Debug)]
pub struct Arena {
    pool: FramePool,
    /// Address of the mapping, kept as a number: `FramePool` is not `Sync`, and the
    /// element only compares addresses against it or slices disjoint slots out of it.
    base: usize,
    free: Mutex<Vec<usize>>,
}

// SAFETY: after construction the arena's `FramePool` is only used through `&self` methods
// that read immutable fields (fd, length, offsets); the mapping's bytes are reached only
// through `SlotMem`, each of which owns one slot exclusively (the free list hands a slot
// to one memory at a time, under the mutex).
unsafe impl Sync for Arena {}

impl Arena {
    /// A memfd of `slots` slots of `frame_size` bytes.
    pub fn new(slots: usize, frame_size: usize) -> std::io::Result<Arena> {
        let pool = FramePool::new(slots, frame_size)?;
        Ok(Arena {
            base: pool.as_ptr() as usize,
            free: Mutex::new((0..slots).rev().collect()),
            pool,
        })
    }

    /// The memfd, for registering it with a session.
    pub fn pool(&self) -> &FramePool {
        &self.pool
    }

    /// If `data` (a mapped frame of `len` bytes) lies in this arena, its offset.
    pub fn offset_of(&self, data: *const u8, len: usize) -> Option<u64> {
        let at = (data as usize).checked_sub(self.base)?;
        let end = at.checked_add(len)?;
        (end <= self.pool.len()).then_some(at as u64)
    }

    fn take(&self) -> Option<usize> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, slot: usize) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
    }
}

/// One slot as a buffer's memory.
#[derive(Debug)]
struct SlotMem {
    arena: Arc<Arena>,
    slot: usize,
}

impl SlotMem {
    fn ptr(&self) -> *mut u8 {
        // `slot < slots` (the arena only hands out its own slots), so the offset stays
        // inside the mapping.
        (self.arena.base + self.arena.pool.offset(self.slot)) as *mut u8
    }
}

impl AsRef<[u8]> for SlotMem {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot's `frame_size` bytes lie inside the mapping, which the `Arc`
        // keeps alive; this memory owns the slot exclusively (see `Arena`).
        unsafe { std::slice::from_raw_parts(self.ptr(), self.arena.pool.frame_size()) }
    }
}

impl AsMut<[u8]> for SlotMem {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`; `&mut self` makes this the only reference into the slot
        // in this process. GStreamer maps a buffer writable only while nobody else holds
        // it, and the element holds every buffer it sent until the card has read it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.arena.pool.frame_size()) }
    }
}

impl Drop for SlotMem {
    fn drop(&mut self) {
        self.arena.give_back(self.slot);
    }
}

mod imp {
    use super::*;

    #[derive(Debug, Default)]
    pub struct SlotPool {
        pub arena: Mutex<Option<Arc<Arena>>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SlotPool {
        const NAME: &'static str = "GstVpuSlotPool";
        type Type = super::SlotPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SlotPool {}
    impl GstObjectImpl for SlotPool {}

    impl BufferPoolImpl for SlotPool {
        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let arena = self
                .arena
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or(gst::FlowError::Error)?;
            let Some(slot) = arena.take() else {
                gst::warning!(
                    gst::CAT_DEFAULT,
                    "vpuh264enc's buffer pool has no free slot"
                );
                return Err(gst::FlowError::Error);
            };
            Ok(gst::Buffer::from_mut_slice(SlotMem { arena, slot }))
        }
    }
}

glib::wrapper! {
    /// A buffer pool over an [`Arena`].
    pub struct SlotPool(ObjectSubclass<imp::SlotPool>) @extends gst::BufferPool, gst::Object;
}

impl SlotPool {
    /// A pool of `arena`'s slots for frames of `caps`, configured: as many buffers as
    /// slots, each one frame.
    pub fn new(arena: Arc<Arena>, caps: &gst::Caps) -> Result<SlotPool, glib::BoolError> {
        let pool: SlotPool = glib::Object::new();
        let slots = u32::try_from(arena.pool().slots()).unwrap_or(u32::MAX);
        let size = u32::try_from(arena.pool().frame_size()).unwrap_or(u32::MAX);
        *pool.imp().arena.lock().unwrap_or_else(|e| e.into_inner()) = Some(arena);
        let mut config = pool.config();
        config.set_params(Some(caps), size, slots, slots);
        pool.set_config(config)?;
        Ok(pool)
    }
}
