//! Statement analysis: PostgreSQL text → typed [`StatementFacts`], using the real PostgreSQL
//! grammar (`pg_query`). Owns splitting a message into statements, walking each parse tree
//! (including everything nested: CTEs, subqueries, EXPLAIN ANALYZE, PREPARE bodies, function
//! bodies, DO blocks), normalisation and fingerprinting. Fails closed: whatever cannot be parsed
//! or analysed is reported as a [`Problem`], which the engine always denies.
//!
//! The walk runs over pg_query's typed parse tree and visits *every* node: the statement kinds
//! and node kinds that carry facts are matched by type, and every other node is descended into
//! through `children::for_each_child`, which is generated from pg_query's own type definitions
//! (`gen/children.py`) and lists the children of all ~270 node kinds with no catch-all arm. A
//! node kind the walker has no rule for is therefore still searched for nested statements,
//! tables and function calls, and a pg_query upgrade that adds node kinds does not compile until
//! the list is regenerated.
//!
//! The typed tree comes from `parse` (libpg_query's JSON output decoded straight into
//! pg_query's prost types, the same tree `pg_query::parse` gives at a fraction of its cost; see
//! that module for why).
//!
//! [`analyze_with_shapes`] (used by `Guard`) also remembers the facts and fingerprint of plain
//! DML by [`lexical`] key (the text with its literal values blanked, found without the parser),
//! so a known statement with new literal values costs a short scan instead of a parse, a walk
//! and a fingerprint; see its documentation for why that is exact.

mod children;
pub mod facts;
mod fold;
mod from_json;
pub mod lexical;
pub mod limits;
mod names;
mod parse;
mod plpgsql;

use facts::{
    FactsData, Problem, StatementFacts, RULE_DYNAMIC_SQL, RULE_TOO_LARGE, RULE_UNANALYSABLE,
    RULE_UNPARSEABLE,
};
use pg_query::protobuf::node::Node as NodeEnum;
use pg_query::protobuf::{
    a_const, AlterTableType, CmdType, CreateFunctionStmt, DoStmt, ExplainStmt, FuncCall,
    MergeMatchKind, MergeStmt, Node, ObjectType, RangeVar, RoleSpec, RoleSpecType, VariableSetKind,
    VariableSetStmt,
};
use pg_query::NodeRef;
use std::collections::BTreeSet;
use std::sync::Arc;

/// How deep SQL text may nest inside SQL text (function bodies, constant EXECUTE strings, DO).
const MAX_TEXT_NESTING: usize = 8;
/// How deep the parse tree walk may go (in nodes) before giving up (fail closed). The parse
/// tree decoder (`parse`) already refuses trees deeper than `limits::MAX_DEPTH` messages; this
/// bounds the walk's recursion on its own (a node is at least one message).
const MAX_TREE_DEPTH: usize = limits::MAX_DEPTH as usize;

/// The analysis of one message.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Facts per statement, in message order.
    pub statements: Vec<StatementFacts>,
    /// pg_query-normalised text (literals replaced by `$n`), when the message parsed.
    pub normalized: Option<String>,
    /// pg_query fingerprint (hex), when the message parsed.
    pub fingerprint: Option<String>,
    /// Set when the message as a whole could not be parsed (then `statements` is empty).
    pub failure: Option<Problem>,
}

impl Analysis {
    fn failed(problem: Problem) -> Self {
        Analysis {
            statements: Vec::new(),
            normalized: None,
            fingerprint: None,
            failure: Some(problem),
        }
    }
}

/// Analyses a message that may hold several statements. Never panics: a panic inside the parser
/// bindings is caught and reported as unparseable.
/// Texts over [`limits::DEFAULT_MAX_STATEMENT_SIZE`] are refused (see [`analyze_limited`]).
pub fn analyze(sql: &str) -> Analysis {
    analyze_limited(sql, limits::DEFAULT_MAX_STATEMENT_SIZE)
}

/// [`analyze`] with a given largest text size (`[listen] max_statement_size`).
pub fn analyze_limited(sql: &str, max_statement_size: usize) -> Analysis {
    guarded(|| analyze_message(sql, None, max_statement_size)).0
}

/// What every text of one shape (lexical key) has in common: see [`analyze_with_shapes`].
#[derive(Debug)]
pub struct Shape {
    /// The statement's facts, without its text.
    facts: FactsData,
    /// The fingerprint (pg_query's ignores constants).
    fingerprint: Option<String>,
    /// The statement ends with a `;` (and whitespace): its text stops before it.
    terminated: bool,
    /// The normalised text, the same for every text of the shape.
    normalized: String,
}

/// Shapes of single-statement messages by their [`lexical`] key, for statements whose facts
/// and fingerprint cannot depend on their literal values (see [`analyze_with_shapes`]).
pub type Shapes = crate::cache::ShardedCache<String, Arc<Shape>>;

/// Like [`analyze`], but reuses the facts and fingerprint of an earlier text with the same
/// [`lexical`] key (the same statement with other literal values) instead of normalising,
/// parsing, walking and fingerprinting it again.
///
/// Exact, not a heuristic. Two texts with one lexical key have the same characters but for the
/// values of plain numeric and string literals, which PostgreSQL's lexer reads as the same
/// tokens. A shape is remembered only when the key of its first text matches that text's
/// `pg_query::normalize` output exactly, but for the numbers of the `$n`: so every blanked
/// literal sits where the grammar makes it a constant (`A_Const`) that `normalize` replaces by
/// `$n`, which the grammar decides by position, not value; so every text with that key
/// normalises alike and parses to the same tree but for constant values. (The normalised text alone would not do: `a = -'x'` and
/// `a = -5` both normalise to `a = $1`, and their trees differ.) Only statements whose facts
/// read no constant value are remembered: plain DML (select/insert/update/delete/merge, nested
/// or not), no `set_config`, no parameters, no problems, no filter folded by reading a literal
/// (`WHERE 1 = 1`), no SQL given to a built-in as text, one statement spanning the whole text;
/// and only when the tree has no `DefElem`, so every constant is an `A_Const`, which pg_query's
/// fingerprint ignores. Everything else (DDL, SET, COPY, function bodies, DO, EXPLAIN, PREPARE,
/// multi-statement messages, texts the lexical scan refuses) is always analysed in full. The
/// facts' text is the text's own.
pub fn analyze_with_shapes(sql: &str, shapes: &Shapes) -> Analysis {
    analyze_shaped(sql, shapes, limits::DEFAULT_MAX_STATEMENT_SIZE).0
}

/// [`analyze_with_shapes`], also saying whether the analysis came from a remembered shape (so
/// cheap to make again that caching it by text is not worth it); texts over
/// `max_statement_size` bytes are refused.
pub fn analyze_shaped(sql: &str, shapes: &Shapes, max_statement_size: usize) -> (Analysis, bool) {
    guarded(|| analyze_message(sql, Some(shapes), max_statement_size))
}

/// Runs an analysis, turning a panic into an unparseable statement (not from a shape).
fn guarded(f: impl FnOnce() -> (Analysis, bool)) -> (Analysis, bool) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(a) => a,
        Err(_) => (
            Analysis::failed(Problem {
                rule: RULE_UNPARSEABLE,
                reason: "the statement analyser failed on this text, so it is denied".into(),
            }),
            false,
        ),
    }
}

