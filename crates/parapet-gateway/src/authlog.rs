//! Bounded audit logging of failed logins. What a client sends before it has logged in is cut to
//! [`FIELD_LIMIT`] bytes per string (with the length and SHA-256 of the whole), so one
//! `auth_failure` entry stays under 2 KB whatever the client sent; and past a rate (per address,
//! and overall) failures are only counted, into one `auth_failure_summary` per interval.

use crate::events::{json_prefix, now_rfc3339, sha256_hex, to_bytes};
use parapet_log::Log;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of one client-supplied string in an `auth_failure` event, measured in its
/// JSON-escaped form (so control characters cannot make it longer).
pub const FIELD_LIMIT: usize = 256;

/// Failed logins from one address recorded one by one per [`INTERVAL`]; later ones are counted.
pub const PER_ADDRESS_LIMIT: u32 = 10;

/// Failed logins recorded one by one per [`INTERVAL`] over all addresses; later ones are counted.
pub const OVERALL_LIMIT: u32 = 100;

/// Length of one counting interval; it starts at the first failure after the previous one ended.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Most addresses listed by name in one `auth_failure_summary` (those with the most failures);
/// the others' failures are summed into `other_count`.
pub const SUMMARY_ADDRESSES: usize = 50;

/// Most addresses whose counted failures are kept apart in one interval (bounds memory); the
/// failures of further addresses go straight to `other_count`.
const TRACKED_ADDRESSES: usize = 10_000;

/// One failed login, as the startup code saw it.
#[derive(Debug)]
pub(crate) struct AuthFailure<'a> {
    /// User name from the startup packet.
    pub user: &'a str,
    /// Client address.
    pub client_addr: IpAddr,
    /// Database (target) name from the startup packet.
    pub target: &'a str,
    /// Whether the connection uses TLS.
    pub tls: bool,
    /// application_name from the startup packet.
    pub application_name: &'a str,
    /// Why the login failed (may quote what the client sent).
    pub reason: &'a str,
}

/// The `auth_failure` event for `f`: each string cut to [`FIELD_LIMIT`] escaped bytes; the cut
/// ones are listed under `truncated` with their whole length and SHA-256.
pub(crate) fn failure_event(f: &AuthFailure<'_>) -> Value {
    let mut truncated = Map::new();
    let mut clip = |name: &str, value: &str| -> Value {
        let kept = json_prefix(value, FIELD_LIMIT);
        if kept.len() < value.len() {
            truncated.insert(
                name.to_string(),
                json!({"bytes": value.len(), "sha256": sha256_hex(value.as_bytes())}),
            );
        }
        Value::String(kept.to_string())
    };
    let mut ev = json!({
        "type": "auth_failure",
        "time": now_rfc3339(),
        "user": clip("user", f.user),
        "client_addr": f.client_addr.to_string(),
        "target": clip("target", f.target),
        "tls": f.tls,
        "application_name": clip("application_name", f.application_name),
        "reason": clip("reason", f.reason),
    });
    if !truncated.is_empty() {
        ev["truncated"] = Value::Object(truncated);
    }
    ev
}

/// Counts failed logins per interval and decides which are recorded one by one.
#[derive(Debug, Default)]
pub(crate) struct AuthFailureLog {
    window: Mutex<Window>,
}

/// The current interval.
#[derive(Debug, Default)]
struct Window {
    /// Bumped at every reset, so a late flush task does not end a newer interval.
    id: u64,
    /// Start of the interval (monotonic, and as text), if a failure opened one.
    started: Option<(Instant, String)>,
    /// Failures recorded one by one, per address (at most OVERALL_LIMIT addresses).
    recorded: HashMap<IpAddr, u32>,
    recorded_total: u32,
    /// Failures only counted, per address (at most TRACKED_ADDRESSES addresses).
    counted: HashMap<IpAddr, u64>,
    /// Counted failures of addresses beyond TRACKED_ADDRESSES.
    counted_untracked: u64,
    counted_total: u64,
    /// A task will end this interval and write its summary.
    flush_scheduled: bool,
}

impl Window {
    /// The `auth_failure_summary` of this interval, if any failure was only counted.
    fn summary(&self) -> Option<Value> {
        if self.counted_total == 0 {
            return None;
        }
        let mut by_addr: Vec<(&IpAddr, &u64)> = self.counted.iter().collect();
        by_addr.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let listed = &by_addr[..by_addr.len().min(SUMMARY_ADDRESSES)];
        let listed_sum: u64 = listed.iter().map(|(_, n)| **n).sum();
        Some(json!({
            "type": "auth_failure_summary",
            "time": now_rfc3339(),
            "interval_start": self.started.as_ref().map(|(_, t)| t.as_str()),
            "interval_seconds": INTERVAL.as_secs(),
            "count": self.counted_total,
            "addresses": listed.iter().map(|(a, n)| json!({"client_addr": a.to_string(), "count": n})).collect::<Vec<_>>(),
            "other_count": self.counted_total - listed_sum,
        }))
    }

    /// Ends the interval: returns its summary and starts afresh.
    fn end(&mut self) -> Option<Value> {
        let summary = self.summary();
        *self = Window {
            id: self.id + 1,
            ..Window::default()
        };
        summary
    }
}

