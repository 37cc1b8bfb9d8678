//! `parapet policy …`: check policy files against the schema, evaluate statements from JSON
//! lines, and replay an audit log under a proposed policy set.

use anyhow::Context as _;
use parapet_gateway::events::{Fed, TextReassembler};
use parapet_guard::{Guard, GuardError, PolicySource, RequestContext, Verdict};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Which policies to use (shared by every subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Cedar policy file (repeat for several); added to the default pack unless it is turned off.
    #[arg(long = "policy", value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    /// Leave out the built-in default pack (unparseable / unanalysable SQL is still denied).
    #[arg(long)]
    pub no_default_pack: bool,
    /// Run a rule in another mode than its `@mode`, as `[policy] modes` does: `ID=MODE` with
    /// MODE `enforce`, `monitor` or `review` (repeat for several).
    #[arg(long = "mode", value_name = "ID=MODE", value_parser = parse_mode)]
    pub modes: Vec<(String, parapet_guard::Mode)>,
}

/// Parses `--mode ID=MODE`.
fn parse_mode(s: &str) -> Result<(String, parapet_guard::Mode), String> {
    let (id, mode) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=MODE (e.g. parapet.drop=review)"))?;
    let mode = match mode {
        "enforce" => parapet_guard::Mode::Enforce,
        "monitor" => parapet_guard::Mode::Monitor,
        "review" => parapet_guard::Mode::Review,
        other => {
            return Err(format!(
                "{other:?} is not a mode; use enforce, monitor or review"
            ))
        }
    };
    Ok((id.to_string(), mode))
}

impl PolicyArgs {
    fn source(&self) -> PolicySource {
        PolicySource {
            files: self.policy.clone(),
            default_pack: !self.no_default_pack,
            modes: self.modes.iter().cloned().collect(),
        }
    }
}

/// `parapet policy` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate policies against the schema; errors are printed as file:line:column.
    Check {
        #[command(flatten)]
        policies: PolicyArgs,
    },
    /// Judge statements read as JSON lines on stdin; write one JSON decision line per input.
    Eval {
        #[command(flatten)]
        policies: PolicyArgs,
    },
    /// Re-judge every statement of an audit log under a proposed policy set and show what changes.
    Replay {
        /// Audit log directory (written by the gateway).
        #[arg(long, value_name = "DIR")]
        log: PathBuf,
        #[command(flatten)]
        policies: PolicyArgs,
        /// Print one machine-readable JSON object instead of the report.
        #[arg(long)]
        json: bool,
        /// Examples to show per rule.
        #[arg(long, default_value_t = 3)]
        examples: usize,
    },
    /// Print the Cedar schema policies are checked against.
    Schema {},
    /// Print the built-in default pack.
    DefaultPack {},
}

/// Runs `parapet policy …`.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { policies } => check(&policies),
        PolicyCommand::Eval { policies } => eval(&policies),
        PolicyCommand::Replay {
            log,
            policies,
            json,
            examples,
        } => replay(&log, &policies, json, examples),
        PolicyCommand::Schema {} => {
            crate::out!("{}", parapet_guard::SCHEMA)?;
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::DefaultPack {} => {
            crate::out!("{}", parapet_guard::DEFAULT_PACK)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the guard; policy errors are printed one per line (file:line:column: message).
fn load(policies: &PolicyArgs) -> anyhow::Result<Result<Guard, ExitCode>> {
    match Guard::load(&policies.source()) {
        Ok(g) => Ok(Ok(g)),
        Err(GuardError::Invalid { errors }) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "parapet: error: policy set refused: {} error(s); fix them and run `parapet policy check` again",
                errors.len()
            );
            Ok(Err(ExitCode::FAILURE))
        }
        Err(e) => Err(e.into()),
    }
}