/// Whether these facts (of a single statement spanning its whole text) read no constant value,
/// so every text with the same normalised form has them too (see [`analyze_with_shapes`]).
fn literal_independent(f: &FactsData) -> bool {
    f.problems.is_empty()
        && !f.has_parameters
        && !f.dynamic_sql
        && f.copy_direction.is_empty()
        && f.set_variables.is_empty()
        && f.object_types.is_empty()
        && f.extensions.is_empty()
        && f.languages.is_empty()
        && f.integrity_bypass.is_empty()
        && f.egress.is_empty()
        && !f.ownership_change
        && !f.security_definer
        && !f.catalog_write
        && !f.function_names.contains("set_config")
        && f.kinds.iter().all(|k| {
            matches!(
                k.as_str(),
                "select" | "insert" | "update" | "delete" | "merge"
            )
        })
}

/// The analysis of `sql` from the shape it has (its lexical key).
fn from_shape(sql: &str, known: &Shape) -> Analysis {
    // The same lexical key: the same tokens after the last literal, so the same `;`.
    let text = sql.trim();
    let text = match text.strip_suffix(';') {
        Some(t) if known.terminated => t.trim_end(),
        _ => text,
    };
    let facts = FactsData {
        text: text.to_string(),
        ..known.facts.clone()
    };
    Analysis {
        statements: vec![StatementFacts(Arc::new(facts))],
        normalized: Some(known.normalized.clone()),
        fingerprint: known.fingerprint.clone(),
        failure: None,
    }
}

/// The analysis of `sql`, and whether it came from a shape in `shapes` (if given).
///
/// Size caps first (bytes), then the shape cache (a known shape costs a lexical scan), then the
/// token and depth caps of [`limits::check`]; the parse and everything after it run on a stack
/// sized for the text's depth bound.
fn analyze_message(
    sql: &str,
    shapes: Option<&Shapes>,
    max_statement_size: usize,
) -> (Analysis, bool) {
    if sql.contains('\0') {
        let problem = Problem {
            rule: RULE_UNPARSEABLE,
            reason: "statement text contains a NUL byte and cannot be parsed; denied".into(),
        };
        return (Analysis::failed(problem), false);
    }
    if sql.len() > max_statement_size {
        if let Err(problem) = limits::check(sql, max_statement_size) {
            return (Analysis::failed(problem), false);
        }
    }
    let lexical = shapes.and_then(|_| lexical::key(sql));
    if let (Some(shapes), Some(key)) = (shapes, &lexical) {
        if let Some(known) = shapes.get(key.as_str()) {
            // Stored only once the parser showed that this key matches the normalised text.
            return (from_shape(sql, &known), true);
        }
    }
    let scan = match limits::check(sql, max_statement_size) {
        Ok(s) => s,
        Err(problem) => return (Analysis::failed(problem), false),
    };
    parse::reset_budget();
    limits::with_stack(scan.nesting, || {
        parse_message(sql, shapes.zip(lexical.as_ref()))
    })
}

/// The problem for a parse that failed: an analysis limit, or PostgreSQL's syntax error.
fn parse_problem(e: &pg_query::Error) -> Problem {
    match parse::limit_hit() {
        Some(parse::LimitHit::Depth) => Problem {
            rule: RULE_TOO_LARGE,
            reason: format!(
                "statement nests more than {} parse-tree levels deep, more than the analyser \
                 accepts (PostgreSQL itself refuses such depth with its default max_stack_depth); \
                 denied",
                limits::MAX_DEPTH
            ),
        },
        Some(parse::LimitHit::Nodes) => Problem {
            rule: RULE_TOO_LARGE,
            reason: format!(
                "statement has more than {} parse-tree nodes, over the analysis limit; split it \
                 into smaller statements; denied",
                limits::MAX_NODES
            ),
        },
        None => Problem {
            rule: RULE_UNPARSEABLE,
            reason: format!(
                "statement does not parse as PostgreSQL ({}); denied",
                error_text(e)
            ),
        },
    }
}

/// Parses, walks, normalises and fingerprints a message that passed the caps, remembering its
/// shape under its lexical key when given and exact.
fn parse_message(
    sql: &str,
    shape_slot: Option<(&Shapes, &lexical::LexicalKey)>,
) -> (Analysis, bool) {
    // Parsed first: `normalize` and `fingerprint` recurse in C once per tree level, so they run
    // only on trees whose depth the decoder has checked.
    let parsed = match parse::parse(sql) {
        Ok(p) => p,
        Err(e) => return (Analysis::failed(parse_problem(&e)), false),
    };
    let normalized = pg_query::normalize(sql).ok();
    // Where the shape may be remembered: under the text's lexical key, if that key matches
    // the normalised text (every literal it blanks is a constant `normalize` replaces).
    let shape = match (shape_slot, &normalized) {
        (Some((shapes, key)), Some(n)) if key.matches_normalized(n) => Some((shapes, key, n)),
        _ => None,
    };
    let fingerprint = pg_query::fingerprint(sql).ok().map(|f| f.hex);
    let mut statements = Vec::with_capacity(parsed.stmts.len());
    let mut literal_dependent = false;
    for raw in &parsed.stmts {
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        let facts = match raw.stmt.as_deref() {
            Some(tree) => {
                let (facts, dependent) = statement_facts_full(tree, text, 0);
                literal_dependent |= dependent;
                facts
            }
            None => unanalysable_facts(text, "the parse tree could not be read"),
        };
        statements.push(StatementFacts(Arc::new(facts)));
    }
    if let (Some((shapes, key, n)), [raw], [facts]) =
        (shape, parsed.stmts.as_slice(), statements.as_slice())
    {
        // The statement spans the message, up to an optional final `;` (pgbench, psql and most
        // drivers end statements with one).
        let rest = usize::try_from(raw.stmt_len)
            .ok()
            .filter(|&n| n > 0)
            .and_then(|n| sql.get(n..));
        let terminated = rest.is_some_and(|r| r.trim() == ";");
        if raw.stmt_location == 0
            && (raw.stmt_len == 0 || terminated)
            && !literal_dependent
            && fingerprint.is_some()
            && literal_independent(facts)
        {
            let template = Shape {
                facts: FactsData {
                    text: String::new(),
                    ..FactsData::clone(facts)
                },
                fingerprint: fingerprint.clone(),
                terminated,
                normalized: n.clone(),
            };
            // Weighed by its texts; the facts of one DML statement are a few hundred bytes
            // besides its table and function names.
            let weight = key.as_str().len() + n.len() + 1024;
            shapes.insert(key.as_str().to_string(), Arc::new(template), weight);
        }
    }
    let analysis = Analysis {
        statements,
        normalized,
        fingerprint,
        failure: None,
    };
    (analysis, false)
}

fn error_text(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) | pg_query::Error::Split(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The text of one statement of a message (byte offsets from the parser).
fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0);
    let end = if len <= 0 {
        sql.len()
    } else {
        start.saturating_add(usize::try_from(len).unwrap_or(0))
    };
    sql.get(start..end).unwrap_or(sql)
}

fn unanalysable_facts(text: &str, why: &str) -> FactsData {
    let mut f = FactsData::new(text, "utility");
    f.problems.push(Problem {
        rule: RULE_UNANALYSABLE,
        reason: format!("{why}; denied"),
    });
    f
}

