//! A private message bus: a `dbus-daemon` of our own on a socket in a temporary directory,
//! for machines with no bus at all (`vpud --bus private`, `vpuctl demo`, `--emulate`) and for
//! tests. The bus lives as long as its [`PrivateBus`] value.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Environment variable naming the `dbus-daemon` binary to run (default: `dbus-daemon` on
/// `PATH`).
pub const DBUS_DAEMON_ENV: &str = "VPUD_DBUS_DAEMON";

/// Errors starting a private bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("creating a directory for the private bus failed")]
    TempDir(#[source] std::io::Error),
    #[error("writing the private bus configuration {path} failed")]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {program} failed (install the `dbus` package, or set {DBUS_DAEMON_ENV})")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited before printing its address: {stderr}")]
    NoAddress { program: String, stderr: String },
}

/// A running private `dbus-daemon`. Dropping it stops the bus.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
    // Holds the socket and configuration; removed on drop, after the child is gone.
    dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts a bus that lets every client own names and talk to everyone (the access
    /// rules of a session bus), listening on a Unix socket in a new temporary directory
    /// that only the current user can enter. Returns once the bus accepts connections.
    pub fn start() -> Result<PrivateBus, BusError> {
        let dir = tempfile::Builder::new()
            .prefix("vpud-bus-")
            .tempdir()
            .map_err(BusError::TempDir)?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, config_text(&socket)).map_err(|source| BusError::WriteConfig {
            path: config.clone(),
            source,
        })?;
        let program = std::env::var(DBUS_DAEMON_ENV).unwrap_or_else(|_| "dbus-daemon".into());
        let mut child = Command::new(&program)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BusError::Spawn {
                program: program.clone(),
                source,
            })?;
        // dbus-daemon prints its address once it listens.
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let address = line.trim().to_owned();
        if !matches!(read, Some(Ok(n)) if n > 0) || address.is_empty() {
            let _ = child.kill();
            let stderr = child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_default();
            return Err(BusError::NoAddress { program, stderr });
        }
        tracing::debug!(%address, pid = child.id(), "private bus started");
        Ok(PrivateBus {
            child,
            address,
            dir,
        })
    }

    /// The bus address, for `Connection` builders, `DBUS_SESSION_BUS_ADDRESS` or
    /// `busctl --address`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The directory holding the bus socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `dbus-daemon` process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <!-- Any user that can reach the socket may connect; the socket's directory is
         private to the bus owner (mode 0700) unless the owner opens it up. -->
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_bus_accepts_connections_and_stops_on_drop() {
        let bus = PrivateBus::start().unwrap();
        assert!(bus.address().starts_with("unix:path="));
        let socket = bus.dir().join("bus");
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
        let pid = bus.pid();
        drop(bus);
        // The process is reaped on drop: its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
