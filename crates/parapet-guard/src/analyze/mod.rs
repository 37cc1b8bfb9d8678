//! Statement analysis: PostgreSQL text → typed [`StatementFacts`], using the real PostgreSQL
//! grammar (`pg_query`). Owns splitting a message into statements, walking each parse tree
//! (including everything nested: CTEs, subqueries, EXPLAIN ANALYZE, PREPARE bodies, function
//! bodies, DO blocks), normalisation and fingerprinting. Fails closed: whatever cannot be parsed
//! or analysed is reported as a [`Problem`], which the engine always denies.
//!
//! The walk runs over the parse tree serialised to JSON (`pg_query`'s protobuf types derive
//! `Serialize`) so that *every* node is visited: a hand-written typed walker would have to list
//! all ~270 node types and silently miss any it forgot, which is the wrong failure mode for a
//! guardrail.

pub mod facts;
mod plpgsql;

use facts::{FactsData, Problem, StatementFacts, RULE_UNANALYSABLE, RULE_UNPARSEABLE};
use pg_query::protobuf::{AlterTableType, ObjectType, VariableSetKind};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// How deep SQL text may nest inside SQL text (function bodies, constant EXECUTE strings, DO).
const MAX_TEXT_NESTING: usize = 8;
/// How deep the parse tree walk may go before giving up (fail closed).
const MAX_TREE_DEPTH: usize = 4_000;

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
pub fn analyze(sql: &str) -> Analysis {
    match std::panic::catch_unwind(|| analyze_message(sql)) {
        Ok(a) => a,
        Err(_) => Analysis::failed(Problem {
            rule: RULE_UNPARSEABLE,
            reason: "the statement analyser failed on this text, so it is denied".into(),
        }),
    }
}

fn analyze_message(sql: &str) -> Analysis {
    if sql.contains('\0') {
        return Analysis::failed(Problem {
            rule: RULE_UNPARSEABLE,
            reason: "statement text contains a NUL byte and cannot be parsed; denied".into(),
        });
    }
    let parsed = match pg_query::parse(sql) {
        Ok(p) => p,
        Err(e) => {
            return Analysis::failed(Problem {
                rule: RULE_UNPARSEABLE,
                reason: format!(
                    "statement does not parse as PostgreSQL ({}); denied",
                    error_text(&e)
                ),
            })
        }
    };
    let normalized = pg_query::normalize(sql).ok();
    let fingerprint = pg_query::fingerprint(sql).ok().map(|f| f.hex);
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        let facts = match raw.stmt.as_ref().map(serde_json::to_value) {
            Some(Ok(tree)) => statement_facts(&tree, text, 0),
            _ => unanalysable_facts(text, "the parse tree could not be read"),
        };
        statements.push(StatementFacts(Arc::new(facts)));
    }
    Analysis {
        statements,
        normalized,
        fingerprint,
        failure: None,
    }
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

/// Facts of one statement given its parse tree (`{"node": {"SelectStmt": {…}}}`) and text.
fn statement_facts(tree: &Value, text: &str, level: usize) -> FactsData {
    let Some((name, body)) = node_variant(tree) else {
        return unanalysable_facts(text, "empty statement tree");
    };
    let mut w = Walker {
        facts: FactsData::new(text, &kind_of(name, body)),
        text,
        level,
        tables: Vec::new(),
        ctes: BTreeSet::new(),
    };
    w.visit_stmt(name, body, true, 0);
    w.finish()
}

/// Parses nested SQL text (function body, constant EXECUTE string) into facts per statement.
fn nested_sql_facts(sql: &str, level: usize) -> Result<Vec<FactsData>, String> {
    if level > MAX_TEXT_NESTING {
        return Err("SQL text nested too deeply".into());
    }
    let parsed = pg_query::parse(sql).map_err(|e| error_text(&e))?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        match raw.stmt.as_ref().map(serde_json::to_value) {
            Some(Ok(tree)) => out.push(statement_facts(&tree, text, level)),
            _ => return Err("the parse tree could not be read".into()),
        }
    }
    Ok(out)
}

