//! Constant folding of filters: whether a WHERE clause (or a MERGE join condition) is a constant
//! that lets every row through, so an `UPDATE`/`DELETE` with it is judged as one without WHERE.
//!
//! Only expressions over literals are folded, with SQL's three-valued logic: `AND`, `OR`, `NOT`,
//! `IS [NOT] TRUE|FALSE|UNKNOWN`, `IS [NOT] NULL`, `IS [NOT] DISTINCT FROM`, `[NOT] IN (…)`, the
//! comparisons `= <> != < > <= >=` between numbers, strings or booleans, unary `+`/`-` on
//! numbers, and casts of literals to `boolean` or a numeric type. Anything else (a column, a
//! function call, a subquery, `CASE`, a parameter) is unknown, and so is anything whose value the
//! server would reject (an invalid boolean string, `WHERE 1`): such a statement errors or
//! filters, and is judged by its other facts. `x = x` is not folded: it is NULL, not true, where
//! `x` is NULL, so it does filter.

use pg_query::protobuf::node::Node as NodeEnum;
use pg_query::protobuf::{a_const, AExprKind, BoolExprType, BoolTestType, Node, NullTestType};
use std::cmp::Ordering;

/// The value of a boolean expression in SQL's three-valued logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Truth {
    True,
    False,
    Null,
}

impl Truth {
    fn of(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Null => Truth::Null,
        }
    }
}

/// A decimal number: `0.<digits> × 10^point`, digits without leading or trailing zeros (empty
/// for zero).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    point: i64,
}

impl Decimal {
    fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (negative, s) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
            None => (s, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || exp.unsigned_abs() > 1_000_000
        {
            return None;
        }
        let all = format!("{int}{frac}");
        let lead = all.len() - all.trim_start_matches('0').len();
        let digits = all.trim_matches('0').to_string();
        let point = i64::try_from(int.len()).ok()? - i64::try_from(lead).ok()? + exp;
        Some(Decimal {
            negative: negative && !digits.is_empty(),
            point: if digits.is_empty() { 0 } else { point },
            digits,
        })
    }

    /// An integer as the server's integer input accepts it (`int4in`/`int8in`: whitespace,
    /// sign, digits; since PostgreSQL 16 also `0x`/`0o`/`0b` prefixes and `_` separators).
    fn parse_integer(s: &str) -> Option<Decimal> {
        let t = s.trim();
        let (negative, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let lower = body.to_ascii_lowercase();
        let (radix, digits) = match lower.get(..2) {
            Some("0x") => (16, &lower[2..]),
            Some("0o") => (8, &lower[2..]),
            Some("0b") => (2, &lower[2..]),
            _ => (10, lower.as_str()),
        };
        if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
            return None;
        }
        let clean: String = digits.chars().filter(|&c| c != '_').collect();
        let v = u128::from_str_radix(&clean, radix).ok()?;
        Decimal::parse(&format!("{}{v}", if negative { "-" } else { "" }))
    }

    fn negate(mut self) -> Decimal {
        self.negative = !self.negative && !self.digits.is_empty();
        self
    }