fn check(policies: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let guard = match load(policies)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let rules = guard.rules();
    crate::outln!(
        "ok: {} rule(s) valid against the Parapet schema{}; policy hash {}",
        rules.len(),
        if policies.no_default_pack {
            ""
        } else {
            " (default pack included)"
        },
        guard.policy_hash()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// One input line of `policy eval` (and the request fields of a decision event).
#[derive(Debug, Deserialize, Default)]
struct EvalInput {
    sql: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    client_addr: Option<String>,
    #[serde(default)]
    application_name: Option<String>,
}

impl EvalInput {
    fn context(&self) -> RequestContext {
        RequestContext {
            user: self.user.clone().unwrap_or_default(),
            groups: self.groups.clone().unwrap_or_default(),
            target: self.target.clone().unwrap_or_default(),
            environment: self.environment.clone().unwrap_or_default(),
            client_addr: self.client_addr.clone().filter(|a| !a.is_empty()),
            application_name: self.application_name.clone().unwrap_or_default(),
            catalog: None,
        }
    }
}

fn eval(policies: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let guard = match load(policies)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut bad = 0usize;
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Result<EvalInput, String> =
            serde_json::from_str(&line).map_err(|e| e.to_string());
        let value = match parsed {
            Ok(EvalInput { sql: None, .. }) => {
                bad += 1;
                json!({"error": format!("line {}: missing \"sql\"; each line must be a JSON object like {{\"sql\": \"SELECT 1\"}}", n + 1)})
            }
            Err(e) => {
                bad += 1;
                json!({"error": format!("line {}: not a JSON object ({e}); each line must be like {{\"sql\": \"SELECT 1\"}}", n + 1)})
            }
            Ok(input) => {
                let sql = input.sql.clone().unwrap_or_default();
                let d = guard.decide(&sql, &input.context());
                json!({
                    "decision": d.verdict,
                    "rules": d.rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                    "reason": d.reason,
                    "statements": d.statements,
                    "rule_details": d.rules,
                    "policy_hash": d.policy_hash,
                    "normalized": d.normalized,
                    "fingerprint": d.fingerprint,
                })
            }
        };
        serde_json::to_writer(&mut out, &value)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(crate::cli::out::stdout_error)?;
    }
    if bad > 0 {
        eprintln!(
            "parapet: error: {bad} input line(s) could not be read (see the \"error\" lines)"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn blocks(v: Verdict) -> bool {
    matches!(v, Verdict::Deny | Verdict::Review)
}

#[derive(Default, serde::Serialize)]
struct RuleChange {
    count: u64,
    examples: Vec<String>,
}

#[derive(Default, serde::Serialize)]
struct ReplayReport {
    log: String,
    policy_hash: String,
    entries: u64,
    decisions: u64,
    skipped_other_events: u64,
    /// `statement_text` entries: parts of long statements, replayed with their decisions.
    statement_text_parts: u64,
    unreadable_entries: u64,
    unchanged: u64,
    newly_blocked: u64,
    newly_allowed: u64,
    changed_otherwise: u64,
    /// Decisions without a readable `time`, judged at the current time instead.
    judged_at_current_time: u64,
    /// Decisions let through by an approval or a maintenance window (recorded `allow`, naming
    /// it): compared as the `review` the policies decided.
    approved_decisions: u64,
    /// Approval events (`approval_request`, `approval_granted`, …), by type.
    approval_events: BTreeMap<String, u64>,
    /// Newly blocked, by the proposed rule that blocks.
    newly_blocked_by_rule: BTreeMap<String, RuleChange>,
    /// Newly allowed, by the recorded rule that no longer blocks.
    newly_allowed_by_rule: BTreeMap<String, RuleChange>,
}

fn note(map: &mut BTreeMap<String, RuleChange>, rule: &str, sql: &str, max: usize) {
    let c = map.entry(rule.to_string()).or_default();
    c.count += 1;
    // Examples are for reading: a long statement is shown by its first 200 characters.
    let example = match sql.char_indices().nth(200) {
        Some((cut, _)) => format!("{}… ({} bytes)", &sql[..cut], sql.len()),
        None => sql.to_string(),
    };
    if c.examples.len() < max && !c.examples.contains(&example) {
        c.examples.push(example);
    }
}

/// The `time` of an audit event (RFC 3339), if it has a readable one.
fn event_time(event: &Value) -> Option<std::time::SystemTime> {
    let text = event.get("time")?.as_str()?;
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.into())
}

fn replay(
    dir: &std::path::Path,
    policies: &PolicyArgs,
    as_json: bool,
    examples: usize,
) -> anyhow::Result<ExitCode> {
    let guard = match load(policies)? {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let reader = parapet_log::LogReader::open(dir)
        .with_context(|| format!("opening audit log {}", dir.display()))?;
    let size = reader.size();
    let mut rep = ReplayReport {
        log: dir.display().to_string(),
        policy_hash: guard.policy_hash(),
        ..ReplayReport::default()
    };
    // Statement texts stored in parts are put back together before their decisions.
    let mut texts = TextReassembler::new();
    for entry in reader.entries(0, size) {
        let (index, bytes) =
            entry.with_context(|| format!("reading entries of {}", dir.display()))?;
        rep.entries += 1;
        let Ok(event) = serde_json::from_slice::<Value>(&bytes) else {
            rep.unreadable_entries += 1;
            continue;
        };
        let whole = match texts.feed(&event) {
            Ok(Fed::Decision(whole)) => whole,
            Ok(Fed::Part) => {
                rep.statement_text_parts += 1;
                continue;
            }
            Ok(Fed::Other) => {
                rep.skipped_other_events += 1;
                if let Some(t) = event
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|t| t.starts_with("approval_"))
                {
                    *rep.approval_events.entry(t.to_string()).or_default() += 1;
                }
                continue;
            }
            Err(e) => {
                eprintln!("parapet: entry {index}: {e}; the decision is not replayed");
                rep.unreadable_entries += 1;
                continue;
            }
        };
        let Some(sql) = whole.sql.as_deref().or(whole.normalized.as_deref()) else {
            rep.unreadable_entries += 1;
            continue;
        };
        let old: Option<Verdict> = event
            .get("decision")
            .and_then(|d| serde_json::from_value(d.clone()).ok());
        let Some(mut old) = old else {
            rep.unreadable_entries += 1;
            continue;
        };
        rep.decisions += 1;
        // Let through by an approval or a window: the policies had said review.
        let approved = event
            .pointer("/approval/use")
            .and_then(Value::as_str)
            .is_some_and(|u| u == "once" || u == "window");
        if approved && old == Verdict::Allow {
            old = Verdict::Review;
            rep.approved_decisions += 1;
        }
        let input: EvalInput = serde_json::from_value(event.clone()).unwrap_or_default();
        // Judged at the time of the original decision, so time-based rules replay faithfully.
        let new = match event_time(&event) {
            Some(at) => guard.decide_at(sql, &input.context(), at),
            None => {
                rep.judged_at_current_time += 1;
                guard.decide(sql, &input.context())
            }
        };
        let old_rules: Vec<String> = parapet_gateway::events::rule_ids(&event)
            .map(str::to_string)
            .collect();
        match (blocks(old), blocks(new.verdict)) {
            (false, true) => {
                rep.newly_blocked += 1;
                for r in &new.rules {
                    note(&mut rep.newly_blocked_by_rule, &r.id, sql, examples);
                }
            }
            (true, false) => {
                rep.newly_allowed += 1;
                if old_rules.is_empty() {
                    note(
                        &mut rep.newly_allowed_by_rule,
                        "(none recorded)",
                        sql,
                        examples,
                    );
                }
                for r in &old_rules {
                    note(&mut rep.newly_allowed_by_rule, r, sql, examples);
                }
            }
            _ if old == new.verdict => rep.unchanged += 1,
            _ => rep.changed_otherwise += 1,
        }
    }
    if as_json {
        crate::outln!("{}", serde_json::to_string_pretty(&rep)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!("Replayed {} under policy set {}", rep.log, rep.policy_hash)?;
    crate::outln!(
        "  {} entries: {} decisions, {} parts of long statements, {} other events skipped, {} unreadable",
        rep.entries,
        rep.decisions,
        rep.statement_text_parts,
        rep.skipped_other_events,
        rep.unreadable_entries
    )?;
    crate::outln!(
        "  unchanged {}, newly blocked {}, newly allowed {}, other changes {}",
        rep.unchanged,
        rep.newly_blocked,
        rep.newly_allowed,
        rep.changed_otherwise
    )?;
    if rep.approved_decisions > 0 || !rep.approval_events.is_empty() {
        let steps: Vec<String> = rep
            .approval_events
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        crate::outln!(
            "  approvals: {} decisions let through by an approval or window (compared as review); events: {}",
            rep.approved_decisions,
            if steps.is_empty() { "none".to_string() } else { steps.join(", ") }
        )?;
    }
    if rep.judged_at_current_time > 0 {
        crate::outln!(
            "  {} decisions had no readable time and were judged at the current time",
            rep.judged_at_current_time
        )?;
    }
    for (title, map) in [
        ("Newly blocked, by rule", &rep.newly_blocked_by_rule),
        (
            "Newly allowed, by rule that no longer blocks",
            &rep.newly_allowed_by_rule,
        ),
    ] {
        if map.is_empty() {
            continue;
        }
        crate::outln!("\n{title}:")?;
        for (rule, c) in map {
            crate::outln!("  {rule}: {}", c.count)?;
            for e in &c.examples {
                crate::outln!("      e.g. {}", e.replace('\n', " "))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
