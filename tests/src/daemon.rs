//! Harness for whole-system tests of vpud: a private `dbus-daemon` with the daemon
//! running on it (in-process, so that tests can read its metrics and emulated cards),
//! zbus clients, a data-channel client speaking the wire format of
//! `docs/data-channel.md` record by record, and the real command-line clients
//! (`gdbus`, `busctl`).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use memfd::{FileSeal, MemfdOptions};
use vpud::channel::proto::{
    ClientRecord, DaemonRecord, FrameRef, Hello, PacketAssembler, WirePacket, MAX_RECORD_LEN,
};
use vpud::channel::socket::{SeqPacket, SocketError};
use vpud::config::Config;
use vpud::service::Embedded;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};

pub const BUS_NAME: &str = "org.vpud.Vpud1";
pub const ROOT: &str = "/org/vpud/Vpud1";
pub const MANAGER: &str = "org.vpud.Vpud1.Manager";
pub const SESSION: &str = "org.vpud.Vpud1.Session";
pub const CARD: &str = "org.vpud.Vpud1.Card";
pub const RESERVATION: &str = "org.vpud.Vpud1.Reservation";

/// A daemon with `cards` emulated cards on a private bus.
pub async fn start(cards: u32, config: Config) -> Result<Embedded> {
    Embedded::start(cards, config)
        .await
        .context("starting the embedded daemon")
}

/// A new client connection to the daemon's bus.
pub async fn connect(daemon: &Embedded) -> Result<Connection> {
    Ok(zbus::connection::Builder::address(daemon.address())
        .build()
        .await?)
}

/// `CreateSession` parameters for an H.264 session of `width`×`height` at `fps`.
pub fn params(width: u32, height: u32, fps: u32) -> HashMap<String, OwnedVariant> {
    let mut p = HashMap::new();
    p.insert("codec".into(), owned(Variant::from("h264")));
    p.insert("width".into(), owned(Variant::U32(width)));
    p.insert("height".into(), owned(Variant::U32(height)));
    p.insert("framerate_num".into(), owned(Variant::U32(fps)));
    p.insert("bitrate".into(), owned(Variant::U32(1_000_000)));
    p
}

/// A variant as an owned one.
pub fn owned(v: Variant<'_>) -> OwnedVariant {
    // Only variants holding file descriptors fail to convert; tests pass plain values.
    OwnedVariant::try_from(v).expect("plain values convert")
}

/// Calls `CreateSession`.
pub async fn create_session(
    conn: &Connection,
    params: &HashMap<String, OwnedVariant>,
) -> zbus::Result<(OwnedObjectPath, OwnedFd)> {
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            ROOT,
            Some(MANAGER),
            "CreateSession",
            &(params,),
        )
        .await?;
    let (path, fd): (OwnedObjectPath, zbus::OwnedFd) = reply.body().deserialize()?;
    Ok((path, fd.into()))
}

/// Calls `Reserve` for `units` load units (on `card` if given).
pub async fn reserve(
    conn: &Connection,
    units: u64,
    card: Option<&str>,
) -> zbus::Result<OwnedObjectPath> {
    let mut p: HashMap<String, OwnedVariant> = HashMap::new();
    p.insert("units".into(), owned(Variant::U64(units)));
    if let Some(c) = card {
        let path = zbus::ObjectPath::try_from(c)?;
        p.insert("card".into(), owned(Variant::ObjectPath(path)));
    }
    let reply = conn
        .call_method(Some(BUS_NAME), ROOT, Some(MANAGER), "Reserve", &(p,))
        .await?;
    reply.body().deserialize()
}

/// The D-Bus error name of a failed call, if it is a method error.
pub fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        _ => None,
    }
}

/// Reads a property.
pub async fn property<T>(conn: &Connection, path: &str, iface: &str, name: &str) -> Result<T>
where
    T: TryFrom<OwnedVariant>,
    <T as TryFrom<OwnedVariant>>::Error: std::fmt::Display,
{
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface, name),
        )
        .await?;
    let v: OwnedVariant = reply.body().deserialize()?;
    T::try_from(v).map_err(|e| anyhow!("property {iface}.{name}: {e}"))
}

/// The signals of session `path` named `member` (`Closed`, `Migrated`), or all of its
/// signals.
pub async fn session_signals(
    conn: &Connection,
    path: &str,
    member: Option<&str>,
) -> Result<zbus::MessageStream> {
    let mut rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(SESSION)
        .path(path);
    if let Some(m) = member {
        rule = rule.member(m);
    }
    Ok(zbus::MessageStream::for_match_rule(rule.build()?, conn, None).await?)
}

/// Calls a method with no arguments on a session.
pub async fn session_call(conn: &Connection, path: &str, method: &str) -> zbus::Result<()> {
    conn.call_method(Some(BUS_NAME), path, Some(SESSION), method, &())
        .await
        .map(|_| ())
}

