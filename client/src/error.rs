//! Typed errors of the client library.
//!
//! Errors the daemon answers with (`org.vpud.Vpud1.Error.*`) become their own variants so a
//! media service can react to `NoCapacity` differently from `InvalidArgument`; failures of
//! the bus connection and of the session's data channel have variants of their own.

use std::io;

/// The prefix of every error name the daemon replies with.
pub const ERROR_PREFIX: &str = "org.vpud.Vpud1.Error.";

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No card can take the session now (`org.vpud.Vpud1.Error.NoCapacity`).
    #[error("no capacity: {0}")]
    NoCapacity(String),
    /// A parameter was wrong (`org.vpud.Vpud1.Error.InvalidArgument`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request needs something no card offers (`org.vpud.Vpud1.Error.NotSupported`).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The caller may not do this (`org.vpud.Vpud1.Error.AccessDenied`).
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The card or session named does not exist (`org.vpud.Vpud1.Error.NotFound`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The card failed while serving the request (`org.vpud.Vpud1.Error.CardFailed`).
    #[error("card failed: {0}")]
    CardFailed(String),
    /// A per-client limit from the daemon's config was reached
    /// (`org.vpud.Vpud1.Error.QuotaExceeded`).
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// Connecting to the bus failed.
    #[error("connecting to {address} failed (name vpud's bus with --bus or VPUD_BUS_ADDRESS)")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    /// The daemon is not on the bus.
    #[error("vpud is not running on {bus} (nobody owns org.vpud.Vpud1)")]
    DaemonNotFound { bus: String },
    /// Any other D-Bus failure (transport, unexpected reply, foreign error names).
    #[error("d-bus call {call} failed")]
    Bus {
        call: &'static str,
        #[source]
        source: zbus::Error,
    },
    /// A card argument was neither an index nor an object path of a card.
    #[error("no card {0} (give an index from `vpuctl cards` or an object path)")]
    UnknownCard(String),
    /// Setting up the session's shared frame memory failed.
    #[error("session {session}: setting up the frame pool failed")]
    FramePool {
        session: String,
        #[source]
        source: io::Error,
    },
    /// The data channel failed at the socket level.
    #[error("session {session}: data channel {op} failed")]
    ChannelIo {
        session: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The daemon sent something the protocol does not allow.
    #[error("session {session}: data channel protocol violation: {what}")]
    ChannelProtocol { session: String, what: String },
    /// The daemon reported an error on the data channel and ended the session.
    #[error("session {session}: the daemon ended the session: {message} (code {code})")]
    SessionFailed {
        session: String,
        code: u32,
        message: String,
    },
    /// The data channel was closed by the daemon.
    #[error("session {session}: data channel closed by the daemon")]
    ChannelClosed { session: String },
    /// The other half of a split channel ended (the daemon closed the channel or
    /// reported an error, or the receiving half was dropped): nothing more can be sent.
    #[error("session {session}: the data channel ended: {reason}")]
    ChannelEnded { session: String, reason: String },
    /// A buffer id or byte range given for a frame by reference was not acceptable.
    #[error("session {session}: {what}")]
    FrameRef { session: String, what: String },
    /// A frame handed to `send_frame` had the wrong size.
    #[error("session {session}: frame of {got} bytes, the session takes {expected}")]
    FrameSize {
        session: String,
        got: usize,
        expected: usize,
    },
    /// An access unit handed to `send_access_unit` was empty or larger than the session
    /// takes.
    #[error("session {session}: access unit of {got} bytes, the session takes 1 to {max}")]
    AccessUnitSize {
        session: String,
        got: usize,
        max: usize,
    },
    /// A frame was sent after end of stream.
    #[error("session {session}: frame sent after end of stream")]
    AfterEndOfStream { session: String },
}

impl ClientError {
    /// Maps a failed D-Bus call to a typed error: the daemon's error names to their variants,
    /// everything else to [`ClientError::Bus`] with the call's name.
    pub fn from_call(call: &'static str, error: zbus::Error) -> Self {
        if let zbus::Error::MethodError(name, detail, _) = &error {
            if let Some(kind) = name.as_str().strip_prefix(ERROR_PREFIX) {
                let msg = detail.clone().unwrap_or_default();
                match kind {
                    "NoCapacity" => return ClientError::NoCapacity(msg),
                    "InvalidArgument" => return ClientError::InvalidArgument(msg),
                    "NotSupported" => return ClientError::NotSupported(msg),
                    "AccessDenied" => return ClientError::AccessDenied(msg),
                    "NotFound" => return ClientError::NotFound(msg),
                    "CardFailed" => return ClientError::CardFailed(msg),
                    "QuotaExceeded" => return ClientError::QuotaExceeded(msg),
                    _ => {}
                }
            }
        }
        ClientError::Bus {
            call,
            source: error,
        }
    }

    /// Whether the object or interface called does not exist (an object that went away
    /// meanwhile, or a card without the `Emulator` interface).
    pub fn is_unknown_object(&self) -> bool {
        match self {
            ClientError::NotFound(_) => true,
            ClientError::Bus {
                source: zbus::Error::FDO(e),
                ..
            } => matches!(
                **e,
                zbus::fdo::Error::UnknownObject(_)
                    | zbus::fdo::Error::UnknownInterface(_)
                    | zbus::fdo::Error::UnknownMethod(_)
                    | zbus::fdo::Error::UnknownProperty(_)
            ),
            ClientError::Bus {
                source: zbus::Error::InterfaceNotFound,
                ..
            } => true,
            _ => false,
        }
    }

    /// The D-Bus error name of the daemon's typed errors, `None` for local failures.
    pub fn dbus_name(&self) -> Option<String> {
        let kind = match self {
            ClientError::NoCapacity(_) => "NoCapacity",
            ClientError::InvalidArgument(_) => "InvalidArgument",
            ClientError::NotSupported(_) => "NotSupported",
            ClientError::AccessDenied(_) => "AccessDenied",
            ClientError::NotFound(_) => "NotFound",
            ClientError::CardFailed(_) => "CardFailed",
            ClientError::QuotaExceeded(_) => "QuotaExceeded",
            _ => return None,
        };
        Some(format!("{ERROR_PREFIX}{kind}"))
    }
}

/// Shorthand for results of the client library.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
