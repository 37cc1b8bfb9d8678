//! Policy sets: loading Cedar files and the embedded default pack, checking them against the
//! Parapet schema, reading the annotations Cedar itself does not interpret (`@id`, `@reason`,
//! `@mode`, `@approvers`), and hashing the set so every decision names the exact policy version.

use crate::{GuardError, Mode, PolicySource};
use cedar_policy::{Effect, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The default guardrail pack (also shipped as `policies/default.cedar`).
pub const DEFAULT_PACK: &str = include_str!("../../../policies/default.cedar");
/// The Parapet Cedar schema (also shipped as `policies/schema.cedarschema`).
pub const SCHEMA: &str = include_str!("../../../policies/schema.cedarschema");
/// Name under which the built-in pack appears in errors.
pub const DEFAULT_PACK_NAME: &str = "<built-in default pack>";

/// The parsed schema (parsed once).
pub fn schema() -> Result<&'static Schema, GuardError> {
    static SCHEMA_CELL: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA_CELL
        .get_or_init(|| {
            Schema::from_cedarschema_str(SCHEMA)
                .map(|(s, _warnings)| s)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| GuardError::Schema(e.clone()))
}

/// One problem in a policy file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiagnostic {
    /// File (or [`DEFAULT_PACK_NAME`]).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// What Parapet knows about one rule (from its annotations).
#[derive(Debug, Clone)]
pub struct RuleMeta {
    /// `@id`.
    pub id: String,
    /// `@mode` (default enforce).
    pub mode: Mode,
    /// `@reason` (default: "blocked by rule `<id>`").
    pub reason: String,
    /// `@approvers("dba,security")`: the groups whose members may approve what this `review`
    /// rule holds (empty: the gateway's configured default approvers).
    pub approvers: Vec<String>,
    /// `@max_rows("N")`: the rule does not deny what it matches but limits it to N rows
    /// (changed, for a write; returned, for a read); the gateway enforces it (see
    /// [`crate::RowLimit`]).
    pub max_rows: Option<u64>,
    /// File the rule came from.
    pub file: String,
    /// Line of the rule in that file.
    pub line: usize,
}

/// A checked policy set, ready to evaluate.
#[derive(Debug)]
pub struct CompiledPolicies {
    /// The Cedar policies (ids are internal; see `rules`).
    pub set: PolicySet,
    /// Annotations per internal policy id.
    pub rules: HashMap<PolicyId, RuleMeta>,
    /// SHA-256 (hex) of the policy sources and the schema.
    pub hash: String,
}

struct Source {
    name: String,
    text: String,
}

/// Reads, parses, checks and hashes the policy set described by `source`.
pub fn compile(source: &PolicySource) -> Result<CompiledPolicies, GuardError> {
    let mut sources = Vec::new();
    if source.default_pack {
        sources.push(Source {
            name: DEFAULT_PACK_NAME.to_string(),
            text: DEFAULT_PACK.to_string(),
        });
    }
    for path in &source.files {
        let text = std::fs::read_to_string(path).map_err(|e| GuardError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        sources.push(Source {
            name: path.display().to_string(),
            text,
        });
    }
    let mut compiled = compile_sources(&sources)?;
    override_modes(&mut compiled, &source.modes)?;
    Ok(compiled)
}

/// Sets the modes named in `[policy] modes` over the rules' `@mode`, and folds them into the
/// policy set's hash (decisions name the policies as run).
fn override_modes(
    compiled: &mut CompiledPolicies,
    modes: &std::collections::BTreeMap<String, Mode>,
) -> Result<(), GuardError> {
    if modes.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for (id, mode) in modes {
        let mut found = false;
        for meta in compiled.rules.values_mut().filter(|m| &m.id == id) {
            found = true;
            if meta.max_rows.is_some() && *mode != Mode::Enforce {
                errors.push(PolicyDiagnostic {
                    file: "[policy] modes".into(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "rule {id} has @max_rows, which limits rows instead of refusing, so it runs only as \"enforce\"; remove it from [policy] modes"
                    ),
                });
                continue;
            }
            meta.mode = *mode;
            if *mode != Mode::Review {
                meta.approvers.clear();
            }
        }
        if !found {
            errors.push(PolicyDiagnostic {
                file: "[policy] modes".into(),
                line: 0,
                column: 0,
                message: format!(
                    "no rule has @id(\"{id}\"); name a rule of the policy set (see `parapet policy check`)"
                ),
            });
        }
    }
    if !errors.is_empty() {
        return Err(GuardError::Invalid { errors });
    }
    let mut h = Sha256::new();
    h.update(b"parapet-policy-modes-v1\n");
    h.update(compiled.hash.as_bytes());
    for (id, mode) in modes {
        h.update(format!("\n{id}={mode:?}").as_bytes());
    }
    compiled.hash = hex::encode(h.finalize());
    Ok(())
}

/// Compiles in-memory policy texts (`(name, text)`), e.g. for tests and benchmarks.
pub fn compile_texts(texts: &[(&str, &str)]) -> Result<CompiledPolicies, GuardError> {
    let sources: Vec<Source> = texts
        .iter()
        .map(|(n, t)| Source {
            name: n.to_string(),
            text: t.to_string(),
        })
        .collect();
    compile_sources(&sources)
}

fn compile_sources(sources: &[Source]) -> Result<CompiledPolicies, GuardError> {
    let schema = schema()?;
    let mut diags: Vec<PolicyDiagnostic> = Vec::new();
    let mut set = PolicySet::new();
    let mut rules: HashMap<PolicyId, RuleMeta> = HashMap::new();
    let mut seen_ids: HashMap<String, (String, usize)> = HashMap::new();
    // internal id → (source index, policy start offset)
    let mut origin: HashMap<PolicyId, (usize, usize)> = HashMap::new();

    for (si, src) in sources.iter().enumerate() {
        let parsed = match PolicySet::from_str(&src.text) {
            Ok(p) => p,
            Err(errs) => {
                for e in errs.iter() {
                    diags.push(diagnostic(&src.name, &src.text, e, 0));
                }
                continue;
            }
        };
        let starts = policy_starts(&src.text);
        if parsed.templates().next().is_some() {
            diags.push(at(
                &src.name,
                &src.text,
                0,
                "policy templates (?principal / ?resource slots) are not supported; write plain forbid policies",
            ));
        }
        let count = parsed.policies().count();
        for i in 0..count {
            let Some(policy) = parsed.policy(&PolicyId::new(format!("policy{i}"))) else {
                continue;
            };
            let start = starts.get(i).copied().unwrap_or(0);
            let (line, _) = line_col(&src.text, start);
            if policy.effect() != Effect::Forbid {
                diags.push(at(&src.name, &src.text, start,
                    "permit policies are not used: Parapet rules are `forbid` policies and everything not forbidden is allowed; turn this into a forbid"));
                continue;
            }
            let Some(id) = policy.annotation("id").map(str::to_string) else {
                diags.push(at(&src.name, &src.text, start,
                    "rule has no @id(\"…\") annotation; give every rule a stable id, e.g. @id(\"team.no-drop\")"));
                continue;
            };
            if id.trim().is_empty() {
                diags.push(at(&src.name, &src.text, start, "@id must not be empty"));
                continue;
            }
            let mode = match policy.annotation("mode") {
                None => Mode::Enforce,
                Some("enforce") => Mode::Enforce,
                Some("monitor") => Mode::Monitor,
                Some("review") => Mode::Review,
                Some(other) => {
                    diags.push(at(&src.name, &src.text, start, &format!(
                        "@mode(\"{other}\") is not a mode; use \"enforce\", \"monitor\" or \"review\"")));
                    continue;
                }
            };
            if let Some((file, l)) = seen_ids.get(&id) {
                diags.push(at(&src.name, &src.text, start, &format!(
                    "@id(\"{id}\") is already used by the rule at {file}:{l}; rule ids must be unique")));
                continue;
            }
            seen_ids.insert(id.clone(), (src.name.clone(), line));
            let reason = policy
                .annotation("reason")
                .map(str::to_string)
                .unwrap_or_else(|| format!("blocked by rule {id}"));
            let approvers = match policy.annotation("approvers") {
                None => Vec::new(),
                Some(list) => {
                    let groups = parse_approvers(list);
                    if groups.is_empty() {
                        diags.push(at(&src.name, &src.text, start,
                            "@approvers(\"…\") names no group; list the approver groups separated by commas, e.g. @approvers(\"dba,security\")"));
                        continue;
                    }
                    if mode != Mode::Review {
                        diags.push(at(&src.name, &src.text, start,
                            "@approvers is only meaningful on a @mode(\"review\") rule; remove it or make the rule a review rule"));
                        continue;
                    }
                    groups
                }
            };
            let max_rows = match policy.annotation("max_rows") {
                None => None,
                Some(n) => match parse_max_rows(n) {
                    Some(n) if mode == Mode::Enforce => Some(n),
                    Some(_) => {
                        diags.push(at(&src.name, &src.text, start,
                            "@max_rows limits what a rule matches instead of refusing it, so it cannot be combined with @mode(\"monitor\") or @mode(\"review\"); remove the @mode"));
                        continue;
                    }
                    None => {
                        diags.push(at(&src.name, &src.text, start, &format!(
                            "@max_rows(\"{n}\") is not a row count; give a whole number from 0 to {MAX_ROWS_LIMIT}, e.g. @max_rows(\"1000\")")));
                        continue;
                    }
                },
            };
            let internal = PolicyId::new(format!("{si}:{i}"));
            let renamed = policy.new_id(internal.clone());
            if let Err(e) = set.add(renamed) {
                diags.push(at(&src.name, &src.text, start, &e.to_string()));
                continue;
            }
            origin.insert(internal.clone(), (si, start));
            rules.insert(
                internal,
                RuleMeta {
                    id,
                    mode,
                    reason,
                    approvers,
                    max_rows,
                    file: src.name.clone(),
                    line,
                },
            );
        }
    }

    if diags.is_empty() {
        let validator = Validator::new(schema.clone());
        let result = validator.validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let (si, start) = origin.get(e.policy_id()).copied().unwrap_or((0, 0));
            let src = &sources[si];
            diags.push(diagnostic(&src.name, &src.text, e, start));
        }
    }
    if !diags.is_empty() {
        return Err(GuardError::Invalid { errors: diags });
    }

    let mut h = Sha256::new();
    h.update(b"parapet-policy-set-v1\n");
    h.update((SCHEMA.len() as u64).to_be_bytes());
    h.update(SCHEMA.as_bytes());
    for s in sources {
        h.update((s.text.len() as u64).to_be_bytes());
        h.update(s.text.as_bytes());
    }
    Ok(CompiledPolicies {
        set,
        rules,
        hash: hex::encode(h.finalize()),
    })
}

/// The largest `@max_rows` accepted (larger limits are no limit at all).
pub const MAX_ROWS_LIMIT: u64 = 1_000_000_000_000;

/// The row count of a `@max_rows("N")` annotation: a whole number, `_` allowed between digits.
pub fn parse_max_rows(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty()
        || t.starts_with('_')
        || t.ends_with('_')
        || !t.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    t.replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|&n| n <= MAX_ROWS_LIMIT)
}

