//! Every metric family sloxide serves, declared once: its name, type and help text.
//!
//! The renderers (`export::render`), `sloxide rules` and `sloxide dashboard` all take
//! names from here, so a rename is one edit and the generated rules and dashboard can
//! never name a family that `/metrics` does not serve (a test checks that). The order
//! in which `/metrics` writes them is stated once, in `export::render`.

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonic counter; the family name ends in `_total`.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
    /// A summary (quantile samples, `_sum`, `_count`).
    Summary,
}

impl MetricType {
    /// The type as the text format's `# TYPE` line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }
}

/// One metric family.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    /// The family name (for a counter, its sample name, `_total` included).
    pub name: &'static str,
    /// Its type.
    pub kind: MetricType,
    /// The `# HELP` text.
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: MetricType, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

use MetricType::{Counter, Gauge, Histogram, Summary};

/// Spans by service, region, span kind, dimensions and status code.
pub const SPANS: Metric = metric(
    "sloxide_spans_total",
    Counter,
    "Spans accepted, by service, region, span kind and status code.",
);
/// Span durations as a classic histogram.
pub const SPAN_DURATION: Metric = metric(
    "sloxide_span_duration_seconds",
    Histogram,
    "Span durations in seconds, by service, region and span kind.",
);
/// Per-minute quantiles of span durations.
pub const SPAN_DURATION_QUANTILES: Metric = metric(
    "sloxide_span_duration_quantile_seconds",
    Summary,
    "Quantiles of the durations of spans that ended in the last complete minute (HDR histogram, 1% precision); sum and count are cumulative.",
);
/// Log records by service, region and severity.
pub const LOG_RECORDS: Metric = metric(
    "sloxide_log_records_total",
    Counter,
    "Log records accepted, by service, region and severity.",
);
/// Events an SLO selected, per region.
pub const SLO_EVENTS: Metric = metric(
    "sloxide_slo_events_total",
    Counter,
    "Events that the SLO's filter selected, per region.",
);
/// The bad ones among them.
pub const SLO_BAD_EVENTS: Metric = metric(
    "sloxide_slo_bad_events_total",
    Counter,
    "The bad events among sloxide_slo_events_total.",
);
/// The SLO's objective.
pub const SLO_OBJECTIVE: Metric = metric(
    "sloxide_slo_objective_ratio",
    Gauge,
    "The SLO's objective as a ratio, e.g. 0.999.",
);
/// The SLO's period.
pub const SLO_PERIOD: Metric = metric(
    "sloxide_slo_period_seconds",
    Gauge,
    "The rolling period of the SLO's error budget.",
);
/// Good / total per window.
pub const SLO_SLI: Metric = metric(
    "sloxide_slo_sli_ratio",
    Gauge,
    "Good / total events over the window; absent while the window holds no event. The series without a region label is all regions together.",
);
/// Burn rate per window.
pub const SLO_BURN_RATE: Metric = metric(
    "sloxide_slo_burn_rate",
    Gauge,
    "(bad / total) / (1 - objective) over the window; 0 while the window holds no event.",
);
/// Events in each window.
pub const SLO_WINDOW_EVENTS: Metric = metric(
    "sloxide_slo_window_events",
    Gauge,
    "Events the SLO counted over the window, per region and (no region label) all regions together. Sums across replicas are exact.",
);
/// Bad events in each window.
pub const SLO_WINDOW_BAD_EVENTS: Metric = metric(
    "sloxide_slo_window_bad_events",
    Gauge,
    "The bad events among sloxide_slo_window_events.",
);
/// Error budget left over the period.
pub const SLO_BUDGET_REMAINING: Metric = metric(
    "sloxide_slo_error_budget_remaining_ratio",
    Gauge,
    "1 - bad / ((1 - objective) * total) over the period; 1 with no events, negative once overspent.",
);
/// Time until the budget is spent.
pub const SLO_BUDGET_EXHAUSTION: Metric = metric(
    "sloxide_slo_budget_exhaustion_seconds",
    Gauge,
    "Seconds until the remaining budget is spent if the 1h burn rate holds; absent while it is 0; 0 once spent.",
);
/// Alert tiers that hold.
pub const SLO_ALERT: Metric = metric(
    "sloxide_slo_alert",
    Gauge,
    "1 while a multiwindow burn-rate tier of that severity holds, else 0.",
);
/// Series per family.
pub const SERIES_ACTIVE: Metric = metric(
    "sloxide_series_active",
    Gauge,
    "Series currently exposed, per family (overflow series included).",
);
/// Records folded into overflow series.
pub const SERIES_OVERFLOW: Metric = metric(
    "sloxide_series_overflow_total",
    Counter,
    "Records counted in an overflow series because their label set hit max_series or max_series_per_service.",
);
/// The longest shard-lock hold of a scrape or the tick.
pub const SERIES_LOCK_HOLD: Metric = metric(
    "sloxide_series_lock_hold_max_seconds",
    Gauge,
    "Longest time a scrape or the tick held one series shard lock (ingest into that shard waits meanwhile), since the previous scrape.",
);
/// Durations clamped into the quantile histograms' range.
pub const SPAN_DURATION_CLAMPED: Metric = metric(
    "sloxide_span_duration_clamped_total",
    Counter,
    "Span durations outside the quantile histograms' 1us..1h range, recorded at the nearest bound.",
);
/// Spans accepted by the receivers.
pub const RECEIVER_ACCEPTED_SPANS: Metric = metric(
    "sloxide_receiver_accepted_spans_total",
    Counter,
    "OTLP spans accepted and counted.",
);
/// Spans rejected one by one.
pub const RECEIVER_REFUSED_SPANS: Metric = metric(
    "sloxide_receiver_refused_spans_total",
    Counter,
    "OTLP spans rejected one by one (reported in partial_success).",
);
/// Log records accepted by the receivers.
pub const RECEIVER_ACCEPTED_LOG_RECORDS: Metric = metric(
    "sloxide_receiver_accepted_log_records_total",
    Counter,
    "OTLP log records accepted and counted.",
);
/// Log records rejected one by one.
pub const RECEIVER_REFUSED_LOG_RECORDS: Metric = metric(
    "sloxide_receiver_refused_log_records_total",
    Counter,
    "OTLP log records rejected one by one (reported in partial_success).",
);
/// Requests refused whole.
pub const RECEIVER_REFUSED_REQUESTS: Metric = metric(
    "sloxide_receiver_refused_requests_total",
    Counter,
    "OTLP requests refused whole; nothing in them was counted.",
);
/// Bytes held by OTLP requests in flight.
pub const RECEIVER_IN_FLIGHT_BYTES: Metric = metric(
    "sloxide_receiver_in_flight_bytes",
    Gauge,
    "Bytes held by OTLP requests in flight (bodies, decompressed bodies, decodes), both transports.",
);
/// Reservations that waited for room.
pub const RECEIVER_ADMISSION_WAITS: Metric = metric(
    "sloxide_receiver_admission_waits_total",
    Counter,
    "OTLP requests that found limits.max_in_flight_bytes full and waited for room (up to limits.admission_wait); those still without room then are counted as refused, reason overloaded.",
);
/// Body reads whose room was taken back for waiting requests.
pub const RECEIVER_RECLAIMED: Metric = metric(
    "sloxide_receiver_reclaimed_requests_total",
    Counter,
    "OTLP requests whose body was arriving too slowly to be in within limits.body_read_timeout (or not at all) while others waited for room: their room was taken back, and they were refused as overloaded.",
);
/// The in-flight budget.
pub const RECEIVER_IN_FLIGHT_LIMIT_BYTES: Metric = metric(
    "sloxide_receiver_in_flight_limit_bytes",
    Gauge,
    "limits.max_in_flight_bytes: what OTLP requests in flight may hold at once before new ones wait.",
);
/// Open connections per port.
pub const CONNECTIONS_OPEN: Metric = metric(
    "sloxide_connections_open",
    Gauge,
    "Connections open now, per port (otlp_grpc, otlp_http, metrics).",
);
/// The cap on open connections per port.
pub const CONNECTIONS_LIMIT: Metric = metric(
    "sloxide_connections_limit",
    Gauge,
    "The most connections a port keeps open at once (limits.max_connections after the descriptor budget; the metrics port's is fixed); at the cap a new connection closes a silent or idle one, or waits until one closes.",
);
/// Connections accepted per port.
pub const CONNECTIONS_ACCEPTED: Metric = metric(
    "sloxide_connections_accepted_total",
    Counter,
    "Connections accepted, per port.",
);
/// Failed accepts per port.
pub const ACCEPT_ERRORS: Metric = metric(
    "sloxide_accept_errors_total",
    Counter,
    "Failed accept calls (out of file descriptors or socket memory, ...), per port; each is followed by a pause of 5ms doubling to 1s.",
);
/// Connections closed by a timeout.
pub const CONNECTIONS_TIMED_OUT: Metric = metric(
    "sloxide_connections_timed_out_total",
    Counter,
    "Connections closed by limits.header_read_timeout (timeout=\"header\", TLS handshake included) or limits.idle_timeout (timeout=\"idle\"), per port.",
);
/// Idle connections closed to make room at a port's cap.
pub const CONNECTIONS_EVICTED: Metric = metric(
    "sloxide_connections_evicted_total",
    Counter,
    "Connections closed to make room for a new one at the port's cap: one silent for 100ms or more (no complete request head yet), the oldest first, else one idle for 1s or more after its requests. Per port.",
);
/// Failed TLS handshakes.
pub const TLS_HANDSHAKE_FAILURES: Metric = metric(
    "sloxide_tls_handshake_failures_total",
    Counter,
    "TLS handshakes that failed or did not finish within limits.header_read_timeout, per port.",
);
/// Certificate reloads.
pub const TLS_CERTIFICATE_RELOADS: Metric = metric(
    "sloxide_tls_certificate_reloads_total",
    Counter,
    "Certificate files read again after they changed or at a configuration reload, per group of listeners (otlp: tls, metrics: metrics.tls): result=\"applied\", or \"refused\" when the new files do not make a usable certificate and the old one stays.",
);
/// When the last checkpoint was written.
pub const CHECKPOINT_LAST_SUCCESS: Metric = metric(
    "sloxide_checkpoint_last_success_timestamp_seconds",
    Gauge,
    "Unix time of the last checkpoint written to state.data_dir; 0 before the first.",
);
/// How long the last checkpoint took.
pub const CHECKPOINT_DURATION: Metric = metric(
    "sloxide_checkpoint_duration_seconds",
    Gauge,
    "Wall time of the last checkpoint written, from the first shard copied to the synced rename.",
);
/// How big the last checkpoint was.
pub const CHECKPOINT_SIZE: Metric = metric(
    "sloxide_checkpoint_size_bytes",
    Gauge,
    "Size of the last checkpoint written.",
);
/// Checkpoint writes that failed.
pub const CHECKPOINT_FAILURES: Metric = metric(
    "sloxide_checkpoint_failures_total",
    Counter,
    "Checkpoint writes that failed (retried at the next interval), by reason.",
);
/// Checkpoint files refused at start.
pub const CHECKPOINT_REJECTED: Metric = metric(
    "sloxide_checkpoint_rejected_total",
    Counter,
    "Checkpoint files refused at start and moved aside (checkpoint.corrupt-<time>), by reason.",
);
/// What the last start restored.
pub const RESTORE_OUTCOME: Metric = metric(
    "sloxide_restore_outcome",
    Gauge,
    "1 for what this run's start restored: disabled, first_start, discarded, clean (counters and windows) or crash (windows only: an unclean stop, or the previous generation), and from which generation.",
);
/// What became of each SLO's saved state.
pub const RESTORE_SLO_DECISIONS: Metric = metric(
    "sloxide_restore_slo_decisions_total",
    Counter,
    "SLOs judged at a restore or a reload: kept their counts, reset (filter or indicator changed), new, or removed.",
);
/// Whether the last reload applied.
pub const CONFIG_RELOAD_SUCCESSFUL: Metric = metric(
    "sloxide_config_last_reload_successful",
    Gauge,
    "1 when the configuration last read (at start or by a reload) applied; 0 when a reload was refused and the old one stays.",
);
/// When a configuration last applied.
pub const CONFIG_RELOAD_TIMESTAMP: Metric = metric(
    "sloxide_config_last_reload_success_timestamp_seconds",
    Gauge,
    "Unix time the configuration in force was applied.",
);
/// The running build.
pub const BUILD_INFO: Metric = metric(
    "sloxide_build_info",
    Gauge,
    "Always 1; the version label names the running build.",
);

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The names declared above, read from this file's own text.
    fn declared() -> Vec<String> {
        let text = include_str!("families.rs");
        text.split("metric(\n    \"")
            .skip(1)
            .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
            .collect()
    }

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
    }

    /// Each family name is written as a string literal once under `src/`: here. A
    /// renderer or generator that spells a name itself fails this test.
    #[test]
    fn every_family_name_is_a_string_literal_exactly_once() {
        let names = declared();
        assert_eq!(names.len(), 46, "{names:?}");
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        for name in &names {
            let literal = format!("\"{name}\"");
            let found: Vec<&str> = files
                .iter()
                .flat_map(|(path, text)| {
                    std::iter::repeat_n(path.as_str(), text.matches(&literal).count())
                })
                .collect();
            assert_eq!(found.len(), 1, "{literal} is written in {found:?}");
        }
    }
}
