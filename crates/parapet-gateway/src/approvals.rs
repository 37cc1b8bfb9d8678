//! Approvals of statements held by `review` rules.
//!
//! A statement refused by a `review` rule opens an **approval request** (or finds the one already
//! open for the same user, target and text): who asked, in which session, on which target, the
//! statement's text and SHA-256, the rules and their reasons, and the requester's own reason
//! (`SET parapet.reason = '…'` earlier in the session, or a `/* parapet:reason=… */` comment in
//! the statement). Approvers — members of the groups a rule's `@approvers` names, or of `[review]
//! approvers` — approve or deny it, always with a reason, through [`Control`]. An approval is
//! used once, by the same user, on the same target, for the same text (by its hash), within
//! `[review] ttl`; or it is granted as a **maintenance window**: for a while (at most `[review]
//! max_window`), that user's statements on that target that only the window's `review` rules
//! would refuse run without new requests.
//!
//! Every step is an audit event, durable before it takes effect: `approval_request`,
//! `approval_granted`, `approval_denied`, `approval_expired`, `approval_used`. The book of open
//! requests and live approvals is rebuilt from them when the gateway starts
//! ([`Book::apply`]), as user locks are.

use crate::control::Control;
use crate::events::{now_rfc3339, rfc3339_micros, to_bytes};
use crate::shared::Shared;
use parapet_guard::{Decision, Mode};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// Longest statement text kept in an `approval_request` event (the decision it names holds the
/// whole text; the hash binds it).
pub const REQUEST_TEXT_MAX: usize = 16 * 1024;

/// How often expired requests, approvals and windows are recorded as expired.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Final requests (denied, expired, used) are kept this long for waiting sessions and listings.
const KEEP_FINISHED: Duration = Duration::from_secs(600);

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for an approver.
    Pending,
    /// Approved for one use of the same text by the same user on the same target.
    Granted,
    /// Approved as a maintenance window.
    Window,
    /// Denied by an approver.
    Denied,
    /// Not decided, or not used, in time.
    Expired,
    /// The single-use approval was used.
    Used,
}

impl ApprovalState {
    /// Pending, or granted and usable.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ApprovalState::Pending | ApprovalState::Granted | ApprovalState::Window
        )
    }
}

/// A `review` rule of a request, with who may approve for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ApprovalRule {
    /// The rule's `@id`.
    pub id: String,
    /// Its `@reason`.
    pub reason: String,
    /// Groups whose members may approve for it (`@approvers`, else `[review] approvers`).
    pub approvers: Vec<String>,
}

/// An approver's decision on a request.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    /// The console token's name.
    pub by: String,
    /// The gateway user the token acts for.
    pub approver: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub time: String,
}

/// A maintenance window granted on a request.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// How long it lasts, in seconds from the grant.
    pub seconds: u64,
    /// The `review` rules it lets through.
    pub rules: Vec<String>,
}

/// One approval request and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRequest {
    /// Request id (16 hex digits).
    pub id: String,
    /// Where it stands.
    pub state: ApprovalState,
    /// The user whose statement it is.
    pub requester: String,
    /// The session that sent it.
    pub session: String,
    /// The target it was sent to.
    pub target: String,
    /// The statement text (cut to [`REQUEST_TEXT_MAX`] bytes; absent with `statement_text =
    /// "normalized"`).
    pub sql: Option<String>,
    /// Its normalised text, if it parsed.
    pub normalized: Option<String>,
    /// SHA-256 (hex) of the whole statement text: the approval is bound to it.
    pub sql_sha256: String,
    /// The `review` rules that hold it.
    pub rules: Vec<ApprovalRule>,
    /// The requester's reason, if given.
    pub reason: Option<String>,
    /// When it was requested (RFC 3339).
    pub requested: String,
    /// Index of the `review` decision that opened it.
    pub decision: Option<u64>,
    /// When it expires: the request while pending, the approval or window once granted.
    pub expires: String,
    /// The approval or denial.
    pub resolution: Option<Resolution>,
    /// The window, when granted as one.
    pub window: Option<Window>,
    #[serde(skip)]
    expires_at: SystemTime,
    /// An approver's decision is being written to the log.
    #[serde(skip)]
    resolving: bool,
    /// When it reached a final state.
    #[serde(skip)]
    finished_at: Option<SystemTime>,
}

