//! Rule prefilters: a cheap, exact-by-construction test that tells, before any Cedar
//! evaluation, that a rule *cannot* fire (nor fail) for a statement, so Cedar evaluates only the
//! rules that might.
//!
//! A prefilter is derived from the rule's first `when` condition (read from Cedar's JSON policy
//! form) and only from sub-expressions whose meaning is known exactly and whose evaluation can
//! never error: `context.<set>.contains("lit")`, `context.<set>.containsAny([...literals])`,
//! `context.<string> == "lit"`, `context.<bool>`, `resource.environment == "lit"`,
//! `principal in Parapet::Group::"g"`, `principal == Parapet::User::"u"`, combined with `&&`
//! and `||`. Invariant: when the prefilter says *no*, Cedar would evaluate the rule to `false`
//! **without an error** (so skipping it changes neither the satisfied rules nor the
//! fail-closed error hits). Anything not understood gives no prefilter and the rule is always
//! evaluated.
//!
//! Hand-written: Cedar offers no rule indexing; this is a small structural match on its
//! documented JSON policy format.

use crate::analyze::facts::FactsData;
use crate::RequestContext;
use serde_json::Value;

/// A set-valued context attribute (of strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetAttr {
    Kinds,
    ReadNames,
    WriteNames,
    Schemas,
    Functions,
    FunctionNames,
    ObjectTypes,
    SetVariables,
    Extensions,
    Languages,
    IntegrityBypass,
    Egress,
}

/// A string-valued attribute the prefilter can compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrAttr {
    Kind,
    CopyDirection,
    ApplicationName,
    Environment,
    User,
}

/// A boolean context attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolAttr {
    HasWhere,
    UpdateWithoutWhere,
    DeleteWithoutWhere,
    CopyServerFile,
    CopyProgram,
    Nested,
    DynamicSql,
    HasParameters,
    OwnershipChange,
    SecurityDefiner,
    CatalogWrite,
}

/// A necessary condition for a rule to fire (or to error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prefilter {
    /// The set attribute holds one of the literals.
    SetContainsAny(SetAttr, Vec<String>),
    /// The string attribute equals the literal.
    StrEq(StrAttr, String),
    /// The boolean attribute is true.
    Bool(BoolAttr),
    /// The principal is in this group.
    InGroup(String),
    /// All of them.
    And(Vec<Prefilter>),
    /// Any of them.
    Or(Vec<Prefilter>),
}

/// A derived prefilter and whether it is exact (the expression never errors and is true exactly
/// when the prefilter is).
struct Derived {
    filter: Prefilter,
    exact: bool,
}

impl Prefilter {
    /// The prefilter of a policy in Cedar's JSON form (`Policy::to_json`), or `None` when the
    /// rule must always be evaluated.
    pub(crate) fn of_policy_json(policy: &Value) -> Option<Prefilter> {
        let first = policy.get("conditions")?.as_array()?.first()?;
        if first.get("kind")?.as_str()? != "when" {
            return None;
        }
        derive(first.get("body")?).map(|d| d.filter)
    }

    /// Whether the rule may fire (or fail) for these facts and this request.
    pub(crate) fn may_match(&self, f: &FactsData, ctx: &RequestContext) -> bool {
        match self {
            Prefilter::SetContainsAny(attr, lits) => match attr {
                SetAttr::Schemas => {
                    let s = f.schemas();
                    lits.iter().any(|l| s.contains(l))
                }
                _ => {
                    let set = match attr {
                        SetAttr::Kinds => &f.kinds,
                        SetAttr::ReadNames => &f.reads,
                        SetAttr::WriteNames => &f.writes,
                        SetAttr::Functions => &f.functions,
                        SetAttr::FunctionNames => &f.function_names,
                        SetAttr::ObjectTypes => &f.object_types,
                        SetAttr::SetVariables => &f.set_variables,
                        SetAttr::Extensions => &f.extensions,
                        SetAttr::Languages => &f.languages,
                        SetAttr::IntegrityBypass => &f.integrity_bypass,
                        SetAttr::Egress => &f.egress,
                        SetAttr::Schemas => return true,
                    };
                    lits.iter().any(|l| set.contains(l))
                }
            },
            Prefilter::StrEq(attr, lit) => {
                let v = match attr {
                    StrAttr::Kind => &f.kind,
                    StrAttr::CopyDirection => &f.copy_direction,
                    StrAttr::ApplicationName => &ctx.application_name,
                    StrAttr::Environment => &ctx.environment,
                    StrAttr::User => &ctx.user,
                };
                v == lit
            }
            Prefilter::Bool(attr) => match attr {
                BoolAttr::HasWhere => f.has_where,
                BoolAttr::UpdateWithoutWhere => f.update_without_where,
                BoolAttr::DeleteWithoutWhere => f.delete_without_where,
                BoolAttr::CopyServerFile => f.copy_server_file,
                BoolAttr::CopyProgram => f.copy_program,
                BoolAttr::Nested => f.nested,
                BoolAttr::DynamicSql => f.dynamic_sql,
                BoolAttr::HasParameters => f.has_parameters,
                BoolAttr::OwnershipChange => f.ownership_change,
                BoolAttr::SecurityDefiner => f.security_definer,
                BoolAttr::CatalogWrite => f.catalog_write,
            },
            Prefilter::InGroup(g) => ctx.groups.iter().any(|x| x == g),
            Prefilter::And(v) => v.iter().all(|p| p.may_match(f, ctx)),
            Prefilter::Or(v) => v.iter().any(|p| p.may_match(f, ctx)),
        }
    }
}

