//! Interrupt vectors: one tokio task per eventfd reads the completion queues it serves.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

use crate::io::IoError;

use super::error::NvmeError;
use super::queue::QueuePair;

/// An eventfd registered with the runtime.
struct Vector(Arc<EventFd>);

impl AsRawFd for Vector {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL on a descriptor this process owns (the eventfd is alive in `Vector`).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with the flags just read plus O_NONBLOCK, on the same descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How long a vector may stay silent before its queues are looked at anyway.
const SWEEP: Duration = Duration::from_millis(100);

/// How long a completion found on a silent vector is given for its interrupt to arrive
/// before the interrupt counts as lost. The device posts the entry before it signals, and
/// a loaded host may run this task in between; the grace keeps that from being counted.
const GRACE: Duration = Duration::from_millis(50);

/// Reads completions of `queues` whenever `vector` fires, and sweeps them when it has been
/// silent for [`SWEEP`] and a posted completion has waited [`GRACE`] more for its interrupt.
pub(super) fn spawn_vector_task(
    device: &str,
    vector: Arc<EventFd>,
    queues: Vec<Arc<QueuePair>>,
) -> Result<JoinHandle<()>, NvmeError> {
    let irq_err = |source: std::io::Error| NvmeError::Interrupts {
        device: device.to_string(),
        source: IoError::Interrupts {
            requested: 1,
            supported: 1,
            source: Some(source),
        },
    };
    set_nonblocking(vector.as_raw_fd()).map_err(irq_err)?;
    // SAFETY: `Vector` owns an `Arc<EventFd>`, so the descriptor stays open and the same
    // for as long as the `AsyncFd` holds it, and `as_raw_fd` always returns it.
    let fd = unsafe { AsyncFd::register_with_interest(Vector(vector), Interest::READABLE) }
        .map_err(|e| irq_err(e.into()))?;
    let device = device.to_string();
    Ok(tokio::spawn(async move {
        // A completion was seen posted on a silent vector; if it is still there after the
        // grace period with no interrupt in between, the interrupt was lost.
        let mut suspect = false;
        loop {
            let wait = if suspect { GRACE } else { SWEEP };
            let readable = tokio::select! {
                biased;
                r = fd.readable() => Some(r),
                _ = tokio::time::sleep(wait) => None,
            };
            let mut guard = match readable {
                Some(Ok(g)) => g,
                Some(Err(e)) => {
                    tracing::error!(device = %device, error = %e, "interrupt eventfd failed");
                    return;
                }
                None => {
                    // No interrupt for a while: look at queues with commands in flight,
                    // so a lost interrupt costs a sweep interval, not a command timeout.
                    let posted = queues.iter().any(|q| q.completion_posted());
                    if posted && !suspect {
                        suspect = true;
                        continue;
                    }
                    suspect = false;
                    if posted {
                        for q in &queues {
                            q.sweep();
                        }
                    }
                    continue;
                }
            };
            if guard.try_io(|v| v.get_ref().0.read()).is_err() {
                continue; // spurious wake-up: readiness cleared, wait again
            }
            suspect = false;
            for q in &queues {
                q.process_completions();
            }
        }
    }))
}
