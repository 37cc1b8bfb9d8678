//! Prometheus metrics of the console (`/metrics`), every name starting with `parapet_`, counted
//! from the log as it is indexed (so they agree with the audit trail), plus the log's size and
//! the index's lag behind it, and the alerts' deliveries when `parapet serve` runs alerts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;

/// Labels of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// allow, deny, review, monitor.
    pub decision: String,
    /// The first determining rule, or `none`.
    pub rule: String,
}

/// The console's metrics.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    outcomes: Counter,
    sessions: Counter,
    auth_failures: Counter,
    log_size: Gauge,
    indexed: Gauge,
    index_lag: Gauge,
    index_delay: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        Self::with_alerts(None)
    }

    /// Registers every metric, and the alerts' metrics when given.
    pub fn with_alerts(alerts: Option<&crate::alerts::AlertMetrics>) -> Metrics {
        let mut registry = Registry::with_prefix("parapet");
        if let Some(a) = alerts {
            a.register(&mut registry);
        }
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by decision and first rule",
            decisions.clone(),
        );
        let outcomes = Counter::default();
        registry.register(
            "statements",
            "Statements executed (outcome events)",
            outcomes.clone(),
        );
        let sessions = Counter::default();
        registry.register("sessions", "Sessions started", sessions.clone());
        let auth_failures = Counter::default();
        registry.register("auth_failures", "Failed logins", auth_failures.clone());
        let log_size = Gauge::default();
        registry.register(
            "log_size_entries",
            "Entries in the published log",
            log_size.clone(),
        );
        let indexed = Gauge::default();
        registry.register(
            "index_size_entries",
            "Entries in the search index",
            indexed.clone(),
        );
        let index_lag = Gauge::default();
        registry.register(
            "index_lag_entries",
            "Published entries not yet in the search index",
            index_lag.clone(),
        );
        let index_delay = Histogram::new([
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]);
        registry.register(
            "index_delay_seconds",
            "Time from a checkpoint's publication to its entries being searchable and streamed",
            index_delay.clone(),
        );
        Metrics {
            registry,
            index_delay,
            decisions,
            outcomes,
            sessions,
            auth_failures,
            log_size,
            indexed,
            index_lag,
        }
    }

    /// Counts one event of the log.
    pub fn count(&self, event: &Value) {
        let f = |k: &str| event.get(k).and_then(Value::as_str);
        let rule = event
            .get("rules")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str);
        let n = event.get("count").and_then(Value::as_u64).unwrap_or(0);
        self.count_fields(f("type"), f("decision"), rule, n);
    }

    /// Counts one event of the log from its fields: type, decision, first rule's id, and the
    /// `count` of an `auth_failure_summary`.
    pub fn count_fields(
        &self,
        kind: Option<&str>,
        decision: Option<&str>,
        first_rule: Option<&str>,
        count: u64,
    ) {
        match kind.unwrap_or("") {
            "decision" => {
                self.decisions
                    .get_or_create(&DecisionLabels {
                        decision: decision.unwrap_or("").to_string(),
                        rule: first_rule.unwrap_or("none").to_string(),
                    })
                    .inc();
            }
            "outcome" => {
                self.outcomes.inc();
            }
            "session_start" => {
                self.sessions.inc();
            }
            "auth_failure" => {
                self.auth_failures.inc();
            }
            "auth_failure_summary" => {
                self.auth_failures.inc_by(count);
            }
            _ => {}
        }
    }

    /// Records the log's size and how far the index has got.
    pub fn progress(&self, log_size: u64, indexed: u64) {
        self.log_size.set(log_size as i64);
        self.indexed.set(indexed as i64);
        self.index_lag.set(log_size.saturating_sub(indexed) as i64);
    }

    /// Records that the entries of a checkpoint published `seconds` ago are now indexed.
    pub fn indexed_after(&self, seconds: f64) {
        self.index_delay.observe(seconds);
    }

    /// The metrics in Prometheus (OpenMetrics) text format, with the gateway's commit-latency
    /// histogram when the console runs beside a gateway.
    pub fn render(&self, latency: Option<parapet_gateway::control::LatencySnapshot>) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        if let Some(l) = latency {
            let body = out.strip_suffix("# EOF\n").unwrap_or(&out).to_string();
            let mut h = String::from(
                "# HELP parapet_decision_commit_seconds Time a statement waited for its decision to be durable in the log.\n\
                 # TYPE parapet_decision_commit_seconds histogram\n",
            );
            for (le, n) in &l.cumulative {
                h.push_str(&format!(
                    "parapet_decision_commit_seconds_bucket{{le=\"{}\"}} {n}\n",
                    *le as f64 / 1e6
                ));
            }
            h.push_str(&format!(
                "parapet_decision_commit_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 parapet_decision_commit_seconds_sum {}\n\
                 parapet_decision_commit_seconds_count {}\n",
                l.count,
                l.sum_us as f64 / 1e6,
                l.count
            ));
            out = format!("{body}{h}# EOF\n");
        }
        out
    }
}
