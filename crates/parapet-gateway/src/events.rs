//! Audit events: one JSON object per log entry (documented in `docs/events.md`).
//! Field names of decision events are read by `parapet policy replay`; keep them stable.
//! A statement text too long for its decision entry is stored in `statement_text` parts just
//! before it ([`decision_entries`]); [`TextReassembler`] puts it back together for readers.

use parapet_guard::{Decision, RuleHit};
use parapet_log::tile::MAX_ENTRY_SIZE;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Current time as RFC 3339 UTC with microseconds, e.g. `2026-11-23T14:15:16.123456Z`.
///
/// Called for every audit event, so it writes the fixed-width fields directly instead of going
/// through `time`'s generic formatter.
pub fn now_rfc3339() -> String {
    rfc3339_micros(time::OffsetDateTime::now_utc())
}

/// Formats `t` (taken as UTC) as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn rfc3339_micros(t: time::OffsetDateTime) -> String {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside four digits RFC 3339 has no form; keep the value readable anyway.
        return format!(
            "{year}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        );
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, u8::from(t.month()).into());
    put(8, 2, t.day().into());
    put(11, 2, t.hour().into());
    put(14, 2, t.minute().into());
    put(17, 2, t.second().into());
    put(20, 6, t.microsecond());
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&b).into_owned()
}

/// Who and where a session is; shared by the session's events.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Session id (random, hex).
    pub session: String,
    /// Gateway user.
    pub user: String,
    /// User's groups.
    pub groups: Vec<String>,
    /// Target name.
    pub target: String,
    /// Target environment.
    pub environment: String,
    /// Client IP address.
    pub client_addr: String,
    /// Client's application_name.
    pub application_name: String,
}

impl SessionInfo {
    /// What the policies see of the session: its user, groups, target, environment, client
    /// address and application_name.
    pub fn request_context(&self) -> parapet_guard::RequestContext {
        parapet_guard::RequestContext {
            user: self.user.clone(),
            groups: self.groups.clone(),
            target: self.target.clone(),
            environment: self.environment.clone(),
            client_addr: Some(self.client_addr.clone()),
            application_name: self.application_name.clone(),
            catalog: None,
        }
    }
}

/// A decision event.
#[derive(Debug, Serialize)]
pub struct DecisionEvent<'a> {
    /// Always "decision".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Time of the decision.
    pub time: String,
    /// Session id.
    pub session: &'a str,
    /// Gateway user.
    pub user: &'a str,
    /// Groups.
    pub groups: &'a [String],
    /// Target.
    pub target: &'a str,
    /// Environment.
    pub environment: &'a str,
    /// Client address.
    pub client_addr: &'a str,
    /// application_name.
    pub application_name: &'a str,
    /// "simple", "extended" or "function".
    pub protocol: &'static str,
    /// Statement text (omitted with `statement_text = "normalized"`, and when stored in parts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<&'a str>,
    /// SHA-256 (hex) of the whole statement text, when it is stored in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_sha256: Option<String>,
    /// Number of `statement_text` parts holding the statement text, when stored in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_parts: Option<usize>,
    /// Normalised text: `Some(None)` is `null` (the text does not parse), `None` omits the
    /// field (the text is stored in parts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized: Option<Option<&'a str>>,
    /// SHA-256 (hex) of the whole normalised text, when it is stored in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_sha256: Option<String>,
    /// Number of `statement_text` parts holding the normalised text, when stored in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_parts: Option<usize>,
    /// Fingerprint.
    pub fingerprint: Option<&'a str>,
    /// Verdict.
    pub decision: parapet_guard::Verdict,
    /// Determining rules.
    pub rules: &'a [RuleHit],
    /// Reason.
    pub reason: &'a str,
    /// Hash of the policy set.
    pub policy_hash: &'a str,
    /// Prepared statement name (extended protocol), if named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_name: Option<&'a str>,
    /// The approval request this decision opened or found open (`review`), or the approval
    /// or window that let it through (`allow`); see [`crate::approvals`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approvals::ApprovalRef>,
    /// The smallest row limit (`@max_rows`) the statement runs under, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    /// The rule that set `max_rows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows_rule: Option<&'a str>,
}