/// Facts of one statement given its parse tree and text.
fn statement_facts(tree: &Node, text: &str, level: usize) -> FactsData {
    statement_facts_full(tree, text, level).0
}

/// Facts of one statement, and whether they may depend on a constant's value: its tree holds a
/// `DefElem` (an option list), or a filter was folded by reading a literal (`WHERE 1 = 1`).
fn statement_facts_full(tree: &Node, text: &str, level: usize) -> (FactsData, bool) {
    let Some(node) = tree.node.as_ref() else {
        return (unanalysable_facts(text, "empty statement tree"), false);
    };
    let node = node.to_ref();
    let mut w = Walker {
        facts: FactsData::new(text, kind_of(node)),
        text,
        level,
        tables: Vec::new(),
        ctes: BTreeSet::new(),
        def_elems: false,
        reads_literals: false,
    };
    w.visit_stmt(node, true, 0);
    let literal_dependent = w.def_elems || w.reads_literals;
    (w.finish(), literal_dependent)
}

/// Parses nested SQL text (function body, constant EXECUTE string) into facts per statement.
fn nested_sql_facts(sql: &str, level: usize) -> Result<Vec<FactsData>, String> {
    if level > MAX_TEXT_NESTING {
        return Err("SQL text nested too deeply".into());
    }
    let scan = limits::check(sql, usize::MAX).map_err(|p| p.reason)?;
    limits::with_stack(scan.nesting, || nested_parse(sql, level))
}

/// [`nested_sql_facts`] once the text passed the caps.
fn nested_parse(sql: &str, level: usize) -> Result<Vec<FactsData>, String> {
    let parsed = parse::parse(sql).map_err(|e| parse_problem(&e).reason)?;
    let mut out = Vec::new();
    for raw in &parsed.stmts {
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        match raw.stmt.as_deref() {
            Some(tree) => out.push(statement_facts(tree, text, level)),
            None => return Err("the parse tree could not be read".into()),
        }
    }
    Ok(out)
}

/// The node inside a `Node` wrapper, if any.
fn inner(n: &Node) -> Option<&NodeEnum> {
    n.node.as_ref()
}

