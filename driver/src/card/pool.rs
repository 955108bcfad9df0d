//! Reusable DMA buffers for copied input frames and bitstream output.
//!
//! Mapping memory for the device costs a system call or two; a pool keeps buffers of the
//! sizes sessions use. A buffer goes back to the pool only when no command in flight
//! still holds it (a timed-out command keeps its buffers until the device completes it).

use std::sync::{Arc, Mutex};

use crate::io::{DeviceIo, DeviceIoExt, DmaBuffer, IoError};

/// Spare buffers of one card, for one purpose.
#[derive(Debug)]
pub(crate) struct BufferPool {
    io: Arc<dyn DeviceIo>,
    free: Mutex<Vec<DmaBuffer>>,
    /// Spare buffers kept at most; more are unmapped.
    max_free: usize,
}

impl BufferPool {
    pub fn new(io: Arc<dyn DeviceIo>, max_free: usize) -> Self {
        Self {
            io,
            free: Mutex::new(Vec::new()),
            max_free,
        }
    }

    /// A buffer of at least `len` bytes (and not wastefully larger), reused or new.
    pub fn get(&self, len: usize) -> Result<Pooled<'_>, IoError> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len && b.len() <= len.saturating_mul(2).max(4096))
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let buf = match reused {
            Some(b) => b,
            None => self.io.alloc_dma(len)?,
        };
        Ok(Pooled {
            pool: self,
            buf: Some(buf),
        })
    }

    /// Unmaps every spare buffer (after a reset, say).
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A buffer borrowed from a pool; returned on drop when nobody else holds it.
#[derive(Debug)]
pub(crate) struct Pooled<'a> {
    pool: &'a BufferPool,
    buf: Option<DmaBuffer>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = DmaBuffer;
    fn deref(&self) -> &DmaBuffer {
        // Always Some until drop.
        self.buf
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled buffer taken before drop"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            if buf.is_unique() {
                let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
                if free.len() < self.pool.max_free {
                    free.push(buf);
                }
            }
        }
    }
}
