//! `parapet.toml`: parsed once here and turned into the gateway's plain structs.
//! Every key is documented in `docs/config.md`; `examples/parapet.toml` is a complete example.

use anyhow::{bail, Context};
use parapet_gateway::{
    Durability, GatewayConfig, SslMode, StatementText, TargetConfig, TlsSettings, UpstreamConfig,
    UpstreamTls, UserConfig,
};
use parapet_guard::PolicySource;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[log]`.
    pub log: LogSection,
    /// `[listen]`.
    #[serde(default)]
    pub listen: ListenSection,
    /// `[[targets]]`.
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    /// `[[users]]`.
    #[serde(default)]
    pub users: Vec<UserSection>,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[console]`: the HTTP API over the audit trail (off when absent).
    pub console: Option<ConsoleSection>,
    /// `[[alerts]]`: webhooks that receive matching audit events.
    #[serde(default)]
    pub alerts: Vec<AlertSection>,
    /// `[review]`: approvals of statements held by `review` rules.
    #[serde(default)]
    pub review: ReviewSection,
}

/// One `[[alerts]]` entry: a webhook receiving the audit events that pass its filter.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AlertSection {
    /// Stable name keying the delivery cursor (default: `alert-` and 12 hex digits of the
    /// SHA-256 of `url`).
    pub name: Option<String>,
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// `json` (default) or `slack`.
    #[serde(default)]
    pub format: crate::alerts::Format,
    /// Which events are sent (default: decisions `deny` and `review`).
    pub filter: Option<AlertFilterSection>,
    /// HMAC-SHA256 key: each request carries `X-Parapet-Signature: sha256=<hex>`.
    pub secret: Option<Secret>,
    /// Name of an environment variable holding the secret (instead of `secret`).
    pub secret_env: Option<String>,
    /// For an `https://` URL: PEM file of the CAs to trust (default: the system's).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for AlertSection {
    /// Without the secret, and with only the scheme, host and port of the URL (webhook URLs
    /// often hold a secret in their path).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSection")
            .field("name", &self.name)
            .field(
                "url",
                &crate::alerts::http::Target::parse(&self.url)
                    .map(|t| t.origin())
                    .unwrap_or_default(),
            )
            .field("format", &self.format)
            .field("filter", &self.filter)
            .field("secret", &self.secret)
            .field("secret_env", &self.secret_env)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `filter` of an `[[alerts]]` entry; an empty or missing list means any.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertFilterSection {
    /// Decisions (`allow`, `deny`, `review`, `monitor`) and event types (`user_lock`, …).
    #[serde(default)]
    pub decisions: Vec<String>,
    /// Rule ids (a trailing `*` matches a prefix); the event must carry one of them.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// A secret string from the configuration: never shown by `Debug`.
#[derive(Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `[review]`: who approves statements held by `review` rules, and for how long.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ReviewSection {
    /// Groups whose members approve for rules without `@approvers`.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Seconds a request stays open, and a granted approval usable (default 3600).
    #[serde(default = "hour")]
    pub ttl: u64,
    /// Longest maintenance window an approver may grant, in seconds (default 3600).
    #[serde(default = "hour")]
    pub max_window: u64,
    /// Seconds a statement is held waiting for its approval (default 0: refused at once).
    #[serde(default)]
    pub wait: u64,
}

fn hour() -> u64 {
    3600
}

impl Default for ReviewSection {
    fn default() -> Self {
        ReviewSection {
            approvers: Vec::new(),
            ttl: hour(),
            max_window: hour(),
            wait: 0,
        }
    }
}

/// `[console]`: where the console listens, who may use it, and where its search index lives.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// HTTP listen address, e.g. `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// PEM certificate chain: serve HTTPS (needed off loopback, for the browser's WebCrypto).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve `/log/` (the tlog-tiles read API) without a token.
    #[serde(default)]
    pub public_log: bool,
    /// Directory of the search index (derived from the log; default: `console-index` beside
    /// the log directory).
    pub index: Option<PathBuf>,
    /// Tokens (`parapet console token` prints a block).
    #[serde(default)]
    pub tokens: Vec<ConsoleToken>,
}

