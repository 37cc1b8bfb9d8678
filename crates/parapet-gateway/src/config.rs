//! Plain configuration structs handed to the gateway by the binary (which owns TOML parsing).

use parapet_guard::PolicySource;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// When a decision must be durable relative to the statement's forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The decision entry is durable before the statement is sent to the server (default).
    #[default]
    BeforeForward,
    /// The statement is sent at once; the server's reply is held until the decision is durable.
    BeforeReply,
}

/// What statement text goes into decision events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatementText {
    /// The full statement text (`sql`) and its normalised form.
    #[default]
    Full,
    /// Only the normalised form (literals replaced by `$n`); `sql` is omitted.
    Normalized,
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Whether and how the gateway uses TLS to a server, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked (libpq's
    /// default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not checked.
    Require,
    /// TLS, with a certificate signed by a trusted CA (`sslrootcert`); any host name.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted CA and valid for the host name.
    VerifyFull,
}

/// TLS to one upstream server (not used over a Unix-domain socket, as in libpq).
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// The mode.
    pub mode: SslMode,
    /// PEM file of the CAs trusted for `verify-ca` / `verify-full`; `None` means the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`), libpq's `sslrootcert=system`.
    pub root_cert: Option<PathBuf>,
}

/// How the gateway reaches one upstream PostgreSQL server, with its own credentials.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Host name or IP address, or — as in libpq — the absolute path of the directory holding the
    /// server's Unix-domain socket (`<dir>/.s.PGSQL.<port>`), possibly percent-encoded as a URL
    /// carries it (`postgres://gw@%2Fvar%2Frun%2Fpostgresql/app`).
    pub host: String,
    /// TCP port (for a socket directory: the port in the socket's file name).
    pub port: u16,
    /// Database user the gateway logs in as.
    pub user: String,
    /// Password of that user (used for SCRAM, md5 or cleartext; ignored with trust).
    pub password: Option<String>,
    /// Database name on the server.
    pub database: String,
    /// TLS to the server.
    pub tls: UpstreamTls,
}

/// One target: a name clients pick with the database name, and where it lives.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Name clients use as `dbname`.
    pub name: String,
    /// The upstream server.
    pub upstream: UpstreamConfig,
    /// Environment label given to policies, e.g. `production`.
    pub environment: String,
}

/// One gateway user.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// PostgreSQL-format SCRAM-SHA-256 verifier.
    pub scram: String,
    /// Groups, given to policies.
    pub groups: Vec<String>,
}

/// How statements held by `review` rules are approved (`[review]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewConfig {
    /// Groups whose members may approve for a rule without `@approvers`.
    pub approvers: Vec<String>,
    /// How long a request stays open, and how long a granted approval stays usable.
    pub ttl: Duration,
    /// The longest maintenance window an approver may grant.
    pub max_window: Duration,
    /// How long a statement is held waiting for its approval (`ZERO`: refused at once, run
    /// when sent again after approval).
    pub wait: Duration,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            approvers: Vec::new(),
            ttl: Duration::from_secs(3600),
            max_window: Duration::from_secs(3600),
            wait: Duration::ZERO,
        }
    }
}

/// Everything the gateway needs, already validated by the caller.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address to listen on for PostgreSQL clients.
    pub listen: SocketAddr,
    /// TLS certificate and key, if TLS is offered.
    pub tls: Option<TlsSettings>,
    /// Refuse clients that do not use TLS.
    pub require_tls: bool,
    /// Targets, by name.
    pub targets: Vec<TargetConfig>,
    /// Users.
    pub users: Vec<UserConfig>,
    /// Write-ahead mode.
    pub durability: Durability,
    /// Statement text in decision events.
    pub statement_text: StatementText,
    /// Largest message accepted from a client or server, in bytes (PostgreSQL's own cap is 1 GiB).
    pub max_message_size: usize,
    /// Largest statement text analysed, in bytes; a longer one is refused (`parapet.too-large`).
    /// `max_message_size` still bounds everything else (COPY data). Applied to the guard when
    /// the gateway binds.
    pub max_statement_size: usize,
    /// Where policies come from (re-read on SIGHUP and when a file changes).
    pub policy: PolicySource,
    /// How often policy files are checked for changes; `None` disables polling.
    pub policy_poll: Option<Duration>,
    /// Whether SIGHUP triggers a policy reload (only one gateway per process should set this).
    pub reload_on_sighup: bool,
    /// Most client connections open at once, logged in or not; more are refused (FATAL 53300).
    pub max_connections: usize,
    /// Most sessions one gateway user may hold at once; more are refused (FATAL 53300).
    pub max_connections_per_user: usize,
    /// How long a client may take from connecting to being logged in.
    pub auth_timeout: Duration,
    /// A session whose client sends nothing for this long, with nothing outstanding, is closed
    /// (FATAL 57P05); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Approvals of statements held by `review` rules.
    pub review: ReviewConfig,
}

impl GatewayConfig {
    /// The 1 GiB cap PostgreSQL itself applies to a message.
    pub const MAX_MESSAGE_SIZE: usize = 1 << 30;
    /// Default `[listen] max_connections`.
    pub const MAX_CONNECTIONS: usize = 1000;
    /// Default `[listen] max_connections_per_user`.
    pub const MAX_CONNECTIONS_PER_USER: usize = 100;
    /// Default `[listen] auth_timeout_seconds`.
    pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

    /// A configuration with defaults for everything but the listen address, targets and users.
    pub fn new(listen: SocketAddr, targets: Vec<TargetConfig>, users: Vec<UserConfig>) -> Self {
        GatewayConfig {
            listen,
            tls: None,
            require_tls: false,
            targets,
            users,
            durability: Durability::BeforeForward,
            statement_text: StatementText::Full,
            max_message_size: Self::MAX_MESSAGE_SIZE,
            max_statement_size: parapet_guard::DEFAULT_MAX_STATEMENT_SIZE,
            policy: PolicySource {
                files: Vec::new(),
                default_pack: true,
                modes: Default::default(),
            },
            policy_poll: Some(Duration::from_secs(1)),
            reload_on_sighup: true,
            max_connections: Self::MAX_CONNECTIONS,
            max_connections_per_user: Self::MAX_CONNECTIONS_PER_USER,
            auth_timeout: Self::AUTH_TIMEOUT,
            idle_timeout: None,
            review: ReviewConfig::default(),
        }
    }
}
