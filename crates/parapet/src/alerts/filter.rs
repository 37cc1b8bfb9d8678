//! Which audit events an alert sends: its `filter` (decisions or event types, and rule ids).

use serde_json::Value;

/// The decisions a `decision` event can carry.
pub const DECISIONS: [&str; 4] = ["allow", "deny", "review", "monitor"];

/// The event types `filter.decisions` may name besides the decisions (docs/events.md).
/// `statement_text` is not one: its text reaches the receiver inside its decision.
pub const EVENT_TYPES: [&str; 14] = [
    "decision",
    "outcome",
    "session_start",
    "session_end",
    "auth_failure",
    "auth_failure_summary",
    "session_terminate",
    "user_lock",
    "user_unlock",
    "login_refused",
    "policy_reload",
    "policy_reload_failed",
    "gateway_start",
    "gateway_stop",
];

/// The filter of one alert. An empty list means any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFilter {
    /// Decisions (`deny` matches decision events whose `decision` is `deny`) and event types
    /// (`user_lock` matches events whose `type` is `user_lock`; `decision` every decision).
    decisions: Vec<String>,
    /// Rule ids; a trailing `*` matches every id with that prefix. The event must carry one of
    /// them among its `rules`.
    rules: Vec<String>,
}

impl Default for AlertFilter {
    /// What people want alerted when they do not say: refusals (`deny`) and statements sent
    /// for review (`review`), whatever the rule.
    fn default() -> Self {
        AlertFilter {
            decisions: vec!["deny".into(), "review".into()],
            rules: Vec::new(),
        }
    }
}

impl AlertFilter {
    /// Checks and builds a filter; the error says which value is wrong and what is allowed.
    pub fn new(decisions: &[String], rules: &[String]) -> Result<AlertFilter, String> {
        for d in decisions {
            if !DECISIONS.contains(&d.as_str()) && !EVENT_TYPES.contains(&d.as_str()) {
                return Err(format!(
                    "filter.decisions: {d:?} is neither a decision ({}) nor an event type ({})",
                    DECISIONS.join(", "),
                    EVENT_TYPES.join(", ")
                ));
            }
        }
        for r in rules {
            if r.trim().is_empty() || r.trim() != r {
                return Err(format!(
                    "filter.rules: {r:?} is not a rule id (e.g. \"parapet.drop\", or \"team.*\")"
                ));
            }
        }
        Ok(AlertFilter {
            decisions: decisions.to_vec(),
            rules: rules.to_vec(),
        })
    }

    /// Whether `event` (a log entry's JSON) passes the filter. `statement_text` entries and
    /// entries that are not JSON objects never do.
    pub fn matches(&self, event: &Value) -> bool {
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            return false;
        };
        if kind == "statement_text" {
            return false;
        }
        if !self.decisions.is_empty() {
            let decision = event.get("decision").and_then(Value::as_str);
            let hit = self.decisions.iter().any(|d| {
                if DECISIONS.contains(&d.as_str()) {
                    kind == "decision" && decision == Some(d.as_str())
                } else {
                    kind == d
                }
            });
            if !hit {
                return false;
            }
        }
        if !self.rules.is_empty() {
            let ids = parapet_gateway::events::rule_ids(event);
            let mut hit = false;
            for id in ids {
                if self.rules.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => id.starts_with(prefix),
                    None => id == p,
                }) {
                    hit = true;
                    break;
                }
            }
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision(d: &str, rule: Option<&str>) -> Value {
        let rules: Vec<Value> = rule
            .map(|r| json!({"id": r, "mode": "enforce", "reason": "r"}))
            .into_iter()
            .collect();
        json!({"type": "decision", "decision": d, "rules": rules})
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_sends_denials_and_reviews() {
        let f = AlertFilter::default();
        assert!(f.matches(&decision("deny", Some("parapet.drop"))));
        assert!(f.matches(&decision("review", Some("team.review"))));
        assert!(!f.matches(&decision("allow", None)));
        assert!(!f.matches(&decision("monitor", Some("team.watch"))));
        assert!(!f.matches(&json!({"type": "user_lock", "user": "bob"})));
        assert!(!f.matches(&json!({"type": "statement_text", "decision": "deny"})));
        assert!(!f.matches(&json!("not an object")));
    }

    #[test]
    fn decisions_name_decisions_or_event_types_and_rules_match_ids_or_prefixes() {
        let f = AlertFilter::new(&strings(&["deny", "user_lock"]), &[]).expect("valid");
        assert!(f.matches(&decision("deny", None)));
        assert!(f.matches(&json!({"type": "user_lock", "user": "bob"})));
        assert!(!f.matches(&json!({"type": "user_unlock", "user": "bob"})));
        assert!(!f.matches(&decision("review", None)));

        let f = AlertFilter::new(&[], &strings(&["parapet.drop", "team.*"])).expect("valid");
        assert!(f.matches(&decision("deny", Some("parapet.drop"))));
        assert!(f.matches(&decision("monitor", Some("team.watch-ddl"))));
        assert!(!f.matches(&decision("deny", Some("parapet.truncate"))));
        assert!(!f.matches(&decision("deny", None)));
        assert!(!f.matches(&json!({"type": "session_start"})));

        let any = AlertFilter::new(&[], &[]).expect("valid");
        assert!(any.matches(&json!({"type": "session_start"})));
        assert!(any.matches(&decision("allow", None)));
        assert!(!any.matches(&json!({"type": "statement_text"})));

        let every_decision = AlertFilter::new(&strings(&["decision"]), &[]).expect("valid");
        assert!(every_decision.matches(&decision("allow", None)));
        assert!(!every_decision.matches(&json!({"type": "outcome"})));
    }

    #[test]
    fn unknown_names_are_refused_with_what_is_allowed() {
        let e = AlertFilter::new(&strings(&["denied"]), &[]).expect_err("unknown");
        assert!(
            e.contains("filter.decisions") && e.contains("\"denied\""),
            "{e}"
        );
        assert!(e.contains("deny") && e.contains("user_lock"), "{e}");
        assert!(AlertFilter::new(&strings(&["statement_text"]), &[]).is_err());
        assert!(AlertFilter::new(&[], &strings(&[""])).is_err());
    }
}