/// One `[[console.tokens]]` entry. The token itself is never stored, only its SHA-256.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    /// Who holds it (named in the audit events of what it does).
    pub name: String,
    /// `auditor` (reads) or `operator` (reads and acts).
    pub role: ConsoleRole,
    /// SHA-256 (hex) of the token.
    pub sha256: String,
    /// The gateway user whose groups decide what the token may approve.
    pub user: Option<String>,
}

/// What a console token may do.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Reads the audit trail.
    Auditor,
    /// Reads, and acts (every action is an audit event naming the operator).
    Operator,
}

/// `[log]`: where the audit log lives and how statements are recorded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Where the log is kept: `dir` (default, a local directory) or `postgres` (a fleet's
    /// log: sequenced in PostgreSQL, published to an S3-compatible bucket).
    #[serde(default)]
    pub backend: LogBackend,
    /// Log directory (created by `parapet log init`). With `backend = "postgres"` it is this
    /// gateway's local working directory (search index, alert cursors); default
    /// `parapet-local` beside the config file.
    #[serde(default)]
    pub dir: PathBuf,
    /// `backend = "postgres"`: the PostgreSQL that sequences the log (libpq URL).
    pub postgres_url: Option<String>,
    /// `backend = "postgres"`: the bucket the log is published to.
    pub bucket: Option<String>,
    /// `backend = "postgres"`: endpoint URL of an S3-compatible store (e.g.
    /// `http://127.0.0.1:3900`); AWS S3 when absent.
    pub endpoint: Option<String>,
    /// `backend = "postgres"`: the bucket's region (default `us-east-1`).
    pub region: Option<String>,
    /// Signing key file.
    pub key: PathBuf,
    /// Log origin (checkpoint name); informational here, fixed at `parapet log init`.
    pub origin: Option<String>,
    /// `before_forward` (default) or `before_reply`.
    #[serde(default)]
    pub durability: DurabilityKey,
    /// `full` (default) or `normalized`.
    #[serde(default)]
    pub statement_text: StatementTextKey,
    /// `[[log.witnesses]]`: witnesses asked to cosign the log's checkpoints.
    #[serde(default)]
    pub witnesses: Vec<WitnessSection>,
    /// Cosignatures needed before a cosigned checkpoint is published (default: a majority of
    /// the witnesses).
    pub min_witnesses: Option<usize>,
}

/// One `[[log.witnesses]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// The witness's name (its key name).
    pub name: String,
    /// Base URL; the log POSTs to `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's cosignature/v1 verifier key (from `parapet witness init`).
    pub vkey: String,
    /// For an `https://` URL: PEM file of the CAs to trust (default: the system's).
    pub ca_file: Option<PathBuf>,
}

/// `[log] backend`.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogBackend {
    /// A local directory (the default).
    #[default]
    Dir,
    /// Sequenced in PostgreSQL (`postgres_url`), published to an S3-compatible bucket
    /// (`bucket`, `endpoint`, `region`; credentials from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`).
    Postgres,
}

/// Default local working directory of a gateway whose log is in PostgreSQL.
const FLEET_LOCAL_DIR: &str = "parapet-local";

impl LogSection {
    /// For `backend = "postgres"`: the PostgreSQL URL and where the bucket is.
    pub fn fleet(&self) -> Option<(&str, parapet_log::driver::S3Config)> {
        if self.backend != LogBackend::Postgres {
            return None;
        }
        let url = self.postgres_url.as_deref()?;
        let bucket = self.bucket.clone()?;
        Some((
            url,
            parapet_log::driver::S3Config {
                bucket,
                endpoint: self.endpoint.clone(),
                region: self
                    .region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".to_string()),
            },
        ))
    }