impl<'a> DecisionEvent<'a> {
    /// Builds the event for `decision` on `sql` in session `s`.
    pub fn new(
        s: &'a SessionInfo,
        protocol: &'static str,
        sql: Option<&'a str>,
        d: &'a Decision,
        statement_name: Option<&'a str>,
    ) -> Self {
        DecisionEvent {
            kind: "decision",
            time: now_rfc3339(),
            session: &s.session,
            user: &s.user,
            groups: &s.groups,
            target: &s.target,
            environment: &s.environment,
            client_addr: &s.client_addr,
            application_name: &s.application_name,
            protocol,
            sql,
            sql_sha256: None,
            sql_parts: None,
            normalized: Some(d.normalized.as_deref()),
            normalized_sha256: None,
            normalized_parts: None,
            fingerprint: d.fingerprint.as_deref(),
            decision: d.verdict,
            rules: &d.rules,
            reason: &d.reason,
            policy_hash: &d.policy_hash,
            statement_name: statement_name.filter(|n| !n.is_empty()),
            approval: None,
            max_rows: d.max_rows().map(|l| l.max_rows),
            max_rows_rule: d.max_rows().map(|l| l.rule.as_str()),
        }
    }
}

/// The ids of the rules a logged decision event names (its `rules[].id`), in order.
pub fn rule_ids(event: &Value) -> impl Iterator<Item = &str> {
    event
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.get("id").and_then(Value::as_str))
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One part of a text too long for its decision entry (`{"type":"statement_text",…}`).
#[derive(Debug, Serialize, Deserialize)]
pub struct TextPart<'a> {
    /// Always "statement_text".
    #[serde(rename = "type")]
    pub kind: std::borrow::Cow<'a, str>,
    /// Session id of the decision.
    pub session: std::borrow::Cow<'a, str>,
    /// Which field of the decision this text is: "sql" or "normalized".
    pub field: std::borrow::Cow<'a, str>,
    /// 1-based number of this part.
    pub part: usize,
    /// Number of parts of the text.
    pub parts: usize,
    /// SHA-256 (hex) of the whole text (the same in every part and in the decision).
    pub sha256: std::borrow::Cow<'a, str>,
    /// This part of the text, as plain text (parts split on character boundaries).
    pub text: std::borrow::Cow<'a, str>,
}

/// Bytes `c` takes inside a JSON string as `serde_json` writes it (`"` and `\` and the short
/// escapes take 2, other control characters 6 (`\u00XX`), everything else its UTF-8 length).
pub fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `text` whose JSON-escaped form takes at most `budget` bytes (cut on a
/// character boundary).
pub fn json_prefix(text: &str, budget: usize) -> &str {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += json_escaped_len(c);
        if used > budget {
            return &text[..i];
        }
    }
    text
}

/// Splits `text` into `statement_text` entries, each within the log's entry limit.
fn text_parts(session: &str, field: &str, text: &str, sha256: &str) -> Vec<Vec<u8>> {
    use std::borrow::Cow::Borrowed;
    let part = |part: usize, parts: usize, text: &str| {
        to_bytes(&TextPart {
            kind: Borrowed("statement_text"),
            session: Borrowed(session),
            field: Borrowed(field),
            part,
            parts,
            sha256: Borrowed(sha256),
            text: Borrowed(text),
        })
    };
    // The envelope with the widest part numbers there can be: what is left is for the text.
    let budget = MAX_ENTRY_SIZE.saturating_sub(part(usize::MAX, usize::MAX, "").len());
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() || pieces.is_empty() {
        let mut piece = json_prefix(rest, budget);
        if piece.is_empty() {
            // Only with an absurdly long session id; keep going one character at a time.
            piece = rest.chars().next().map_or(rest, |c| &rest[..c.len_utf8()]);
        }
        pieces.push(piece);
        rest = &rest[piece.len()..];
    }
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| part(i + 1, n, p))
        .collect()
}

