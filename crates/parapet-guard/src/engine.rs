//! Judging analysed statements with a compiled policy set: builds the Cedar request (principal,
//! resource, entities, context of facts) per statement, maps satisfied `forbid` rules to a verdict
//! through their `@mode`, and combines statements into the message decision. Only rules whose
//! prefilter (see `prefilter`) allows a match are handed to Cedar; when none can, no Cedar request
//! is built.

use crate::analyze::facts::FactsData;
use crate::analyze::Analysis;
use crate::policy::CompiledPolicies;
use crate::prefilter::Prefilter;
use crate::{Decision, Mode, RequestContext, RowLimit, RuleHit, Verdict};
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicySet,
    Request, RestrictedExpression,
};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

/// Policy subsets kept per engine (keyed by which rules are candidates) before the map is reset.
const SUBSET_CACHE_CAPACITY: usize = 1024;

/// A policy set in force plus everything needed to evaluate it.
pub(crate) struct Engine {
    pub policies: CompiledPolicies,
    pub generation: u64,
    authorizer: Authorizer,
    types: Option<Types>,
    /// Every rule with its prefilter (`None`: always evaluated), in a fixed order.
    index: Vec<(Policy, Option<Prefilter>)>,
    /// Policy sets of candidate subsets, keyed by the candidate bitmask over `index`.
    subsets: Mutex<HashMap<Vec<u64>, Arc<PolicySet>>>,
    /// Whether Cedar accepts a client address (see [`Engine::context_builds`]).
    addresses: Mutex<HashMap<String, bool>>,
    /// Off only in tests, to compare against evaluating every rule.
    use_prefilter: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("hash", &self.policies.hash)
            .field("generation", &self.generation)
            .finish()
    }
}

struct Types {
    user: EntityTypeName,
    group: EntityTypeName,
    target: EntityTypeName,
    table: EntityTypeName,
    action: EntityUid,
}

impl Types {
    fn new() -> Option<Types> {
        let t = |s: &str| EntityTypeName::from_str(s).ok();
        Some(Types {
            user: t("Parapet::User")?,
            group: t("Parapet::Group")?,
            target: t("Parapet::Target")?,
            table: t("Parapet::Table")?,
            action: EntityUid::from_type_name_and_id(
                t("Parapet::Action")?,
                EntityId::new("execute"),
            ),
        })
    }
}

/// Key of the decision cache: everything a policy can see about a request.
pub(crate) fn cache_key(generation: u64, minute: u64, ctx: &RequestContext, sql: &str) -> String {
    let mut k = String::with_capacity(sql.len() + 96);
    use std::fmt::Write;
    let catalog = ctx
        .catalog
        .as_ref()
        .map_or_else(|| crate::catalog::Catalog::builtin().id(), |c| c.id());
    let _ = write!(k, "{generation}\u{1f}{minute}\u{1f}{catalog:x}\u{1f}");
    for part in [
        ctx.user.as_str(),
        ctx.target.as_str(),
        ctx.environment.as_str(),
        ctx.client_addr.as_deref().unwrap_or("\u{0}"),
        ctx.application_name.as_str(),
    ] {
        k.push_str(part);
        k.push('\u{1f}');
    }
    for g in &ctx.groups {
        k.push_str(g);
        k.push('\u{1e}');
    }
    k.push('\u{1f}');
    k.push_str(sql);
    k
}

/// Why the rows a statement under a row limit changes (or returns) cannot all be counted by
/// its command tag; `None` when they can: a SELECT, INSERT, UPDATE, DELETE or MERGE that is the
/// only write — no data-modifying statement nested in it, no function that may write, and no
/// trigger, rule or cascading foreign key on a table it writes (per the target's catalog).
fn uncountable(st: &FactsData, catalog: &crate::catalog::Catalog) -> Option<String> {
    if !matches!(
        st.kind.as_str(),
        "select" | "insert" | "update" | "delete" | "merge"
    ) {
        return Some(format!(
            "a {} statement has no row count the gateway can check",
            st.kind
        ));
    }
    if st.nested_write {
        return Some("it nests a data-modifying statement (INSERT, UPDATE, DELETE or MERGE in a WITH), whose rows the command tag does not count".into());
    }
    if let Some(f) = catalog.writing_function(st) {
        return Some(format!(
            "it calls {f}(), which may change rows the command tag does not count"
        ));
    }
    if crate::analyze::facts::is_write_kind(&st.kind) {
        if let Some(why) = st.writes.iter().find_map(|t| catalog.write_effect(t)) {
            return Some(format!(
                "a write there may change more rows than the command tag counts ({why})"
            ));
        }
    }
    None
}

fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Monitor => 1,
        Verdict::Review => 2,
        Verdict::Deny => 3,
    }
}

fn verdict_of(mode: Mode) -> Verdict {
    match mode {
        Mode::Enforce => Verdict::Deny,
        Mode::Review => Verdict::Review,
        Mode::Monitor => Verdict::Monitor,
    }
}

impl Engine {
    pub fn new(policies: CompiledPolicies, generation: u64) -> Engine {
        let index = policies
            .set
            .policies()
            .map(|p| {
                let filter = p.to_json().ok().and_then(|j| Prefilter::of_policy_json(&j));
                (p.clone(), filter)
            })
            .collect();
        Engine {
            policies,
            generation,
            authorizer: Authorizer::new(),
            types: Types::new(),
            index,
            subsets: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            use_prefilter: true,
        }
    }

    /// The rules that may fire (or fail) for this statement and request, as a bitmask over
    /// `index`, and whether there is any.
    fn candidates(&self, facts: &FactsData, ctx: &RequestContext) -> (Vec<u64>, bool) {
        let mut mask = vec![0u64; self.index.len().div_ceil(64)];
        let mut any = false;
        for (i, (_, filter)) in self.index.iter().enumerate() {
            if !self.use_prefilter || filter.as_ref().is_none_or(|f| f.may_match(facts, ctx)) {
                mask[i / 64] |= 1 << (i % 64);
                any = true;
            }
        }
        (mask, any)
    }

    /// The policy set holding exactly the candidate rules of `mask`.
    fn subset(&self, mask: Vec<u64>) -> Arc<PolicySet> {
        if let Some(s) = self.subsets.lock().get(&mask) {
            return s.clone();
        }
        let mut set = PolicySet::new();
        for (i, (policy, _)) in self.index.iter().enumerate() {
            if mask[i / 64] & (1 << (i % 64)) != 0 {
                // Ids are unique in the full set, so adding cannot fail.
                let _ = set.add(policy.clone());
            }
        }
        let set = Arc::new(set);
        let mut map = self.subsets.lock();
        if map.len() >= SUBSET_CACHE_CAPACITY {
            map.clear();
        }
        map.insert(mask, set.clone());
        set
    }

    /// Whether the request for this context can be built: the only part that can fail is
    /// Cedar's parsing of `client_addr` (checked as in [`Engine::request`]; remembered per
    /// address).
    fn context_builds(&self, ctx: &RequestContext) -> bool {
        let Some(addr) = ctx
            .client_addr
            .as_deref()
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        else {
            return true;
        };
        if let Some(ok) = self.addresses.lock().get(addr) {
            return *ok;
        }
        let ok = Context::from_pairs([(
            "client_addr".to_string(),
            RestrictedExpression::new_ip(addr),
        )])
        .is_ok();
        let mut map = self.addresses.lock();
        if map.len() >= SUBSET_CACHE_CAPACITY {
            map.clear();
        }
        map.insert(addr.to_string(), ok);
        ok
    }