    /// Checks the keys of the backend chosen and fills in defaults.
    fn check(&mut self) -> anyhow::Result<()> {
        match self.backend {
            LogBackend::Dir => {
                if self.dir.as_os_str().is_empty() {
                    bail!("[log] dir is missing: name the log directory (created by `parapet log init`)");
                }
                for (key, set) in [
                    ("postgres_url", self.postgres_url.is_some()),
                    ("bucket", self.bucket.is_some()),
                    ("endpoint", self.endpoint.is_some()),
                    ("region", self.region.is_some()),
                ] {
                    if set {
                        bail!("[log] {key} is only used with backend = \"postgres\": add that, or remove {key}");
                    }
                }
            }
            LogBackend::Postgres => {
                if self.postgres_url.as_deref().is_none_or(str::is_empty) {
                    bail!("[log] backend = \"postgres\" needs postgres_url (e.g. \"postgres://parapet@db.internal/parapet\")");
                }
                if self.bucket.as_deref().is_none_or(str::is_empty) {
                    bail!("[log] backend = \"postgres\" needs bucket (the S3 bucket the log is published to)");
                }
                if self.dir.as_os_str().is_empty() {
                    self.dir = PathBuf::from(FLEET_LOCAL_DIR);
                }
            }
        }
        Ok(())
    }

    /// The witness policy of `[[log.witnesses]]` and `min_witnesses`; `None` without witnesses.
    pub fn witness_policy(&self) -> anyhow::Result<Option<parapet_log::WitnessPolicy>> {
        if self.witnesses.is_empty() {
            if let Some(k) = self.min_witnesses.filter(|k| *k > 0) {
                bail!("[log] min_witnesses = {k} but no [[log.witnesses]] is configured: add the witnesses or remove min_witnesses");
            }
            return Ok(None);
        }
        let mut endpoints = Vec::new();
        for w in &self.witnesses {
            let mut e = parapet_log::WitnessEndpoint::new(&w.name, &w.url, &w.vkey)
                .with_context(|| format!("in [[log.witnesses]] {:?}", w.name))?;
            if let Some(ca) = &w.ca_file {
                e = e
                    .with_ca_file(ca)
                    .with_context(|| format!("in [[log.witnesses]] {:?}", w.name))?;
            }
            endpoints.push(e);
        }
        let n = endpoints.len();
        let min = self.min_witnesses.unwrap_or(n / 2 + 1);
        Ok(Some(
            parapet_log::WitnessPolicy::new(endpoints, min).context("in [log] min_witnesses")?,
        ))
    }
}

/// `[log] durability`.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityKey {
    /// Decision durable before the statement is forwarded.
    #[default]
    BeforeForward,
    /// Statement forwarded at once, reply held until the decision is durable.
    BeforeReply,
}

/// `[log] statement_text`.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum StatementTextKey {
    /// Full text and normalised form.
    #[default]
    Full,
    /// Normalised form only.
    Normalized,
}

/// `[listen]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// PostgreSQL listen address.
    #[serde(default = "default_listen")]
    pub postgres: SocketAddr,
    /// PEM certificate chain for TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// Refuse clients without TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Largest message accepted, in bytes (default 1 GiB, PostgreSQL's own cap).
    pub max_message_size: Option<usize>,
    /// Most client connections at once (default 1000).
    pub max_connections: Option<usize>,
    /// Most sessions per gateway user (default 100).
    pub max_connections_per_user: Option<usize>,
    /// Seconds a client has to log in (default 10).
    pub auth_timeout_seconds: Option<u64>,
    /// Seconds of client silence after which an idle session is closed (default 0: never).
    #[serde(default)]
    pub idle_timeout_seconds: u64,
    /// Largest statement text analysed, in bytes (default 64 MiB); a longer statement is
    /// refused with rule `parapet.too-large`.
    pub max_statement_size: Option<usize>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection {
            postgres: default_listen(),
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            max_message_size: None,
            max_connections: None,
            max_connections_per_user: None,
            auth_timeout_seconds: None,
            idle_timeout_seconds: 0,
            max_statement_size: None,
        }
    }
}