/// `ObjectType` number → "table", "role", ….
fn object_type_name(n: i32) -> String {
    ObjectType::try_from(n)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("OBJECT_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The `(defname, arg)` pairs of the `DefElem` nodes in an option list (`CREATE FUNCTION`'s
/// `options`, `DO`'s `args`); other nodes are skipped, a missing `arg` is `None`.
fn def_elems(list: &[Node]) -> impl Iterator<Item = (&str, Option<&Node>)> {
    list.iter().filter_map(|o| match inner(o) {
        Some(NodeEnum::DefElem(d)) => Some((d.defname.as_str(), d.arg.as_deref())),
        _ => None,
    })
}

/// The `sval` of a `String` node.
fn string_node(v: &Node) -> Option<&str> {
    match inner(v)? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// The string constant of an `A_Const` node, if that is what `v` is.
fn const_string(v: &Node) -> Option<&str> {
    match inner(v)? {
        NodeEnum::AConst(c) => match &c.val {
            Some(a_const::Val::Sval(s)) => Some(&s.sval),
            _ => None,
        },
        _ => None,
    }
}

/// A string constant, possibly cast (`'SELECT 1'::text`, `'t'::regclass`).
fn const_text(v: &Node) -> Option<&str> {
    match inner(v)? {
        NodeEnum::TypeCast(c) => const_text(c.arg.as_deref()?),
        _ => const_string(v),
    }
}

/// The `RangeVar` inside a `Node`, if that is what it holds.
fn range_var_node(v: &Node) -> Option<&RangeVar> {
    match inner(v)? {
        NodeEnum::RangeVar(r) => Some(r),
        _ => None,
    }
}

/// Primary kind of a statement node.
fn kind_of(n: NodeRef<'_>) -> &'static str {
    match n {
        NodeRef::GrantStmt(g) => grant_or_revoke(g.is_grant),
        NodeRef::GrantRoleStmt(g) => grant_or_revoke(g.is_grant),
        NodeRef::VariableSetStmt(v) => match VariableSetKind::try_from(v.kind) {
            Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll) => "reset",
            _ => "set",
        },
        _ => kind_of_name(children::name(n)),
    }
}

fn grant_or_revoke(is_grant: bool) -> &'static str {
    if is_grant {
        "grant"
    } else {
        "revoke"
    }
}

/// Primary kind of a statement node, by node kind name.
fn kind_of_name(name: &str) -> &'static str {
    match name {
        "SelectStmt" => "select",
        "InsertStmt" => "insert",
        "UpdateStmt" => "update",
        "DeleteStmt" => "delete",
        "MergeStmt" => "merge",
        "TruncateStmt" => "truncate",
        "CopyStmt" => "copy",
        "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" => "role",
        "VariableShowStmt" => "show",
        "TransactionStmt" => "transaction",
        "DoStmt" => "do",
        "CallStmt" => "call",
        "ExplainStmt" => "explain",
        "PrepareStmt" => "prepare",
        "ExecuteStmt" => "execute",
        "AlterSystemStmt" => "alter_system",
        "CreateTableAsStmt" | "IndexStmt" | "ViewStmt" | "DefineStmt" | "CompositeTypeStmt"
        | "RuleStmt" => "create",
        n if n.starts_with("Drop") => "drop",
        n if n.starts_with("Create") => "create",
        n if n.starts_with("Alter")
            || n == "RenameStmt"
            || n == "CommentStmt"
            || n == "SecLabelStmt"
            || n == "ReassignOwnedStmt" =>
        {
            "alter"
        }
        _ => "utility",
    }
}

/// Walks one statement's tree, collecting facts.
struct Walker<'t, 'a> {
    facts: FactsData,
    /// Text of the statement being walked (for PL/pgSQL function bodies).
    text: &'t str,
    /// Nesting level of SQL text.
    level: usize,
    /// (schema, name, written) of every table named.
    tables: Vec<(&'a str, &'a str, bool)>,
    /// CTE names (not tables).
    ctes: BTreeSet<&'a str>,
    /// Whether a `DefElem` (option) node was seen.
    def_elems: bool,
    /// Whether a filter's fold read the value of a numeric or string literal.
    reads_literals: bool,
}

impl<'a> Walker<'_, 'a> {
    fn finish(mut self) -> FactsData {
        for (schema, name, written) in std::mem::take(&mut self.tables) {
            if schema.is_empty() && !written && self.ctes.contains(name) {
                continue;
            }
            // The server looks in pg_catalog before the search path.
            let schema = match schema {
                "" if names::is_catalog_relation(name) => "pg_catalog",
                "" => "public",
                s => s,
            };
            let full = format!("{schema}.{name}");
            if written && schema == "pg_catalog" {
                self.facts.catalog_write = true;
            }
            if written {
                self.facts.writes.insert(full);
            } else {
                self.facts.reads.insert(full);
            }
        }
        self.facts
    }

    fn problem(&mut self, rule: &'static str, reason: String) {
        self.facts.problems.push(Problem { rule, reason });
    }

    fn absorb_all(&mut self, nested: Vec<FactsData>) {
        for f in nested {
            self.facts.absorb(f);
        }
    }

    /// Records a table as written.
    fn write_target(&mut self, r: &'a RangeVar) {
        self.tables.push((&r.schemaname, &r.relname, true));
    }

    /// Records the table of an optional `RangeVar` field as written.
    fn write_opt(&mut self, r: Option<&'a RangeVar>) {
        if let Some(r) = r {
            self.write_target(r);
        }
    }

    /// Visits a statement node: its own facts, then every child except the fields in `skip`
    /// (those it has already accounted for, e.g. a DML target that must count as written).
    fn visit_stmt(&mut self, n: NodeRef<'a>, top: bool, depth: usize) {
        let kind = kind_of(n);
        if !top {
            self.facts.nested = true;
            self.facts.nested_write |= facts::is_write_kind(kind);
        }
        self.facts.kinds.insert(kind.to_string());
        if changes_catalog(n) {
            self.facts.catalog_change = true;
        }
        let mut skip: &[&str] = &[];
        match n {
            NodeRef::InsertStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
            }
            NodeRef::MergeStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                self.merge_filters(s, top);
            }
            NodeRef::UpdateStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                // `WHERE CURRENT OF cursor` is a where clause too (CurrentOfExpr); a WHERE
                // that folds to a constant true is none.
                if !self.filters(s.where_clause.as_deref()) {
                    self.facts.update_without_where = true;
                    if top {
                        self.facts.has_where = false;
                    }
                }
            }
            NodeRef::DeleteStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                if !self.filters(s.where_clause.as_deref()) {
                    self.facts.delete_without_where = true;
                    if top {
                        self.facts.has_where = false;
                    }
                }
            }
            NodeRef::CopyStmt(s) => {
                self.facts.copy_direction = if s.is_from { "from" } else { "to" }.into();
                if s.is_program {
                    self.facts.copy_program = true;
                } else if !s.filename.is_empty() {
                    self.facts.copy_server_file = true;
                }
                if let Some(r) = &s.relation {
                    self.tables.push((&r.schemaname, &r.relname, s.is_from));
                }
                skip = &["relation"];
            }
            NodeRef::TruncateStmt(s) => {
                for r in s.relations.iter().filter_map(range_var_node) {
                    self.write_target(r);
                }
                skip = &["relations"];
                self.facts.object_types.insert("table".into());
            }
            NodeRef::DropStmt(s) => {
                let ot = object_type_name(s.remove_type);
                let table_like = matches!(
                    ot.as_str(),
                    "table" | "view" | "matview" | "index" | "sequence" | "foreign_table"
                );
                if table_like {
                    for (schema, name) in s.objects.iter().filter_map(qualified_name) {
                        self.tables.push((schema, name, true));
                    }
                }
                self.facts.object_types.insert(ot);
            }
            NodeRef::CreateStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                self.relation_object("table".into());
            }
            NodeRef::AlterTableStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                let ot = object_type_name(s.objtype);
                self.alter_table_cmds(&s.cmds, ot == "foreign_table");
                self.relation_object(ot);
            }
            NodeRef::IndexStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                self.relation_object("index".into());
            }
            NodeRef::RenameStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                self.relation_object(object_type_name(s.rename_type));
            }
            NodeRef::RefreshMatViewStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                self.relation_object("table".into());
            }
            NodeRef::ClusterStmt(s) => {
                self.write_opt(s.relation.as_ref());
                skip = &["relation"];
                self.relation_object("table".into());
            }
            NodeRef::ViewStmt(s) => {
                self.write_opt(s.view.as_ref());
                skip = &["view"];
                self.facts.object_types.insert("view".into());
            }
            NodeRef::CreateTableAsStmt(s) => {
                self.write_opt(s.into.as_ref().and_then(|i| i.rel.as_ref()));
                skip = &["into"];
                self.facts.object_types.insert(object_type_name(s.objtype));
            }
            NodeRef::SelectStmt(s) => {
                if let Some(r) = s.into_clause.as_ref().and_then(|i| i.rel.as_ref()) {
                    self.write_target(r);
                    self.facts.kinds.insert("create".into());
                    self.facts.object_types.insert("table".into());
                }
                skip = &["into_clause"];
            }
            NodeRef::GrantStmt(s) => {
                self.facts.object_types.insert(object_type_name(s.objtype));
            }
            NodeRef::AlterDefaultPrivilegesStmt(s) => {
                if let Some(g) = &s.action {
                    self.facts.kinds.insert(grant_or_revoke(g.is_grant).into());
                    self.facts.object_types.insert(object_type_name(g.objtype));
                }
            }
            NodeRef::GrantRoleStmt(_) => {
                self.facts.object_types.insert("role".into());
            }
            NodeRef::CreateRoleStmt(_) => self.role_stmt("create"),
            NodeRef::DropRoleStmt(_) => self.role_stmt("drop"),
            NodeRef::AlterRoleStmt(_) | NodeRef::AlterRoleSetStmt(_) => self.role_stmt("alter"),
            NodeRef::AlterSystemStmt(_) => {
                self.facts.kinds.insert("alter".into());
            }
            NodeRef::VariableSetStmt(s) => self.variable_set(s),
            // Plain EXPLAIN only plans its statement; it does not run it.
            NodeRef::ExplainStmt(s) if !explain_analyzes(s) => skip = &["query"],
            NodeRef::CreateFunctionStmt(s) => {
                self.security_clause(&s.options);
                self.facts.object_types.insert(
                    if s.is_procedure {
                        "procedure"
                    } else {
                        "function"
                    }
                    .into(),
                );
                self.function_body(s, top);
            }
            NodeRef::DoStmt(s) => self.do_block(s),
            NodeRef::CreatedbStmt(s) => {
                self.facts.object_types.insert("database".into());
                if def_elems(&s.options).any(|(name, arg)| name == "owner" && arg.is_some()) {
                    self.facts.ownership_change = true;
                }
            }
            NodeRef::CreateSchemaStmt(s) => {
                self.facts.object_types.insert("schema".into());
                self.owner_given(s.authrole.as_ref());
            }
            NodeRef::CreateTableSpaceStmt(s) => {
                self.facts.object_types.insert("tablespace".into());
                self.owner_given(s.owner.as_ref());
            }
            NodeRef::CreateExtensionStmt(s) => {
                self.facts.object_types.insert("extension".into());
                self.facts.extensions.insert(s.extname.clone());
            }
            NodeRef::AlterExtensionStmt(s) => {
                self.facts.object_types.insert("extension".into());
                self.facts.extensions.insert(s.extname.clone());
            }
            NodeRef::CreatePlangStmt(s) => {
                self.facts.object_types.insert("language".into());
                self.facts.languages.insert(s.plname.to_ascii_lowercase());
                if !s.plhandler.is_empty() {
                    self.facts.kinds.insert("language_handler".into());
                }
            }
            NodeRef::LoadStmt(_) => {
                self.facts.kinds.insert("load".into());
            }
            NodeRef::DiscardStmt(_) => {
                self.facts.kinds.insert("discard".into());
            }
            NodeRef::AlterFunctionStmt(s) => self.security_clause(&s.actions),
            NodeRef::AlterOwnerStmt(_) | NodeRef::ReassignOwnedStmt(_) => {
                self.facts.ownership_change = true;
            }
            NodeRef::AlterEventTrigStmt(s) => {
                // 'D' disables it; 'R' makes it fire only under session_replication_role =
                // replica, which disables it for ordinary sessions.
                if matches!(s.tgenabled.as_str(), "D" | "R") {
                    self.facts
                        .integrity_bypass
                        .insert("disable_event_trigger".into());
                }
            }
            NodeRef::CreateSubscriptionStmt(_) | NodeRef::AlterSubscriptionStmt(_) => {
                self.facts.egress.insert("subscription".into());
            }
            NodeRef::CreatePublicationStmt(_) | NodeRef::AlterPublicationStmt(_) => {
                self.facts.egress.insert("publication".into());
            }
            NodeRef::CreateForeignServerStmt(s) => {
                self.facts.egress.insert("foreign_server".into());
                self.foreign_options(&s.options);
            }
            NodeRef::AlterForeignServerStmt(s) => {
                self.facts.egress.insert("foreign_server".into());
                self.foreign_options(&s.options);
            }
            NodeRef::CreateUserMappingStmt(_) | NodeRef::AlterUserMappingStmt(_) => {
                self.facts.egress.insert("user_mapping".into());
            }
            NodeRef::CreateForeignTableStmt(s) => {
                self.facts.egress.insert("foreign_table".into());
                self.facts.object_types.insert("foreign_table".into());
                self.foreign_options(&s.options);
                skip = &["base_stmt"];
                if let Some(base) = &s.base_stmt {
                    // The table is written (created); its columns, constraints and options are
                    // walked like any CREATE TABLE's.
                    self.write_opt(base.relation.as_ref());
                    children::for_each_child(NodeRef::CreateStmt(base), &mut |field, child, i| {
                        if field != "relation" {
                            self.visit(child, i, depth + 1);
                        }
                    });
                }
            }
            NodeRef::ImportForeignSchemaStmt(_) => {
                self.facts.egress.insert("import_foreign_schema".into());
            }
            NodeRef::CreateFdwStmt(s) => {
                self.facts.egress.insert("foreign_data_wrapper".into());
                self.function_options(&s.func_options);
            }
            NodeRef::AlterFdwStmt(s) => {
                self.facts.egress.insert("foreign_data_wrapper".into());
                self.function_options(&s.func_options);
            }
            // DDL that wires a function into another object: the function is called whenever
            // the object is used, so it is a call fact of the statement that wires it.
            NodeRef::DefineStmt(s) => self.function_options(&s.definition),
            NodeRef::AlterOperatorStmt(s) => self.function_options(&s.options),
            NodeRef::AlterTypeStmt(s) => self.function_options(&s.options),
            NodeRef::CreateRangeStmt(s) => self.function_options(&s.params),
            NodeRef::CreateCastStmt(s) => {
                if let Some(f) = &s.func {
                    self.function_named(&f.objname);
                }
            }
            NodeRef::CreateTransformStmt(s) => {
                for f in [&s.fromsql, &s.tosql].into_iter().flatten() {
                    self.function_named(&f.objname);
                }
            }
            NodeRef::CreateConversionStmt(s) => self.function_named(&s.func_name),
            NodeRef::CreateAmStmt(s) => self.function_named(&s.handler_name),
            NodeRef::CreateTrigStmt(s) => self.function_named(&s.funcname),
            NodeRef::CreateEventTrigStmt(s) => self.function_named(&s.funcname),
            _ => {}
        }
        if let NodeRef::CreatePlangStmt(s) = n {
            for f in [&s.plhandler, &s.plinline, &s.plvalidator] {
                self.function_named(f);
            }
        }
        children::for_each_child(n, &mut |field, child, in_node| {
            if !skip.contains(&field) {
                self.visit(child, in_node, depth + 1);
            }
        });
    }

    /// Object type of a DDL statement on a relation (`ALTER … RENAME` may name a role).
    fn relation_object(&mut self, ot: String) {
        if ot == "role" {
            self.facts.kinds.insert("role".into());
        }
        self.facts.object_types.insert(ot);
    }

    fn role_stmt(&mut self, kind: &str) {
        self.facts.object_types.insert("role".into());
        self.facts.kinds.insert(kind.into());
    }

    fn alter_table_cmds(&mut self, cmds: &[Node], foreign_table: bool) {
        for c in cmds {
            let Some(NodeEnum::AlterTableCmd(cmd)) = inner(c) else {
                continue;
            };
            let Ok(subtype) = AlterTableType::try_from(cmd.subtype) else {
                continue;
            };
            let bypass = match subtype {
                AlterTableType::AtDropColumn => {
                    self.facts.kinds.insert("drop".into());
                    self.facts.object_types.insert("column".into());
                    None
                }
                AlterTableType::AtChangeOwner => {
                    self.facts.ownership_change = true;
                    None
                }
                // ENABLE REPLICA makes a trigger (rule) fire only under
                // session_replication_role = replica: off for ordinary sessions.
                AlterTableType::AtDisableTrig
                | AlterTableType::AtDisableTrigAll
                | AlterTableType::AtDisableTrigUser
                | AlterTableType::AtEnableReplicaTrig => Some("disable_trigger"),
                AlterTableType::AtDisableRule | AlterTableType::AtEnableReplicaRule => {
                    Some("disable_rule")
                }
                AlterTableType::AtDisableRowSecurity => Some("disable_row_level_security"),
                AlterTableType::AtNoForceRowSecurity => Some("no_force_row_level_security"),
                AlterTableType::AtGenericOptions if foreign_table => {
                    self.facts.egress.insert("foreign_table".into());
                    if let Some(NodeEnum::List(l)) = cmd.def.as_deref().and_then(inner) {
                        self.foreign_options(&l.items);
                    }
                    None
                }
                _ => None,
            };
            if let Some(b) = bypass {
                self.facts.integrity_bypass.insert(b.into());
            }
        }
    }

    /// Whether a WHERE clause filters: it is present and does not fold to a constant true.
    fn filters(&mut self, condition: Option<&Node>) -> bool {
        condition.is_some_and(|c| !self.folds_true(c))
    }

    /// Whether a condition folds to a constant true (see `fold`).
    fn folds_true(&mut self, condition: &Node) -> bool {
        self.fold(condition) == Some(fold::Truth::True)
    }

    fn fold(&mut self, condition: &Node) -> Option<fold::Truth> {
        let mut folder = fold::Folder::default();
        let truth = folder.truth(condition);
        self.reads_literals |= folder.read_literal;
        truth
    }

    /// A MERGE whose join condition folds to true updates / deletes every target row in its
    /// unconditional `WHEN MATCHED` actions (when the source has a row); one whose condition
    /// folds to false or NULL does so in its `WHEN NOT MATCHED BY SOURCE` actions.
    fn merge_filters(&mut self, s: &MergeStmt, top: bool) {
        let join = s.join_condition.as_deref().and_then(|c| self.fold(c));
        let Some(join) = join else {
            return;
        };
        for clause in &s.merge_when_clauses {
            let Some(NodeEnum::MergeWhenClause(w)) = inner(clause) else {
                continue;
            };
            let every_row = match MergeMatchKind::try_from(w.match_kind) {
                Ok(MergeMatchKind::MergeWhenMatched) => join == fold::Truth::True,
                Ok(MergeMatchKind::MergeWhenNotMatchedBySource) => join != fold::Truth::True,
                _ => false,
            };
            if !every_row || self.filters(w.condition.as_deref()) {
                continue;
            }
            match CmdType::try_from(w.command_type) {
                Ok(CmdType::CmdDelete) => self.facts.delete_without_where = true,
                Ok(CmdType::CmdUpdate) => self.facts.update_without_where = true,
                _ => continue,
            }
            if top {
                self.facts.has_where = false;
            }
        }
    }

    /// `SECURITY DEFINER` among a function's options (`CREATE`) or actions (`ALTER`).
    fn security_clause(&mut self, options: &[Node]) {
        for (name, arg) in def_elems(options) {
            if name == "security" {
                if let Some(NodeEnum::Boolean(b)) = arg.and_then(inner) {
                    self.facts.security_definer |= b.boolval;
                }
            }
        }
    }

    /// A role given ownership of a new object (`AUTHORIZATION` / `OWNER`): any role but the
    /// current one.
    fn owner_given(&mut self, role: Option<&RoleSpec>) {
        let Some(role) = role else {
            return;
        };
        let current = matches!(
            RoleSpecType::try_from(role.roletype),
            Ok(RoleSpecType::RolespecCurrentUser | RoleSpecType::RolespecCurrentRole)
        );
        if !current {
            self.facts.ownership_change = true;
        }
    }

    /// Foreign table / server options that read a server file or run a program (file_fdw's
    /// `filename` and `program`, and any wrapper's options of those names).
    fn foreign_options(&mut self, options: &[Node]) {
        for (name, arg) in def_elems(options) {
            if arg.is_none() {
                // `OPTIONS (DROP name)`.
                continue;
            }
            match name.to_ascii_lowercase().as_str() {
                "program" => self.facts.copy_program = true,
                "filename" => self.facts.copy_server_file = true,
                _ => {}
            }
        }
    }

    fn variable_set(&mut self, s: &VariableSetStmt) {
        let kind = VariableSetKind::try_from(s.kind);
        if matches!(
            kind,
            Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll)
        ) {
            return;
        }
        let name = s.name.to_ascii_lowercase();
        match name.as_str() {
            "role" => {
                self.facts.kinds.insert("set_role".into());
            }
            "session_authorization" => {
                self.facts.kinds.insert("session_authorization".into());
            }
            _ => {}
        }
        if is_integrity_setting(&name) {
            let value = match kind {
                Ok(VariableSetKind::VarSetDefault) => SettingValue::Default,
                Ok(VariableSetKind::VarSetValue) => match s.args.as_slice() {
                    [v] => setting_value(v),
                    _ => SettingValue::Unknown,
                },
                _ => SettingValue::Unknown,
            };
            self.integrity_setting(&name, value);
        }
        if !name.is_empty() {
            self.facts.set_variables.insert(name);
        }
    }

    /// Records `name` (`session_replication_role` or `row_security`) as an integrity bypass
    /// unless it is set to its harmless value (`origin`; `on`) or its default.
    fn integrity_setting(&mut self, name: &str, value: SettingValue<'_>) {
        let harmless = match value {
            SettingValue::Default => true,
            SettingValue::Unknown => false,
            SettingValue::Text(v) => match name {
                "session_replication_role" => v.trim().eq_ignore_ascii_case("origin"),
                _ => fold::parse_bool(v) == Some(true),
            },
        };
        if !harmless {
            self.facts.integrity_bypass.insert(name.to_string());
        }
    }

    fn function_body(&mut self, s: &CreateFunctionStmt, top: bool) {
        let language = def_elems(&s.options)
            .find_map(|(name, arg)| match (name, arg.and_then(string_node)) {
                ("language", Some(l)) => Some(l.to_ascii_lowercase()),
                _ => None,
            })
            .unwrap_or_else(|| "sql".into());
        self.facts.languages.insert(language.clone());
        if s.sql_body.is_some() {
            // BEGIN ATOMIC … END: already parsed, the generic walk sees it.
            return;
        }
        if matches!(language.as_str(), "c" | "internal") {
            // The body names a symbol in a shared library or in the server: nothing to
            // analyse; the language itself is the fact (see `parapet.server-code`).
            return;
        }
        let mut body: Option<String> = None;
        let mut body_parts = 0;
        for (name, arg) in def_elems(&s.options) {
            match (name, arg.and_then(inner)) {
                ("as", Some(NodeEnum::List(l))) => {
                    body_parts = l.items.len();
                    body = l.items.first().and_then(string_node).map(str::to_string);
                }
                ("as", Some(NodeEnum::String(b))) => {
                    body_parts = 1;
                    body = Some(b.sval.clone());
                }
                _ => {}
            }
        }
        let Some(body) = body else {
            self.problem(
                RULE_UNANALYSABLE,
                "function has no body that can be analysed; denied".into(),
            );
            return;
        };
        match language.as_str() {
            "sql" if body_parts == 1 => match nested_sql_facts(&body, self.level + 1) {
                Ok(nested) => self.absorb_all(nested),
                Err(e) => self.problem(
                    RULE_UNANALYSABLE,
                    format!("the SQL function body cannot be analysed ({e}); denied"),
                ),
            },
            "plpgsql" if top => {
                let text = self.text.to_string();
                self.plpgsql(&text);
            }
            "plpgsql" => self.problem(
                RULE_UNANALYSABLE,
                "a PL/pgSQL function nested inside another statement cannot be analysed; denied"
                    .into(),
            ),
            other => self.problem(
                RULE_UNANALYSABLE,
                format!("function bodies in language {other:?} cannot be analysed; denied"),
            ),
        }
    }

    fn do_block(&mut self, s: &DoStmt) {
        let mut language = String::from("plpgsql");
        let mut body: Option<&str> = None;
        for (name, arg) in def_elems(&s.args) {
            match name {
                "language" => {
                    if let Some(l) = arg.and_then(string_node) {
                        language = l.to_ascii_lowercase();
                    }
                }
                "as" => body = arg.and_then(string_node),
                _ => {}
            }
        }
        self.facts.languages.insert(language.clone());
        let Some(body) = body else {
            self.problem(RULE_UNANALYSABLE, "DO block without a body; denied".into());
            return;
        };
        if language != "plpgsql" {
            self.problem(
                RULE_UNANALYSABLE,
                format!("DO blocks in language {language:?} cannot be analysed; denied"),
            );
            return;
        }
        let mut tag = String::from("$parapet$");
        let mut n = 0;
        while body.contains(&tag) {
            n += 1;
            tag = format!("$parapet{n}$");
        }
        let wrapped = format!(
            "CREATE FUNCTION parapet_do_block() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}"
        );
        self.plpgsql(&wrapped);
    }

    /// Generic walk of any node: finds tables, function calls, CTE names, parameters and
    /// nested statements, and descends into every child. `in_node` says whether the node sits in
    /// a generic `Node` (statements are only judged as nested statements from there; a typed
    /// field such as `SelectStmt.larg` is part of its parent statement).
    fn visit(&mut self, n: NodeRef<'a>, in_node: bool, depth: usize) {
        // Debug builds spend kilobytes of stack per level here: grow it whenever it runs low.
        limits::grow(|| self.visit_node(n, in_node, depth));
    }

    fn visit_node(&mut self, n: NodeRef<'a>, in_node: bool, depth: usize) {
        if depth > MAX_TREE_DEPTH {
            self.problem(
                RULE_UNANALYSABLE,
                "statement is nested too deeply to analyse; denied".into(),
            );
            return;
        }
        if in_node && children::name(n).ends_with("Stmt") {
            self.visit_stmt(n, false, depth);
            return;
        }
        match n {
            NodeRef::RangeVar(r) => {
                self.tables.push((&r.schemaname, &r.relname, false));
                return;
            }
            NodeRef::FuncCall(f) => self.function_call(f),
            NodeRef::CommonTableExpr(c) => {
                self.ctes.insert(&c.ctename);
            }
            NodeRef::ParamRef(_) if in_node => self.facts.has_parameters = true,
            NodeRef::DefElem(_) => self.def_elems = true,
            NodeRef::AExpr(a) => self.operator_use(&a.name),
            NodeRef::SubLink(l) => self.operator_use(&l.oper_name),
            NodeRef::SortBy(b) => self.operator_use(&b.use_op),
            NodeRef::TypeCast(c) => {
                if let Some(t) = &c.type_name {
                    self.cast_to(&t.names);
                }
            }
            NodeRef::CreateOpClassItem(i) => {
                if let Some(name) = &i.name {
                    match i.itemtype {
                        OPCLASS_ITEM_OPERATOR => self.operator_use(&name.objname),
                        OPCLASS_ITEM_FUNCTION => self.function_named(&name.objname),
                        _ => {}
                    }
                }
            }
            // `ALTER DATABASE|ROLE … SET name` and `ALTER SYSTEM SET name` hold their SET as a
            // typed field: it changes `name` for later sessions, so it counts as setting it.
            NodeRef::VariableSetStmt(s) => self.variable_set(s),
            _ => {}
        }
        children::for_each_child(n, &mut |field, child, in_node| {
            // A function's name is a list of `String` nodes, read by `function_call`.
            if field != "funcname" {
                self.visit(child, in_node, depth + 1);
            }
        });
    }

    /// A function named by DDL that wires it into another object (`FUNCTION = f`, `SFUNC = f`,
    /// `WITH FUNCTION f(…)`, `EXECUTE FUNCTION f()`, `HANDLER f`): recorded as called.
    fn function_named(&mut self, name: &[Node]) {
        let mut names: Vec<&str> = name.iter().filter_map(string_node).collect();
        if names.len() > 1 && names[0] == "pg_catalog" {
            names.remove(0);
        }
        if let Some(bare) = names.last() {
            self.facts.function_names.insert(bare.to_string());
            self.facts.functions.insert(names.join("."));
        }
    }

    /// The options of DDL that name functions (`CREATE OPERATOR`, `CREATE AGGREGATE`,
    /// `CREATE TYPE`, `ALTER OPERATOR|TYPE … SET`, `CREATE TYPE … AS RANGE`, text search parsers
    /// and templates, foreign-data wrapper handlers and validators): each function is recorded
    /// as called. Other options (types, operators, constants) are not functions.
    fn function_options(&mut self, options: &[Node]) {
        for (name, arg) in def_elems(options) {
            if !FUNCTION_OPTIONS.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            match arg.and_then(inner) {
                Some(NodeEnum::TypeName(t)) => self.function_named(&t.names),
                Some(NodeEnum::List(l)) => self.function_named(&l.items),
                Some(NodeEnum::String(s)) => self.facts_function(&s.sval),
                Some(NodeEnum::ObjectWithArgs(o)) => self.function_named(&o.objname),
                _ => {}
            }
        }
    }

    /// A single-part function name.
    fn facts_function(&mut self, name: &str) {
        self.facts.function_names.insert(name.to_string());
        self.facts.functions.insert(name.to_string());
    }

    /// An operator used or named (`+`, `OPERATOR(schema.op)`); `BETWEEN` is `>=` and `<=`.
    fn operator_use(&mut self, name: &[Node]) {
        let mut names: Vec<&str> = name.iter().filter_map(string_node).collect();
        if names.len() > 1 && names[0] == "pg_catalog" {
            names.remove(0);
        }
        let Some(bare) = names.last() else {
            return;
        };
        if bare
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '_' || c == ' ')
        {
            // `BETWEEN [SYMMETRIC]` and its negation compare with `>=` and `<=`.
            self.facts.operators.insert(">=".into());
            self.facts.operators.insert("<=".into());
            return;
        }
        self.facts.operators.insert(names.join("."));
    }

    /// A type a value is cast to.
    fn cast_to(&mut self, name: &[Node]) {
        let mut names: Vec<&str> = name.iter().filter_map(string_node).collect();
        if names.len() > 1 && names[0] == "pg_catalog" {
            names.remove(0);
        }
        if !names.is_empty() {
            self.facts.casts.insert(names.join("."));
        }
    }

    fn function_call(&mut self, f: &FuncCall) {
        let mut names: Vec<&str> = f.funcname.iter().filter_map(string_node).collect();
        if names.len() > 1 && names[0] == "pg_catalog" {
            names.remove(0);
        }
        let Some(bare) = names.last().map(|s| s.to_string()) else {
            return;
        };
        self.facts.functions.insert(names.join("."));
        if bare == "set_config" {
            let first = f.args.first().and_then(const_string);
            let var = first.map_or_else(|| "?".to_string(), |s| s.trim().to_ascii_lowercase());
            if var == "role" {
                self.facts.kinds.insert("set_role".into());
            }
            if var == "?" {
                // Any setting, these included.
                self.facts
                    .integrity_bypass
                    .insert("session_replication_role".into());
            } else if is_integrity_setting(&var) {
                let value = f
                    .args
                    .get(1)
                    .and_then(const_string)
                    .map_or(SettingValue::Unknown, SettingValue::Text);
                self.integrity_setting(&var, value);
            }
            self.facts.set_variables.insert(var);
        }
        for &(name, arity, index, use_) in names::SQL_TEXT_FUNCTIONS {
            if name != bare || (arity != 0 && arity != f.args.len()) {
                continue;
            }
            if f.args
                .iter()
                .any(|a| matches!(inner(a), Some(NodeEnum::NamedArgExpr(_))))
            {
                self.facts.dynamic_sql = true;
                self.problem(
                    RULE_DYNAMIC_SQL,
                    format!("{bare}() runs SQL given as an argument, and named arguments cannot be matched to it; pass the arguments by position; denied"),
                );
            } else if let Some(arg) = f.args.get(index) {
                self.sql_argument(&bare, arg, use_);
            }
        }
        self.facts.function_names.insert(bare);
    }

    /// The argument of a built-in that runs it as SQL (or reads the relation it names): a
    /// constant is analysed as a nested statement, anything else is dynamic SQL.
    fn sql_argument(&mut self, func: &str, arg: &Node, use_: names::TextArg) {
        // The facts depend on the constant's value: never reuse them for another text.
        self.reads_literals = true;
        let Some(text) = const_text(arg) else {
            self.facts.dynamic_sql = true;
            self.problem(
                RULE_DYNAMIC_SQL,
                format!("{func}() runs SQL (or reads a relation) given by a value that is not a constant, which cannot be analysed; denied"),
            );
            return;
        };
        let sql = match use_ {
            names::TextArg::Query => text.to_string(),
            names::TextArg::Relation => format!("SELECT * FROM {text}"),
        };
        match nested_sql_facts(&sql, self.level + 1) {
            Ok(nested) => self.absorb_all(nested),
            Err(e) => self.problem(
                RULE_UNANALYSABLE,
                format!("the SQL given to {func}() cannot be analysed ({e}); denied"),
            ),
        }
    }
}