/// The log entries for decision `ev`, in order: the entry itself if it fits in one log entry
/// (65,535 bytes); otherwise the statement text (then, if still needed, the normalised text)
/// moved out into `statement_text` parts, followed by the decision entry, which then carries
/// `sql_sha256`/`sql_parts` (and `normalized_sha256`/`normalized_parts`) instead of the text.
/// The entries must be appended as one contiguous run (`parapet_log::Log::submit_run`).
pub fn decision_entries(mut ev: DecisionEvent<'_>) -> Vec<Vec<u8>> {
    let whole = to_bytes(&ev);
    if whole.len() <= MAX_ENTRY_SIZE {
        return vec![whole];
    }
    let mut entries = Vec::new();
    if let Some(sql) = ev.sql.take() {
        let sha = sha256_hex(sql.as_bytes());
        let parts = text_parts(ev.session, "sql", sql, &sha);
        ev.sql_parts = Some(parts.len());
        ev.sql_sha256 = Some(sha);
        entries.extend(parts);
        let dec = to_bytes(&ev);
        if dec.len() <= MAX_ENTRY_SIZE {
            entries.push(dec);
            return entries;
        }
    }
    if let Some(Some(norm)) = ev.normalized {
        let sha = sha256_hex(norm.as_bytes());
        let parts = text_parts(ev.session, "normalized", norm, &sha);
        ev.normalized = None;
        ev.normalized_parts = Some(parts.len());
        ev.normalized_sha256 = Some(sha);
        entries.extend(parts);
    }
    // Over the limit only with huge statement names; the log then refuses it (fail closed).
    entries.push(to_bytes(&ev));
    entries
}

/// Submits decision `ev` (and the parts of a long text, as one contiguous run before it); the
/// ticket resolves to the index of the decision entry.
pub fn submit_decision(log: &parapet_log::Log, ev: DecisionEvent<'_>) -> parapet_log::AppendTicket {
    let mut entries = decision_entries(ev);
    if entries.len() == 1 || entries.iter().any(|e| e.len() > MAX_ENTRY_SIZE) {
        // One entry, or one the log refuses as too large (with its own error, fail closed).
        if let Some(last) = entries.pop() {
            return log.submit(last);
        }
    }
    let mut run = parapet_log::Batch::new();
    for e in &entries {
        // Sizes were checked above.
        let _ = run.push(e);
    }
    log.submit_run(run)
}

/// The whole texts of one decision event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionTexts {
    /// The statement text (inline, or reassembled and verified), if recorded.
    pub sql: Option<String>,
    /// The normalised text (inline, or reassembled and verified), if recorded.
    pub normalized: Option<String>,
}

/// What [`TextReassembler::feed`] found.
#[derive(Debug)]
pub enum Fed {
    /// A `statement_text` part (kept until its decision).
    Part,
    /// A decision, with its whole texts.
    Decision(DecisionTexts),
    /// Any other event.
    Other,
}

/// A decision whose text parts are missing or do not match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError(pub String);

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TextError {}

/// Reads decisions with their whole texts: feed it every event of the log in order, and it
/// hands each decision its statement and normalised texts, reassembled from the
/// `statement_text` parts just before it and checked against the SHA-256 the decision carries.
#[derive(Debug, Default)]
pub struct TextReassembler {
    /// The `statement_text` parts seen since the last other entry.
    run: Vec<TextPart<'static>>,
}

impl TextReassembler {
    /// A reassembler at the start of a log.
    pub fn new() -> TextReassembler {
        TextReassembler::default()
    }

    /// Takes the next event of the log (in index order).
    pub fn feed(&mut self, event: &Value) -> Result<Fed, TextError> {
        match event.get("type").and_then(Value::as_str) {
            Some("statement_text") => {
                let part = TextPart::deserialize(event).map_err(|e| {
                    self.run.clear();
                    TextError(format!("unreadable statement_text entry: {e}"))
                })?;
                self.run.push(part);
                Ok(Fed::Part)
            }
            Some("decision") => {
                let run = std::mem::take(&mut self.run);
                decision_texts(event, run).map(Fed::Decision)
            }
            _ => {
                self.run.clear();
                Ok(Fed::Other)
            }
        }
    }
}

