//! systemd's notification protocol: `READY=1` once the bus name is owned, `WATCHDOG=1`
//! pings from the main loop, `STOPPING=1` on shutdown. One datagram per message on the
//! Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Errors talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {path:?} is not a usable socket address")]
    Address {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sending {message:?} to systemd failed")]
    Send {
        message: String,
        #[source]
        source: std::io::Error,
    },
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `None` when not run by systemd.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(path) if !path.is_empty() => Notifier::new(&path).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the socket at `path` (`@name`: abstract).
    pub fn new(path: &str) -> Result<Notifier, NotifyError> {
        let err = |source| NotifyError::Address {
            path: path.to_owned(),
            source,
        };
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?,
            None => SocketAddr::from_pathname(path).map_err(err)?,
        };
        let socket = UnixDatagram::unbound().map_err(err)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one notification (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                message: message.to_owned(),
                source,
            })
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set for this
/// process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn abstract_sockets_work() {
        let name = format!("vpud-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .send("WATCHDOG=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
