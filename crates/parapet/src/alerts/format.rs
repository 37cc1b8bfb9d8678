//! What an alert sends: the request body in its `format` (`json`: the event as the console
//! shows it; `slack`: a Slack incoming-webhook message) and its HMAC-SHA256 signature.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The `format` of an `[[alerts]]` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"index":N,"event":{…}}`, the shape of the console's `/api/events` items.
    #[default]
    Json,
    /// A Slack incoming-webhook message: `{"text":"…"}`, one readable line.
    Slack,
}

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-parapet-signature";

/// Longest statement or reason excerpt in a Slack line, in characters.
const EXCERPT: usize = 200;

/// One event to send: its log index, the event (with a statement stored in parts
/// reassembled into `sql`), and the user and target of its session when it names none.
#[derive(Debug, Clone)]
pub struct Item {
    /// Index of the entry in the log.
    pub index: u64,
    /// The event as logged.
    pub event: Value,
    /// The user (of the event, or of its session).
    pub user: Option<String>,
    /// The target (of the event, or of its session).
    pub target: Option<String>,
}

/// The request body for `item` in `format`.
pub fn body(format: Format, item: &Item) -> Vec<u8> {
    match format {
        Format::Json => {
            format!("{{\"index\":{},\"event\":{}}}", item.index, item.event).into_bytes()
        }
        Format::Slack => serde_json::json!({ "text": slack_text(item) })
            .to_string()
            .into_bytes(),
    }
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`, the value of `X-Parapet-Signature`.
/// (HMAC takes keys of any length: the error is for completeness, the config checks it.)
pub fn signature(secret: &[u8], body: &[u8]) -> Result<String, hmac::digest::InvalidLength> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Escapes what Slack's message format treats as markup (`&`, `<`, `>`), puts control
/// characters as spaces and backquotes as quotes (the excerpt sits in a code span), and cuts
/// the text to `max` characters.
fn excerpt(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = s.trim().chars();
    for c in chars.by_ref().take(max) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// The one-line Slack summary of an event: what happened, by whom, where, the statement (or
/// reason) excerpt, and the log index to look it up with.
pub fn slack_text(item: &Item) -> String {
    let e = &item.event;
    let field = |k: &str| e.get(k).and_then(Value::as_str);
    let kind = field("type").unwrap_or("event");
    let mut who = Vec::new();
    if let Some(u) = item.user.as_deref() {
        who.push(format!("user {}", excerpt(u, 64)));
    }
    if let Some(t) = item.target.as_deref() {
        who.push(format!("target {}", excerpt(t, 64)));
    }
    if let Some(a) = field("client_addr") {
        who.push(format!("from {}", excerpt(a, 64)));
    }
    if let Some(b) = field("by") {
        who.push(format!("by {}", excerpt(b, 64)));
    }
    let mut line = String::from("parapet: ");
    if kind == "decision" {
        let decision = field("decision").unwrap_or("?").to_uppercase();
        let rules: Vec<&str> = parapet_gateway::events::rule_ids(e).collect();
        line.push_str(&format!("*{}*", excerpt(&decision, 16)));
        if !rules.is_empty() {
            line.push_str(&format!(" {}", excerpt(&rules.join(", "), 120)));
        }
        if !who.is_empty() {
            line.push_str(&format!(" — {}", who.join(", ")));
        }
        if let Some(sql) = field("sql").or(field("normalized")) {
            line.push_str(&format!(": `{}`", excerpt(sql, EXCERPT)));
        }
    } else {
        line.push_str(&format!("*{}*", excerpt(kind, 32)));
        if let Some(s) = field("session").filter(|_| who.is_empty()) {
            who.push(format!("session {}", excerpt(s, 32)));
        }
        if let Some(n) = e.get("count").and_then(Value::as_u64) {
            who.push(format!("count {n}"));
        }
        if !who.is_empty() {
            line.push_str(&format!(" — {}", who.join(", ")));
        }
        if let Some(r) = field("reason").or(field("error")) {
            line.push_str(&format!(": {}", excerpt(r, EXCERPT)));
        }
    }
    line.push_str(&format!(" (log entry {})", item.index));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_bodies_are_the_consoles_items() {
        let item = Item {
            index: 42,
            event: json!({"type": "decision", "decision": "deny"}),
            user: None,
            target: None,
        };
        let v: Value = serde_json::from_slice(&body(Format::Json, &item)).expect("json");
        assert_eq!(
            v,
            json!({"index": 42, "event": {"type": "decision", "decision": "deny"}})
        );
    }

    #[test]
    fn slack_lines_say_what_who_where_and_which_entry() {
        let item = Item {
            index: 7,
            event: json!({"type": "decision", "decision": "deny", "user": "alice",
                "target": "main", "client_addr": "10.0.0.9",
                "rules": [{"id": "parapet.drop", "mode": "enforce", "reason": "r"}],
                "sql": "DROP TABLE a<b> & `c`\n;"}),
            user: Some("alice".into()),
            target: Some("main".into()),
        };
        assert_eq!(
            slack_text(&item),
            "parapet: *DENY* parapet.drop — user alice, target main, from 10.0.0.9: \
             `DROP TABLE a&lt;b&gt; &amp; 'c' ;` (log entry 7)"
        );
        let v: Value = serde_json::from_slice(&body(Format::Slack, &item)).expect("json");
        assert_eq!(v.as_object().map(|o| o.len()), Some(1));
        assert!(v["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("parapet: *DENY*")));

        let long = Item {
            index: 8,
            event: json!({"type": "decision", "decision": "review", "sql": "x".repeat(500)}),
            user: None,
            target: None,
        };
        let t = slack_text(&long);
        assert!(t.contains(&format!("`{}…`", "x".repeat(200))), "{t}");

        let lock = Item {
            index: 9,
            event: json!({"type": "user_lock", "user": "bob", "by": "ops", "reason": "left"}),
            user: Some("bob".into()),
            target: None,
        };
        assert_eq!(
            slack_text(&lock),
            "parapet: *user_lock* — user bob, by ops: left (log entry 9)"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?").as_deref(),
            Ok("sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }
}