impl ApprovalRequest {
    /// Whether it has expired at `now` (pending, granted or window past its time).
    fn lapsed(&self, now: SystemTime) -> bool {
        self.state.is_open() && now >= self.expires_at
    }

    fn rule_ids(&self) -> BTreeSet<&str> {
        self.rules.iter().map(|r| r.id.as_str()).collect()
    }
}

/// How an approval let a statement through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalUse {
    /// The decision opened (or found open) this request; the statement was held or refused.
    Request,
    /// A single-use approval, now used.
    Once,
    /// A maintenance window.
    Window,
}

/// The `approval` field of a decision event: which request or approval it names, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRef {
    /// Request id.
    pub id: String,
    /// How.
    #[serde(rename = "use")]
    pub kind: ApprovalUse,
}

/// Why an approver's decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such request.
    #[error("no approval request {0} (list them with `parapet approvals list`)")]
    NotFound(String),
    /// The request is no longer pending.
    #[error("approval request {id} is {state:?}, not pending: nothing to decide")]
    NotPending {
        /// The request.
        id: String,
        /// Where it stands.
        state: ApprovalState,
    },
    /// Another approver's decision on it is being recorded.
    #[error("approval request {0} is being decided by someone else; list it again")]
    Busy(String),
    /// The console token names no gateway user.
    #[error("this console token names no gateway user, so its groups are unknown: add user = \"NAME\" to its [[console.tokens]] entry")]
    NoUser,
    /// The token's user is not a gateway user.
    #[error("the token's user {0:?} is not in [[users]]: approvers must be gateway users with approver groups")]
    UnknownUser(String),
    /// Nobody approves their own statement.
    #[error("{0} asked for this approval and cannot approve or deny their own request; another approver must")]
    SelfApproval(String),
    /// The approver is in none of a rule's approver groups.
    #[error("user {user} is in none of the approver groups of rule {rule} ({groups}); ask a member of one of them")]
    NotApprover {
        /// The approver.
        user: String,
        /// The rule.
        rule: String,
        /// Its approver groups.
        groups: String,
    },
    /// A rule has no approver groups at all.
    #[error(
        "rule {0} has no approver groups: give it @approvers(\"…\") or set [review] approvers"
    )]
    NoApprovers(String),
    /// A bad request (empty reason, window too long, unknown rule).
    #[error("{0}")]
    Invalid(String),
    /// The fleet's shared state could not be used (nothing changed).
    #[error("{0}; nothing was decided")]
    State(String),
    /// The decision could not be written to the log (nothing changed).
    #[error("the audit log cannot be written ({0}); nothing was decided")]
    Log(String),
}

/// Who decides: the console token's name and the gateway user it names.
#[derive(Debug, Clone)]
pub struct Approver {
    /// The token's name (recorded as `by`).
    pub token: String,
    /// The gateway user whose groups count (the token's `user`).
    pub user: Option<String>,
}

/// An approval to grant.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Why (required).
    pub reason: String,
    /// Grant a maintenance window of this length instead of a single use.
    pub window: Option<Duration>,
    /// The window's rules (default: the request's).
    pub rules: Option<Vec<String>>,
}

/// What a held statement's wait came to.
#[derive(Debug, Clone)]
pub(crate) enum WaitOutcome {
    /// Approved (and, for a single use, now used).
    Approved(ApprovalUse),
    /// Denied.
    Denied(Resolution),
    /// Expired, or no longer known.
    Expired,
    /// Still pending when the wait ended.
    TimedOut,
}

/// The requests and approvals the gateway knows, and a signal for waiting sessions.
#[derive(Debug, Default)]
pub(crate) struct Book {
    requests: Mutex<HashMap<String, ApprovalRequest>>,
    changed: Notify,
}

/// The review rules of a decision, sorted and deduplicated.
pub(crate) fn review_rules(d: &Decision) -> BTreeSet<String> {
    d.rules
        .iter()
        .filter(|r| r.mode == Mode::Review)
        .map(|r| r.id.clone())
        .collect()
}

/// The requester's reason: a `/* parapet:reason=… */` comment in the text, else the session's.
pub(crate) fn requester_reason(sql: &str, session: Option<&str>) -> Option<String> {
    const TAG: &str = "/* parapet:reason=";
    let from_comment = sql.find(TAG).and_then(|at| {
        let rest = &sql[at + TAG.len()..];
        rest.find("*/").map(|end| rest[..end].trim().to_string())
    });
    from_comment
        .filter(|r| !r.is_empty())
        .or_else(|| session.map(str::to_string))
}