/// `CreateOpClassItem.itemtype` of an `OPERATOR n op` item.
const OPCLASS_ITEM_OPERATOR: i32 = 1;
/// `CreateOpClassItem.itemtype` of a `FUNCTION n f(…)` item.
const OPCLASS_ITEM_FUNCTION: i32 = 2;

/// Options of DDL statements whose value is a function (lower case): operators (`function`,
/// `procedure`, `restrict`, `join`), aggregates (old and new syntax), base types, ranges, text
/// search parsers and templates, foreign-data wrappers.
const FUNCTION_OPTIONS: &[&str] = &[
    "function",
    "procedure",
    "restrict",
    "join",
    "sfunc",
    "sfunc1",
    "finalfunc",
    "finalfunc1",
    "combinefunc",
    "serialfunc",
    "deserialfunc",
    "msfunc",
    "minvfunc",
    "mfinalfunc",
    "input",
    "output",
    "receive",
    "send",
    "typmod_in",
    "typmod_out",
    "analyze",
    "subscript",
    "canonical",
    "subtype_diff",
    "start",
    "gettoken",
    "end",
    "lextypes",
    "headline",
    "init",
    "lexize",
    "handler",
    "validator",
];

/// Whether a statement node may change what the catalog says about functions, operators,
/// aggregates, casts or types (see [`FactsData::may_change_catalog`]).
fn changes_catalog(n: NodeRef<'_>) -> bool {
    if let NodeRef::TransactionStmt(t) = n {
        // A rollback may undo DDL the catalog was reloaded after.
        return matches!(
            pg_query::protobuf::TransactionStmtKind::try_from(t.kind),
            Ok(pg_query::protobuf::TransactionStmtKind::TransStmtRollback
                | pg_query::protobuf::TransactionStmtKind::TransStmtRollbackTo
                | pg_query::protobuf::TransactionStmtKind::TransStmtRollbackPrepared
                | pg_query::protobuf::TransactionStmtKind::TransStmtCommitPrepared)
        );
    }
    matches!(
        children::name(n),
        "CreateFunctionStmt"
            | "AlterFunctionStmt"
            | "DefineStmt"
            | "CreateCastStmt"
            | "CompositeTypeStmt"
            | "CreateEnumStmt"
            | "CreateRangeStmt"
            | "AlterEnumStmt"
            | "AlterTypeStmt"
            | "CreateDomainStmt"
            | "AlterDomainStmt"
            | "CreateExtensionStmt"
            | "AlterExtensionStmt"
            | "AlterExtensionContentsStmt"
            | "CreateSchemaStmt"
            | "CreatePlangStmt"
            | "CreateTransformStmt"
            | "CreateOpClassStmt"
            | "CreateOpFamilyStmt"
            | "AlterOpFamilyStmt"
            | "AlterOperatorStmt"
            | "CreateConversionStmt"
            | "RenameStmt"
            | "AlterObjectSchemaStmt"
            | "DropStmt"
            | "DropOwnedStmt"
    ) || reaches_beyond(n)
}