    /// The message decision: the strictest verdict over its statements, with every rule (of that
    /// verdict's mode) that produced it.
    pub fn decide(&self, analysis: &Analysis, ctx: &RequestContext, minute: u64) -> Decision {
        let mut verdict = Verdict::Allow;
        let mut rules: Vec<RuleHit> = Vec::new();
        if let Some(p) = &analysis.failure {
            verdict = Verdict::Deny;
            rules.push(RuleHit {
                id: p.rule.to_string(),
                mode: Mode::Enforce,
                reason: p.reason.clone(),
            });
        }
        let count = analysis.statements.len();
        let mut limits: Vec<RowLimit> = Vec::new();
        for (i, st) in analysis.statements.iter().enumerate() {
            let (hits, limit) = self.judge(st, ctx, minute, i, count);
            // `judge` numbers the limit with the statement's index.
            limits.extend(limit);
            for hit in hits {
                let v = verdict_of(hit.mode);
                if severity(v) > severity(verdict) {
                    verdict = v;
                    rules.retain(|r| verdict_of(r.mode) == v);
                }
                if v == verdict && !rules.iter().any(|r| r.id == hit.id) {
                    rules.push(hit);
                }
            }
        }
        if verdict != Verdict::Deny && !limits.is_empty() {
            // A limit is enforced by counting rows; what cannot be counted is refused.
            let catalog = ctx.catalog();
            let uncountable = limits.iter().find_map(|l| {
                let st = analysis.statements.get(l.statement)?;
                uncountable(st, &catalog).map(|why| (l, why))
            });
            let controls = analysis.statements.len() > 1
                && analysis
                    .statements
                    .iter()
                    .any(|s| matches!(s.kind.as_str(), "transaction" | "copy"));
            let uncountable = uncountable.or_else(|| {
                controls.then(|| (&limits[0], "the message also holds transaction control or COPY, which cannot run in the transaction the gateway opens to count rows; send them as messages of their own".to_string()))
            });
            if let Some((l, why)) = uncountable {
                verdict = Verdict::Deny;
                rules = vec![RuleHit {
                    id: l.rule.clone(),
                    mode: Mode::Enforce,
                    reason: format!(
                        "{}: at most {} rows, but {why}; denied",
                        l.reason, l.max_rows
                    ),
                }];
            }
        }
        if verdict == Verdict::Deny {
            limits.clear();
        }
        let reason = rules.first().map(|r| r.reason.clone()).unwrap_or_default();
        Decision {
            verdict,
            rules,
            reason,
            limits,
            policy_hash: self.policies.hash.clone(),
            normalized: analysis.normalized.clone(),
            fingerprint: analysis.fingerprint.clone(),
            statements: analysis.statements.clone(),
        }
    }