/// What a statement does to the session's `parapet.reason`: `Some(Some(text))` for `SET
/// [SESSION] parapet.reason {=|TO} 'text'`, `Some(None)` for `RESET parapet.reason` or `SET …
/// TO DEFAULT`, `None` when it does not touch it (or in a form not read here, e.g. `SET LOCAL`).
pub(crate) fn reason_setting(sql: &str) -> Option<Option<String>> {
    let s = sql.trim().trim_end_matches(';').trim();
    let lower = s.to_ascii_lowercase();
    let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    if words(&lower) == "reset parapet.reason" || words(&lower) == "reset all" {
        return Some(None);
    }
    let rest = lower
        .strip_prefix("set ")
        .map(|r| r.trim_start())
        .map(|r| r.strip_prefix("session ").map_or(r, str::trim_start))?;
    let after = rest
        .strip_prefix("parapet.reason")
        .or_else(|| rest.strip_prefix("\"parapet.reason\""))?;
    let value_at = s.len() - after.len();
    let v = s[value_at..].trim_start();
    let v = v
        .strip_prefix('=')
        .or_else(|| {
            v.get(..2)
                .filter(|p| p.eq_ignore_ascii_case("to"))
                .map(|_| &v[2..])
        })?
        .trim();
    if v.eq_ignore_ascii_case("default") {
        return Some(None);
    }
    let inner = v.strip_prefix('\'')?.strip_suffix('\'')?;
    let text = inner.replace("''", "'");
    Some(Some(text).filter(|t| !t.trim().is_empty()))
}

