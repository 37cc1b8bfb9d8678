//! `parapet-guard`: statement analysis (pg_query) into facts and Cedar policy decisions.
//!
//! PINNED PUBLIC API (the gateway compiles against these; the guard's owner fills the bodies and
//! may add fields/functions, but must not rename or remove these):
//! [`Guard::load`], [`Guard::reload`], [`Guard::policy_hash`], [`Guard::decide`],
//! [`PolicySource`], [`RequestContext`], [`Decision`], [`Verdict`], [`RuleHit`], [`Mode`],
//! [`PolicyReload`], [`GuardError`].

use serde::Serialize;
use std::path::PathBuf;

/// Errors of the guard (policy loading and validation).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Placeholder until implemented.
    #[error("not implemented yet")]
    Unimplemented,
}

/// Where policies come from.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    /// Cedar policy files, in order.
    pub files: Vec<PathBuf>,
    /// Whether the built-in default pack (`policies/default.cedar`) is included.
    pub default_pack: bool,
}

/// Who runs a statement, where, and from where.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// Gateway user name.
    pub user: String,
    /// Groups of the user.
    pub groups: Vec<String>,
    /// Target (database) name the client picked.
    pub target: String,
    /// Environment of the target, e.g. "production".
    pub environment: String,
    /// Client address (IP, no port), if known.
    pub client_addr: Option<String>,
    /// The client's `application_name`.
    pub application_name: String,
}

/// The outcome of judging one message (the strictest of its statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold for approval (refused until approvals exist).
    Review,
    /// Forward it, record "would have blocked".
    Monitor,
}

/// How a rule acts when it matches (`@mode` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Block.
    Enforce,
    /// Log only.
    Monitor,
    /// Hold for approval.
    Review,
}

/// A rule that determined a decision.
#[derive(Debug, Clone, Serialize)]
pub struct RuleHit {
    /// `@id` of the rule.
    pub id: String,
    /// `@mode` of the rule.
    pub mode: Mode,
    /// `@reason` of the rule.
    pub reason: String,
}

/// A decision on one message.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// The verdict.
    #[serde(rename = "decision")]
    pub verdict: Verdict,
    /// Every rule that determined the verdict.
    pub rules: Vec<RuleHit>,
    /// Human-readable reason (the first determining rule's reason, or empty when allowed).
    pub reason: String,
    /// SHA-256 (hex) of the policy set that decided.
    pub policy_hash: String,
    /// pg_query-normalised text of the message (literals replaced by `$n`), if it parsed.
    pub normalized: Option<String>,
    /// pg_query fingerprint (hex), if it parsed.
    pub fingerprint: Option<String>,
    /// Facts of each statement, as JSON.
    pub statements: Vec<serde_json::Value>,
}

/// Result of a successful reload.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReload {
    /// Hash of the set that was in force.
    pub old_hash: String,
    /// Hash of the set now in force.
    pub new_hash: String,
}

/// The guardrail engine. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Guard {}

impl Guard {
    /// Loads and validates a policy set.
    pub fn load(source: &PolicySource) -> Result<Guard, GuardError> {
        let _ = source;
        Err(GuardError::Unimplemented)
    }

    /// Atomically replaces the policy set; on error the old set stays in force.
    pub fn reload(&self, source: &PolicySource) -> Result<PolicyReload, GuardError> {
        let _ = source;
        Err(GuardError::Unimplemented)
    }

    /// Hash of the policy set in force.
    pub fn policy_hash(&self) -> String {
        String::new()
    }

    /// Judges one message (which may hold several statements).
    pub fn decide(&self, sql: &str, ctx: &RequestContext) -> Decision {
        let _ = (sql, ctx);
        Decision {
            verdict: Verdict::Deny,
            rules: Vec::new(),
            reason: "not implemented".into(),
            policy_hash: String::new(),
            normalized: None,
            fingerprint: None,
            statements: Vec::new(),
        }
    }
}