    /// Every rule hit for one statement (engine rules for what could not be analysed, else the
    /// satisfied forbid policies), and the smallest row limit of the satisfied `@max_rows`
    /// rules (which are not hits). A policy that fails to evaluate counts as satisfied
    /// (fail closed).
    fn judge(
        &self,
        facts: &FactsData,
        ctx: &RequestContext,
        minute: u64,
        index: usize,
        count: usize,
    ) -> (Vec<RuleHit>, Option<RowLimit>) {
        if !facts.problems.is_empty() {
            let hits = facts
                .problems
                .iter()
                .map(|p| RuleHit {
                    id: p.rule.to_string(),
                    mode: Mode::Enforce,
                    reason: p.reason.clone(),
                })
                .collect();
            return (hits, None);
        }
        if self.policies.rules.is_empty() {
            return (Vec::new(), None);
        }
        // Only rules whose prefilter allows a match are evaluated; a skipped rule would have
        // evaluated to false without error (see `prefilter`), so the hits are the same.
        let (mask, any) = self.candidates(facts, ctx);
        if !any && self.context_builds(ctx) {
            return (Vec::new(), None);
        }
        let (request, entities) = match self.request(facts, ctx, minute, index, count) {
            Ok(x) => x,
            Err(e) => {
                let hit = RuleHit {
                    id: "parapet.request-error".into(),
                    mode: Mode::Enforce,
                    reason: format!(
                        "the request could not be built for policy evaluation ({e}); denied"
                    ),
                };
                return (vec![hit], None);
            }
        };
        let set = self.subset(mask);
        let response = self.authorizer.is_authorized(&request, &set, &entities);
        let mut hits = Vec::new();
        let mut limit: Option<RowLimit> = None;
        // A satisfied `@max_rows` rule limits instead of refusing; the smallest limit wins.
        let mut limit_by = |meta: &crate::policy::RuleMeta, n: u64| {
            if limit.as_ref().is_none_or(|l| n < l.max_rows) {
                limit = Some(RowLimit {
                    statement: index,
                    max_rows: n,
                    rule: meta.id.clone(),
                    reason: meta.reason.clone(),
                    write: crate::analyze::facts::is_write_kind(&facts.kind),
                });
            }
        };
        // Cedar reports satisfied rules in no particular order: use the order of the sources.
        let mut satisfied: Vec<&cedar_policy::PolicyId> = response.diagnostics().reason().collect();
        satisfied.sort_by_key(|pid| source_order(pid));
        for pid in satisfied {
            if let Some(meta) = self.policies.rules.get(pid) {
                if let Some(n) = meta.max_rows {
                    limit_by(meta, n);
                    continue;
                }
                hits.push(RuleHit {
                    id: meta.id.clone(),
                    mode: meta.mode,
                    reason: meta.reason.clone(),
                });
            }
        }
        for err in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = err;
            if let Some(meta) = self.policies.rules.get(e.policy_id()) {
                if let Some(n) = meta.max_rows {
                    // Treated as matched: the limit applies.
                    limit_by(meta, n);
                    continue;
                }
                hits.push(RuleHit {
                    id: meta.id.clone(),
                    mode: meta.mode,
                    reason: format!(
                        "{} (rule could not be evaluated: {}; treated as matched)",
                        meta.reason,
                        e.inner()
                    ),
                });
            }
        }
        (hits, limit)
    }

    fn request(
        &self,
        f: &FactsData,
        ctx: &RequestContext,
        minute: u64,
        index: usize,
        count: usize,
    ) -> Result<(Request, Entities), String> {
        let t = self
            .types
            .as_ref()
            .ok_or_else(|| "entity type names do not parse".to_string())?;
        let err = |e: &dyn std::fmt::Display| e.to_string();

        let mut entities: Vec<Entity> = Vec::new();
        let mut parents = HashSet::new();
        for g in &ctx.groups {
            let uid = EntityUid::from_type_name_and_id(t.group.clone(), EntityId::new(g));
            parents.insert(uid.clone());
            entities.push(Entity::new_no_attrs(uid, HashSet::new()));
        }
        let principal = EntityUid::from_type_name_and_id(t.user.clone(), EntityId::new(&ctx.user));
        entities.push(Entity::new_no_attrs(principal.clone(), parents));
        let resource =
            EntityUid::from_type_name_and_id(t.target.clone(), EntityId::new(&ctx.target));
        entities.push(
            Entity::new(
                resource.clone(),
                HashMap::from([(
                    "environment".to_string(),
                    RestrictedExpression::new_string(ctx.environment.clone()),
                )]),
                HashSet::new(),
            )
            .map_err(|e| err(&e))?,
        );
        let table_uid =
            |full: &String, entities: &mut Vec<Entity>| -> Result<RestrictedExpression, String> {
                let uid = EntityUid::from_type_name_and_id(t.table.clone(), EntityId::new(full));
                let (schema, name) = full.split_once('.').unwrap_or(("public", full));
                entities.push(
                    Entity::new(
                        uid.clone(),
                        HashMap::from([
                            (
                                "schema".to_string(),
                                RestrictedExpression::new_string(schema.into()),
                            ),
                            (
                                "name".to_string(),
                                RestrictedExpression::new_string(name.into()),
                            ),
                        ]),
                        HashSet::new(),
                    )
                    .map_err(|e| err(&e))?,
                );
                Ok(RestrictedExpression::new_entity_uid(uid))
            };
        let mut reads = Vec::new();
        for r in &f.reads {
            reads.push(table_uid(r, &mut entities)?);
        }
        let mut writes = Vec::new();
        for w in &f.writes {
            if f.reads.contains(w) {
                let uid = EntityUid::from_type_name_and_id(t.table.clone(), EntityId::new(w));
                writes.push(RestrictedExpression::new_entity_uid(uid));
            } else {
                writes.push(table_uid(w, &mut entities)?);
            }
        }

        let strs = |s: &BTreeSet<String>| {
            RestrictedExpression::new_set(
                s.iter()
                    .map(|x| RestrictedExpression::new_string(x.clone())),
            )
        };
        let b = RestrictedExpression::new_bool;
        let mut pairs: Vec<(String, RestrictedExpression)> = vec![
            (
                "kind".into(),
                RestrictedExpression::new_string(f.kind.clone()),
            ),
            ("kinds".into(), strs(&f.kinds)),
            ("reads".into(), RestrictedExpression::new_set(reads)),
            ("writes".into(), RestrictedExpression::new_set(writes)),
            ("read_names".into(), strs(&f.reads)),
            ("write_names".into(), strs(&f.writes)),
            ("schemas".into(), strs(&f.schemas())),
            ("functions".into(), strs(&f.functions)),
            ("function_names".into(), strs(&f.function_names)),
            ("has_where".into(), b(f.has_where)),
            ("update_without_where".into(), b(f.update_without_where)),
            ("delete_without_where".into(), b(f.delete_without_where)),
            (
                "copy_direction".into(),
                RestrictedExpression::new_string(f.copy_direction.clone()),
            ),
            ("copy_server_file".into(), b(f.copy_server_file)),
            ("copy_program".into(), b(f.copy_program)),
            ("object_types".into(), strs(&f.object_types)),
            ("set_variables".into(), strs(&f.set_variables)),
            ("extensions".into(), strs(&f.extensions)),
            ("languages".into(), strs(&f.languages)),
            ("integrity_bypass".into(), strs(&f.integrity_bypass)),
            ("egress".into(), strs(&f.egress)),
            ("ownership_change".into(), b(f.ownership_change)),
            ("security_definer".into(), b(f.security_definer)),
            ("catalog_write".into(), b(f.catalog_write)),
            ("nested".into(), b(f.nested)),
            ("dynamic_sql".into(), b(f.dynamic_sql)),
            ("has_parameters".into(), b(f.has_parameters)),
            (
                "statement_index".into(),
                RestrictedExpression::new_long(i64::try_from(index).unwrap_or(i64::MAX)),
            ),
            (
                "statement_count".into(),
                RestrictedExpression::new_long(i64::try_from(count).unwrap_or(i64::MAX)),
            ),
            (
                "application_name".into(),
                RestrictedExpression::new_string(ctx.application_name.clone()),
            ),
            ("time".into(), time_record(minute)),
        ];
        if let Some(addr) = ctx
            .client_addr
            .as_deref()
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        {
            pairs.push(("client_addr".into(), RestrictedExpression::new_ip(addr)));
        }
        let context = Context::from_pairs(pairs).map_err(|e| err(&e))?;
        let request = Request::new(principal, t.action.clone(), resource, context, None)
            .map_err(|e| err(&e))?;
        let entities = Entities::from_entities(entities, None).map_err(|e| err(&e))?;
        Ok((request, entities))
    }
}

