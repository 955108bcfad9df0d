//! Small helpers of the guest program: waiting on eventfds, polling registers, and the
//! process limits the memlock check changes.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vmm_sys_util::eventfd::EventFd;

/// Waits up to `timeout` for `fd` to be signalled and returns its counter (0 on timeout).
pub fn wait_eventfd(fd: &EventFd, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        match fd.read() {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("reading the eventfd"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(0);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll on the eventfd");
            }
        }
    }
}

/// Polls `f` until it returns `Some`, for up to `timeout`.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `RLIMIT_MEMLOCK` soft and hard values.
pub fn memlock() -> anyhow::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets `RLIMIT_MEMLOCK`.
pub fn set_memlock(soft: u64, hard: u64) -> anyhow::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit");
    }
    Ok(())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit data words.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// `CAP_IPC_LOCK`.
const CAP_IPC_LOCK: u32 = 14;

fn caps() -> anyhow::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as capget(2) requires for version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    Ok(data)
}

/// Adds or removes `CAP_IPC_LOCK` from the effective set (it stays permitted, so it can
/// be raised again).
pub fn set_ipc_lock_effective(on: bool) -> anyhow::Result<()> {
    let mut data = caps()?;
    if on {
        data[0].effective |= 1 << CAP_IPC_LOCK;
    } else {
        data[0].effective &= !(1 << CAP_IPC_LOCK);
    }
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a two-element data array as capset(2) requires for version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// Reads a sysfs attribute, trimmed; `None` if it does not exist.
pub fn sysfs(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Opens `address` through VFIO, waiting up to `timeout` while its group is still held.
/// The transport closes a device asynchronously (its completion tasks hold the device
/// until the runtime has reaped them), so a device just given up may be busy briefly.
/// Returns the device and how long the group stayed busy.
pub fn open_when_released(
    address: &str,
    opts: &vpu_driver::vfio::VfioOptions,
    timeout: Duration,
) -> anyhow::Result<(std::sync::Arc<vpu_driver::vfio::VfioDevice>, Duration)> {
    let start = Instant::now();
    loop {
        match vpu_driver::vfio::VfioDevice::open(address, opts) {
            Ok(d) => return Ok((d, start.elapsed())),
            Err(vpu_driver::vfio::VfioError::OpenGroup { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < timeout =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