/// SHA-256 (hex) of a statement text.
pub(crate) fn text_hash(sql: &str) -> String {
    crate::events::sha256_hex(sql.as_bytes())
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn rfc3339(t: SystemTime) -> String {
    rfc3339_micros(time::OffsetDateTime::from(t))
}

fn parse_time(v: Option<&Value>) -> Option<SystemTime> {
    let text = v?.as_str()?;
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// What a new request holds, before it is recorded.
pub(crate) struct NewRequest<'a> {
    pub(crate) session: &'a crate::events::SessionInfo,
    pub(crate) sql: &'a str,
    pub(crate) record_text: bool,
    pub(crate) decision: &'a Decision,
    pub(crate) decision_index: u64,
    pub(crate) reason: Option<String>,
}

impl Book {
    /// A statement of `user` on `target` with text hash `sha` that only the `review` rules
    /// `rules` refuse: the open window or unused approval that lets it through, if any (a
    /// single-use approval is used up here).
    pub(crate) fn admit(
        &self,
        user: &str,
        target: &str,
        sha: &str,
        rules: &BTreeSet<String>,
    ) -> Option<ApprovalRef> {
        let now = SystemTime::now();
        let mut book = self.requests.lock();
        let window = book.values().find(|r| {
            r.state == ApprovalState::Window
                && !r.lapsed(now)
                && r.requester == user
                && r.target == target
                && r.window
                    .as_ref()
                    .is_some_and(|w| rules.iter().all(|id| w.rules.contains(id)))
        });
        if let Some(w) = window {
            return Some(ApprovalRef {
                id: w.id.clone(),
                kind: ApprovalUse::Window,
            });
        }
        let once = book.values_mut().find(|r| {
            r.state == ApprovalState::Granted
                && !r.lapsed(now)
                && r.requester == user
                && r.target == target
                && r.sql_sha256 == sha
                && rules.iter().all(|id| r.rule_ids().contains(id.as_str()))
        })?;
        once.state = ApprovalState::Used;
        once.finished_at = Some(now);
        let id = once.id.clone();
        drop(book);
        self.changed.notify_waiters();
        Some(ApprovalRef {
            id,
            kind: ApprovalUse::Once,
        })
    }

    /// The pending request already open for this user, target, text and rules, if any.
    pub(crate) fn pending(
        &self,
        user: &str,
        target: &str,
        sha: &str,
        rules: &BTreeSet<String>,
    ) -> Option<String> {
        let now = SystemTime::now();
        self.requests
            .lock()
            .values()
            .find(|r| {
                r.state == ApprovalState::Pending
                    && !r.lapsed(now)
                    && r.requester == user
                    && r.target == target
                    && r.sql_sha256 == sha
                    && r.rule_ids() == rules.iter().map(String::as_str).collect()
            })
            .map(|r| r.id.clone())
    }

    /// The requests, oldest first: open ones, and final ones of the last minutes when `all`.
    pub(crate) fn list(&self, all: bool) -> Vec<ApprovalRequest> {
        let now = SystemTime::now();
        let mut v: Vec<ApprovalRequest> = self
            .requests
            .lock()
            .values()
            .filter(|r| all || (r.state.is_open() && !r.lapsed(now)))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.requested.cmp(&b.requested).then(a.id.cmp(&b.id)));
        v
    }

    fn get(&self, id: &str) -> Option<ApprovalRequest> {
        self.requests.lock().get(id).cloned()
    }

    /// Waits until request `id` is decided, expires, or `deadline` passes. A single-use
    /// approval is used up here; a window is used.
    pub(crate) async fn wait(&self, id: &str, deadline: tokio::time::Instant) -> WaitOutcome {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = SystemTime::now();
            let expires = {
                let mut book = self.requests.lock();
                let Some(r) = book.get_mut(id) else {
                    return WaitOutcome::Expired;
                };
                if r.lapsed(now) {
                    return WaitOutcome::Expired;
                }
                match r.state {
                    ApprovalState::Granted => {
                        r.state = ApprovalState::Used;
                        r.finished_at = Some(now);
                        return WaitOutcome::Approved(ApprovalUse::Once);
                    }
                    ApprovalState::Window => return WaitOutcome::Approved(ApprovalUse::Window),
                    ApprovalState::Denied => {
                        return match r.resolution.clone() {
                            Some(res) => WaitOutcome::Denied(res),
                            None => WaitOutcome::Expired,
                        }
                    }
                    ApprovalState::Expired | ApprovalState::Used => return WaitOutcome::Expired,
                    ApprovalState::Pending => r.expires_at,
                }
            };
            let until_expiry = expires.duration_since(now).unwrap_or_default();
            let wake = deadline.min(tokio::time::Instant::now() + until_expiry);
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        // One last look: decided at the very end?
                        let state = self.get(id).map(|r| r.state);
                        if state == Some(ApprovalState::Pending) {
                            return WaitOutcome::TimedOut;
                        }
                    }
                }
            }
        }
    }

    /// Applies one audit event (in log order) to the book: how it is rebuilt at start, and how
    /// a fleet's gateway learns what the others did (from the mirror, see
    /// `control::follow_log`). Idempotent, and never moves a request back: an event this
    /// gateway applied already when it wrote it changes nothing when it comes back.
    pub(crate) fn apply(&self, v: &Value, ttl: Duration) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let id = s("approval");
        let mut book = self.requests.lock();
        match v.get("type").and_then(Value::as_str) {
            Some("approval_request") => {
                let rules: Vec<ApprovalRule> = v
                    .get("rules")
                    .and_then(|r| serde_json::from_value(r.clone()).ok())
                    .unwrap_or_default();
                let requested = parse_time(v.get("time")).unwrap_or_else(SystemTime::now);
                let expires_at = parse_time(v.get("expires")).unwrap_or(requested + ttl);
                let opt = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                book.entry(id.clone()).or_insert_with(|| ApprovalRequest {
                    id,
                    state: ApprovalState::Pending,
                    requester: s("user"),
                    session: s("session"),
                    target: s("target"),
                    sql: opt("sql"),
                    normalized: opt("normalized"),
                    sql_sha256: s("sql_sha256"),
                    rules,
                    reason: opt("reason"),
                    requested: s("time"),
                    decision: v.get("decision").and_then(Value::as_u64),
                    expires: rfc3339(expires_at),
                    resolution: None,
                    window: None,
                    expires_at,
                    resolving: false,
                    finished_at: None,
                });
            }
            Some(kind @ ("approval_granted" | "approval_denied")) => {
                let Some(r) = book.get_mut(&id) else { return };
                if r.state != ApprovalState::Pending {
                    return;
                }
                r.resolution = Some(Resolution {
                    by: s("by"),
                    approver: s("approver"),
                    reason: s("reason"),
                    time: s("time"),
                });
                if kind == "approval_denied" {
                    r.state = ApprovalState::Denied;
                    r.finished_at = Some(SystemTime::now());
                    return;
                }
                if let Some(at) = parse_time(v.get("expires")) {
                    r.expires_at = at;
                    r.expires = rfc3339(at);
                }
                match v.get("window") {
                    Some(w) if w.is_object() => {
                        r.state = ApprovalState::Window;
                        r.window = Some(Window {
                            seconds: w.get("seconds").and_then(Value::as_u64).unwrap_or(0),
                            rules: w
                                .get("rules")
                                .and_then(|x| serde_json::from_value(x.clone()).ok())
                                .unwrap_or_default(),
                        });
                    }
                    _ => r.state = ApprovalState::Granted,
                }
            }
            Some("approval_expired") => {
                if let Some(r) = book.get_mut(&id).filter(|r| r.state.is_open()) {
                    r.state = ApprovalState::Expired;
                    r.finished_at = Some(SystemTime::now());
                }
            }
            Some("approval_used") => {
                if let Some(r) = book.get_mut(&id) {
                    if r.state == ApprovalState::Granted {
                        r.state = ApprovalState::Used;
                        r.finished_at = Some(SystemTime::now());
                    }
                }
            }
            _ => {}
        }
    }

    /// After a rebuild: only what is still open is kept (the log has the rest).
    pub(crate) fn keep_open(&self) {
        self.requests.lock().retain(|_, r| r.state.is_open());
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Wakes the sessions waiting on requests (after events were applied).
    pub(crate) fn changed(&self) {
        self.notify();
    }

    /// Gives back a single-use approval taken by [`Book::admit`] or [`Book::wait`] whose
    /// fleet-wide claim could not be made (the statement did not run).
    pub(crate) fn unuse(&self, id: &str) {
        if let Some(r) = self.requests.lock().get_mut(id) {
            if r.state == ApprovalState::Used {
                r.state = ApprovalState::Granted;
                r.finished_at = None;
            }
        }
        self.notify();
    }
}