/// `{"node": {"X": body}}` or `{"X": body}` → ("X", body).
fn node_variant(v: &Value) -> Option<(&str, &Value)> {
    let obj = v.as_object()?;
    let inner = match obj.get("node") {
        Some(n) if obj.len() == 1 => n.as_object()?,
        _ => obj,
    };
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn int_field(obj: &Map<String, Value>, key: &str) -> i32 {
    obj.get(key)
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(0)
}

fn is_null(obj: &Map<String, Value>, key: &str) -> bool {
    matches!(obj.get(key), None | Some(Value::Null))
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

/// The `sval` of a `String` node (wrapped or not).
/// The `(defname, arg)` pairs of the `DefElem` nodes in an option list (`CREATE FUNCTION`'s
/// `options`, `DO`'s `args`); other nodes are skipped, a missing `arg` is `null`.
fn def_elems(list: Option<&Value>) -> impl Iterator<Item = (&str, &Value)> {
    let items = match list {
        Some(Value::Array(items)) => items.as_slice(),
        _ => &[],
    };
    items.iter().filter_map(|o| {
        let Some(("DefElem", d)) = node_variant(o) else {
            return None;
        };
        let name = d.get("defname").and_then(Value::as_str)?;
        Some((name, d.get("arg").unwrap_or(&Value::Null)))
    })
}

fn string_node(v: &Value) -> Option<&str> {
    let (name, body) = node_variant(v)?;
    if name == "String" {
        body.get("sval").and_then(Value::as_str)
    } else {
        None
    }
}

/// The string constant of an `A_Const` node, if that is what `v` is.
fn const_string(v: &Value) -> Option<&str> {
    let (name, body) = node_variant(v)?;
    if name != "AConst" {
        return None;
    }
    body.get("val")?.get("Sval")?.get("sval")?.as_str()
}

/// Primary kind of a statement node.
fn kind_of(name: &str, body: &Value) -> String {
    let obj = body.as_object();
    let k = match name {
        "SelectStmt" => "select",
        "InsertStmt" => "insert",
        "UpdateStmt" => "update",
        "DeleteStmt" => "delete",
        "MergeStmt" => "merge",
        "TruncateStmt" => "truncate",
        "CopyStmt" => "copy",
        "GrantStmt" | "GrantRoleStmt" => {
            if obj.is_some_and(|o| bool_field(o, "is_grant")) {
                "grant"
            } else {
                "revoke"
            }
        }
        "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" => "role",
        "VariableSetStmt" => {
            let kind = obj.map(|o| int_field(o, "kind")).unwrap_or(0);
            match VariableSetKind::try_from(kind) {
                Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll) => "reset",
                _ => "set",
            }
        }
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
    };
    k.to_string()
}

/// Walks one statement's tree, collecting facts.
struct Walker<'t> {
    facts: FactsData,
    /// Text of the statement being walked (for PL/pgSQL function bodies).
    text: &'t str,
    /// Nesting level of SQL text.
    level: usize,
    /// (schema, name, written) of every table named.
    tables: Vec<(String, String, bool)>,
    /// CTE names (not tables).
    ctes: BTreeSet<String>,
}

