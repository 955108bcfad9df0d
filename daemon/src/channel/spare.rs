//! Channel socket pairs made ahead of need. Creating a pair and registering the daemon's
//! end with the runtime is the largest piece of `CreateSession` after the card and the
//! bus object (about 10 µs of its 60 on a small host); a few spare pairs, made again
//! after the reply has gone, take it off the caller's wait.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::socket::{self, SeqPacket, SocketError};
use crate::service::state::lock;

/// Spare pairs kept: enough for a burst of creations between two refills.
pub const SPARES: usize = 4;

/// The daemon's end, registered with the runtime, and the client's end of one channel.
pub type Pair = (SeqPacket, OwnedFd);

/// Spare channel socket pairs.
#[derive(Debug, Default)]
pub struct SparePairs {
    pairs: Mutex<Vec<Pair>>,
    refilling: AtomicBool,
}

fn new_pair() -> Result<Pair, SocketError> {
    let (ours, theirs) = socket::pair()?;
    Ok((SeqPacket::new(ours)?, theirs))
}

impl SparePairs {
    /// A pair: a spare one if there is one, else a new one. Must run on the runtime.
    pub fn take(&self) -> Result<Pair, SocketError> {
        let spare = lock(&self.pairs).pop();
        match spare {
            Some(p) => Ok(p),
            None => new_pair(),
        }
    }

    /// Spare pairs held now.
    fn len(&self) -> usize {
        lock(&self.pairs).len()
    }

    /// Tops the spares up to [`SPARES`] (failures are left for [`SparePairs::take`] to
    /// report, where a session needs the pair).
    pub fn fill(&self) {
        while self.len() < SPARES {
            let Ok(p) = new_pair() else {
                return;
            };
            lock(&self.pairs).push(p);
        }
    }

    /// Tops the spares up from a task of its own, which runs after the current one
    /// yields (after a method's reply is sent). One refill at a time.
    pub fn refill_later(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.fill();
            me.refilling.store(false, Ordering::Release);
        });
    }

    /// Closes every spare pair (at shutdown).
    pub fn clear(&self) {
        lock(&self.pairs).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spares_are_taken_then_made_again() {
        let spares = Arc::new(SparePairs::default());
        spares.fill();
        assert_eq!(spares.len(), SPARES);
        let (ours, theirs) = spares.take().unwrap();
        assert_eq!(spares.len(), SPARES - 1);
        // The pair is connected: a record sent on one end arrives on the other.
        let client = SeqPacket::new(theirs).unwrap();
        ours.send(b"hello", None).await.unwrap();
        let mut buf = [0u8; 16];
        let got = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        spares.refill_later();
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if spares.len() == SPARES {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(spares.len(), SPARES);
        // Taking more than are spare still works: new pairs are made on demand.
        for _ in 0..SPARES + 2 {
            spares.take().unwrap();
        }
        assert_eq!(spares.len(), 0);
        spares.clear();
    }
}
