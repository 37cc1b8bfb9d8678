//! `parapet-guard`: statement analysis (pg_query) into facts and Cedar policy decisions.
//!
//! PINNED PUBLIC API (the gateway compiles against these; the guard's owner fills the bodies and
//! may add fields/functions, but must not rename or remove these):
//! [`Guard::load`], [`Guard::reload`], [`Guard::policy_hash`], [`Guard::decide`],
//! [`PolicySource`], [`RequestContext`], [`Decision`], [`Verdict`], [`RuleHit`], [`Mode`],
//! [`PolicyReload`], [`GuardError`], [`RowLimit`].

pub mod analyze;
pub mod cache;
pub mod catalog;
mod engine;
pub mod policy;
mod prefilter;

pub use analyze::facts::{FactsData, Problem, StatementFacts};
pub use analyze::limits::DEFAULT_MAX_STATEMENT_SIZE;
pub use analyze::{analyze, Analysis};
pub use policy::{PolicyDiagnostic, RuleMeta, DEFAULT_PACK, MAX_ROWS_LIMIT, SCHEMA};

use serde::Serialize;
use std::path::PathBuf;

/// Errors of the guard (policy loading and validation).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A policy file could not be read.
    #[error("cannot read policy file {path}: {source}; check the path and its permissions")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The policy set has errors (syntax, schema, annotations); nothing was loaded.
    #[error("policy set refused, fix these and try again:\n{}", errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found, with file:line:column.
        errors: Vec<PolicyDiagnostic>,
    },
    /// The built-in schema does not parse (a Parapet bug).
    #[error("the built-in Parapet policy schema is invalid ({0}); please report this bug")]
    Schema(String),
}

/// Where policies come from.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    /// Cedar policy files, in order.
    pub files: Vec<PathBuf>,
    /// Whether the built-in default pack (`policies/default.cedar`) is included.
    pub default_pack: bool,
    /// Modes the site runs rules in, by rule id, over their `@mode` (`[policy] modes`): e.g.
    /// the default pack's `parapet.drop` as `review`, so that maintenance is approved instead
    /// of the pack being switched off.
    pub modes: std::collections::BTreeMap<String, Mode>,
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
    /// The target's catalog (functions, operators, aggregates, casts, types; see [`catalog`]),
    /// loaded by the gateway; `None` means the built-in catalog ([`catalog::Catalog::builtin`]).
    pub catalog: Option<std::sync::Arc<catalog::Catalog>>,
}

impl RequestContext {
    /// The catalog calls are resolved in: the target's, else the built-in one.
    pub fn catalog(&self) -> std::sync::Arc<catalog::Catalog> {
        self.catalog
            .clone()
            .unwrap_or_else(catalog::Catalog::builtin)
    }
}

/// The outcome of judging one message (the strictest of its statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold for approval (the gateway opens an approval request; see its `approvals`).
    Review,
    /// Forward it, record "would have blocked".
    Monitor,
}

/// How a rule acts when it matches (`@mode` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Facts of each statement (serialised as one JSON object per statement).
    pub statements: Vec<StatementFacts>,
    /// The row limits of `@max_rows` rules on the statements of a message that may run
    /// (`allow`, `monitor`, or `review` once approved), at most one per statement (the
    /// smallest); empty for `deny`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<RowLimit>,
}

impl Decision {
    /// The smallest row limit on the message, if any.
    pub fn max_rows(&self) -> Option<&RowLimit> {
        self.limits.iter().min_by_key(|l| l.max_rows)
    }
}

/// A row limit on one statement of a forwarded message (a satisfied `@max_rows("N")` rule): the
/// gateway runs the statement so that a write changing more than `max_rows` rows is rolled back
/// and refused, and a read returning more is stopped with an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RowLimit {
    /// Index of the statement in the message.
    pub statement: usize,
    /// Most rows it may change (a write) or return (a read).
    pub max_rows: u64,
    /// `@id` of the rule.
    pub rule: String,
    /// `@reason` of the rule.
    pub reason: String,
    /// Whether the statement is a write (INSERT, UPDATE, DELETE, MERGE) rather than a read.
    pub write: bool,
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
///
/// Holds the policy set in force behind an atomic pointer (a statement is judged by exactly one
/// whole set, old or new), a cache of analyses by statement text, a cache of
/// literal-independent statement facts by lexical key (so a known statement with new literal
/// values is not parsed again; see [`analyze::analyze_with_shapes`]), and a bounded cache of
/// decisions keyed by everything a policy can see. Each cache is bounded by bytes (see
/// [`cache`]): large texts are analysed every time they come, never kept.
///
/// Analysis is bounded too (see [`analyze::limits`]): a text over the largest statement size
/// ([`Guard::set_max_statement_size`]), over the token, node or depth caps is refused with rule
/// `parapet.too-large`, and deep statements are analysed on a stack grown to fit, so `decide`
/// may be called on any thread, whatever the text.
#[derive(Debug)]
pub struct Guard {
    engine: arc_swap::ArcSwap<engine::Engine>,
    analyses: cache::ShardedCache<String, std::sync::Arc<Analysis>>,
    shapes: analyze::Shapes,
    decisions: cache::ShardedCache<String, Decision>,
    /// Decision keys of texts judged from a known shape (lossily): such a text enters
    /// `decisions` only when it comes again (most never do: new literal values each time).
    seen_once: cache::Doorkeeper,
    /// Largest statement text analysed, in bytes.
    max_statement_size: std::sync::atomic::AtomicUsize,
}

