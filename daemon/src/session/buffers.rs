//! Frame buffers a client registered on its channel: its memfds, mapped read-only once
//! into the daemon and once for the card's DMA (zero copy).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use vpu_driver::card::Card;
use vpu_driver::io::{DmaBuffer, HostRegion};

use crate::channel::proto::MAX_BUFFERS;

/// Why a buffer could not be registered or used. Messages go to the client.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("register-buffer needs exactly one file descriptor, got {got}")]
    FdCount { got: usize },
    #[error("buffer {id} is already registered; unregister it first or use another id")]
    Duplicate { id: u32 },
    #[error("buffer {id} is not registered")]
    Unknown { id: u32 },
    #[error("buffer {id} has {frames} frames in flight; wait for their frame-done records")]
    Busy { id: u32, frames: usize },
    #[error("at most {MAX_BUFFERS} buffers may be registered at once")]
    TooMany,
    #[error("buffer {id}: the descriptor is not a memfd sealed with F_SEAL_SHRINK (memfd_create with MFD_ALLOW_SEALING, then F_ADD_SEALS)")]
    NotSealed { id: u32 },
    #[error("buffer {id}: the file has {file} bytes, {size} were registered")]
    TooShort { id: u32, file: u64, size: u64 },
    #[error("buffer {id}: inspecting the descriptor failed: {source}")]
    Inspect {
        id: u32,
        #[source]
        source: nix::Error,
    },
    #[error("buffer {id}: mapping {size} bytes failed: {reason}")]
    Map { id: u32, size: u64, reason: String },
}

impl BufferError {
    /// Whether the client broke the protocol (as opposed to the daemon lacking resources).
    pub fn is_protocol(&self) -> bool {
        !matches!(self, BufferError::Map { .. })
    }
}

#[derive(Debug)]
struct Registered {
    dma: Arc<DmaBuffer>,
    size: u64,
    in_flight: usize,
}

/// The buffers of one session.
#[derive(Debug, Default)]
pub struct Buffers {
    map: HashMap<u32, Registered>,
}

impl Buffers {
    /// Maps a client's memfd for the card.
    pub fn register(
        &mut self,
        card: &Card,
        id: u32,
        size: u64,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(), BufferError> {
        if fds.len() != 1 {
            return Err(BufferError::FdCount { got: fds.len() });
        }
        if self.map.contains_key(&id) {
            return Err(BufferError::Duplicate { id });
        }
        if self.map.len() >= usize::from(MAX_BUFFERS) {
            return Err(BufferError::TooMany);
        }
        let fd = fds.remove(0);
        // A memfd that cannot shrink is the only kind of file whose mapping cannot fault
        // (SIGBUS) under the card's reads while the session lives.
        let seals =
            fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS).map_err(|_| BufferError::NotSealed { id })?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(BufferError::NotSealed { id });
        }
        let stat = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|source| BufferError::Inspect { id, source })?;
        let file = u64::try_from(stat.st_size).unwrap_or(0);
        if file < size {
            return Err(BufferError::TooShort { id, file, size });
        }
        let len = usize::try_from(size).map_err(|_| BufferError::Map {
            id,
            size,
            reason: "larger than the address space".into(),
        })?;
        let region =
            HostRegion::map_fd(fd.as_fd(), 0, len, false).map_err(|e| BufferError::Map {
                id,
                size,
                reason: e.to_string(),
            })?;
        let dma = card
            .map_frames(Arc::new(region))
            .map_err(|e| BufferError::Map {
                id,
                size,
                reason: e.to_string(),
            })?;
        self.map.insert(
            id,
            Registered {
                dma: Arc::new(dma),
                size,
                in_flight: 0,
            },
        );
        Ok(())
    }

    /// Maps every buffer for another card (the session moved); the old mappings go when
    /// nothing holds them. Not for the card the buffers are already mapped for (a session
    /// back on its card after a reset): the reset leaves DMA mappings alone, so they stay
    /// valid, and mapping the same memory again would only pin it twice.
    pub fn remap(&mut self, card: &Card) -> Result<(), BufferError> {
        for (id, r) in self.map.iter_mut() {
            let dma =
                card.map_frames(Arc::clone(r.dma.region()))
                    .map_err(|e| BufferError::Map {
                        id: *id,
                        size: r.size,
                        reason: e.to_string(),
                    })?;
            r.dma = Arc::new(dma);
        }
        Ok(())
    }

    /// Forgets a buffer with no frame in flight; the mappings go when the last frame
    /// holding them is dropped (already, since none is in flight).
    pub fn unregister(&mut self, id: u32) -> Result<(), BufferError> {
        match self.map.get(&id) {
            None => Err(BufferError::Unknown { id }),
            Some(r) if r.in_flight > 0 => Err(BufferError::Busy {
                id,
                frames: r.in_flight,
            }),
            Some(_) => {
                self.map.remove(&id);
                Ok(())
            }
        }
    }

    /// Checks a frame's range and takes a reference to its buffer for the encode.
    pub fn acquire(&mut self, id: u32, offset: u64, length: u32) -> Result<Arc<DmaBuffer>, String> {
        let r = self
            .map
            .get_mut(&id)
            .ok_or_else(|| format!("frame names buffer {id}, which is not registered"))?;
        let end = offset.checked_add(u64::from(length));
        if end.is_none_or(|end| end > r.size) {
            return Err(format!(
                "frame at offset {offset} of {length} bytes ends outside buffer {id} of {} bytes",
                r.size
            ));
        }
        r.in_flight += 1;
        Ok(Arc::clone(&r.dma))
    }

    /// A frame of buffer `id` is done.
    pub fn release(&mut self, id: u32) {
        if let Some(r) = self.map.get_mut(&id) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
    }

    /// Drops every buffer (the mappings go when in-flight encodes release theirs).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}
