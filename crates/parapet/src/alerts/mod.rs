//! Alerts (`[[alerts]]`): webhooks that receive the audit events passing their filter, as JSON
//! or as Slack messages, optionally signed with HMAC-SHA256 (`X-Parapet-Signature`).
//!
//! Delivery is at-least-once and never on the statement path. Each alert is one tokio task of
//! `parapet serve` that reads the **published** log (only durable entries, as the console's
//! indexer), from its own cursor ([`cursor`]), in index order: for each matching event it POSTs
//! until the receiver answers 2xx, retrying with exponential backoff (200 ms doubling to 30 s)
//! whatever the failure, and only then moves its cursor past it. A slow or down receiver holds
//! back its own alert and nothing else: not the statements, not the other alerts. A restart
//! (even after `kill -9`) resends from the cursor, so an event may arrive twice (receivers
//! can drop repeats by `X-Parapet-Index`), never not at all.

pub mod cursor;
pub mod filter;
pub mod format;
pub mod http;

pub use filter::AlertFilter;
pub use format::Format;

use crate::config::AlertSection;
use parapet_gateway::events::{Fed, TextReassembler};
use parapet_log::LogReader;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// How often an alert that has caught up looks for newly published entries.
const POLL: Duration = Duration::from_millis(200);
/// Entries read from the log at a time.
const BATCH: u64 = 256;
/// First retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay (a receiver's `Retry-After` may ask for up to [`RETRY_AFTER_MAX`]).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// What can be wrong with alerts.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// An `[[alerts]]` entry is invalid.
    #[error("[[alerts]] {alert}: {reason}")]
    Config {
        /// Which entry (its name, or its position).
        alert: String,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A cursor file cannot be read or written.
    #[error("alert {alert}: cursor {}: {reason}", path.display())]
    Cursor {
        /// The alert's name.
        alert: String,
        /// The cursor file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The log cannot be read.
    #[error("alerts: cannot read the log in {}: {reason}", dir.display())]
    Log {
        /// The log directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Alerts need a tokio runtime to run on.
    #[error("alerts: no async runtime to run on")]
    NoRuntime,
}

/// One alert, checked and ready to run.
#[derive(Clone)]
pub struct AlertSpec {
    /// Its name (keys its cursor and its metrics).
    pub name: String,
    /// The receiver's URL (may hold a secret: never logged whole).
    pub url: String,
    /// Body format.
    pub format: Format,
    /// Which events are sent.
    pub filter: AlertFilter,
    /// HMAC-SHA256 key of `X-Parapet-Signature`.
    pub secret: Option<Vec<u8>>,
    /// PEM CAs for an `https://` receiver (default: the system's).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for AlertSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSpec")
            .field("name", &self.name)
            .field(
                "url",
                &http::Target::parse(&self.url)
                    .map(|t| t.origin())
                    .unwrap_or_default(),
            )
            .field("format", &self.format)
            .field("filter", &self.filter)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The name of an alert without one: `alert-` and 12 hex digits of the SHA-256 of its URL.
pub fn default_name(url: &str) -> String {
    let h = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    format!("alert-{}", &h[..12])
}

/// A name keys a file: letters, digits, `.`, `_`, `-`; 1 to 64 of them; not starting with `.`.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks every `[[alerts]]` entry (at config load): names, URLs, filters, secrets; names
/// must be distinct (each keys a cursor).
pub fn check(sections: &[AlertSection]) -> Result<(), AlertError> {
    let mut names: Vec<String> = Vec::new();
    for (i, a) in sections.iter().enumerate() {
        let label = match &a.name {
            Some(n) => format!("{n:?}"),
            None => format!("#{}", i + 1),
        };
        let bad = |reason: String| AlertError::Config {
            alert: label.clone(),
            reason,
        };
        http::Target::parse(&a.url).map_err(|e| bad(format!("url: {e}")))?;
        let name = a.name.clone().unwrap_or_else(|| default_name(&a.url));
        if !valid_name(&name) {
            return Err(bad(format!(
                "name: {name:?} must be 1 to 64 letters, digits, '.', '_' or '-' (it names the \
                 alert's cursor file)"
            )));
        }
        if names.contains(&name) {
            return Err(bad(format!(
                "name: {name:?} is used by another [[alerts]] entry; give each a distinct name \
                 (entries without one are named after their url)"
            )));
        }
        names.push(name);
        if let Some(f) = &a.filter {
            AlertFilter::new(&f.decisions, &f.rules).map_err(bad)?;
        }
        match (&a.secret, &a.secret_env) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "secret and secret_env: give one of them, not both".into()
                ))
            }
            (Some(s), None) if s.0.is_empty() => {
                return Err(bad("secret: must not be empty".into()))
            }
            (None, Some(v)) if v.is_empty() || v.contains('=') || v.contains('\0') => {
                return Err(bad(format!(
                    "secret_env: {v:?} is not an environment variable name"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The runnable alerts of `sections`: checked ([`check`]), named, secrets read (from the
/// environment for `secret_env`), and the CA files of `https://` receivers loaded.
pub fn specs(sections: &[AlertSection]) -> Result<Vec<AlertSpec>, AlertError> {
    check(sections)?;
    let mut out = Vec::new();
    for a in sections {
        let name = a.name.clone().unwrap_or_else(|| default_name(&a.url));
        let bad = |reason: String| AlertError::Config {
            alert: format!("{name:?}"),
            reason,
        };
        let secret = match (&a.secret, &a.secret_env) {
            (Some(s), _) => Some(s.0.as_bytes().to_vec()),
            (None, Some(v)) => match std::env::var_os(v) {
                Some(s) if !s.is_empty() => Some(s.into_encoded_bytes()),
                _ => {
                    return Err(bad(format!(
                        "secret_env: the environment variable {v} is not set (or empty)"
                    )))
                }
            },
            (None, None) => None,
        };
        if let Some(s) = &secret {
            format::signature(s, b"").map_err(|e| bad(format!("secret: {e}")))?;
        }
        http::Client::new(&a.url, a.ca_file.as_deref()).map_err(|e| {
            bad(if a.ca_file.is_some() {
                format!("ca_file: {e}")
            } else {
                format!("url: {e}")
            })
        })?;
        let filter = match &a.filter {
            Some(f) => AlertFilter::new(&f.decisions, &f.rules).map_err(bad)?,
            None => AlertFilter::default(),
        };
        out.push(AlertSpec {
            name,
            url: a.url.clone(),
            format: a.format,
            filter,
            secret,
            ca_file: a.ca_file.clone(),
        });
    }
    Ok(out)
}

/// Labels of the alerts' metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The alert's name.
    pub alert: String,
}

/// The alerts' metrics (shown by the console's `/metrics`): `parapet_alerts_delivered_total`,
/// `parapet_alerts_failed_total` (failed attempts) and `parapet_alerts_lag` (published
/// entries the alert has not finished with), each by `alert`.
#[derive(Clone, Default, Debug)]
pub struct AlertMetrics {
    delivered: Family<AlertLabels, Counter>,
    failed: Family<AlertLabels, Counter>,
    lag: Family<AlertLabels, Gauge>,
}

impl AlertMetrics {
    /// Registers the metrics in `registry` (whose prefix is `parapet`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "alerts_delivered",
            "Alert requests the receiver accepted (2xx)",
            self.delivered.clone(),
        );
        registry.register(
            "alerts_failed",
            "Alert requests that failed (each is retried)",
            self.failed.clone(),
        );
        registry.register(
            "alerts_lag",
            "Published log entries the alert has not finished with",
            self.lag.clone(),
        );
    }

    fn labels(name: &str) -> AlertLabels {
        AlertLabels {
            alert: name.to_string(),
        }
    }

    /// Deliveries accepted so far by alert `name`'s receiver.
    pub fn delivered(&self, name: &str) -> u64 {
        self.delivered.get_or_create(&Self::labels(name)).get()
    }

    /// Failed attempts so far for alert `name`.
    pub fn failed(&self, name: &str) -> u64 {
        self.failed.get_or_create(&Self::labels(name)).get()
    }
}

/// Reads log entries in order into [`format::Item`]s: reassembles statement texts stored in
/// parts and remembers each session's user and target (outcomes and session ends name
/// neither).
#[derive(Default)]
struct Reader {
    texts: TextReassembler,
    sessions: HashMap<String, (Option<String>, Option<String>)>,
}

/// One entry read, and whether it is a `statement_text` part (a cursor never stops inside a
/// run of parts and their decision, so a restart always reads a decision with its parts).
struct Entry {
    item: format::Item,
    part: bool,
}

impl Reader {
    fn prepare(&mut self, index: u64, bytes: &[u8]) -> Entry {
        let mut event: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
        let mut part = false;
        match self.texts.feed(&event) {
            Ok(Fed::Part) => part = true,
            Ok(Fed::Decision(t)) => {
                if event.get("sql").is_none() {
                    if let (Some(sql), Some(o)) = (t.sql, event.as_object_mut()) {
                        o.insert("sql".into(), Value::String(sql));
                    }
                }
                if event.get("normalized").is_none() {
                    if let (Some(n), Some(o)) = (t.normalized, event.as_object_mut()) {
                        o.insert("normalized".into(), Value::String(n));
                    }
                }
            }
            Ok(Fed::Other) => {}
            Err(e) => tracing::debug!("alerts: entry {index}: {e}"),
        }
        let (mut user, mut target) = (field(&event, "user"), field(&event, "target"));
        if let Some(s) = field(&event, "session") {
            if field(&event, "type").as_deref() == Some("session_end") {
                if let Some(known) = self.sessions.remove(&s) {
                    (user, target) = known;
                }
            } else if user.is_some() || target.is_some() {
                self.sessions.insert(s, (user.clone(), target.clone()));
            } else if let Some(known) = self.sessions.get(&s) {
                (user, target) = known.clone();
            }
        }
        Entry {
            item: format::Item {
                index,
                event,
                user,
                target,
            },
            part,
        }
    }

    /// Entries `from..` of the published log (at most [`BATCH`]), and the log's size.
    fn read(&mut self, dir: &Path, from: u64) -> Result<(Vec<Entry>, u64), String> {
        let r = LogReader::open(dir).map_err(|e| e.to_string())?;
        let size = r.size();
        let mut out = Vec::new();
        if from >= size {
            return Ok((out, size));
        }
        for item in r.entries(from, size.min(from + BATCH)) {
            match item {
                Ok((i, bytes)) => out.push(self.prepare(i, &bytes)),
                // What was read is kept; the rest is read again next round.
                Err(e) if !out.is_empty() => {
                    tracing::debug!("alerts: entry {}: {e}", from + out.len() as u64);
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok((out, size))
    }
}

/// The delay before retry number `attempt + 1`: 200 ms doubling up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_MAX)
}

/// Sleeps `d`; `false` if told to stop meanwhile.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// One running alert.
struct Worker {
    spec: AlertSpec,
    client: http::Client,
    dir: PathBuf,
    cursor: cursor::Cursor,
    /// Next entry to look at.
    next: u64,
    /// Where the cursor may stand (never inside a run of statement texts).
    safe: u64,
    /// Where the cursor file stands.
    saved: u64,
    metrics: AlertMetrics,
    labels: AlertLabels,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut reader = Some(Reader::default());
        loop {
            if *stop.borrow() {
                break;
            }
            let (dir, from) = (self.dir.clone(), self.next);
            let mut r = reader.take().unwrap_or_default();
            let read = tokio::task::spawn_blocking(move || {
                let res = r.read(&dir, from);
                (res, r)
            })
            .await;
            let (batch, size) = match read {
                Ok((res, r)) => {
                    reader = Some(r);
                    match res {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(alert = %self.spec.name, "alerts cannot read the log: {e}");
                            if !pause(POLL * 10, &mut stop).await {
                                break;
                            }
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(alert = %self.spec.name, "alerts: reading the log failed: {e}");
                    // Read again from where the cursor may stand, with a fresh reader.
                    self.next = self.safe;
                    if !pause(POLL * 10, &mut stop).await {
                        break;
                    }
                    continue;
                }
            };
            self.set_lag(size);
            if batch.is_empty() {
                if !pause(POLL, &mut stop).await {
                    break;
                }
                continue;
            }
            for e in batch {
                let hit = self.spec.filter.matches(&e.item.event);
                if hit && !self.deliver(&e.item, &mut stop).await {
                    self.save().await;
                    return;
                }
                self.next = e.item.index + 1;
                if !e.part {
                    self.safe = self.next;
                }
                if hit {
                    self.save().await;
                    self.set_lag(size);
                }
            }
            self.save().await;
        }
        self.save().await;
    }

    fn set_lag(&self, size: u64) {
        let lag = size.saturating_sub(self.next);
        self.metrics
            .lag
            .get_or_create(&self.labels)
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Moves the cursor file to `safe` if it is not there yet.
    async fn save(&mut self) {
        if self.saved == self.safe {
            return;
        }
        let (c, at) = (self.cursor.clone(), self.safe);
        match tokio::task::spawn_blocking(move || c.save(at)).await {
            Ok(Ok(())) => self.saved = at,
            Ok(Err(e)) => tracing::error!("{e} (a restart would resend from entry {})", self.saved),
            Err(e) => {
                tracing::error!(alert = %self.spec.name, "alerts: saving the cursor failed: {e}")
            }
        }
    }

    /// POSTs `item` until the receiver accepts it (`true`) or the alert is stopped (`false`).
    async fn deliver(&mut self, item: &format::Item, stop: &mut watch::Receiver<bool>) -> bool {
        let body = bytes::Bytes::from(format::body(self.spec.format, item));
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-parapet-alert", self.spec.name.clone()),
            ("x-parapet-index", item.index.to_string()),
        ];
        if let Some(secret) = &self.spec.secret {
            match format::signature(secret, &body) {
                Ok(s) => headers.push((format::SIGNATURE_HEADER, s)),
                Err(e) => tracing::error!(alert = %self.spec.name, "alerts: cannot sign: {e}"),
            }
        }
        let mut attempt: u32 = 0;
        loop {
            if *stop.borrow() {
                return false;
            }
            let answer = tokio::select! {
                a = self.client.post(&headers, body.clone()) => a,
                _ = stop.changed() => return false,
            };
            let retry_after = match answer {
                Ok(a) if (200..300).contains(&a.status) => {
                    self.metrics.delivered.get_or_create(&self.labels).inc();
                    if attempt > 0 {
                        tracing::info!(
                            alert = %self.spec.name,
                            index = item.index,
                            "alert delivered to {} after {attempt} failed attempts",
                            self.client.origin()
                        );
                    }
                    return true;
                }
                Ok(a) => {
                    self.metrics.failed.get_or_create(&self.labels).inc();
                    let what = match a.status {
                        408 | 429 | 500..=599 => "is unavailable",
                        400..=499 => "refuses the request (fix the receiver or the alert)",
                        _ => "answered without success",
                    };
                    tracing::warn!(
                        alert = %self.spec.name,
                        index = item.index,
                        attempt,
                        "alert receiver {} {what}: HTTP {} {:?}; retrying (nothing is skipped)",
                        self.client.origin(),
                        a.status,
                        a.body.trim()
                    );
                    a.retry_after
                }
                Err(e) => {
                    self.metrics.failed.get_or_create(&self.labels).inc();
                    tracing::warn!(
                        alert = %self.spec.name,
                        index = item.index,
                        attempt,
                        "alert not delivered: {e}; retrying (nothing is skipped)"
                    );
                    None
                }
            };
            let base = backoff(attempt);
            // Up to 10 % more, so alerts that failed together do not retry in step.
            let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
            let mut wait = base + jitter;
            if let Some(r) = retry_after {
                wait = wait.max(r.min(RETRY_AFTER_MAX));
            }
            attempt = attempt.saturating_add(1);
            if !pause(wait, stop).await {
                return false;
            }
        }
    }
}

/// The running alerts of `parapet serve`.
pub struct Alerts {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Alerts {
    /// Opens each alert's cursor (a new alert starts at the end of the published log: it sends
    /// what is logged from now on) and starts one task per alert on the current runtime.
    /// Call it after the log is opened (which publishes what its journal held) and before the
    /// gateway starts, so a new alert sees everything this gateway logs.
    pub fn start(
        specs: Vec<AlertSpec>,
        log_dir: &Path,
        metrics: &AlertMetrics,
    ) -> Result<Alerts, AlertError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| AlertError::NoRuntime)?;
        let (stop, rx) = watch::channel(false);
        let log_err = |reason: String| AlertError::Log {
            dir: log_dir.to_path_buf(),
            reason,
        };
        let r = LogReader::open(log_dir).map_err(|e| log_err(e.to_string()))?;
        let (origin, size) = (r.checkpoint().origin.clone(), r.size());
        drop(r);
        let dir = cursor::dir(log_dir);
        let mut workers = Vec::new();
        for spec in specs {
            let (c, at) = cursor::Cursor::open(&dir, &spec.name, &origin)?;
            let next = match at {
                Some(n) => {
                    if n > size {
                        tracing::warn!(
                            alert = %spec.name,
                            "the alert's cursor is at entry {n} but the log holds {size}: it sends nothing until the log grows past it ({})",
                            c.path().display()
                        );
                    }
                    n
                }
                None => {
                    c.save(size)?;
                    size
                }
            };
            let client = http::Client::new(&spec.url, spec.ca_file.as_deref()).map_err(|e| {
                AlertError::Config {
                    alert: format!("{:?}", spec.name),
                    reason: e,
                }
            })?;
            let labels = AlertMetrics::labels(&spec.name);
            // Shown (as 0) from the start.
            metrics.delivered.get_or_create(&labels).inc_by(0);
            metrics.failed.get_or_create(&labels).inc_by(0);
            metrics
                .lag
                .get_or_create(&labels)
                .set(i64::try_from(size.saturating_sub(next)).unwrap_or(i64::MAX));
            workers.push(Worker {
                spec,
                client,
                dir: log_dir.to_path_buf(),
                cursor: c,
                next,
                safe: next,
                saved: next,
                metrics: metrics.clone(),
                labels,
            });
        }
        let tasks = workers
            .into_iter()
            .map(|w| rt.spawn(w.run(rx.clone())))
            .collect();
        Ok(Alerts { stop, tasks })
    }

    /// How many alerts run.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no alert runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every alert (a delivery in flight is abandoned: it is resent at the next start)
    /// and waits for them to save their cursors.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(alerts: &str) -> anyhow::Result<Config> {
        Config::parse(&format!(
            "[log]\ndir='l'\nkey='k'\n[[targets]]\nname='m'\nupstream='postgres://u@h/d'\n{alerts}"
        ))
    }

    fn err(alerts: &str) -> String {
        format!("{:#}", config(alerts).expect_err(alerts))
    }

    #[test]
    fn backoff_doubles_from_200_ms_to_30_s() {
        let ms: Vec<u128> = (0..10).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(
            ms,
            vec![200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn alerts_are_checked_at_load_with_errors_naming_the_key() {
        let c = config(
            "[[alerts]]\nurl='https://hooks.example.com/x'\nformat='slack'\n\
             [[alerts]]\nname='pager'\nurl='http://127.0.0.1:9/hook'\nsecret='s3'\n\
             filter = { decisions = ['deny', 'user_lock'], rules = ['parapet.*'] }\n",
        )
        .expect("valid");
        let ready = specs(&c.alerts).expect("specs");
        assert_eq!(ready[0].name, default_name("https://hooks.example.com/x"));
        assert!(ready[0].name.starts_with("alert-") && ready[0].name.len() == 18);
        assert_eq!(ready[0].format, Format::Slack);
        assert_eq!(ready[0].filter, AlertFilter::default());
        assert_eq!(ready[1].name, "pager");
        assert_eq!(ready[1].format, Format::Json);
        assert_eq!(ready[1].secret.as_deref(), Some(&b"s3"[..]));
        let shown = format!("{:?} {:?}", ready, c.alerts);
        assert!(!shown.contains("s3\"") && !shown.contains("/x"), "{shown}");

        let e = err("[[alerts]]\nurl='ftp://h/x'\n");
        assert!(
            e.contains("[[alerts]] #1: url:") && e.contains("not http or https"),
            "{e}"
        );
        let e = err("[[alerts]]\nurl='nope'\n");
        assert!(e.contains("url: not a URL"), "{e}");
        let e = err("[[alerts]]\nurl='http://h/'\nformat='xml'\n");
        assert!(
            e.contains("format") && e.contains("json") && e.contains("slack"),
            "{e}"
        );
        let e = err("[[alerts]]\nname='a'\nurl='http://h/'\nfilter={decisions=['denied']}\n");
        assert!(e.contains("[[alerts]] \"a\": filter.decisions"), "{e}");
        let e = err("[[alerts]]\nurl='http://h/'\nfilter={decision=['deny']}\n");
        assert!(e.contains("decision"), "{e}");
        let e = err("[[alerts]]\nurl='http://h/'\n[[alerts]]\nurl='http://h/'\n");
        assert!(e.contains("#2: name") && e.contains("distinct"), "{e}");
        let e = err("[[alerts]]\nname='../x'\nurl='http://h/'\n");
        assert!(e.contains("name:"), "{e}");
        let e = err("[[alerts]]\nurl='http://h/'\nsecret='a'\nsecret_env='B'\n");
        assert!(e.contains("secret and secret_env"), "{e}");
        let e = err("[[alerts]]\nurl='http://h/'\nsecret=''\n");
        assert!(e.contains("secret: must not be empty"), "{e}");
        let e = err("[[alerts]]\nurl='http://h/'\nsecrett='x'\n");
        assert!(e.contains("secrett"), "{e}");

        let c = config("[[alerts]]\nurl='http://h/'\nsecret_env='PARAPET_TEST_UNSET_SECRET_VAR'\n")
            .expect("valid");
        let e = specs(&c.alerts).expect_err("unset");
        assert!(
            e.to_string()
                .contains("secret_env: the environment variable PARAPET_TEST_UNSET_SECRET_VAR"),
            "{e}"
        );
        let c = config("[[alerts]]\nurl='https://h/'\nca_file='/dev/null'\n").expect("valid");
        let e = specs(&c.alerts).expect_err("no CA");
        assert!(e.to_string().contains("ca_file:"), "{e}");
    }

    #[test]
    fn the_reader_reassembles_texts_and_keeps_session_users() {
        let mut r = Reader::default();
        let sha = parapet_gateway::events::sha256_hex(b"SELECT 1");
        let lines = [
            r#"{"type":"session_start","session":"s1","user":"alice","target":"main"}"#.to_string(),
            format!(
                r#"{{"type":"statement_text","session":"s1","field":"sql","part":1,"parts":2,"sha256":"{sha}","text":"SELECT"}}"#
            ),
            format!(
                r#"{{"type":"statement_text","session":"s1","field":"sql","part":2,"parts":2,"sha256":"{sha}","text":" 1"}}"#
            ),
            format!(
                r#"{{"type":"decision","session":"s1","user":"alice","target":"main","decision":"deny","rules":[],"sql_sha256":"{sha}","sql_parts":2}}"#
            ),
            r#"{"type":"outcome","session":"s1","decision":3}"#.to_string(),
            r#"{"type":"session_end","session":"s1"}"#.to_string(),
            "not json".to_string(),
        ];
        let out: Vec<Entry> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| r.prepare(i as u64, l.as_bytes()))
            .collect();
        let parts: Vec<bool> = out.iter().map(|e| e.part).collect();
        assert_eq!(parts, vec![false, true, true, false, false, false, false]);
        assert_eq!(out[3].item.event["sql"], "SELECT 1");
        assert_eq!(out[4].item.user.as_deref(), Some("alice"));
        assert_eq!(out[5].item.target.as_deref(), Some("main"));
        assert!(r.sessions.is_empty());
        assert!(!AlertFilter::new(&[], &[])
            .expect("any")
            .matches(&out[6].item.event));
    }
}