/// The groups of an `@approvers("a, b")` annotation: comma-separated, trimmed, empty parts
/// dropped, duplicates removed (first occurrence kept).
pub fn parse_approvers(list: &str) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for g in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        if !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups
}

/// A diagnostic from a Cedar error, positioned by its first label (or `fallback` offset).
fn diagnostic(file: &str, text: &str, e: &dyn Diagnostic, fallback: usize) -> PolicyDiagnostic {
    let offset = e
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .unwrap_or(fallback);
    let mut message = e.to_string();
    if let Some(help) = e.help() {
        message.push_str("; ");
        message.push_str(&help.to_string());
    }
    at(file, text, offset, &message)
}

fn at(file: &str, text: &str, offset: usize, message: &str) -> PolicyDiagnostic {
    let (line, column) = line_col(text, offset);
    PolicyDiagnostic {
        file: file.to_string(),
        line,
        column,
        message: message.to_string(),
    }
}

/// 1-based (line, column) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

/// Byte offsets where each policy of a Cedar file starts (first token after the previous `;`),
/// skipping comments and string literals. Cedar has no `;` inside a policy outside strings and
/// comments, so this matches the parser's numbering (`policy0`, `policy1`, …).
fn policy_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    let mut expecting = true;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if expecting {
            starts.push(i);
            expecting = false;
        }
        if c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
        } else if c == b';' {
            expecting = true;
        }
        i += 1;
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pack_compiles() {
        let c = compile(&PolicySource {
            files: vec![],
            default_pack: true,
            modes: Default::default(),
        })
        .unwrap();
        assert!(c.rules.values().any(|r| r.id == "parapet.drop"));
        assert_eq!(c.hash.len(), 64);
    }

    #[test]
    fn starts_skip_comments_and_strings() {
        let t = "// a; b\n@id(\"x;y\")\nforbid(principal,action,resource);\n\n  forbid(principal,action,resource) when {\"a;\" == \"b\"};";
        let s = policy_starts(t);
        assert_eq!(s.len(), 2);
        assert_eq!(line_col(t, s[0]).0, 2);
        assert_eq!(line_col(t, s[1]), (5, 3));
    }

    #[test]
    fn approvers_are_read_and_checked() {
        let c = compile_texts(&[(
            "team.cedar",
            "@id(\"r\")\n@mode(\"review\")\n@approvers(\" dba, security,,dba \")\nforbid(principal, action, resource);\n",
        )])
        .unwrap();
        let r = c.rules.values().next().unwrap();
        assert_eq!(r.approvers, vec!["dba".to_string(), "security".to_string()]);
        for bad in [
            "@id(\"r\")\n@mode(\"review\")\n@approvers(\" , \")\nforbid(principal, action, resource);\n",
            "@id(\"r\")\n@approvers(\"dba\")\nforbid(principal, action, resource);\n",
        ] {
            assert!(compile_texts(&[("team.cedar", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_have_lines() {
        let err = compile_texts(&[(
            "team.cedar",
            "@id(\"a\")\nforbid(principal, action, resource)\nwhen { context.kindz.contains(\"drop\") };\n",
        )])
        .unwrap_err();
        let GuardError::Invalid { errors } = err else {
            panic!("wrong error")
        };
        assert_eq!(errors[0].file, "team.cedar");
        assert_eq!(errors[0].line, 3, "{errors:?}");
    }
}