/// Polls `check` until it holds or `within` passes; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client of one session's data channel, record by record.
#[derive(Debug)]
pub struct Channel {
    pub sock: SeqPacket,
    pub hello: Hello,
    memfd: Option<memfd::Memfd>,
    assembler: PacketAssembler,
    /// Pts of the next frame `encode` sends.
    next_pts: u64,
    /// Frame slots handed out so far (slot = count % window).
    slots_used: u64,
}

impl Channel {
    /// Wraps the client's end and reads the `HELLO` record.
    pub async fn open(fd: OwnedFd) -> Result<Channel> {
        let sock = SeqPacket::new(fd)?;
        let mut ch = Channel {
            sock,
            hello: Hello {
                version: 0,
                window: 1,
                max_buffers: 0,
                max_record_len: 0,
                frame_size: 0,
                width: 0,
                height: 0,
                pixel_format: 0,
                session: 0,
                renditions: 0,
            },
            memfd: None,
            assembler: PacketAssembler::new(),
            next_pts: 0,
            slots_used: 0,
        };
        match ch.recv().await? {
            Some(DaemonRecord::Hello(h)) => ch.hello = h,
            other => bail!("expected hello, got {other:?}"),
        }
        Ok(ch)
    }

    /// Sends raw bytes as one record.
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        Ok(self.sock.send(bytes, None).await?)
    }

    /// Receives one record; `None` at end of channel.
    pub async fn recv(&self) -> Result<Option<DaemonRecord>> {
        let mut buf = vec![0u8; MAX_RECORD_LEN];
        let r = match self.sock.recv(&mut buf).await {
            Ok(r) => r,
            // The daemon closed its end with records of ours unread; what it sent before
            // closing is still queued (docs/data-channel.md, "Transport").
            Err(SocketError::Receive(e)) if e.raw_os_error() == Some(libc_econnreset()) => {
                self.sock.recv(&mut buf).await?
            }
            Err(e) => return Err(e.into()),
        };
        if r.len == 0 {
            return Ok(None);
        }
        Ok(Some(DaemonRecord::decode(&buf[..r.len])?))
    }

    /// Creates a sealed memfd of `window` frame slots and registers it as buffer 0.
    pub async fn register_slots(&mut self) -> Result<()> {
        let size = u64::from(self.hello.frame_size) * u64::from(self.hello.window);
        let mfd = MemfdOptions::default()
            .allow_sealing(true)
            .create("vpu-test-frames")?;
        mfd.as_file().set_len(size)?;
        mfd.add_seal(FileSeal::SealShrink)?;
        let rec = ClientRecord::RegisterBuffer { buffer_id: 0, size }.encode();
        self.sock.send(&rec, Some(mfd.as_file().as_fd())).await?;
        self.memfd = Some(mfd);
        Ok(())
    }

    /// Encodes `frames` with consecutive pts (continuing from earlier calls, from 0),
    /// keeping the window full; returns the packets.
    pub async fn encode(&mut self, frames: &[Vec<u8>]) -> Result<Vec<WirePacket>> {
        if self.memfd.is_none() {
            self.register_slots().await?;
        }
        let window = usize::from(self.hello.window);
        let frame_size = u64::from(self.hello.frame_size);
        let mut packets = Vec::new();
        let mut sent = 0usize;
        let mut done = 0usize;
        while packets.len() < frames.len() {
            while sent < frames.len() && sent - done < window {
                let slot = self.slots_used % window as u64;
                self.slots_used += 1;
                let file = self
                    .memfd
                    .as_ref()
                    .map(|m| m.as_file())
                    .context("no memfd")?;
                file.write_all_at(&frames[sent], slot * frame_size)?;
                let rec = ClientRecord::Frame(FrameRef {
                    buffer_id: 0,
                    flags: 0,
                    offset: slot * frame_size,
                    length: self.hello.frame_size,
                    pts: self.next_pts,
                });
                self.next_pts += 1;
                self.sock.send(&rec.encode(), None).await?;
                sent += 1;
            }
            match self.recv().await? {
                Some(DaemonRecord::FrameDone { .. }) => done += 1,
                Some(DaemonRecord::Packet(chunk)) => {
                    if let Some(p) = self.assembler.push(chunk)? {
                        packets.push(p);
                    }
                }
                Some(DaemonRecord::Error { code, message }) => {
                    bail!("channel error {code}: {message}")
                }
                other => bail!("unexpected record {other:?}"),
            }
        }
        Ok(packets)
    }

    /// Sends one frame (with `flags`, e.g. `FRAME_FORCE_KEYFRAME`) into the next slot
    /// without waiting; returns its pts. The caller keeps within the window.
    pub async fn send_frame(&mut self, frame: &[u8], flags: u32) -> Result<u64> {
        if self.memfd.is_none() {
            self.register_slots().await?;
        }
        let window = u64::from(self.hello.window);
        let frame_size = u64::from(self.hello.frame_size);
        let slot = self.slots_used % window;
        self.slots_used += 1;
        let file = self
            .memfd
            .as_ref()
            .map(|m| m.as_file())
            .context("no memfd")?;
        file.write_all_at(frame, slot * frame_size)?;
        let pts = self.next_pts;
        let rec = ClientRecord::Frame(FrameRef {
            buffer_id: 0,
            flags,
            offset: slot * frame_size,
            length: self.hello.frame_size,
            pts,
        });
        self.next_pts += 1;
        self.sock.send(&rec.encode(), None).await?;
        Ok(pts)
    }

    /// Receives records until a whole packet has arrived (frame-done records are skipped).
    pub async fn next_packet(&mut self) -> Result<WirePacket> {
        loop {
            match self.recv().await? {
                Some(DaemonRecord::FrameDone { .. }) => {}
                Some(DaemonRecord::Packet(chunk)) => {
                    if let Some(p) = self.assembler.push(chunk)? {
                        return Ok(p);
                    }
                }
                Some(DaemonRecord::Error { code, message }) => {
                    bail!("channel error {code}: {message}")
                }
                other => bail!("unexpected record {other:?}"),
            }
        }
    }

    /// Sends `END_OF_STREAM`; returns the packets that still came (an engine that holds
    /// frames sends the last ones now) and the acknowledgement's counts, once the channel
    /// has ended.
    pub async fn finish_packets(&mut self) -> Result<(Vec<WirePacket>, (u64, u64))> {
        self.sock
            .send(&ClientRecord::EndOfStream.encode(), None)
            .await?;
        let mut packets = Vec::new();
        let ack = loop {
            match self.recv().await? {
                Some(DaemonRecord::EndOfStreamAck {
                    frames_in,
                    frames_out,
                }) => break (frames_in, frames_out),
                Some(DaemonRecord::Packet(chunk)) => {
                    if let Some(p) = self.assembler.push(chunk)? {
                        packets.push(p);
                    }
                }
                Some(DaemonRecord::FrameDone { .. }) => {}
                other => bail!("expected end-of-stream-ack, got {other:?}"),
            }
        };
        match self.recv().await? {
            None => Ok((packets, ack)),
            Some(r) => bail!("record after end-of-stream-ack: {r:?}"),
        }
    }

    /// Sends `END_OF_STREAM` and waits for the acknowledgement and the end of the channel.
    pub async fn finish(&self) -> Result<(u64, u64)> {
        self.sock
            .send(&ClientRecord::EndOfStream.encode(), None)
            .await?;
        let ack = loop {
            match self.recv().await? {
                Some(DaemonRecord::EndOfStreamAck {
                    frames_in,
                    frames_out,
                }) => break (frames_in, frames_out),
                Some(DaemonRecord::Packet(_)) | Some(DaemonRecord::FrameDone { .. }) => {}
                other => bail!("expected end-of-stream-ack, got {other:?}"),
            }
        };
        match self.recv().await? {
            None => Ok(ack),
            Some(r) => bail!("record after end-of-stream-ack: {r:?}"),
        }
    }
}