/// Whether a statement may make a write to a table reach rows beyond it (see
/// `Catalog::write_effect`): CREATE TRIGGER, CREATE RULE, and CREATE or ALTER TABLE adding a
/// cascading foreign key (`ON DELETE|UPDATE CASCADE | SET NULL | SET DEFAULT`), a partition or an
/// inheritance parent.
fn reaches_beyond(n: NodeRef<'_>) -> bool {
    fn cascades(n: &pg_query::protobuf::Node) -> bool {
        match &n.node {
            Some(NodeEnum::Constraint(c)) => {
                c.contype == pg_query::protobuf::ConstrType::ConstrForeign as i32
                    && [c.fk_del_action.as_str(), c.fk_upd_action.as_str()]
                        .iter()
                        .any(|a| matches!(*a, "c" | "n" | "d"))
            }
            Some(NodeEnum::ColumnDef(d)) => d.constraints.iter().any(cascades),
            _ => false,
        }
    }
    match n {
        NodeRef::CreateTrigStmt(_) | NodeRef::RuleStmt(_) => true,
        NodeRef::CreateStmt(s) => {
            !s.inh_relations.is_empty()
                || s.partbound.is_some()
                || s.table_elts.iter().any(cascades)
                || s.constraints.iter().any(cascades)
        }
        NodeRef::AlterTableStmt(s) => s.cmds.iter().any(|c| match &c.node {
            Some(NodeEnum::AlterTableCmd(cmd)) => {
                use pg_query::protobuf::AlterTableType as T;
                matches!(
                    T::try_from(cmd.subtype),
                    Ok(T::AtAttachPartition | T::AtAddInherit)
                ) || cmd.def.as_deref().is_some_and(cascades)
            }
            _ => false,
        }),
        _ => false,
    }
}