/// One `[[targets]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Name clients give as the database name.
    pub name: String,
    /// `postgres://user:password@host:port/database` with the gateway's own credentials.
    pub upstream: String,
    /// Environment label for policies.
    #[serde(default = "default_environment")]
    pub environment: String,
}

fn default_environment() -> String {
    "production".into()
}

/// One `[[users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Login name.
    pub name: String,
    /// SCRAM-SHA-256 verifier (from `parapet user add`).
    pub scram: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[policy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Cedar policy files, in order.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Include the built-in default pack (default true).
    #[serde(default = "yes")]
    pub default_pack: bool,
    /// Seconds between checks of policy files for changes (default 1; 0 disables).
    #[serde(default = "one")]
    pub poll_seconds: u64,
    /// Modes the site runs rules in, by rule id, over their `@mode`:
    /// `modes = { "parapet.drop" = "review" }`.
    #[serde(default)]
    pub modes: std::collections::BTreeMap<String, parapet_guard::Mode>,
}

fn yes() -> bool {
    true
}
fn one() -> u64 {
    1
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            files: Vec::new(),
            default_pack: true,
            poll_seconds: 1,
            modes: Default::default(),
        }
    }
}

impl Config {
    /// Reads and parses `path`; relative paths inside are resolved against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut c = Config::parse(&text).with_context(|| format!("in {}", path.display()))?;
        // Config::parse filled in the default working directory of a fleet's gateway
        // relative to the config file, as every other relative path.
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut c.log.dir);
        fix(&mut c.log.key);
        c.listen.tls_cert.iter_mut().for_each(fix);
        c.listen.tls_key.iter_mut().for_each(fix);
        c.policy.files.iter_mut().for_each(fix);
        if let Some(console) = &mut c.console {
            console.tls_cert.iter_mut().for_each(fix);
            console.tls_key.iter_mut().for_each(fix);
            console.index.iter_mut().for_each(fix);
        }
        for w in &mut c.log.witnesses {
            w.ca_file.iter_mut().for_each(fix);
        }
        for a in &mut c.alerts {
            a.ca_file.iter_mut().for_each(fix);
        }
        Ok(c)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut c: Config = toml::from_str(text).context("invalid configuration")?;
        c.log.check()?;
        if c.targets.is_empty() {
            bail!("no [[targets]] configured: add one with name, upstream and environment");
        }
        crate::alerts::check(&c.alerts)?;
        Ok(c)
    }

    /// The `[[alerts]]` entries, ready to run: names given or derived, secrets read (from
    /// `secret_env` too), URLs and CA files checked.
    pub fn alerts(&self) -> anyhow::Result<Vec<crate::alerts::AlertSpec>> {
        Ok(crate::alerts::specs(&self.alerts)?)
    }

    /// The policy source of `[policy]`.
    pub fn policy_source(&self) -> PolicySource {
        PolicySource {
            files: self.policy.files.clone(),
            default_pack: self.policy.default_pack,
            modes: self.policy.modes.clone(),
        }
    }

    /// The gateway's view of this configuration.
    pub fn gateway(&self) -> anyhow::Result<GatewayConfig> {
        let targets = self
            .targets
            .iter()
            .map(|t| {
                Ok(TargetConfig {
                    name: t.name.clone(),
                    upstream: parse_upstream(&t.upstream)
                        .with_context(|| format!("target {:?}: invalid upstream URL", t.name))?,
                    environment: t.environment.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let users = self
            .users
            .iter()
            .map(|u| UserConfig {
                name: u.name.clone(),
                scram: u.scram.clone(),
                groups: u.groups.clone(),
            })
            .collect();
        let mut g = GatewayConfig::new(self.listen.postgres, targets, users);
        g.tls = match (&self.listen.tls_cert, &self.listen.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => bail!("[listen] tls_cert and tls_key must be given together"),
        };
        g.require_tls = self.listen.require_tls;
        if let Some(m) = self.listen.max_message_size {
            if !(1024..=GatewayConfig::MAX_MESSAGE_SIZE).contains(&m) {
                bail!(
                    "[listen] max_message_size must be between 1024 and {}",
                    GatewayConfig::MAX_MESSAGE_SIZE
                );
            }
            g.max_message_size = m;
        }
        if let Some(n) = self.listen.max_connections {
            if n == 0 {
                bail!("[listen] max_connections must be at least 1");
            }
            g.max_connections = n;
        }
        if let Some(n) = self.listen.max_connections_per_user {
            if n == 0 {
                bail!("[listen] max_connections_per_user must be at least 1");
            }
            g.max_connections_per_user = n;
        }
        if let Some(s) = self.listen.auth_timeout_seconds {
            if s == 0 {
                bail!("[listen] auth_timeout_seconds must be at least 1");
            }
            g.auth_timeout = Duration::from_secs(s);
        }
        g.idle_timeout = (self.listen.idle_timeout_seconds > 0)
            .then(|| Duration::from_secs(self.listen.idle_timeout_seconds));
        if let Some(m) = self.listen.max_statement_size {
            if m < 1024 {
                bail!("[listen] max_statement_size must be at least 1024 (bytes)");
            }
            g.max_statement_size = m;
        }
        g.durability = match self.log.durability {
            DurabilityKey::BeforeForward => Durability::BeforeForward,
            DurabilityKey::BeforeReply => Durability::BeforeReply,
        };
        g.statement_text = match self.log.statement_text {
            StatementTextKey::Full => StatementText::Full,
            StatementTextKey::Normalized => StatementText::Normalized,
        };
        if self.review.ttl == 0 {
            bail!("[review] ttl must be at least 1 (seconds an approval request stays open)");
        }
        if self.review.max_window == 0 {
            bail!("[review] max_window must be at least 1 (seconds)");
        }
        if self.review.approvers.iter().any(|g| g.trim().is_empty()) {
            bail!("[review] approvers must be group names (no empty strings)");
        }
        g.review = parapet_gateway::ReviewConfig {
            approvers: self.review.approvers.clone(),
            ttl: Duration::from_secs(self.review.ttl),
            max_window: Duration::from_secs(self.review.max_window),
            wait: Duration::from_secs(self.review.wait),
        };
        g.policy = self.policy_source();
        g.policy_poll =
            (self.policy.poll_seconds > 0).then(|| Duration::from_secs(self.policy.poll_seconds));
        Ok(g)
    }
}

/// Parses `postgres://user:password@host:port/database` (also `postgresql://`).
pub fn parse_upstream(s: &str) -> anyhow::Result<UpstreamConfig> {
    let u = url::Url::parse(s).context("expected postgres://user:password@host:port/database")?;
    if u.scheme() != "postgres" && u.scheme() != "postgresql" {
        bail!("scheme must be postgres:// (got {}://)", u.scheme());
    }
    let decode = |v: &str| -> anyhow::Result<String> {
        Ok(percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .context("URL part is not UTF-8 after percent-decoding")?
            .into_owned())
    };
    let host = u
        .host_str()
        .context("missing host")?
        .trim_matches(['[', ']'])
        .to_string();
    let user = decode(u.username())?;
    if user.is_empty() {
        bail!("missing user name (postgres://USER:password@host/db)");
    }
    let database = decode(u.path().trim_start_matches('/'))?;
    if database.is_empty() {
        bail!("missing database name (postgres://user:password@host/DB)");
    }
    let mut tls = UpstreamTls::default();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                tls.mode = match v.as_ref() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => bail!(
                        "sslmode={other} is not supported (use disable, prefer, require, verify-ca or verify-full)"
                    ),
                }
            }
            "sslrootcert" => {
                tls.root_cert = (v != "system").then(|| std::path::PathBuf::from(v.as_ref()))
            }
            other => bail!(
                "unknown upstream URL parameter {other:?} (supported: sslmode, sslrootcert)"
            ),
        }
    }
    Ok(UpstreamConfig {
        host,
        port: u.port().unwrap_or(5432),
        user,
        password: u.password().map(decode).transpose()?,
        database,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_carry_sslmode_and_sslrootcert() {
        let u = parse_upstream("postgres://gw@db/app").unwrap();
        assert_eq!(u.tls.mode, SslMode::Prefer);
        let u =
            parse_upstream("postgres://gw@db/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem")
                .unwrap();
        assert_eq!(u.tls.mode, SslMode::VerifyFull);
        assert_eq!(u.tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let u = parse_upstream("postgres://gw@db/app?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!((u.tls.mode, u.tls.root_cert), (SslMode::Require, None));
        assert!(parse_upstream("postgres://gw@db/app?sslmode=allow").is_err());
        assert!(parse_upstream("postgres://gw@db/app?sslcert=x").is_err());
    }

    #[test]
    fn parses_example_and_upstream_urls() {
        let text = include_str!("../../../examples/parapet.toml");
        let c = Config::parse(text).unwrap();
        let g = c.gateway().unwrap();
        assert_eq!(g.targets[0].name, "main");
        assert_eq!(g.listen.port(), 6432);
        let u = parse_upstream("postgres://gw:p%40ss%2Fw@db.internal:5433/app").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_deref(),
                u.host.as_str(),
                u.port,
                u.database.as_str()
            ),
            ("gw", Some("p@ss/w"), "db.internal", 5433, "app")
        );
        assert!(parse_upstream("mysql://a@b/c").is_err());
        assert!(parse_upstream("postgres://a@b").is_err());
    }

    #[test]
    fn review_section_has_defaults_and_is_checked() {
        let base = "[log]\ndir='l'\nkey='k'\n[[targets]]\nname='m'\nupstream='postgres://u@h/d'\n";
        let g = Config::parse(base).unwrap().gateway().unwrap();
        assert_eq!(g.review, parapet_gateway::ReviewConfig::default());
        let c = Config::parse(&format!(
            "{base}[review]\napprovers = ['dba']\nttl = 60\nmax_window = 600\nwait = 5\n"
        ))
        .unwrap();
        let g = c.gateway().unwrap();
        assert_eq!(g.review.approvers, vec!["dba".to_string()]);
        assert_eq!(g.review.ttl, Duration::from_secs(60));
        assert_eq!(g.review.max_window, Duration::from_secs(600));
        assert_eq!(g.review.wait, Duration::from_secs(5));
        assert!(Config::parse(&format!("{base}[review]\nttl = 0\n"))
            .unwrap()
            .gateway()
            .is_err());
        assert!(Config::parse(&format!("{base}[review]\nwaits = 1\n")).is_err());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let base = "[log]\ndir='l'\nkey='k'\n[[targets]]\nname='m'\nupstream='postgres://u@h/d'\n";
        assert!(Config::parse(base).is_ok());
        assert!(Config::parse(&format!("{base}[listen]\npostgress='x'\n")).is_err());
        assert!(
            Config::parse(&base.replace("[log]\n", "[log]\ndurability='sometimes'\n")).is_err()
        );
        assert!(Config::parse("[log]\ndir='l'\nkey='k'\n").is_err());
        // Backends: dir needs dir; postgres needs postgres_url and bucket, and its keys are
        // refused under dir.
        let targets = "[[targets]]\nname='m'\nupstream='postgres://u@h/d'\n";
        assert!(Config::parse(&format!("[log]\nkey='k'\n{targets}")).is_err());
        assert!(Config::parse(&format!("[log]\ndir='l'\nkey='k'\nbucket='b'\n{targets}")).is_err());
        assert!(Config::parse(&format!(
            "[log]\nbackend='postgres'\nkey='k'\nbucket='b'\n{targets}"
        ))
        .is_err());
        assert!(Config::parse(&format!(
            "[log]\nbackend='postgres'\nkey='k'\npostgres_url='postgres://p@h/d'\n{targets}"
        ))
        .is_err());
        let c = Config::parse(&format!(
            "[log]\nbackend='postgres'\nkey='k'\npostgres_url='postgres://p@h/d'\nbucket='b'\nendpoint='http://127.0.0.1:3900'\n{targets}"
        ))
        .unwrap();
        assert_eq!(c.log.dir, PathBuf::from("parapet-local"));
        let (url, s3) = c.log.fleet().unwrap();
        assert_eq!(url, "postgres://p@h/d");
        assert_eq!(s3.bucket, "b");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(s3.region, "us-east-1");
        assert!(Config::parse(base).unwrap().log.fleet().is_none());
    }

    #[test]
    fn witnesses_are_checked_and_the_quorum_defaults_to_a_majority() {
        let w = |i: u8| {
            parapet_log::note::CosignatureSigner::from_seed(&format!("w{i}.test"), [i; 32])
                .verifier()
                .to_key_text()
        };
        let entry = |name: &str, url: &str, vkey: &str| {
            format!("[[log.witnesses]]\nname = '{name}'\nurl = '{url}'\nvkey = '{vkey}'\n")
        };
        let config = |log_extra: &str, entries: &str| {
            format!(
                "[log]\ndir='l'\nkey='k'\n{log_extra}{entries}[[targets]]\nname='m'\nupstream='postgres://u@h/d'\n"
            )
        };
        let three: String = (1..=3)
            .map(|i| entry(&format!("w{i}.test"), "http://127.0.0.1:7380", &w(i)))
            .collect();
        let c = Config::parse(&config("", &three)).unwrap();
        let p = c.log.witness_policy().unwrap().unwrap();
        assert_eq!((p.witnesses.len(), p.min_witnesses), (3, 2));
        let c = Config::parse(&config("min_witnesses = 3\n", &three)).unwrap();
        assert_eq!(c.log.witness_policy().unwrap().unwrap().min_witnesses, 3);
        assert!(Config::parse(&config("", ""))
            .unwrap()
            .log
            .witness_policy()
            .unwrap()
            .is_none());
        let err = |log_extra: &str, entries: &str| {
            format!(
                "{:#}",
                Config::parse(&config(log_extra, entries))
                    .unwrap()
                    .log
                    .witness_policy()
                    .unwrap_err()
            )
        };
        assert!(err("min_witnesses = 4\n", &three).contains("between 1 and"));
        assert!(err("min_witnesses = 1\n", "").contains("no [[log.witnesses]]"));
        assert!(err("", &entry("other.test", "http://h:1", &w(1))).contains("its vkey is named"));
        assert!(err("", &entry("w1.test", "ftp://h:1", &w(1))).contains("is not http or https"));
        // https is accepted; a ca_file must hold certificates.
        let tls = entry("w1.test", "https://h", &w(1));
        let c = Config::parse(&config("", &tls)).unwrap();
        assert_eq!(c.log.witness_policy().unwrap().unwrap().witnesses.len(), 1);
        let bad_ca = format!("{tls}ca_file = '/dev/null'\n");
        assert!(err("", &bad_ca).contains("no PEM certificate found"));
        let twice = format!(
            "{}{}",
            entry("w1.test", "http://h:1", &w(1)),
            entry("w1.test", "http://h:2", &w(1))
        );
        assert!(err("", &twice).contains("listed twice"));
        // A log's own (0x01) key is not a witness key.
        let log_key = parapet_log::note::NoteSigner::generate("w1.test")
            .verifier()
            .to_key_text();
        assert!(err("", &entry("w1.test", "http://h:1", &log_key)).contains("type 0x04"));
    }
}