fn libc_econnreset() -> i32 {
    nix::errno::Errno::ECONNRESET as i32
}

/// Runs a command; returns (success, stdout, stderr).
pub fn run(program: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs a blocking command off the runtime's worker threads.
pub async fn run_async(program: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&program, &args)
    })
    .await?
}

/// The `<interface name="org.vpud.…">…</interface>` blocks of introspection XML, with
/// whitespace between tags removed, by interface name.
pub fn vpud_interfaces(xml: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<interface name=\"org.vpud.Vpud1.") {
        let block = &rest[start..];
        let Some(end) = block.find("</interface>") else {
            break;
        };
        let text = &block[..end + "</interface>".len()];
        let name_start = "<interface name=\"".len();
        let name_end = text[name_start..].find('"').map_or(0, |i| i + name_start);
        let normalized: String = text
            .split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("<!--"))
            .collect();
        out.insert(text[name_start..name_end].to_owned(), normalized);
        rest = &block[end..];
    }
    out
}

/// The workspace root (for `daemon/dist`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default()
}

/// Path of a binary of the workspace (`vpud`, `vpuctl`), built for the profile the tests
/// run under (`cargo build` is run once per test process, so the binary is current).
pub fn workspace_binary(name: &str) -> Result<std::path::PathBuf> {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe()?;
    // Test executables live in <target>/<profile>/deps.
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("locating the target directory")?
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let release = profile_dir.file_name().is_some_and(|p| p == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            if name == "vpuctl" { "vpuctl" } else { "vpud" },
            "--bin",
            name,
        ])
        .current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of {name} failed");
        }
        built.push(name.to_owned());
    }
    Ok(profile_dir.join(name))
}