/// The `approval_request` event and the request it opens.
pub(crate) fn new_request(
    shared: &Shared,
    id: &str,
    n: &NewRequest<'_>,
) -> (ApprovalRequest, serde_json::Value) {
    let now = SystemTime::now();
    let expires_at = now + shared.config.review.ttl;
    let rules: Vec<ApprovalRule> = n
        .decision
        .rules
        .iter()
        .filter(|r| r.mode == Mode::Review)
        .map(|r| ApprovalRule {
            id: r.id.clone(),
            reason: r.reason.clone(),
            approvers: approvers_of(shared, &r.id),
        })
        .collect();
    let sha = text_hash(n.sql);
    let sql = n
        .record_text
        .then(|| cut(n.sql, REQUEST_TEXT_MAX).to_string());
    let normalized = n
        .decision
        .normalized
        .as_deref()
        .map(|t| cut(t, REQUEST_TEXT_MAX).to_string());
    let req = ApprovalRequest {
        id: id.to_string(),
        state: ApprovalState::Pending,
        requester: n.session.user.clone(),
        session: n.session.session.clone(),
        target: n.session.target.clone(),
        sql,
        normalized,
        sql_sha256: sha,
        rules,
        reason: n.reason.clone(),
        requested: rfc3339(now),
        decision: Some(n.decision_index),
        expires: rfc3339(expires_at),
        resolution: None,
        window: None,
        expires_at,
        resolving: false,
        finished_at: None,
    };
    let mut ev = json!({
        "type": "approval_request", "time": req.requested, "approval": req.id,
        "session": req.session, "user": req.requester, "target": req.target,
        "decision": n.decision_index, "sql_sha256": req.sql_sha256, "rules": req.rules,
        "reason": req.reason, "expires": req.expires,
    });
    if let Some(sql) = &req.sql {
        ev["sql"] = json!(sql);
        if sql.len() < n.sql.len() {
            ev["sql_truncated"] = json!(true);
        }
    }
    if let Some(norm) = &req.normalized {
        ev["normalized"] = json!(norm);
    }
    (req, ev)
}

/// The approver groups of rule `id`: its `@approvers`, else `[review] approvers`.
fn approvers_of(shared: &Shared, id: &str) -> Vec<String> {
    shared
        .guard
        .rule(id)
        .map(|r| r.approvers)
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| shared.config.review.approvers.clone())
}

/// The `approval_used` event of a statement let through by `a`.
pub(crate) fn used_event(s: &crate::events::SessionInfo, a: &ApprovalRef, sha: &str) -> Vec<u8> {
    to_bytes(&json!({
        "type": "approval_used", "time": now_rfc3339(), "approval": a.id,
        "session": s.session, "user": s.user, "target": s.target, "sql_sha256": sha,
        "window": a.kind == ApprovalUse::Window,
    }))
}