    fn cmp(&self, other: &Decimal) -> Ordering {
        let sign = |d: &Decimal| {
            if d.digits.is_empty() {
                0
            } else if d.negative {
                -1
            } else {
                1
            }
        };
        let (a, b) = (sign(self), sign(other));
        if a != b {
            return a.cmp(&b);
        }
        let magnitude = self
            .point
            .cmp(&other.point)
            .then_with(|| self.digits.cmp(&other.digits));
        if a < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

/// A constant value.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Bool(bool),
    /// A number, and whether it is of an integer type (then strings compared with it must be
    /// integers too).
    Num(Decimal, bool),
    /// A string literal of unknown type (its type comes from what it is compared with).
    Str(String),
}

/// PostgreSQL's `parse_bool` (after `boolin` trims whitespace).
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim().to_ascii_lowercase();
    let prefix = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix("true", 1) || prefix("yes", 1) || prefix("on", 2) || s == "1" {
        Some(true)
    } else if prefix("false", 1) || prefix("no", 1) || prefix("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

/// Folds expressions; records whether a literal's value was read (then facts depend on
/// literal values, and the statement's shape must not be reused for other literals).
#[derive(Debug, Default)]
pub(super) struct Folder {
    /// A numeric or string literal's value was read.
    pub(super) read_literal: bool,
}

impl Folder {
    /// The truth value of `n` used as a condition, when it is a constant the server accepts.
    pub(super) fn truth(&mut self, n: &Node) -> Option<Truth> {
        match self.value(n)? {
            Value::Null => Some(Truth::Null),
            Value::Bool(b) => Some(Truth::of(b)),
            Value::Str(s) => parse_bool(&s).map(Truth::of),
            Value::Num(..) => None,
        }
    }

    fn truth_value(t: Truth) -> Value {
        match t {
            Truth::True => Value::Bool(true),
            Truth::False => Value::Bool(false),
            Truth::Null => Value::Null,
        }
    }

    fn value(&mut self, n: &Node) -> Option<Value> {
        match n.node.as_ref()? {
            NodeEnum::AConst(c) => {
                if c.isnull {
                    return Some(Value::Null);
                }
                match c.val.as_ref()? {
                    a_const::Val::Boolval(b) => Some(Value::Bool(b.boolval)),
                    a_const::Val::Ival(i) => {
                        self.read_literal = true;
                        Some(Value::Num(Decimal::parse(&i.ival.to_string())?, true))
                    }
                    a_const::Val::Fval(f) => {
                        self.read_literal = true;
                        // Integers too large for int4 are Float nodes too.
                        let integer = f.fval.bytes().all(|b| b.is_ascii_digit() || b == b'-');
                        Some(Value::Num(Decimal::parse(&f.fval)?, integer))
                    }
                    a_const::Val::Sval(s) => {
                        self.read_literal = true;
                        Some(Value::Str(s.sval.clone()))
                    }
                    a_const::Val::Bsval(_) => None,
                }
            }
            NodeEnum::TypeCast(c) => {
                let v = self.value(c.arg.as_deref()?)?;
                let ty = c.type_name.as_ref()?;
                if !ty.array_bounds.is_empty() || ty.setof {
                    return None;
                }
                let name = match ty.names.last()?.node.as_ref()? {
                    NodeEnum::String(s) => s.sval.to_ascii_lowercase(),
                    _ => return None,
                };
                self.cast(v, &name)
            }
            NodeEnum::BoolExpr(b) => {
                let op = BoolExprType::try_from(b.boolop).ok()?;
                self.bool_expr(op, &b.args).map(Self::truth_value)
            }
            NodeEnum::BooleanTest(t) => {
                let v = self.truth(t.arg.as_deref()?)?;
                let r = match BoolTestType::try_from(t.booltesttype).ok()? {
                    BoolTestType::IsTrue => v == Truth::True,
                    BoolTestType::IsNotTrue => v != Truth::True,
                    BoolTestType::IsFalse => v == Truth::False,
                    BoolTestType::IsNotFalse => v != Truth::False,
                    BoolTestType::IsUnknown => v == Truth::Null,
                    BoolTestType::IsNotUnknown => v != Truth::Null,
                    BoolTestType::Undefined => return None,
                };
                Some(Value::Bool(r))
            }
            NodeEnum::NullTest(t) => {
                if t.argisrow {
                    return None;
                }
                let is_null = matches!(self.value(t.arg.as_deref()?)?, Value::Null);
                match NullTestType::try_from(t.nulltesttype).ok()? {
                    NullTestType::IsNull => Some(Value::Bool(is_null)),
                    NullTestType::IsNotNull => Some(Value::Bool(!is_null)),
                    NullTestType::Undefined => None,
                }
            }
            NodeEnum::AExpr(e) => self.a_expr(e),
            _ => None,
        }
    }

    fn cast(&mut self, v: Value, ty: &str) -> Option<Value> {
        match ty {
            "bool" | "boolean" => match v {
                Value::Null => Some(Value::Null),
                Value::Bool(b) => Some(Value::Bool(b)),
                Value::Str(s) => parse_bool(&s).map(Value::Bool),
                // int4 → bool: zero is false; other numeric types have no cast.
                Value::Num(d, true) => Some(Value::Bool(!d.digits.is_empty())),
                Value::Num(..) => None,
            },
            "int2" | "int4" | "int8" | "smallint" | "integer" | "int" | "bigint" => match v {
                Value::Null => Some(Value::Null),
                Value::Num(d, true) => Some(Value::Num(d, true)),
                Value::Str(s) => Decimal::parse_integer(&s).map(|d| Value::Num(d, true)),
                _ => None,
            },
            "numeric" | "decimal" => match v {
                Value::Null => Some(Value::Null),
                Value::Num(d, _) => Some(Value::Num(d, false)),
                Value::Str(s) => Decimal::parse(&s).map(|d| Value::Num(d, false)),
                _ => None,
            },
            "text" | "varchar" => match v {
                Value::Null => Some(Value::Null),
                Value::Str(s) => Some(Value::Str(s)),
                _ => None,
            },
            _ => None,
        }
    }

    fn bool_expr(&mut self, op: BoolExprType, args: &[Node]) -> Option<Truth> {
        let values: Vec<Option<Truth>> = args.iter().map(|a| self.truth(a)).collect();
        match op {
            BoolExprType::NotExpr => match values.as_slice() {
                [v] => v.map(Truth::not),
                _ => None,
            },
            BoolExprType::AndExpr => and_values(&values),
            BoolExprType::OrExpr => or_values(&values),
            BoolExprType::Undefined => None,
        }
    }

    fn a_expr(&mut self, e: &pg_query::protobuf::AExpr) -> Option<Value> {
        let op = match e.name.last()?.node.as_ref()? {
            NodeEnum::String(s) => s.sval.clone(),
            _ => return None,
        };
        let kind = AExprKind::try_from(e.kind).ok()?;
        let Some(left) = e.lexpr.as_deref() else {
            // Prefix operator: only unary + and - on a number.
            let v = self.value(e.rexpr.as_deref()?)?;
            return match (op.as_str(), v) {
                ("-", Value::Num(d, i)) => Some(Value::Num(d.negate(), i)),
                ("+", Value::Num(d, i)) => Some(Value::Num(d, i)),
                (_, Value::Null) if op == "-" || op == "+" => Some(Value::Null),
                _ => None,
            };
        };
        match kind {
            AExprKind::AexprOp => {
                let l = self.value(left)?;
                let r = self.value(e.rexpr.as_deref()?)?;
                compare(&l, &r, &op).map(Self::truth_value)
            }
            AExprKind::AexprDistinct | AExprKind::AexprNotDistinct => {
                let l = self.value(left)?;
                let r = self.value(e.rexpr.as_deref()?)?;
                let distinct = match (&l, &r) {
                    (Value::Null, Value::Null) => false,
                    (Value::Null, _) | (_, Value::Null) => true,
                    _ => compare(&l, &r, "<>")? == Truth::True,
                };
                Some(Value::Bool(if kind == AExprKind::AexprDistinct {
                    distinct
                } else {
                    !distinct
                }))
            }
            AExprKind::AexprIn => {
                let l = self.value(left)?;
                let items = match e.rexpr.as_deref()?.node.as_ref()? {
                    NodeEnum::List(list) => &list.items,
                    _ => return None,
                };
                let mut results = Vec::with_capacity(items.len());
                for item in items {
                    let r = self.value(item)?;
                    results.push(Some(compare(&l, &r, &op)?));
                }
                // `IN` is `= ANY` (an OR), `NOT IN` is `<> ALL` (an AND).
                let combined = if op == "=" {
                    or_values(&results)
                } else {
                    and_values(&results)
                };
                combined.map(Self::truth_value)
            }
            _ => None,
        }
    }
}

fn or_values(values: &[Option<Truth>]) -> Option<Truth> {
    if values.contains(&Some(Truth::True)) {
        Some(Truth::True)
    } else if values.contains(&None) {
        None
    } else if values.contains(&Some(Truth::Null)) {
        Some(Truth::Null)
    } else {
        Some(Truth::False)
    }
}

fn and_values(values: &[Option<Truth>]) -> Option<Truth> {
    if values.contains(&Some(Truth::False)) {
        Some(Truth::False)
    } else if values.contains(&None) {
        None
    } else if values.contains(&Some(Truth::Null)) {
        Some(Truth::Null)
    } else {
        Some(Truth::True)
    }
}

/// `l op r` for constants, when the server would evaluate it without error.
fn compare(l: &Value, r: &Value, op: &str) -> Option<Truth> {
    if !matches!(op, "=" | "<>" | "!=" | "<" | ">" | "<=" | ">=") {
        return None;
    }
    let ordering = match (l, r) {
        (Value::Null, _) | (_, Value::Null) => return Some(Truth::Null),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Bool(a), Value::Str(s)) => a.cmp(&parse_bool(s)?),
        (Value::Str(s), Value::Bool(b)) => parse_bool(s)?.cmp(b),
        (Value::Num(a, _), Value::Num(b, _)) => a.cmp(b),
        (Value::Num(a, int), Value::Str(s)) => a.cmp(&number_from(s, *int)?),
        (Value::Str(s), Value::Num(b, int)) => number_from(s, *int)?.cmp(b),
        (Value::Str(a), Value::Str(b)) => {
            // Two unknown literals compare as text: equality is exact, order depends on the
            // collation (unknown here) unless the strings are equal.
            if a == b {
                Ordering::Equal
            } else if matches!(op, "=" | "<>" | "!=") {
                a.cmp(b)
            } else {
                return None;
            }
        }
        _ => return None,
    };
    let r = match op {
        "=" => ordering == Ordering::Equal,
        "<>" | "!=" => ordering != Ordering::Equal,
        "<" => ordering == Ordering::Less,
        ">" => ordering == Ordering::Greater,
        "<=" => ordering != Ordering::Greater,
        _ => ordering != Ordering::Less,
    };
    Some(Truth::of(r))
}

/// A string literal read as the number type it is compared with.
fn number_from(s: &str, integer: bool) -> Option<Decimal> {
    if integer {
        Decimal::parse_integer(s)
    } else {
        Decimal::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(cond: &str) -> Option<Truth> {
        let sql = format!("DELETE FROM t WHERE {cond}");
        let parsed = pg_query::parse(&sql).expect("parses");
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().expect("stmt");
        let Some(NodeEnum::DeleteStmt(d)) = stmt.node.as_ref() else {
            panic!("not a delete")
        };
        Folder::default().truth(d.where_clause.as_deref().expect("where"))
    }

    #[test]
    fn folds_constants() {
        use Truth::*;
        let cases: &[(&str, Option<Truth>)] = &[
            ("true", Some(True)),
            ("false", Some(False)),
            ("NULL", Some(Null)),
            ("1 = 1", Some(True)),
            ("1 = 2", Some(False)),
            ("1 <> 2", Some(True)),
            ("2 > 1", Some(True)),
            ("1 >= 1.0", Some(True)),
            ("1.50 = 1.5", Some(True)),
            ("1e2 = 100", Some(True)),
            ("-1 < 0", Some(True)),
            ("- 1 = -1", Some(True)),
            ("-(1) = -1", Some(True)),
            ("'a' = 'a'", Some(True)),
            ("'a' = 'b'", Some(False)),
            ("'a' < 'b'", None),
            ("'a' <= 'a'", Some(True)),
            ("1 = '1'", Some(True)),
            ("1 = ' 1 '", Some(True)),
            ("1 = '1.0'", None),
            ("1 = '0x1'", Some(True)),
            ("1.0 = '1.0'", Some(True)),
            ("'t'", Some(True)),
            ("'yes'", Some(True)),
            ("'of'", Some(False)),
            ("'o'", None),
            ("'true'::boolean", Some(True)),
            ("'false'::bool", Some(False)),
            ("CAST('on' AS boolean)", Some(True)),
            ("1::boolean", Some(True)),
            ("0::boolean", Some(False)),
            ("1", None),
            ("NOT false", Some(True)),
            ("NOT NULL", Some(Null)),
            ("true AND true", Some(True)),
            ("id = 7 AND true", None),
            ("id = 7 OR true", Some(True)),
            ("id = 7 AND false", Some(False)),
            ("true OR id = 7", Some(True)),
            ("NULL OR true", Some(True)),
            ("NULL AND true", Some(Null)),
            ("true IS TRUE", Some(True)),
            ("NULL IS NOT TRUE", Some(True)),
            ("false IS FALSE", Some(True)),
            ("NULL IS UNKNOWN", Some(True)),
            ("NULL IS NULL", Some(True)),
            ("1 IS NOT NULL", Some(True)),
            ("'x' IS NULL", Some(False)),
            ("NULL = NULL", Some(Null)),
            ("NULL IS NOT DISTINCT FROM NULL", Some(True)),
            ("1 IS DISTINCT FROM 2", Some(True)),
            ("1 IN (1, 2)", Some(True)),
            ("1 IN (2, 3)", Some(False)),
            ("1 NOT IN (2, 3)", Some(True)),
            ("1 NOT IN (2, NULL)", Some(Null)),
            ("true = 't'", Some(True)),
            ("x = x", None),
            ("id = 7", None),
            ("1 = 1 AND id = 7", None),
            ("now() > '2020-01-01'", None),
            ("(SELECT true)", None),
            ("1 + 1 = 2", None),
        ];
        for (cond, want) in cases {
            assert_eq!(fold(cond), *want, "{cond}");
        }
    }

    #[test]
    fn decimals_compare_exactly() {
        let d = |s: &str| Decimal::parse(s).expect(s);
        assert_eq!(d("1.00000000000000000001").cmp(&d("1")), Ordering::Greater);
        assert_eq!(d("-0").cmp(&d("0.0")), Ordering::Equal);
        assert_eq!(d("-2").cmp(&d("-10")), Ordering::Greater);
        assert_eq!(d("0.05").cmp(&d("5e-2")), Ordering::Equal);
        assert_eq!(d("120").cmp(&d("1.2E2")), Ordering::Equal);
        assert!(Decimal::parse("1x").is_none());
        assert!(Decimal::parse(".").is_none());
    }
}