/// The texts of `decision`, taking its parts from the end of `run`.
fn decision_texts(
    decision: &Value,
    mut run: Vec<TextPart<'static>>,
) -> Result<DecisionTexts, TextError> {
    let count = |k: &str| decision.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
    let (sql_n, norm_n) = (count("sql_parts"), count("normalized_parts"));
    if run.len() < sql_n + norm_n {
        return Err(TextError(format!(
            "the decision's text is in {} parts but only {} statement_text entries precede it",
            sql_n + norm_n,
            run.len()
        )));
    }
    let norm_parts = run.split_off(run.len() - norm_n);
    let sql_parts = run.split_off(run.len() - sql_n);
    let session = decision
        .get("session")
        .and_then(Value::as_str)
        .unwrap_or("");
    let whole = |field: &str,
                 n: usize,
                 parts: Vec<TextPart<'static>>|
     -> Result<Option<String>, TextError> {
        if n == 0 {
            return Ok(decision
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_string));
        }
        let key = format!("{field}_sha256");
        let sha = decision
            .get(&key)
            .and_then(Value::as_str)
            .ok_or_else(|| TextError(format!("the decision has {field}_parts but no {key}")))?;
        let mut text = String::new();
        for (i, p) in parts.iter().enumerate() {
            if p.field != field
                || p.part != i + 1
                || p.parts != n
                || p.sha256 != sha
                || p.session != session
            {
                return Err(TextError(format!(
                    "statement_text part {} of {} ({} of session {}) does not belong to this decision's {field} (part {} of {}, session {session})",
                    p.part, p.parts, p.field, p.session, i + 1, n
                )));
            }
            text.push_str(&p.text);
        }
        let got = sha256_hex(text.as_bytes());
        if got != sha {
            return Err(TextError(format!(
                "the reassembled {field} text has SHA-256 {got}, the decision says {sha}"
            )));
        }
        Ok(Some(text))
    };
    Ok(DecisionTexts {
        sql: whole("sql", sql_n, sql_parts)?,
        normalized: whole("normalized", norm_n, norm_parts)?,
    })
}

/// The outcome of one executed statement (simple Query or extended Execute).
#[derive(Debug, Serialize)]
pub struct OutcomeEvent<'a> {
    /// Always "outcome".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Completion time.
    pub time: String,
    /// Session id.
    pub session: &'a str,
    /// Entry index of the decision that let the statement through.
    pub decision: Option<u64>,
    /// Last command tag, e.g. "SELECT 1".
    pub tag: Option<String>,
    /// Rows reported by the command tags.
    pub rows: Option<u64>,
    /// SQLSTATE when the statement failed.
    pub sqlstate: Option<String>,
    /// Error message when the statement failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Duration in microseconds, from forwarding to completion.
    pub duration_us: u64,
    /// Values bound to the executed portal (extended protocol; see `params` in docs/events.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<crate::params::ParamJson>>,
    /// Values past the recorded ones: how many and their SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_omitted: Option<crate::params::Omitted>,
}

