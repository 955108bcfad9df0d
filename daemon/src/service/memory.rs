//! Giving freed heap back to the system. Encoders allocate megabytes per session and free
//! them when it ends; glibc's allocator keeps freed memory in its arenas (and, after a large
//! block is freed, raises its mmap threshold so later large blocks come from the arenas
//! too), so a daemon whose sessions come and go would keep its peak footprint forever.
//! vpud fixes the mmap threshold, so frame-sized buffers are mapped and unmapped on their
//! own, and trims the arenas after sessions have ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::state::Daemon;

/// Blocks at least this large are mapped on their own and returned when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// How often the daemon looks whether sessions ended since the last trim.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Sets the allocator up for a long-running process; call once, early in `main`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before other
        // threads allocate heavily, and any value of M_MMAP_THRESHOLD up to 32 MiB is valid.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
            tracing::debug!("setting the allocator's mmap threshold failed");
        }
    }
}

/// Returns the free memory of every arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the arenas' locks itself and only releases free pages.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Trims the heap every [`TRIM_EVERY`] in which sessions ended, until the daemon stops.
pub async fn trimmer(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = daemon.metrics.sessions_closed.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        if daemon.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let now = daemon.metrics.sessions_closed.load(Ordering::Relaxed);
        if now != closed {
            closed = now;
            // Trimming walks every arena; off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}
