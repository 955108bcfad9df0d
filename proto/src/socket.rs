//! The data channel's transport: a `SOCK_SEQPACKET` Unix socket pair, one record per
//! datagram, file descriptors passed with `SCM_RIGHTS`. Async over tokio.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::MAX_RECORD_LEN;

/// Most descriptors accepted with one record (the protocol passes at most one; extra ones
/// are received so that they can be closed, and the record rejected).
const MAX_FDS: usize = 4;

/// Errors of the channel socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating the channel socket pair failed")]
    CreatePair(#[source] Errno),
    #[error("registering the channel socket with the runtime failed")]
    Register(#[source] std::io::Error),
    #[error("sending a {len}-byte record failed")]
    Send {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("receiving a record failed")]
    Receive(#[source] std::io::Error),
    #[error("a record of {len} bytes exceeds the maximum of {MAX_RECORD_LEN}")]
    TooLong { len: usize },
    #[error("a record arrived truncated (it was longer than {MAX_RECORD_LEN} bytes)")]
    Truncated,
    #[error("a record carried more file descriptors than accepted")]
    TooManyFds,
}

/// Creates the two ends of a new channel (close-on-exec, non-blocking).
pub fn pair() -> Result<(OwnedFd, OwnedFd), SocketError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(SocketError::CreatePair)
}

/// One received datagram.
#[derive(Debug)]
pub struct Received {
    /// Bytes received into the caller's buffer; 0 means the peer closed the channel.
    pub len: usize,
    /// Descriptors passed with the record (owned: they close when dropped).
    pub fds: Vec<OwnedFd>,
}

/// One end of a channel, usable from async code. Both directions may be used at once
/// from different tasks (`&self`).
#[derive(Debug)]
pub struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

impl SeqPacket {
    /// Wraps an end of a `SOCK_SEQPACKET` socket. The descriptor is made non-blocking.
    pub fn new(fd: OwnedFd) -> Result<SeqPacket, SocketError> {
        set_nonblocking(fd.as_fd()).map_err(SocketError::Register)?;
        // SAFETY: `fd` is an open descriptor that the `AsyncFd` takes ownership of; an
        // `OwnedFd` always returns the same descriptor and closes it only on drop.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| SocketError::Register(e.into()))?;
        Ok(SeqPacket { fd })
    }

    /// Sends one record, with `fd` attached when given.
    pub async fn send(&self, record: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), SocketError> {
        if record.len() > MAX_RECORD_LEN {
            return Err(SocketError::TooLong { len: record.len() });
        }
        let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.fd
            .async_io(Interest::WRITABLE, |inner| {
                let iov = [IoSlice::new(record)];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
                sendmsg::<()>(inner.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            })
            .await
            .map(|_| ())
            .map_err(|source| SocketError::Send {
                len: record.len(),
                source,
            })
    }

    /// Receives one record into `buf` (which should be [`MAX_RECORD_LEN`] bytes long).
    pub async fn recv(&self, buf: &mut [u8]) -> Result<Received, SocketError> {
        let (len, fds, flags) = self
            .fd
            .async_io(Interest::READABLE, |inner| {
                let mut iov = [IoSliceMut::new(buf)];
                let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
                let msg = recvmsg::<()>(
                    inner.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for r in raw {
                                // SAFETY: the kernel just installed `r` in our table for
                                // this message; nobody else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                            }
                        }
                    }
                }
                Ok((msg.bytes, fds, msg.flags))
            })
            .await
            .map_err(SocketError::Receive)?;
        if flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(SocketError::TooManyFds);
        }
        if flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(SocketError::Truncated);
        }
        Ok(Received { len, fds })
    }
}

impl SeqPacket {
    /// Reads and drops whatever the peer sent and nobody will read, so that closing this
    /// end does not reset the connection (`ECONNRESET`) under the peer's pending reads.
    /// Gives up after `max` records.
    pub fn discard_pending(&self, max: usize) {
        let mut buf = vec![0u8; MAX_RECORD_LEN];
        for _ in 0..max {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let got = recvmsg::<()>(
                self.fd.get_ref().as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            match got {
                Ok(msg) if msg.bytes > 0 => {
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                for r in raw {
                                    // SAFETY: the kernel installed `r` for this message;
                                    // owning it closes it.
                                    drop(unsafe { OwnedFd::from_raw_fd(r) });
                                }
                            }
                        }
                    }
                }
                _ => return,
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags =
        OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?);
    // Ends from `pair` already are: no second system call for them.
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_and_fds_cross_the_pair() {
        let (a, b) = pair().unwrap();
        let (a, b) = (SeqPacket::new(a).unwrap(), SeqPacket::new(b).unwrap());
        let (r, _w) = nix::unistd::pipe().unwrap();
        a.send(b"hello", Some(r.as_fd())).await.unwrap();
        a.send(b"world", None).await.unwrap();
        let mut buf = vec![0u8; MAX_RECORD_LEN];
        let got = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        let got = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..got.len], b"world");
        assert!(got.fds.is_empty());
        drop(a);
        assert_eq!(b.recv(&mut buf).await.unwrap().len, 0);
    }

    #[tokio::test]
    async fn oversized_datagrams_are_reported_truncated() {
        let (a, b) = pair().unwrap();
        let (a, b) = (SeqPacket::new(a).unwrap(), SeqPacket::new(b).unwrap());
        a.send(&[1u8; 100], None).await.unwrap();
        let mut small = [0u8; 10];
        assert!(matches!(
            b.recv(&mut small).await,
            Err(SocketError::Truncated)
        ));
    }
}