/// Bytes the analysis cache may hold.
const ANALYSES_BYTES: usize = 64 << 20;
/// Bytes the shape cache may hold.
const SHAPES_BYTES: usize = 32 << 20;
/// Bytes the decision cache may hold.
const DECISIONS_BYTES: usize = 64 << 20;
/// Slots of the doorkeeper (8 bytes each).
const DOORKEEPER_SLOTS: usize = 16_384;

/// Estimated bytes held by a statement's facts.
fn facts_weight(f: &FactsData) -> usize {
    let sets = [
        &f.kinds,
        &f.reads,
        &f.writes,
        &f.functions,
        &f.function_names,
        &f.operators,
        &f.casts,
        &f.object_types,
        &f.set_variables,
    ];
    let strings: usize = sets
        .iter()
        .flat_map(|s| s.iter())
        .map(|x| x.len() + 48)
        .sum();
    std::mem::size_of::<FactsData>()
        + f.text.len()
        + f.kind.len()
        + f.copy_direction.len()
        + strings
        + f.problems
            .iter()
            .map(|p| p.reason.len() + 48)
            .sum::<usize>()
}

/// Estimated bytes held by an analysis.
fn analysis_weight(a: &Analysis) -> usize {
    std::mem::size_of::<Analysis>()
        + a.statements.iter().map(|s| facts_weight(s)).sum::<usize>()
        + a.normalized.as_ref().map_or(0, String::len)
        + a.fingerprint.as_ref().map_or(0, String::len)
}

/// Estimated bytes held by a decision.
fn decision_weight(d: &Decision) -> usize {
    std::mem::size_of::<Decision>()
        + d.statements.iter().map(|s| facts_weight(s)).sum::<usize>()
        + d.normalized.as_ref().map_or(0, String::len)
        + d.reason.len()
        + d.policy_hash.len()
        + d.rules
            .iter()
            .map(|r| r.id.len() + r.reason.len() + 64)
            .sum::<usize>()
}