/// The single-key object `{op: args}` of a JSON expression.
fn op(e: &Value) -> Option<(&str, &Value)> {
    let o = e.as_object()?;
    if o.len() != 1 {
        return None;
    }
    o.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn left_right(args: &Value) -> Option<(&Value, &Value)> {
    Some((args.get("left")?, args.get("right")?))
}

/// `var.attr` → (var, attr).
fn attr_of(e: &Value) -> Option<(&str, &str)> {
    let (o, args) = op(e)?;
    if o != "." {
        return None;
    }
    let (vo, var) = op(args.get("left")?)?;
    if vo != "Var" {
        return None;
    }
    Some((var.as_str()?, args.get("attr")?.as_str()?))
}

fn string_lit(e: &Value) -> Option<&str> {
    let (o, v) = op(e)?;
    if o != "Value" {
        return None;
    }
    v.as_str()
}

/// `Parapet::<ty>::"id"` entity literal.
fn entity_lit<'a>(e: &'a Value, ty: &str) -> Option<&'a str> {
    let (o, v) = op(e)?;
    if o != "Value" {
        return None;
    }
    let ent = v.get("__entity")?;
    if ent.get("type")?.as_str()? != ty {
        return None;
    }
    ent.get("id")?.as_str()
}

fn set_attr(e: &Value) -> Option<SetAttr> {
    match attr_of(e)? {
        ("context", "kinds") => Some(SetAttr::Kinds),
        ("context", "read_names") => Some(SetAttr::ReadNames),
        ("context", "write_names") => Some(SetAttr::WriteNames),
        ("context", "schemas") => Some(SetAttr::Schemas),
        ("context", "functions") => Some(SetAttr::Functions),
        ("context", "function_names") => Some(SetAttr::FunctionNames),
        ("context", "object_types") => Some(SetAttr::ObjectTypes),
        ("context", "set_variables") => Some(SetAttr::SetVariables),
        ("context", "extensions") => Some(SetAttr::Extensions),
        ("context", "languages") => Some(SetAttr::Languages),
        ("context", "integrity_bypass") => Some(SetAttr::IntegrityBypass),
        ("context", "egress") => Some(SetAttr::Egress),
        _ => None,
    }
}

fn str_attr(e: &Value) -> Option<StrAttr> {
    match attr_of(e)? {
        ("context", "kind") => Some(StrAttr::Kind),
        ("context", "copy_direction") => Some(StrAttr::CopyDirection),
        ("context", "application_name") => Some(StrAttr::ApplicationName),
        ("resource", "environment") => Some(StrAttr::Environment),
        _ => None,
    }
}

fn bool_attr(e: &Value) -> Option<BoolAttr> {
    match attr_of(e)? {
        ("context", "has_where") => Some(BoolAttr::HasWhere),
        ("context", "update_without_where") => Some(BoolAttr::UpdateWithoutWhere),
        ("context", "delete_without_where") => Some(BoolAttr::DeleteWithoutWhere),
        ("context", "copy_server_file") => Some(BoolAttr::CopyServerFile),
        ("context", "copy_program") => Some(BoolAttr::CopyProgram),
        ("context", "nested") => Some(BoolAttr::Nested),
        ("context", "dynamic_sql") => Some(BoolAttr::DynamicSql),
        ("context", "has_parameters") => Some(BoolAttr::HasParameters),
        ("context", "ownership_change") => Some(BoolAttr::OwnershipChange),
        ("context", "security_definer") => Some(BoolAttr::SecurityDefiner),
        ("context", "catalog_write") => Some(BoolAttr::CatalogWrite),
        _ => None,
    }
}

fn exact(filter: Prefilter) -> Option<Derived> {
    Some(Derived {
        filter,
        exact: true,
    })
}