/// Serialises an event; serialising these plain structs cannot fail, but stay total anyway.
pub fn to_bytes<T: Serialize>(ev: &T) -> Vec<u8> {
    // Most events fit in 512 bytes: one allocation instead of a growing vector.
    let mut out = Vec::with_capacity(512);
    match serde_json::to_writer(&mut out, ev) {
        Ok(()) => out,
        Err(e) => format!(
            "{{\"type\":\"serialization_error\",\"error\":{:?}}}",
            e.to_string()
        )
        .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SessionInfo {
        SessionInfo {
            session: "0123456789abcdef".into(),
            user: "alice".into(),
            groups: vec!["eng".into()],
            target: "main".into(),
            environment: "production".into(),
            client_addr: "127.0.0.1".into(),
            application_name: "psql".into(),
        }
    }

    fn decision(normalized: Option<String>) -> Decision {
        Decision {
            verdict: parapet_guard::Verdict::Allow,
            rules: Vec::new(),
            reason: String::new(),
            policy_hash: "00".into(),
            normalized,
            fingerprint: None,
            statements: Vec::new(),
            limits: Vec::new(),
        }
    }

    fn reassemble(entries: &[Vec<u8>]) -> Result<DecisionTexts, TextError> {
        let mut r = TextReassembler::new();
        let mut last = None;
        for e in entries {
            assert!(e.len() <= MAX_ENTRY_SIZE, "entry of {} bytes", e.len());
            let v: Value = serde_json::from_slice(e).unwrap();
            if let Fed::Decision(t) = r.feed(&v)? {
                last = Some(t);
            }
        }
        Ok(last.expect("a decision"))
    }

    #[test]
    fn short_texts_stay_inline() {
        let s = info();
        let d = decision(Some("SELECT $1".into()));
        let entries =
            decision_entries(DecisionEvent::new(&s, "simple", Some("SELECT 1"), &d, None));
        assert_eq!(entries.len(), 1);
        let v: Value = serde_json::from_slice(&entries[0]).unwrap();
        assert_eq!(v["sql"], "SELECT 1");
        assert!(v.get("sql_sha256").is_none());
        // `null` normalized (text that does not parse) is still written as null.
        let d = decision(None);
        let e = decision_entries(DecisionEvent::new(&s, "simple", Some("SELEC"), &d, None));
        let v: Value = serde_json::from_slice(&e[0]).unwrap();
        assert!(v["normalized"].is_null() && v.get("normalized").is_some());
    }

    #[test]
    fn long_texts_go_in_parts_that_fit_whatever_they_hold() {
        let s = info();
        // Escaping grows control characters sixfold and quotes twofold; multi-byte characters
        // must not be split.
        for unit in ["x", "\u{1}", "\"", "é", "🦀", "a\u{1f}\\🦀\n"] {
            let sql = unit.repeat(200_000 / unit.len());
            let norm = format!("{sql}$1");
            let d = decision(Some(norm.clone()));
            let entries = decision_entries(DecisionEvent::new(
                &s,
                "extended",
                Some(&sql),
                &d,
                Some("st"),
            ));
            assert!(entries.len() >= 3, "{unit:?}: {} entries", entries.len());
            let last: Value = serde_json::from_slice(entries.last().unwrap()).unwrap();
            assert_eq!(last["type"], "decision");
            assert_eq!(last["sql_sha256"], sha256_hex(sql.as_bytes()));
            assert!(last.get("sql").is_none() && last.get("normalized").is_none());
            let texts = reassemble(&entries).unwrap();
            assert_eq!(texts.sql.as_deref(), Some(sql.as_str()));
            assert_eq!(texts.normalized.as_deref(), Some(norm.as_str()));
        }
    }

    #[test]
    fn a_missing_or_altered_part_is_an_error() {
        let s = info();
        let sql = "SELECT '".to_string() + &"y".repeat(150_000) + "'";
        let d = decision(Some("SELECT $1".into()));
        let entries = decision_entries(DecisionEvent::new(&s, "simple", Some(&sql), &d, None));
        assert_eq!(entries.len(), 4);
        assert_eq!(
            reassemble(&entries).unwrap().sql.as_deref(),
            Some(sql.as_str())
        );
        // A part left out.
        let e = reassemble(&[entries[0].clone(), entries[2].clone(), entries[3].clone()]);
        assert!(e.is_err());
        // A part with other text (same length).
        let mut altered = entries.clone();
        let t = String::from_utf8(altered[1].clone())
            .unwrap()
            .replacen("yyy", "zzz", 1);
        altered[1] = t.into_bytes();
        let e = reassemble(&altered).unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
        // Parts, then another event, then the decision: not its parts.
        let mut split = entries.clone();
        split.insert(3, br#"{"type":"outcome"}"#.to_vec());
        assert!(reassemble(&split).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000_006 UTC);
        assert_eq!(rfc3339_micros(t), "2026-01-02T03:04:05.000006Z");
        let t = time::macros::datetime!(1999-12-31 23:59:59.999_999 UTC);
        assert_eq!(rfc3339_micros(t), "1999-12-31T23:59:59.999999Z");
        // Same text as the generic formatter it replaces.
        let now = time::OffsetDateTime::now_utc();
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        assert_eq!(rfc3339_micros(now), now.format(&fmt).unwrap());
    }
}