impl Book {
    /// Records a request made by the session (durably), then opens it.
    pub(crate) async fn open(
        &self,
        shared: &Shared,
        id: &str,
        n: &NewRequest<'_>,
    ) -> Result<(), parapet_log::LogError> {
        let (req, ev) = new_request(shared, id, n);
        shared.log.submit(to_bytes(&ev)).await?;
        self.requests.lock().insert(id.to_string(), req);
        self.notify();
        Ok(())
    }
}

/// Records what has expired, and forgets final requests after a while. Runs until `stop`.
pub(crate) async fn sweep(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let now = SystemTime::now();
        let lapsed: Vec<(String, ApprovalState)> = {
            let mut book = shared.approvals.requests.lock();
            let keep = KEEP_FINISHED + shared.config.review.wait;
            book.retain(|_, r| {
                r.finished_at
                    .is_none_or(|t| now.duration_since(t).unwrap_or_default() < keep)
            });
            book.values_mut()
                .filter(|r| r.lapsed(now) && !r.resolving)
                .map(|r| {
                    r.resolving = true;
                    (r.id.clone(), r.state)
                })
                .collect()
        };
        for (id, state) in lapsed {
            // In a fleet every gateway sees the request lapse; one records it.
            let written: Result<(), String> =
                match shared.state.claim(&format!("expire:{id}"), "sweep").await {
                    Ok(true) => {
                        let ev = json!({"type": "approval_expired", "time": now_rfc3339(),
                            "approval": id, "state": state});
                        shared
                            .log
                            .submit(to_bytes(&ev))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e.to_string()),
                };
            let mut book = shared.approvals.requests.lock();
            if let Some(r) = book.get_mut(&id) {
                r.resolving = false;
                match written {
                    Ok(_) => {
                        r.state = ApprovalState::Expired;
                        r.finished_at = Some(now);
                    }
                    Err(ref e) => tracing::error!("cannot record the expiry of approval {id}: {e}"),
                }
            }
            drop(book);
            shared.approvals.notify();
        }
    }
}

impl Control {
    /// Open approval requests and live approvals (pending, granted, windows), oldest first;
    /// with `all`, also those decided, used or expired in the last minutes.
    pub fn approvals(&self, all: bool) -> Vec<ApprovalRequest> {
        self.shared.approvals.list(all)
    }

    /// One request, if known.
    pub fn approval(&self, id: &str) -> Option<ApprovalRequest> {
        self.shared.approvals.get(id)
    }

    /// Checks that `who` may decide on request `id` (and on the window's `rules`); marks it
    /// as being decided.
    fn claim(
        &self,
        id: &str,
        who: &Approver,
        reason: &str,
        window_rules: Option<&[String]>,
    ) -> Result<(ApprovalRequest, String), ApprovalError> {
        if reason.trim().is_empty() {
            return Err(ApprovalError::Invalid(
                "a reason is required: say why you approve or deny".into(),
            ));
        }
        let user = who.user.clone().ok_or(ApprovalError::NoUser)?;
        let groups = self
            .shared
            .users
            .get(&user)
            .map(|(u, _)| u.groups.clone())
            .ok_or_else(|| ApprovalError::UnknownUser(user.clone()))?;
        let mut book = self.shared.approvals.requests.lock();
        let r = book
            .get_mut(id)
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if r.requester == user {
            return Err(ApprovalError::SelfApproval(user));
        }
        if r.resolving {
            return Err(ApprovalError::Busy(id.to_string()));
        }
        if r.state != ApprovalState::Pending || r.lapsed(SystemTime::now()) {
            let state = if r.state == ApprovalState::Pending {
                ApprovalState::Expired
            } else {
                r.state
            };
            return Err(ApprovalError::NotPending {
                id: id.to_string(),
                state,
            });
        }
        let mut rules: Vec<(String, Vec<String>)> = r
            .rules
            .iter()
            .map(|x| (x.id.clone(), x.approvers.clone()))
            .collect();
        for extra in window_rules.unwrap_or_default() {
            if !rules.iter().any(|(id, _)| id == extra) {
                rules.push((extra.clone(), approvers_of(&self.shared, extra)));
            }
        }
        for (rule, approvers) in &rules {
            if approvers.is_empty() {
                return Err(ApprovalError::NoApprovers(rule.clone()));
            }
            if !approvers.iter().any(|g| groups.contains(g)) {
                return Err(ApprovalError::NotApprover {
                    user,
                    rule: rule.clone(),
                    groups: approvers.join(", "),
                });
            }
        }
        r.resolving = true;
        Ok((r.clone(), user))
    }