/// Derives a prefilter keeping the invariant "filter false ⇒ the expression evaluates to false
/// without error"; `exact` additionally means "never errors, true ⇔ filter true".
fn derive(e: &Value) -> Option<Derived> {
    if let Some(a) = bool_attr(e) {
        return exact(Prefilter::Bool(a));
    }
    let (o, args) = op(e)?;
    match o {
        "&&" => {
            let (l, r) = left_right(args)?;
            let left = derive(l)?;
            if !left.exact {
                // Only the left side is known to be evaluated (and error-free when false).
                return Some(Derived {
                    filter: left.filter,
                    exact: false,
                });
            }
            match derive(r) {
                Some(right) => Some(Derived {
                    filter: Prefilter::And(vec![left.filter, right.filter]),
                    exact: right.exact,
                }),
                None => Some(Derived {
                    filter: left.filter,
                    exact: false,
                }),
            }
        }
        "||" => {
            let (l, r) = left_right(args)?;
            let left = derive(l)?;
            let right = derive(r)?;
            Some(Derived {
                filter: Prefilter::Or(vec![left.filter, right.filter]),
                exact: left.exact && right.exact,
            })
        }
        "contains" => {
            let (l, r) = left_right(args)?;
            exact(Prefilter::SetContainsAny(
                set_attr(l)?,
                vec![string_lit(r)?.to_string()],
            ))
        }
        "containsAny" => {
            let (l, r) = left_right(args)?;
            let attr = set_attr(l)?;
            let (so, items) = op(r)?;
            if so != "Set" {
                return None;
            }
            let lits = items
                .as_array()?
                .iter()
                .map(|i| string_lit(i).map(str::to_string))
                .collect::<Option<Vec<_>>>()?;
            exact(Prefilter::SetContainsAny(attr, lits))
        }
        "==" => {
            let (l, r) = left_right(args)?;
            let (a, b) = if string_lit(r).is_some() || entity_lit(r, "Parapet::User").is_some() {
                (l, r)
            } else {
                (r, l)
            };
            if let (Some(attr), Some(lit)) = (str_attr(a), string_lit(b)) {
                return exact(Prefilter::StrEq(attr, lit.to_string()));
            }
            if attr_var(a) == Some("principal") {
                if let Some(u) = entity_lit(b, "Parapet::User") {
                    return exact(Prefilter::StrEq(StrAttr::User, u.to_string()));
                }
            }
            None
        }
        "in" => {
            let (l, r) = left_right(args)?;
            if attr_var(l) != Some("principal") {
                return None;
            }
            exact(Prefilter::InGroup(
                entity_lit(r, "Parapet::Group")?.to_string(),
            ))
        }
        _ => None,
    }
}

/// `Var` name of a variable expression.
fn attr_var(e: &Value) -> Option<&str> {
    let (o, v) = op(e)?;
    if o != "Var" {
        return None;
    }
    v.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn pf(src: &str) -> Option<Prefilter> {
        let p = cedar_policy::Policy::from_str(src).unwrap();
        Prefilter::of_policy_json(&p.to_json().unwrap())
    }

    fn facts() -> FactsData {
        let a = crate::analyze::analyze("DELETE FROM app.t WHERE id = 1");
        (*a.statements[0].0).clone()
    }

    fn ctx() -> RequestContext {
        RequestContext {
            user: "alice".into(),
            groups: vec!["eng".into()],
            target: "main".into(),
            environment: "production".into(),
            client_addr: None,
            application_name: "psql".into(),
            catalog: None,
        }
    }

    #[test]
    fn derives_known_shapes() {
        let f = facts();
        let c = ctx();
        let cases = [
            ("context.kinds.contains(\"drop\")", Some(false)),
            ("context.kinds.contains(\"delete\")", Some(true)),
            ("context.kind == \"delete\"", Some(true)),
            ("\"select\" == context.kind", Some(false)),
            ("context.delete_without_where", Some(false)),
            ("context.has_where", Some(true)),
            (
                "context.write_names.containsAny([\"x.y\", \"app.t\"])",
                Some(true),
            ),
            ("context.schemas.contains(\"app\")", Some(true)),
            ("context.schemas.contains(\"pii\")", Some(false)),
            (
                "resource.environment == \"staging\" && context.time.hour > 1",
                Some(false),
            ),
            (
                "principal in Parapet::Group::\"eng\" && context.kind == \"select\"",
                Some(false),
            ),
            ("principal == Parapet::User::\"bob\"", Some(false)),
            (
                "context.application_name == \"x\" || context.kinds.contains(\"delete\")",
                Some(true),
            ),
            // Unknown parts: always evaluated.
            (
                "context.time.hour > 1 && context.kinds.contains(\"drop\")",
                None,
            ),
            (
                "context.kinds.contains(\"drop\") || context.time.hour > 1",
                None,
            ),
            ("!context.kinds.contains(\"drop\")", None),
        ];
        for (cond, want) in cases {
            let src = format!("forbid (principal, action, resource) when {{ {cond} }};");
            let got = pf(&src).map(|p| p.may_match(&f, &c));
            assert_eq!(got, want, "{cond}");
        }
        assert_eq!(
            pf("forbid (principal, action, resource) unless { context.kinds.contains(\"x\") };"),
            None
        );
    }
}