impl Walker<'_> {
    fn finish(mut self) -> FactsData {
        for (schema, name, written) in std::mem::take(&mut self.tables) {
            if schema.is_empty() && !written && self.ctes.contains(&name) {
                continue;
            }
            let schema = if schema.is_empty() {
                "public".to_string()
            } else {
                schema
            };
            let full = format!("{schema}.{name}");
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

    /// Records a RangeVar (wrapped or direct) as written.
    fn write_target(&mut self, v: &Value) {
        if let Some((schema, name)) = range_var(v) {
            self.tables.push((schema, name, true));
        }
    }

    fn visit_stmt(&mut self, name: &str, body: &Value, top: bool, depth: usize) {
        let kind = kind_of(name, body);
        if !top {
            self.facts.nested = true;
        }
        self.facts.kinds.insert(kind);
        let Some(obj) = body.as_object() else {
            return;
        };
        let mut skip: Vec<&str> = Vec::new();
        match name {
            "InsertStmt" | "MergeStmt" => {
                if let Some(r) = obj.get("relation") {
                    self.write_target(r);
                }
                skip.push("relation");
            }
            "UpdateStmt" | "DeleteStmt" => {
                if let Some(r) = obj.get("relation") {
                    self.write_target(r);
                }
                skip.push("relation");
                // `WHERE CURRENT OF cursor` is a where clause too (CurrentOfExpr).
                if is_null(obj, "where_clause") {
                    if name == "UpdateStmt" {
                        self.facts.update_without_where = true;
                    } else {
                        self.facts.delete_without_where = true;
                    }
                    if top {
                        self.facts.has_where = false;
                    }
                }
            }
            "CopyStmt" => {
                let is_from = bool_field(obj, "is_from");
                self.facts.copy_direction = if is_from { "from" } else { "to" }.into();
                if bool_field(obj, "is_program") {
                    self.facts.copy_program = true;
                } else if !str_field(obj, "filename").is_empty() {
                    self.facts.copy_server_file = true;
                }
                if let Some((schema, rel)) = obj.get("relation").and_then(range_var) {
                    self.tables.push((schema, rel, is_from));
                }
                skip.push("relation");
            }
            "TruncateStmt" => {
                if let Some(Value::Array(rels)) = obj.get("relations") {
                    for r in rels {
                        self.write_target(r);
                    }
                }
                skip.push("relations");
                self.facts.object_types.insert("table".into());
            }
            "DropStmt" => {
                let ot = object_type_name(int_field(obj, "remove_type"));
                let table_like = matches!(
                    ot.as_str(),
                    "table" | "view" | "matview" | "index" | "sequence" | "foreign_table"
                );
                if table_like {
                    if let Some(Value::Array(objects)) = obj.get("objects") {
                        for o in objects {
                            if let Some((schema, name)) = qualified_name(o) {
                                self.tables.push((schema, name, true));
                            }
                        }
                    }
                }
                self.facts.object_types.insert(ot);
            }
            "CreateStmt" | "AlterTableStmt" | "IndexStmt" | "RenameStmt" | "RefreshMatViewStmt"
            | "ClusterStmt" => {
                if let Some(r) = obj.get("relation") {
                    self.write_target(r);
                }
                skip.push("relation");
                let ot = match name {
                    "CreateStmt" => "table".to_string(),
                    "IndexStmt" => "index".to_string(),
                    "RenameStmt" => object_type_name(int_field(obj, "rename_type")),
                    "AlterTableStmt" => object_type_name(int_field(obj, "objtype")),
                    _ => "table".to_string(),
                };
                if ot == "role" {
                    self.facts.kinds.insert("role".into());
                }
                self.facts.object_types.insert(ot);
                if name == "AlterTableStmt" {
                    self.alter_table_cmds(obj);
                }
            }
            "ViewStmt" => {
                if let Some(r) = obj.get("view") {
                    self.write_target(r);
                }
                skip.push("view");
                self.facts.object_types.insert("view".into());
            }
            "CreateTableAsStmt" => {
                if let Some(r) = obj.get("into").and_then(|i| i.get("rel")) {
                    self.write_target(r);
                }
                skip.push("into");
                self.facts
                    .object_types
                    .insert(object_type_name(int_field(obj, "objtype")));
            }
            "SelectStmt" => {
                if let Some(r) = obj.get("into_clause").and_then(|i| i.get("rel")) {
                    self.write_target(r);
                    self.facts.kinds.insert("create".into());
                    self.facts.object_types.insert("table".into());
                }
                skip.push("into_clause");
            }
            "GrantStmt" => {
                self.facts
                    .object_types
                    .insert(object_type_name(int_field(obj, "objtype")));
            }
            "GrantRoleStmt" => {
                self.facts.object_types.insert("role".into());
            }
            "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" => {
                self.facts.object_types.insert("role".into());
                self.facts.kinds.insert(
                    match name {
                        "CreateRoleStmt" => "create",
                        "DropRoleStmt" => "drop",
                        _ => "alter",
                    }
                    .into(),
                );
            }
            "AlterSystemStmt" => {
                self.facts.kinds.insert("alter".into());
            }
            "VariableSetStmt" => self.variable_set(obj),
            // Plain EXPLAIN only plans its statement; it does not run it.
            "ExplainStmt" if !explain_analyzes(obj) => skip.push("query"),
            "CreateFunctionStmt" => {
                self.facts.object_types.insert(
                    if bool_field(obj, "is_procedure") {
                        "procedure"
                    } else {
                        "function"
                    }
                    .into(),
                );
                self.function_body(obj, top);
            }
            "DoStmt" => self.do_block(obj),
            "CreatedbStmt" => {
                self.facts.object_types.insert("database".into());
            }
            "CreateSchemaStmt" => {
                self.facts.object_types.insert("schema".into());
            }
            "CreateExtensionStmt" => {
                self.facts.object_types.insert("extension".into());
            }
            _ => {}
        }
        for (k, v) in obj {
            if skip.contains(&k.as_str()) {
                continue;
            }
            self.visit_value(v, depth + 1);
        }
    }

    fn alter_table_cmds(&mut self, obj: &Map<String, Value>) {
        let Some(Value::Array(cmds)) = obj.get("cmds") else {
            return;
        };
        for c in cmds {
            if let Some(("AlterTableCmd", body)) = node_variant(c) {
                let subtype = body.get("subtype").and_then(Value::as_i64).unwrap_or(0);
                let subtype = i32::try_from(subtype).unwrap_or(0);
                if AlterTableType::try_from(subtype) == Ok(AlterTableType::AtDropColumn) {
                    self.facts.kinds.insert("drop".into());
                    self.facts.object_types.insert("column".into());
                }
            }
        }
    }

    fn variable_set(&mut self, obj: &Map<String, Value>) {
        let kind = VariableSetKind::try_from(int_field(obj, "kind"));
        if matches!(
            kind,
            Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll)
        ) {
            return;
        }
        let name = str_field(obj, "name").to_ascii_lowercase();
        match name.as_str() {
            "role" => {
                self.facts.kinds.insert("set_role".into());
            }
            "session_authorization" => {
                self.facts.kinds.insert("session_authorization".into());
            }
            _ => {}
        }
        if !name.is_empty() {
            self.facts.set_variables.insert(name);
        }
    }

    fn function_body(&mut self, obj: &Map<String, Value>, top: bool) {
        if !is_null(obj, "sql_body") {
            // BEGIN ATOMIC … END: already parsed, the generic walk sees it.
            return;
        }
        let mut language = String::from("sql");
        let mut body: Option<String> = None;
        let mut body_parts = 0;
        for (name, arg) in def_elems(obj.get("options")) {
            match name {
                "language" => {
                    if let Some(l) = string_node(arg) {
                        language = l.to_ascii_lowercase();
                    }
                }
                "as" => {
                    if let Some(("List", l)) = node_variant(arg) {
                        if let Some(Value::Array(items)) = l.get("items") {
                            body_parts = items.len();
                            body = items.first().and_then(string_node).map(str::to_string);
                        }
                    } else if let Some(s) = string_node(arg) {
                        body_parts = 1;
                        body = Some(s.to_string());
                    }
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

    fn do_block(&mut self, obj: &Map<String, Value>) {
        let mut language = String::from("plpgsql");
        let mut body: Option<&str> = None;
        for (name, arg) in def_elems(obj.get("args")) {
            match name {
                "language" => {
                    if let Some(l) = string_node(arg) {
                        language = l.to_ascii_lowercase();
                    }
                }
                "as" => body = string_node(arg),
                _ => {}
            }
        }
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

    /// Generic walk: finds tables, function calls, CTE names, parameters and nested statements.
    fn visit_value(&mut self, v: &Value, depth: usize) {
        if depth > MAX_TREE_DEPTH {
            self.problem(
                RULE_UNANALYSABLE,
                "statement is nested too deeply to analyse; denied".into(),
            );
            return;
        }
        match v {
            Value::Object(obj) => {
                if let (Some(Value::String(rel)), true) =
                    (obj.get("relname"), obj.contains_key("inh"))
                {
                    let schema = str_field(obj, "schemaname").to_string();
                    self.tables.push((schema, rel.clone(), false));
                    return;
                }
                if obj.contains_key("funcname") && obj.contains_key("funcformat") {
                    self.function_call(obj);
                }
                if let Some(Value::String(cte)) = obj.get("ctename") {
                    self.ctes.insert(cte.clone());
                }
                for (k, child) in obj {
                    if k == "ParamRef" {
                        self.facts.has_parameters = true;
                    }
                    if k.ends_with("Stmt") && k.starts_with(|c: char| c.is_ascii_uppercase()) {
                        self.visit_stmt(k, child, false, depth + 1);
                    } else if k != "funcname" {
                        self.visit_value(child, depth + 1);
                    }
                }
            }
            Value::Array(items) => {
                for i in items {
                    self.visit_value(i, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn function_call(&mut self, obj: &Map<String, Value>) {
        let Some(Value::Array(parts)) = obj.get("funcname") else {
            return;
        };
        let mut names: Vec<&str> = parts.iter().filter_map(string_node).collect();
        if names.len() > 1 && names[0] == "pg_catalog" {
            names.remove(0);
        }
        let Some(bare) = names.last().map(|s| s.to_string()) else {
            return;
        };
        self.facts.functions.insert(names.join("."));
        if bare == "set_config" {
            let first = obj
                .get("args")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(const_string);
            let var = first.map_or_else(|| "?".to_string(), |s| s.trim().to_ascii_lowercase());
            if var == "role" {
                self.facts.kinds.insert("set_role".into());
            }
            self.facts.set_variables.insert(var);
        }
        self.facts.function_names.insert(bare);
    }
}

/// (schema, name) of a RangeVar, wrapped in a node or direct.
fn range_var(v: &Value) -> Option<(String, String)> {
    let obj = v.as_object()?;
    if let Some(Value::String(rel)) = obj.get("relname") {
        return Some((str_field(obj, "schemaname").to_string(), rel.clone()));
    }
    match node_variant(v) {
        Some(("RangeVar", body)) => range_var(body),
        _ => None,
    }
}

/// (schema, name) of a dotted name given as a `List` of `String` nodes (DROP objects).
fn qualified_name(v: &Value) -> Option<(String, String)> {
    let (kind, body) = node_variant(v)?;
    let parts: Vec<&str> = match kind {
        "List" => body
            .get("items")?
            .as_array()?
            .iter()
            .filter_map(string_node)
            .collect(),
        "String" => vec![body.get("sval")?.as_str()?],
        _ => return None,
    };
    match parts.as_slice() {
        [name] => Some((String::new(), name.to_string())),
        [.., schema, name] => Some((schema.to_string(), name.to_string())),
        [] => None,
    }
}

/// Whether an EXPLAIN executes its statement (ANALYZE not explicitly turned off).
fn explain_analyzes(obj: &Map<String, Value>) -> bool {
    let Some(Value::Array(options)) = obj.get("options") else {
        return false;
    };
    options.iter().any(|o| {
        let Some(("DefElem", d)) = node_variant(o) else {
            return false;
        };
        if d.get("defname").and_then(Value::as_str) != Some("analyze") {
            return false;
        }
        match d.get("arg").and_then(node_variant) {
            None => true,
            Some(("Boolean", b)) => b.get("boolval").and_then(Value::as_bool).unwrap_or(false),
            Some(("String", s)) => !matches!(
                s.get("sval")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("false" | "off" | "no" | "0")
            ),
            Some(("Integer", i)) => i.get("ival").and_then(Value::as_i64).unwrap_or(0) != 0,
            Some(_) => true,
        }
    })
}