    /// In a fleet, two approvers on two gateways may both find a request pending: the first
    /// to claim its decision in the fleet's state decides it.
    async fn decide_once(&self, id: &str, token: &str) -> Result<(), ApprovalError> {
        match self
            .shared
            .state
            .claim(&format!("decide:{id}"), token)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.release(id);
                Err(ApprovalError::Busy(id.to_string()))
            }
            Err(e) => {
                self.release(id);
                Err(ApprovalError::State(e.to_string()))
            }
        }
    }

    fn release(&self, id: &str) {
        if let Some(r) = self.shared.approvals.requests.lock().get_mut(id) {
            r.resolving = false;
        }
    }

    /// Approves request `id` on behalf of `who`: for one use of the same text by the requester
    /// on the same target within `[review] ttl`, or as a maintenance window. Recorded
    /// (`approval_granted`) durably before it takes effect.
    pub async fn approve(
        &self,
        id: &str,
        who: &Approver,
        grant: &Grant,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let review = &self.shared.config.review;
        let window = match grant.window {
            None => None,
            Some(d) if d.is_zero() => {
                return Err(ApprovalError::Invalid(
                    "window_seconds must be at least 1".into(),
                ))
            }
            Some(d) if d > review.max_window => {
                return Err(ApprovalError::Invalid(format!(
                "a window of {} s is longer than [review] max_window ({} s); ask for a shorter one",
                d.as_secs(),
                review.max_window.as_secs()
            )))
            }
            Some(d) => Some(d),
        };
        if let Some(rules) = &grant.rules {
            if window.is_none() {
                return Err(ApprovalError::Invalid(
                    "rules are given only with a window (window_seconds)".into(),
                ));
            }
            for rule in rules {
                match self.shared.guard.rule(rule) {
                    Some(m) if m.mode == Mode::Review => {}
                    _ => {
                        return Err(ApprovalError::Invalid(format!(
                            "rule {rule} is not a review rule in force; a window lets through only what review rules hold"
                        )))
                    }
                }
            }
        }
        let (req, user) = self.claim(id, who, &grant.reason, grant.rules.as_deref())?;
        self.decide_once(id, &who.token).await?;
        let now = SystemTime::now();
        let expires_at = now + window.unwrap_or(review.ttl);
        let win = window.map(|d| Window {
            seconds: d.as_secs(),
            rules: grant
                .rules
                .clone()
                .unwrap_or_else(|| req.rules.iter().map(|r| r.id.clone()).collect()),
        });
        let time = rfc3339(now);
        let ev = json!({"type": "approval_granted", "time": time, "approval": id,
            "by": who.token, "approver": user, "reason": grant.reason.trim(),
            "user": req.requester, "target": req.target, "sql_sha256": req.sql_sha256,
            "expires": rfc3339(expires_at), "window": win});
        if let Err(e) = self.shared.log.submit(to_bytes(&ev)).await {
            self.release(id);
            return Err(ApprovalError::Log(e.to_string()));
        }
        let out = {
            let mut book = self.shared.approvals.requests.lock();
            let r = book
                .get_mut(id)
                .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
            r.resolving = false;
            r.state = if win.is_some() {
                ApprovalState::Window
            } else {
                ApprovalState::Granted
            };
            r.window = win;
            r.expires_at = expires_at;
            r.expires = rfc3339(expires_at);
            r.resolution = Some(Resolution {
                by: who.token.clone(),
                approver: user,
                reason: grant.reason.trim().to_string(),
                time,
            });
            r.clone()
        };
        self.shared.approvals.notify();
        Ok(out)
    }

    /// Denies request `id` on behalf of `who`, recorded (`approval_denied`) durably first.
    pub async fn deny(
        &self,
        id: &str,
        who: &Approver,
        reason: &str,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let (_, user) = self.claim(id, who, reason, None)?;
        self.decide_once(id, &who.token).await?;
        let time = now_rfc3339();
        let ev = json!({"type": "approval_denied", "time": time, "approval": id,
            "by": who.token, "approver": user, "reason": reason.trim()});
        if let Err(e) = self.shared.log.submit(to_bytes(&ev)).await {
            self.release(id);
            return Err(ApprovalError::Log(e.to_string()));
        }
        let out = {
            let mut book = self.shared.approvals.requests.lock();
            let r = book
                .get_mut(id)
                .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
            r.resolving = false;
            r.state = ApprovalState::Denied;
            r.finished_at = Some(SystemTime::now());
            r.resolution = Some(Resolution {
                by: who.token.clone(),
                approver: user,
                reason: reason.trim().to_string(),
                time,
            });
            r.clone()
        };
        self.shared.approvals.notify();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_comments_and_settings() {
        assert_eq!(
            requester_reason("/* parapet:reason=ticket OPS-1 */ DROP TABLE t", Some("s")),
            Some("ticket OPS-1".into())
        );
        assert_eq!(
            requester_reason("DROP TABLE t", Some("s")),
            Some("s".into())
        );
        assert_eq!(requester_reason("DROP TABLE t", None), None);
        assert_eq!(
            reason_setting("SET parapet.reason = 'it''s OPS-2'"),
            Some(Some("it's OPS-2".into()))
        );
        assert_eq!(
            reason_setting("set session parapet.reason to 'x';"),
            Some(Some("x".into()))
        );
        assert_eq!(reason_setting("SET parapet.reason TO DEFAULT"), Some(None));
        assert_eq!(reason_setting("RESET parapet.reason"), Some(None));
        assert_eq!(reason_setting("SET search_path = 'x'"), None);
        assert_eq!(reason_setting("SET parapet.reasons = 'x'"), None);
    }

    #[test]
    fn a_single_use_approval_is_used_once_and_bound_to_its_text() {
        let book = Book::default();
        let now = SystemTime::now();
        let rules: BTreeSet<String> = ["r".to_string()].into();
        let sha = text_hash("DROP TABLE t");
        book.requests.lock().insert(
            "a".into(),
            ApprovalRequest {
                id: "a".into(),
                state: ApprovalState::Granted,
                requester: "alice".into(),
                session: "s".into(),
                target: "main".into(),
                sql: None,
                normalized: None,
                sql_sha256: sha.clone(),
                rules: vec![ApprovalRule {
                    id: "r".into(),
                    reason: String::new(),
                    approvers: vec!["dba".into()],
                }],
                reason: None,
                requested: rfc3339(now),
                decision: None,
                expires: rfc3339(now + Duration::from_secs(60)),
                resolution: None,
                window: None,
                expires_at: now + Duration::from_secs(60),
                resolving: false,
                finished_at: None,
            },
        );
        assert!(book
            .admit("alice", "main", &text_hash("DROP TABLE u"), &rules)
            .is_none());
        assert!(book.admit("bob", "main", &sha, &rules).is_none());
        assert!(book.admit("alice", "other", &sha, &rules).is_none());
        let a = book.admit("alice", "main", &sha, &rules).expect("admitted");
        assert_eq!(a.kind, ApprovalUse::Once);
        assert!(book.admit("alice", "main", &sha, &rules).is_none(), "used");
    }

    #[test]
    fn applying_events_again_never_moves_a_request_back() {
        let book = Book::default();
        let ttl = Duration::from_secs(60);
        let req = json!({"type": "approval_request", "approval": "a", "user": "alice",
            "target": "main", "sql_sha256": "x", "time": now_rfc3339()});
        let grant = json!({"type": "approval_granted", "approval": "a", "by": "t",
            "approver": "bob", "reason": "ok", "time": now_rfc3339()});
        let used = json!({"type": "approval_used", "approval": "a"});
        let state = || book.get("a").map(|r| r.state);
        book.apply(&req, ttl);
        book.apply(&grant, ttl);
        assert_eq!(state(), Some(ApprovalState::Granted));
        book.apply(&req, ttl);
        assert_eq!(
            state(),
            Some(ApprovalState::Granted),
            "a request seen again"
        );
        book.apply(&used, ttl);
        book.apply(&grant, ttl);
        book.apply(&json!({"type": "approval_expired", "approval": "a"}), ttl);
        assert_eq!(
            state(),
            Some(ApprovalState::Used),
            "a grant or expiry seen again"
        );
        book.unuse("a");
        assert_eq!(state(), Some(ApprovalState::Granted), "given back");
    }
}