/// Sort key of an internal policy id `"<source>:<index>"` (see `policy::compile`).
fn source_order(pid: &cedar_policy::PolicyId) -> (usize, usize) {
    let s: &str = pid.as_ref();
    s.split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((usize::MAX, usize::MAX))
}

/// `context.time` for a UTC minute since the epoch.
fn time_record(minute: u64) -> RestrictedExpression {
    let days = i64::try_from(minute / 1440).unwrap_or(0);
    let in_day = minute % 1440;
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (ISO weekday 4).
    let weekday = (days + 3).rem_euclid(7) + 1;
    let stamp = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:00Z",
        in_day / 60,
        in_day % 60
    );
    let fields = [
        ("now".to_string(), RestrictedExpression::new_datetime(stamp)),
        (
            "hour".to_string(),
            RestrictedExpression::new_long(i64::try_from(in_day / 60).unwrap_or(0)),
        ),
        (
            "minute".to_string(),
            RestrictedExpression::new_long(i64::try_from(in_day % 60).unwrap_or(0)),
        ),
        (
            "weekday".to_string(),
            RestrictedExpression::new_long(weekday),
        ),
    ];
    // Field names are distinct, so this cannot fail; fall back to an empty record anyway.
    RestrictedExpression::new_record(fields.clone())
        .unwrap_or_else(|_| RestrictedExpression::new_set(Vec::new()))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm;
