//! The gateway's error type.

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port? change [listen] postgres)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS certificate or key could not be loaded.
    #[error("cannot load TLS {what} from {path}: {reason} (check [listen] tls_cert / tls_key)")]
    Tls {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A user's SCRAM verifier is malformed.
    #[error("user {user:?}: invalid SCRAM verifier: {reason} (generate one with `parapet user add {user}`)")]
    Verifier {
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// An I/O error on the listener.
    #[error("gateway I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The audit log refused an event that had to be written (start/stop).
    #[error(
        "audit log write failed: {0} (check the [log] directory, its disk space and permissions)"
    )]
    Log(#[from] parapet_log::LogError),
    /// The fleet's shared state (PostgreSQL) cannot be used.
    #[error("{0}")]
    State(#[from] crate::fleet::StateError),
}

/// Why a session ended abnormally (internal; logged via tracing).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("audit log: {0}")]
    Log(String),
    #[error("gateway shutting down")]
    Shutdown,
    #[error("idle timeout")]
    Idle,
    #[error("{0}")]
    Unreadable(String),
    #[error("protocol violation: unexpected message type 0x{0:02X} during COPY from stdin")]
    CopyViolation(u8),
    #[error("not logged in within the authentication timeout")]
    AuthTimeout,
    #[error("{0}")]
    Terminated(String),
}
