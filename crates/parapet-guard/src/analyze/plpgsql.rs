//! PL/pgSQL bodies (DO blocks, `LANGUAGE plpgsql` functions): parsed with pg_query's PL/pgSQL
//! parser; every embedded SQL statement and expression is analysed like top-level SQL, and
//! `EXECUTE` of SQL text is analysed when the text is a constant and denied
//! (`parapet.dynamic-sql`) when it is not.

use super::facts::{RULE_DYNAMIC_SQL, RULE_UNANALYSABLE};
use super::{const_string, error_text, inner, nested_sql_facts, Walker};
use pg_query::protobuf::node::Node as NodeEnum;
use serde_json::{Map, Value};

/// PL/pgSQL statement types whose SQL text is computed at run time, and the field holding it.
const DYNAMIC: &[(&str, &str)] = &[
    ("PLpgSQL_stmt_dynexecute", "query"),
    ("PLpgSQL_stmt_dynfors", "query"),
    ("PLpgSQL_stmt_return_query", "dynquery"),
    ("PLpgSQL_stmt_open", "dynquery"),
];

impl Walker<'_, '_> {
    /// Analyses the PL/pgSQL function defined by `create_function` (a CREATE FUNCTION text).
    pub(super) fn plpgsql(&mut self, create_function: &str) {
        if self.level + 1 > super::MAX_TEXT_NESTING {
            self.problem(
                RULE_UNANALYSABLE,
                "PL/pgSQL nested too deeply; denied".into(),
            );
            return;
        }
        // The parse, the walk and the tree's drop all recurse once per level.
        super::limits::with_stack(super::limits::PLPGSQL_NESTING, || {
            match super::parse::parse_plpgsql(create_function) {
                Ok(tree) => {
                    self.facts.nested = true;
                    self.plpgsql_value(&tree, 0);
                }
                Err(e) => self.problem(
                    RULE_UNANALYSABLE,
                    format!(
                        "the PL/pgSQL body cannot be analysed ({}); denied",
                        error_text(&e)
                    ),
                ),
            }
        });
    }

    fn plpgsql_value(&mut self, v: &Value, depth: usize) {
        super::limits::grow(|| self.plpgsql_value_step(v, depth));
    }

    fn plpgsql_value_step(&mut self, v: &Value, depth: usize) {
        if depth > super::MAX_TREE_DEPTH {
            self.problem(
                RULE_UNANALYSABLE,
                "PL/pgSQL body is nested too deeply to analyse; denied".into(),
            );
            return;
        }
        match v {
            Value::Object(obj) => {
                for (k, child) in obj {
                    if let Some((_, field)) = DYNAMIC.iter().find(|(name, _)| name == k) {
                        self.plpgsql_dynamic(child, field, depth + 1);
                    } else if k == "PLpgSQL_expr" {
                        self.plpgsql_expr(child);
                    } else {
                        self.plpgsql_value(child, depth + 1);
                    }
                }
            }
            Value::Array(items) => {
                for i in items {
                    self.plpgsql_value(i, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// A dynamic statement: analyse its SQL text when constant, otherwise deny.
    fn plpgsql_dynamic(&mut self, stmt: &Value, field: &str, depth: usize) {
        let Some(obj) = stmt.as_object() else {
            return;
        };
        let line = obj.get("lineno").and_then(Value::as_i64).unwrap_or(0);
        for (k, child) in obj {
            if k != field {
                self.plpgsql_value(child, depth + 1);
                continue;
            }
            let query = child
                .get("PLpgSQL_expr")
                .and_then(|e| e.get("query"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match constant_sql(query) {
                Some(sql) => match nested_sql_facts(&sql, self.level + 1) {
                    Ok(nested) => self.absorb_all(nested),
                    Err(e) => self.problem(
                        RULE_UNANALYSABLE,
                        format!(
                            "EXECUTE at PL/pgSQL line {line} runs text that does not parse ({e}); denied"
                        ),
                    ),
                },
                None => {
                    self.facts.dynamic_sql = true;
                    self.problem(
                        RULE_DYNAMIC_SQL,
                        format!(
                            "EXECUTE at PL/pgSQL line {line} runs SQL built at run time ({}), which cannot be analysed; denied",
                            shorten(query)
                        ),
                    );
                }
            }
        }
    }

    /// An embedded SQL statement or expression.
    fn plpgsql_expr(&mut self, expr: &Value) {
        let Some(obj) = expr.as_object() else {
            return;
        };
        let Some(sql) = expr_sql(obj) else {
            return;
        };
        match nested_sql_facts(&sql, self.level + 1) {
            Ok(nested) => self.absorb_all(nested),
            Err(e) => self.problem(
                RULE_UNANALYSABLE,
                format!(
                    "PL/pgSQL expression {} cannot be analysed ({e}); denied",
                    shorten(&sql)
                ),
            ),
        }
    }
}

/// SQL to analyse for a `PLpgSQL_expr` according to its parse mode (PostgreSQL's
/// `RawParseMode`: 0 statement, 1 type name, 2 expression, 3–5 assignment).
fn expr_sql(obj: &Map<String, Value>) -> Option<String> {
    let query = obj.get("query").and_then(Value::as_str)?;
    let mode = obj.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
    match mode {
        0 => Some(query.to_string()),
        1 => None,
        2 => Some(format!("SELECT {query}")),
        _ => {
            // `target := expression`: analyse the expression.
            let rhs = query
                .split_once(":=")
                .or_else(|| query.split_once('='))
                .map_or(query, |(_, r)| r);
            Some(format!("SELECT {rhs}"))
        }
    }
}

/// The SQL text of an EXECUTE argument when it is a single string constant.
fn constant_sql(expr: &str) -> Option<String> {
    let parsed = super::parse::parse(&format!("SELECT {expr}")).ok()?;
    let [raw] = parsed.stmts.as_slice() else {
        return None;
    };
    let Some(NodeEnum::SelectStmt(select)) = inner(raw.stmt.as_deref()?) else {
        return None;
    };
    // Only `SELECT 'text'`: no FROM, WHERE, etc.
    if !select.from_clause.is_empty() {
        return None;
    }
    let [target] = select.target_list.as_slice() else {
        return None;
    };
    let Some(NodeEnum::ResTarget(res)) = inner(target) else {
        return None;
    };
    const_string(res.val.as_deref()?).map(str::to_string)
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 80 {
        format!("{:?}…", s.chars().take(80).collect::<String>())
    } else {
        format!("{s:?}")
    }
}