/// hand-written to avoid a date crate for one conversion).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules of every prefilter shape, plus ones with no prefilter and ones that can error.
    const EXTRA: &str = r#"
@id("t.writes") @mode("monitor") forbid (principal, action, resource) when { context.write_names.contains("public.users") };
@id("t.group-delete") forbid (principal, action, resource) when { principal in Parapet::Group::"ops" && context.kind == "delete" };
@id("t.env-alter") @mode("review") forbid (principal, action, resource) when { resource.environment == "production" && context.kinds.contains("alter") };
@id("t.fn-or-app") forbid (principal, action, resource) when { context.function_names.contains("now") || context.application_name == "bad" };
@id("t.user") @mode("monitor") forbid (principal, action, resource) when { principal == Parapet::User::"bob" && context.schemas.contains("public") };
@id("t.reads") @mode("review") forbid (principal, action, resource) when { context.read_names.containsAny(["public.orders", "public.t"]) && context.has_where };
@id("t.copy") forbid (principal, action, resource) when { context.copy_direction == "to" && context.nested };
@id("t.time") @mode("monitor") forbid (principal, action, resource) when { context.time.hour >= 0 && context.kinds.contains("insert") };
@id("t.err") forbid (principal, action, resource) when { context.kinds.contains("update") && context.statement_count * 9223372036854775807 * 2 > 0 };
@id("t.addr") @mode("review") forbid (principal, action, resource) when { context has client_addr && context.client_addr.isLoopback() };
@id("t.unless") @mode("monitor") forbid (principal, action, resource) when { context.kind == "select" } unless { principal in Parapet::Group::"eng" };
"#;

    #[test]
    fn prefilter_changes_no_decision() {
        let compiled = || {
            crate::policy::compile_texts(&[
                (
                    crate::policy::DEFAULT_PACK_NAME,
                    crate::policy::DEFAULT_PACK,
                ),
                ("extra.cedar", EXTRA),
            ])
            .unwrap()
        };
        let fast = Engine::new(compiled(), 0);
        let mut full = Engine::new(compiled(), 0);
        full.use_prefilter = false;
        assert!(fast.index.iter().filter(|(_, f)| f.is_some()).count() > 15);
        let corpus = include_str!("../tests/data/corpus.tsv");
        let mut sqls: Vec<String> = corpus
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.splitn(3, '\t').nth(2))
            .map(|s| s.replace("\\n", "\n"))
            .collect();
        sqls.push("COPY (SELECT 1) TO '/tmp/x'".into());
        assert!(sqls.len() > 150);
        let base = RequestContext {
            user: "alice".into(),
            groups: vec!["eng".into()],
            target: "main".into(),
            environment: "production".into(),
            client_addr: Some("127.0.0.1".into()),
            application_name: "psql".into(),
            catalog: None,
        };
        let mut ctxs = vec![base.clone()];
        let mut c = base.clone();
        c.user = "bob".into();
        c.groups = vec!["ops".into(), "ops".into()];
        c.environment = "staging".into();
        c.client_addr = None;
        c.application_name = "bad".into();
        ctxs.push(c);
        let mut c = base.clone();
        c.client_addr = Some("::ffff:1.2.3.4".into());
        ctxs.push(c);
        let mut c = base;
        c.client_addr = Some("not an address".into());
        c.groups = Vec::new();
        ctxs.push(c);
        let mut fired = 0;
        for sql in &sqls {
            let analysis = crate::analyze::analyze(sql);
            for ctx in &ctxs {
                let a = serde_json::to_value(fast.decide(&analysis, ctx, 29_000_000)).unwrap();
                let b = serde_json::to_value(full.decide(&analysis, ctx, 29_000_000)).unwrap();
                assert_eq!(a, b, "{sql} {ctx:?}");
                fired += usize::from(a["rules"].as_array().is_some_and(|r| !r.is_empty()));
            }
        }
        assert!(fired > 100, "{fired}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