/// The run-time settings that turn integrity checks off at some value.
fn is_integrity_setting(name: &str) -> bool {
    matches!(name, "session_replication_role" | "row_security")
}

/// The value a SET gives a setting.
enum SettingValue<'a> {
    /// `TO DEFAULT` (or `RESET`).
    Default,
    /// A constant.
    Text(&'a str),
    /// Not a single constant (`FROM CURRENT`, a list, a parameter).
    Unknown,
}

/// The value of a SET's single argument: a string, a number or a boolean keyword (which the
/// grammar turns into strings).
fn setting_value(v: &Node) -> SettingValue<'_> {
    match inner(v) {
        Some(NodeEnum::AConst(c)) => match &c.val {
            Some(a_const::Val::Sval(s)) => SettingValue::Text(&s.sval),
            Some(a_const::Val::Fval(f)) => SettingValue::Text(&f.fval),
            Some(a_const::Val::Ival(i)) if i.ival == 1 => SettingValue::Text("1"),
            _ => SettingValue::Unknown,
        },
        _ => SettingValue::Unknown,
    }
}

/// (schema, name) of a dotted name given as a `List` of `String` nodes (DROP objects).
fn qualified_name(v: &Node) -> Option<(&str, &str)> {
    let parts: Vec<&str> = match inner(v)? {
        NodeEnum::List(l) => l.items.iter().filter_map(string_node).collect(),
        NodeEnum::String(s) => vec![s.sval.as_str()],
        _ => return None,
    };
    match parts.as_slice() {
        [name] => Some(("", name)),
        [.., schema, name] => Some((schema, name)),
        [] => None,
    }
}

/// Whether an EXPLAIN executes its statement (ANALYZE not explicitly turned off).
fn explain_analyzes(s: &ExplainStmt) -> bool {
    def_elems(&s.options).any(|(name, arg)| {
        if name != "analyze" {
            return false;
        }
        match arg.and_then(inner) {
            None => true,
            Some(NodeEnum::Boolean(b)) => b.boolval,
            Some(NodeEnum::String(s)) => !matches!(
                s.sval.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0"
            ),
            Some(NodeEnum::Integer(i)) => i.ival != 0,
            Some(_) => true,
        }
    })
}
