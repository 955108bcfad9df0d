//! [`Session`]: an open encode session: its D-Bus object and its data channel.
//!
//! A `Session` dereferences to its [`DataChannel`], so frames are sent and packets read on
//! the session itself (`session.send_frame(..)`, `session.next_packet()`).

use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;

use zbus::OwnedObjectPath;

use super::channel::DataChannel;
use super::error::{ClientError, Result};
use super::proxy::SessionProxy;

/// An open encode session. Dropping it closes the data channel, which ends the session in
/// the daemon; [`Session::close`] also says so over D-Bus.
#[derive(Debug)]
pub struct Session {
    path: OwnedObjectPath,
    proxy: SessionProxy<'static>,
    channel: DataChannel,
}

impl Session {
    /// Takes over a freshly created session and sets up its data channel.
    pub(crate) async fn open(
        path: OwnedObjectPath,
        proxy: SessionProxy<'static>,
        channel: OwnedFd,
    ) -> Result<Session> {
        let channel = DataChannel::open(channel, path.as_str().to_string()).await?;
        Ok(Session {
            path,
            proxy,
            channel,
        })
    }

    /// The session's object path.
    pub fn path(&self) -> &OwnedObjectPath {
        &self.path
    }

    /// The session's D-Bus proxy (properties, `Reconfigure`, `RequestKeyframe`, signals).
    pub fn proxy(&self) -> &SessionProxy<'static> {
        &self.proxy
    }

    /// Takes the session apart: its object path, its D-Bus proxy and its data channel (to
    /// [`DataChannel::split`] it, say). Dropping the channel still ends the session.
    pub fn into_parts(self) -> (OwnedObjectPath, SessionProxy<'static>, DataChannel) {
        (self.path, self.proxy, self.channel)
    }

    /// Closes the session over D-Bus (`Session.Close`) and drops the channel. A session
    /// the daemon already ended is not an error.
    pub async fn close(self) -> Result<()> {
        let result = self.proxy.close().await;
        drop(self.channel);
        match result {
            Ok(()) => Ok(()),
            Err(e) => match ClientError::from_call("Session.Close", e) {
                e if e.is_unknown_object() => Ok(()),
                other => Err(other),
            },
        }
    }
}

impl Deref for Session {
    type Target = DataChannel;

    fn deref(&self) -> &DataChannel {
        &self.channel
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut DataChannel {
        &mut self.channel
    }
}