/// Returns freed heap memory to the operating system (glibc's `malloc_trim`), after a large
/// analysis: glibc keeps freed memory of its thread arenas mapped otherwise, so one burst of
/// large statements would leave the process's resident size high for good. Takes time in
/// proportion to the heap; call it after large work, not per statement. A no-op elsewhere.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Guard {
    /// Loads and validates a policy set.
    pub fn load(source: &PolicySource) -> Result<Guard, GuardError> {
        let compiled = policy::compile(source)?;
        Ok(Guard {
            engine: arc_swap::ArcSwap::from_pointee(engine::Engine::new(compiled, 0)),
            analyses: cache::ShardedCache::new(ANALYSES_BYTES),
            shapes: cache::ShardedCache::new(SHAPES_BYTES),
            decisions: cache::ShardedCache::new(DECISIONS_BYTES),
            seen_once: cache::Doorkeeper::new(DOORKEEPER_SLOTS),
            max_statement_size: DEFAULT_MAX_STATEMENT_SIZE.into(),
        })
    }

    /// Sets the largest statement text analysed, in bytes (`[listen] max_statement_size`;
    /// default [`DEFAULT_MAX_STATEMENT_SIZE`]): a longer text is refused with rule
    /// `parapet.too-large`, unparsed.
    pub fn set_max_statement_size(&self, bytes: usize) {
        self.max_statement_size
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest statement text analysed, in bytes.
    pub fn max_statement_size(&self) -> usize {
        self.max_statement_size
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Atomically replaces the policy set; on error the old set stays in force.
    pub fn reload(&self, source: &PolicySource) -> Result<PolicyReload, GuardError> {
        let compiled = policy::compile(source)?;
        let old = self.engine.load_full();
        let new = engine::Engine::new(compiled, old.generation + 1);
        let reload = PolicyReload {
            old_hash: old.policies.hash.clone(),
            new_hash: new.policies.hash.clone(),
        };
        self.engine.store(std::sync::Arc::new(new));
        // Decisions are keyed by generation, so stale ones can never be served; free them.
        self.decisions.clear();
        self.seen_once.clear();
        Ok(reload)
    }

    /// Hash of the policy set in force.
    pub fn policy_hash(&self) -> String {
        self.engine.load().policies.hash.clone()
    }

    /// The rules in force (annotations), in no particular order.
    pub fn rules(&self) -> Vec<RuleMeta> {
        self.engine
            .load()
            .policies
            .rules
            .values()
            .cloned()
            .collect()
    }

    /// The rule in force with this `@id`, if any (its annotations: mode, reason, approvers).
    pub fn rule(&self, id: &str) -> Option<RuleMeta> {
        self.engine
            .load()
            .policies
            .rules
            .values()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Analyses a message (cached by text; facts of plain DML are also reused across texts that
    /// differ only in literal values).
    pub fn analyze(&self, sql: &str) -> std::sync::Arc<Analysis> {
        self.analyze_cached(sql).0
    }

    /// [`Guard::analyze`], also saying whether the analysis came cheaply from a shape found by
    /// the text's lexical key: such texts (one statement with ever new literal values) are not
    /// cached by text, where they would only push out texts that do come back (a decision for
    /// one enters the decision cache when its text comes a second time).
    fn analyze_cached(&self, sql: &str) -> (std::sync::Arc<Analysis>, bool) {
        if let Some(a) = self.analyses.get(sql) {
            return (a, false);
        }
        let (a, from_shape) = analyze::analyze_shaped(sql, &self.shapes, self.max_statement_size());
        let a = std::sync::Arc::new(a);
        if !from_shape && sql.len() <= self.analyses.max_weight() {
            let weight = sql.len() + analysis_weight(&a);
            self.analyses.insert(sql.to_string(), a.clone(), weight);
        }
        (a, from_shape)
    }

    /// Judges one message (which may hold several statements).
    pub fn decide(&self, sql: &str, ctx: &RequestContext) -> Decision {
        self.decide_at(sql, ctx, std::time::SystemTime::now())
    }

    /// Like [`Guard::decide`] at a given time (`context.time`; minute resolution).
    pub fn decide_at(
        &self,
        sql: &str,
        ctx: &RequestContext,
        now: std::time::SystemTime,
    ) -> Decision {
        let engine = self.engine.load_full();
        let minute = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0);
        let key = engine::cache_key(engine.generation, minute, ctx, sql);
        if let Some(d) = self.decisions.get(&key) {
            return d;
        }
        let (analysis, from_shape) = self.analyze_cached(sql);
        // Analyses are catalog-independent (cached by text); what calls reach is added here.
        let analysis = ctx.catalog().expand_analysis(&analysis);
        let d = engine.decide(&analysis, ctx, minute);
        if (!from_shape || self.seen_once.seen_before(&key))
            && key.len() <= self.decisions.max_weight()
        {
            let weight = key.len() + decision_weight(&d);
            self.decisions.insert(key, d.clone(), weight);
        }
        d
    }

    /// The decision on `sql` if it is in the decision cache (the same text, context, policy set
    /// and minute were judged before), without analysing anything: for callers that judge
    /// texts not in the cache elsewhere (on a thread pool) and known ones inline.
    pub fn cached_decision(&self, sql: &str, ctx: &RequestContext) -> Option<Decision> {
        if sql.len() > self.decisions.max_weight() {
            // Never cached (see `decide_at`).
            return None;
        }
        let engine = self.engine.load();
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0);
        let key = engine::cache_key(engine.generation, minute, ctx, sql);
        self.decisions.get(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text judged from a known shape enters the decision cache on its second coming only.
    #[test]
    fn texts_of_known_shapes_are_cached_when_they_come_again() {
        let source = PolicySource {
            default_pack: true,
            ..PolicySource::default()
        };
        let g = Guard::load(&source).expect("default pack loads");
        let ctx = RequestContext {
            user: "alice".into(),
            ..RequestContext::default()
        };
        g.decide("SELECT a FROM t WHERE id = 1", &ctx);
        assert_eq!(
            g.decisions.len(),
            1,
            "the first text of a shape is parsed and cached"
        );
        let again = "SELECT a FROM t WHERE id = 2";
        let first = g.decide(again, &ctx);
        assert_eq!(
            g.decisions.len(),
            1,
            "a new text of a known shape is not cached"
        );
        let second = g.decide(again, &ctx);
        assert_eq!(g.decisions.len(), 2, "it is cached when it comes again");
        let third = g.decide(again, &ctx);
        for d in [&second, &third] {
            assert_eq!(d.verdict, first.verdict);
            assert_eq!(d.normalized, first.normalized);
            assert_eq!(d.fingerprint, first.fingerprint);
            assert_eq!(d.statements, first.statements);
        }
    }
}