impl AuthFailureLog {
    /// Records failure `f`: as its own `auth_failure` event while under the limits, otherwise
    /// counted into the interval's `auth_failure_summary` (written when the interval ends, by
    /// a task this spawns, or by [`AuthFailureLog::flush`]). Events are submitted lazily.
    pub(crate) fn record(self: &Arc<Self>, log: &Log, f: &AuthFailure<'_>) {
        let now = Instant::now();
        let mut ended = None;
        let (individual, schedule) = {
            let mut w = self.window.lock();
            if w.started
                .as_ref()
                .is_some_and(|(t, _)| now >= *t + INTERVAL)
            {
                ended = w.end();
            }
            if w.started.is_none() {
                w.started = Some((now, now_rfc3339()));
            }
            let from_addr = w.recorded.get(&f.client_addr).copied().unwrap_or(0);
            if from_addr < PER_ADDRESS_LIMIT && w.recorded_total < OVERALL_LIMIT {
                *w.recorded.entry(f.client_addr).or_insert(0) += 1;
                w.recorded_total += 1;
                (true, None)
            } else {
                if let Some(n) = w.counted.get_mut(&f.client_addr) {
                    *n += 1;
                } else if w.counted.len() < TRACKED_ADDRESSES {
                    w.counted.insert(f.client_addr, 1);
                } else {
                    w.counted_untracked += 1;
                }
                w.counted_total += 1;
                let schedule = (!w.flush_scheduled).then(|| {
                    w.flush_scheduled = true;
                    let due = w.started.as_ref().map_or(now, |(t, _)| *t + INTERVAL);
                    (w.id, due)
                });
                (false, schedule)
            }
        };
        if let Some(summary) = ended {
            drop(log.submit_lazy(to_bytes(&summary)));
        }
        if individual {
            drop(log.submit_lazy(to_bytes(&failure_event(f))));
        }
        if let Some((id, due)) = schedule {
            let this = self.clone();
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                let summary = {
                    let mut w = this.window.lock();
                    if w.id != id {
                        return; // Already ended by a later failure or a flush.
                    }
                    w.end()
                };
                if let Some(summary) = summary {
                    drop(log.submit_lazy(to_bytes(&summary)));
                }
            });
        }
    }

    /// Ends the current interval now, writing its summary if it has one (at shutdown, so no
    /// count is lost).
    pub(crate) fn flush(&self, log: &Log) {
        let summary = self.window.lock().end();
        if let Some(summary) = summary {
            drop(log.submit_lazy(to_bytes(&summary)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auth_failure_event_stays_under_2_kb_whatever_was_sent() {
        // Control characters escape to six bytes each; quotes and multi-byte characters too.
        let nasty: String = "\u{1}\"\\é\u{10FFFF}".repeat(3000);
        let f = AuthFailure {
            user: &nasty,
            client_addr: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            target: &nasty,
            tls: true,
            application_name: &nasty,
            reason: &format!("unsupported mechanism {nasty:?}"),
        };
        let ev = failure_event(&f);
        let bytes = to_bytes(&ev);
        assert!(bytes.len() <= 2048, "{} bytes", bytes.len());
        assert_eq!(ev["truncated"]["user"]["bytes"], nasty.len());
        assert_eq!(
            ev["truncated"]["user"]["sha256"],
            sha256_hex(nasty.as_bytes())
        );
        assert!(nasty.starts_with(ev["user"].as_str().unwrap()));
        // Short values are kept whole and nothing is marked truncated.
        let f = AuthFailure {
            user: "alice",
            client_addr: "127.0.0.1".parse().unwrap(),
            target: "main",
            tls: false,
            application_name: "psql",
            reason: "unknown user",
        };
        let ev = failure_event(&f);
        assert_eq!(ev["user"], "alice");
        assert!(ev.get("truncated").is_none());
    }

    #[test]
    fn a_summary_lists_the_busiest_addresses_and_sums_the_rest() {
        let mut w = Window::default();
        assert!(w.summary().is_none());
        w.started = Some((Instant::now(), now_rfc3339()));
        for i in 0..200u32 {
            let addr = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            w.counted.insert(addr, u64::from(i % 7 + 1));
            w.counted_total += u64::from(i % 7 + 1);
        }
        w.counted_untracked = 5;
        w.counted_total += 5;
        let s = w.summary().unwrap();
        let listed = s["addresses"].as_array().unwrap();
        assert_eq!(listed.len(), SUMMARY_ADDRESSES);
        let sum: u64 = listed.iter().map(|a| a["count"].as_u64().unwrap()).sum();
        assert_eq!(sum + s["other_count"].as_u64().unwrap(), w.counted_total);
        // The busiest first: the 28 addresses with 7, then those with 6.
        assert_eq!(listed[0]["count"], 7);
        assert!(listed.iter().all(|a| a["count"].as_u64().unwrap() >= 6));
        assert!(to_bytes(&s).len() < 4096);
        let id = w.id;
        assert!(w.end().is_some());
        assert_eq!(w.id, id + 1);
        assert!(w.started.is_none() && w.counted_total == 0);
    }
}
