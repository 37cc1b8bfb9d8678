//! Audit events: one JSON object per log entry (documented in `docs/events.md`).
//! Field names of decision events are read by `parapet policy replay`; keep them stable.

use parapet_guard::{Decision, RuleHit};
use serde::Serialize;

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
    /// Statement text (omitted with `statement_text = "normalized"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<&'a str>,
    /// Normalised text.
    pub normalized: Option<&'a str>,
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
            normalized: d.normalized.as_deref(),
            fingerprint: d.fingerprint.as_deref(),
            decision: d.verdict,
            rules: &d.rules,
            reason: &d.reason,
            policy_hash: &d.policy_hash,
            statement_name: statement_name.filter(|n| !n.is_empty()),
        }
    }
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
