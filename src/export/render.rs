//! What `/metrics` serves: one function per metric family, written in the order that
//! [`FAMILIES`] states once.
//!
//! A scrape first copies every shard's numbers into reused scratch vectors, holding
//! each shard's lock only for its copy, then sorts and formats without any lock. The
//! SLO families come from the tick's latest snapshot, never from the rings.

use std::sync::Arc;
use std::time::Duration;

use super::text::{Encoder, Format, write_f64};
use crate::aggregate::Aggregator;
use crate::aggregate::series::Exemplar;
use crate::classify::Dimension;
use crate::config::Config;
use crate::config::slo::AlertSeverity;
use crate::families::{self, Metric};
use crate::net::metrics::ConnectionMetrics;
use crate::net::{Port, Timeout, TlsListeners};
use crate::otlp::StatusCode;
use crate::slo::{Row, SloRuntime, Snapshot};
use crate::state::StateMetrics;
use crate::store::{Labels, OVERFLOW};
use crate::telemetry::{REFUSALS, Signal, Telemetry, Transport};

#[derive(Debug)]
struct SpanSnap {
    labels: Labels,
    at: usize,
    /// Where its exemplars start in [`Renderer::exemplars`] (OpenMetrics only).
    exemplars_at: usize,
    sum_nanos: u128,
}

#[derive(Debug)]
struct DurationSnap {
    labels: Labels,
    sum_nanos: u128,
    count: u64,
    at: usize,
    len: usize,
}

/// The label texts the configuration fixes, and buffers reused from one scrape to the
/// next.
#[derive(Debug)]
pub struct Renderer {
    config: Arc<Config>,
    le_labels: Box<[String]>,
    quantile_labels: Box<[String]>,
    spans: Vec<SpanSnap>,
    numbers: Vec<u64>,
    /// One per bucket of each span series, copied only for OpenMetrics.
    exemplars: Vec<Exemplar>,
    durations: Vec<DurationSnap>,
    quantiles: Vec<f64>,
    logs: Vec<(Labels, u64)>,
}

/// Everything one scrape writes from: the copied series, the SLO snapshot and the
/// counters.
struct Frame<'a> {
    r: &'a Renderer,
    agg: &'a Aggregator,
    telemetry: &'a Telemetry,
    state: &'a StateMetrics,
    dims: &'a [Dimension],
    slos: &'a [SloRuntime],
    snapshot: &'a Snapshot,
    longest_hold: Duration,
}

/// Which scrapes write a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    /// Only when SLOs are configured.
    WithSlos,
}

type Write = fn(&Frame<'_>, &Metric, &mut Encoder<'_>);

/// Every family `/metrics` serves, in exposition order, with the function that writes
/// its samples.
const FAMILIES: [(&Metric, When, Write); 46] = [
    (&families::SPANS, When::Always, spans),
    (&families::SPAN_DURATION, When::Always, span_durations),
    (
        &families::SPAN_DURATION_QUANTILES,
        When::Always,
        span_quantiles,
    ),
    (&families::LOG_RECORDS, When::Always, log_records),
    (&families::SLO_EVENTS, When::WithSlos, slo_events),
    (&families::SLO_BAD_EVENTS, When::WithSlos, slo_bad_events),
    (&families::SLO_OBJECTIVE, When::WithSlos, slo_objective),
    (&families::SLO_PERIOD, When::WithSlos, slo_period),
    (&families::SLO_SLI, When::WithSlos, slo_sli),
    (&families::SLO_BURN_RATE, When::WithSlos, slo_burn_rate),
    (
        &families::SLO_WINDOW_EVENTS,
        When::WithSlos,
        slo_window_events,
    ),
    (
        &families::SLO_WINDOW_BAD_EVENTS,
        When::WithSlos,
        slo_window_bad_events,
    ),
    (
        &families::SLO_BUDGET_REMAINING,
        When::WithSlos,
        slo_budget_remaining,
    ),
    (
        &families::SLO_BUDGET_EXHAUSTION,
        When::WithSlos,
        slo_budget_exhaustion,
    ),
    (&families::SLO_ALERT, When::WithSlos, slo_alert),
    (&families::SERIES_ACTIVE, When::Always, series_active),
    (&families::SERIES_OVERFLOW, When::Always, series_overflow),
    (&families::SERIES_LOCK_HOLD, When::Always, series_lock_hold),
    (&families::SPAN_DURATION_CLAMPED, When::Always, clamped),
    (
        &families::RECEIVER_ACCEPTED_SPANS,
        When::Always,
        accepted_spans,
    ),
    (
        &families::RECEIVER_REFUSED_SPANS,
        When::Always,
        refused_spans,
    ),
    (
        &families::RECEIVER_ACCEPTED_LOG_RECORDS,
        When::Always,
        accepted_log_records,
    ),
    (
        &families::RECEIVER_REFUSED_LOG_RECORDS,
        When::Always,
        refused_log_records,
    ),
    (
        &families::RECEIVER_REFUSED_REQUESTS,
        When::Always,
        refused_requests,
    ),
    (&families::CONNECTIONS_OPEN, When::Always, connections_open),
    (
        &families::CONNECTIONS_LIMIT,
        When::Always,
        connections_limit,
    ),
    (
        &families::CONNECTIONS_ACCEPTED,
        When::Always,
        connections_accepted,
    ),
    (&families::ACCEPT_ERRORS, When::Always, accept_errors),
    (
        &families::CONNECTIONS_TIMED_OUT,
        When::Always,
        connections_timed_out,
    ),
    (
        &families::CONNECTIONS_EVICTED,
        When::Always,
        connections_evicted,
    ),
    (
        &families::TLS_HANDSHAKE_FAILURES,
        When::Always,
        tls_handshake_failures,
    ),
    (
        &families::TLS_CERTIFICATE_RELOADS,
        When::Always,
        tls_certificate_reloads,
    ),
    (
        &families::RECEIVER_IN_FLIGHT_BYTES,
        When::Always,
        in_flight_bytes,
    ),
    (
        &families::RECEIVER_IN_FLIGHT_LIMIT_BYTES,
        When::Always,
        in_flight_limit_bytes,
    ),
    (
        &families::RECEIVER_ADMISSION_WAITS,
        When::Always,
        admission_waits,
    ),
    (&families::RECEIVER_RECLAIMED, When::Always, reclaimed),
    (
        &families::CHECKPOINT_LAST_SUCCESS,
        When::Always,
        checkpoint_last_success,
    ),
    (
        &families::CHECKPOINT_DURATION,
        When::Always,
        checkpoint_duration,
    ),
    (&families::CHECKPOINT_SIZE, When::Always, checkpoint_size),
    (
        &families::CHECKPOINT_FAILURES,
        When::Always,
        checkpoint_failures,
    ),
    (
        &families::CHECKPOINT_REJECTED,
        When::Always,
        checkpoint_rejected,
    ),
    (&families::RESTORE_OUTCOME, When::Always, restore_outcome),
    (
        &families::RESTORE_SLO_DECISIONS,
        When::Always,
        restore_slo_decisions,
    ),
    (
        &families::CONFIG_RELOAD_SUCCESSFUL,
        When::Always,
        reload_successful,
    ),
    (
        &families::CONFIG_RELOAD_TIMESTAMP,
        When::Always,
        reload_timestamp,
    ),
    (&families::BUILD_INFO, When::Always, build_info),
];

impl Renderer {
    /// A renderer for `config`'s bucket bounds and quantiles.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            le_labels: config
                .histogram
                .buckets
                .iter()
                .map(|b| shortest(*b))
                .chain(["+Inf".to_owned()])
                .collect(),
            quantile_labels: config
                .histogram
                .quantiles
                .iter()
                .map(|q| shortest(*q))
                .collect(),
            config,
            spans: Vec::new(),
            numbers: Vec::new(),
            exemplars: Vec::new(),
            durations: Vec::new(),
            quantiles: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// The configuration it renders for.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Writes every family into `out` (cleared first), in `format`.
    pub fn render(
        &mut self,
        agg: &Aggregator,
        telemetry: &Telemetry,
        state: &StateMetrics,
        out: &mut String,
        format: Format,
    ) {
        out.clear();
        // Read before this scrape's own holds: they show in the next scrape.
        let longest_hold = agg.take_longest_lock_hold();
        self.copy(agg, format == Format::OpenMetrics);
        let snapshot = agg.slos().snapshot();
        let frame = Frame {
            r: self,
            agg,
            telemetry,
            state,
            dims: agg.plan().dimensions(),
            slos: agg.slos().definitions(),
            snapshot: &snapshot,
            longest_hold,
        };
        let mut enc = Encoder::with_format(out, format);
        for (metric, when, write) in FAMILIES {
            if when == When::WithSlos && frame.slos.is_empty() {
                continue;
            }
            enc.family(metric);
            write(&frame, metric, &mut enc);
        }
        enc.finish();
    }

    /// Copies the span, quantile and log series out, one shard lock at a time, and
    /// sorts them by labels; the span series' exemplars too when `exemplars`.
    fn copy(&mut self, agg: &Aggregator, exemplars: bool) {
        let Self {
            spans,
            numbers,
            exemplars: kept,
            durations,
            quantiles,
            logs,
            ..
        } = self;
        spans.clear();
        numbers.clear();
        kept.clear();
        durations.clear();
        quantiles.clear();
        logs.clear();
        agg.spans().for_each(|e| {
            let at = numbers.len();
            numbers.extend_from_slice(&e.value.by_status);
            numbers.extend_from_slice(&e.value.buckets);
            let exemplars_at = kept.len();
            if exemplars {
                kept.extend_from_slice(&e.value.exemplars.slots);
            }
            spans.push(SpanSnap {
                labels: e.labels.clone(),
                at,
                exemplars_at,
                sum_nanos: e.value.sum_nanos,
            });
        });
        agg.durations().for_each(|e| {
            let at = quantiles.len();
            quantiles.extend_from_slice(&e.value.quantiles);
            durations.push(DurationSnap {
                labels: e.labels.clone(),
                sum_nanos: e.value.sum_nanos,
                count: e.value.count,
                at,
                len: e.value.quantiles.len(),
            });
        });
        agg.logs()
            .for_each(|e| logs.push((e.labels.clone(), e.value)));
        spans.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        durations.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        logs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
}

/// A float label value in its shortest form (`0.5`, `0.999`, `16.384`).
fn shortest(v: f64) -> String {
    let mut s = String::new();
    write_f64(v, &mut s);
    s
}

/// Labels of a span series: service, region, span kind, then each dimension.
fn span_labels<'a>(pairs: &mut Vec<(&'a str, &'a str)>, labels: &'a Labels, dims: &'a [Dimension]) {
    pairs.clear();
    let names = ["service", "region", "span_kind"]
        .into_iter()
        .chain(dims.iter().map(|d| &*d.label));
    pairs.extend(names.zip(labels));
}

/// The span series' status samples: one per status code, or a single
/// `status_code="__overflow__"` sample with every status for an overflow series.
enum StatusSamples {
    PerCode,
    Overflow,
}

impl StatusSamples {
    fn of(labels: &Labels) -> Self {
        if &labels[2] == OVERFLOW {
            Self::Overflow
        } else {
            Self::PerCode
        }
    }

    fn count(&self) -> usize {
        match self {
            Self::PerCode => StatusCode::ALL.len(),
            Self::Overflow => 1,
        }
    }
}

fn spans(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    let mut pairs = Vec::with_capacity(8 + f.dims.len());
    for s in &f.r.spans {
        let counts = &f.r.numbers[s.at..s.at + StatusCode::ALL.len()];
        let overflow = [(
            OVERFLOW,
            counts.iter().fold(0u64, |a, b| a.saturating_add(*b)),
        )];
        let per_code = StatusCode::ALL.map(|c| (c.as_str(), counts[c as usize]));
        let samples: &[(&str, u64)] = match StatusSamples::of(&s.labels) {
            StatusSamples::PerCode => &per_code,
            StatusSamples::Overflow => &overflow,
        };
        for (code, value) in samples {
            span_labels(&mut pairs, &s.labels, f.dims);
            pairs.insert(3, ("status_code", code));
            enc.sample_u64(m, &pairs, *value);
        }
    }
}

fn span_durations(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    let mut pairs = Vec::with_capacity(8 + f.dims.len());
    let buckets = f.r.le_labels.len();
    let statuses = StatusCode::ALL.len();
    for s in &f.r.spans {
        let counts = &f.r.numbers[s.at + statuses..s.at + statuses + buckets];
        let exemplars =
            f.r.exemplars
                .get(s.exemplars_at..s.exemplars_at + buckets)
                .unwrap_or(&[]);
        let mut cumulative = 0;
        for (i, (le, n)) in f.r.le_labels.iter().zip(counts).enumerate() {
            cumulative = n.saturating_add(cumulative);
            span_labels(&mut pairs, &s.labels, f.dims);
            pairs.push(("le", le));
            let exemplar = exemplars.get(i).filter(|e| e.end_nanos != 0);
            enc.bucket(m, &pairs, cumulative, exemplar);
        }
        span_labels(&mut pairs, &s.labels, f.dims);
        enc.series_f64(m, "_sum", &pairs, s.sum_nanos as f64 / 1e9);
        enc.series_u64(m, "_count", &pairs, cumulative);
    }
}

fn span_quantiles(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    let mut pairs = Vec::with_capacity(4);
    for d in &f.r.durations {
        let values = &f.r.quantiles[d.at..d.at + d.len];
        for (q, v) in f.r.quantile_labels.iter().zip(values) {
            span_labels(&mut pairs, &d.labels, &[]);
            pairs.push(("quantile", q));
            enc.sample_f64(m, &pairs, *v);
        }
        span_labels(&mut pairs, &d.labels, &[]);
        enc.series_f64(m, "_sum", &pairs, d.sum_nanos as f64 / 1e9);
        enc.series_u64(m, "_count", &pairs, d.count);
    }
}

fn log_records(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for (labels, count) in &f.r.logs {
        let pairs = [
            ("service", &labels[0]),
            ("region", &labels[1]),
            ("severity", &labels[2]),
        ];
        enc.sample_u64(m, &pairs, *count);
    }
}

/// One SLO sample: `slo`, `service`, then `region` (absent on the roll-up) and one
/// more label if given.
fn slo_sample(
    enc: &mut Encoder<'_>,
    m: &Metric,
    slo: &SloRuntime,
    region: Option<&str>,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    let mut pairs = [
        ("slo", &*slo.name),
        ("service", &*slo.service),
        ("", ""),
        ("", ""),
    ];
    let mut n = 2;
    for pair in [region.map(|r| ("region", r)), extra].into_iter().flatten() {
        pairs[n] = pair;
        n += 1;
    }
    enc.sample_f64(m, &pairs[..n], value);
}

/// Event counts: per region only (no roll-up row), so that `sum()` is right.
fn slo_counts(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>, count: fn(&Row) -> u64) {
    for row in f.snapshot.rows.iter().filter(|r| r.region.is_some()) {
        let slo = &f.slos[row.slo];
        slo_sample(enc, m, slo, row.region.as_deref(), None, count(row) as f64);
    }
}

fn slo_events(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    slo_counts(f, m, enc, |r| r.events);
}

fn slo_bad_events(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    slo_counts(f, m, enc, |r| r.bad);
}

fn slo_objective(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for slo in f.slos {
        slo_sample(enc, m, slo, None, None, slo.budget.objective_ratio());
    }
}

fn slo_period(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for slo in f.slos {
        slo_sample(enc, m, slo, None, None, slo.period_secs);
    }
}

fn slo_sli(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for row in &f.snapshot.rows {
        let slo = &f.slos[row.slo];
        for (w, sli) in slo.window_labels.iter().zip(&row.sli) {
            if let Some(v) = sli {
                slo_sample(enc, m, slo, row.region.as_deref(), Some(("window", w)), *v);
            }
        }
    }
}

fn slo_burn_rate(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for row in &f.snapshot.rows {
        let slo = &f.slos[row.slo];
        for (w, burn) in slo.window_labels.iter().zip(&row.burn) {
            slo_sample(
                enc,
                m,
                slo,
                row.region.as_deref(),
                Some(("window", w)),
                *burn,
            );
        }
    }
}

/// One of a window's (total, bad) counts, per window of every row.
fn slo_window_counts(
    f: &Frame<'_>,
    m: &Metric,
    enc: &mut Encoder<'_>,
    count: fn(&(u64, u64)) -> u64,
) {
    for row in &f.snapshot.rows {
        let slo = &f.slos[row.slo];
        for (w, counts) in slo.window_labels.iter().zip(&row.windows) {
            let region = row.region.as_deref();
            slo_sample(
                enc,
                m,
                slo,
                region,
                Some(("window", w)),
                count(counts) as f64,
            );
        }
    }
}

fn slo_window_events(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    slo_window_counts(f, m, enc, |c| c.0);
}

fn slo_window_bad_events(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    slo_window_counts(f, m, enc, |c| c.1);
}

fn slo_budget_remaining(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for row in &f.snapshot.rows {
        let slo = &f.slos[row.slo];
        slo_sample(
            enc,
            m,
            slo,
            row.region.as_deref(),
            None,
            row.budget_remaining,
        );
    }
}

fn slo_budget_exhaustion(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for row in &f.snapshot.rows {
        if let Some(v) = row.exhaustion {
            let slo = &f.slos[row.slo];
            slo_sample(enc, m, slo, row.region.as_deref(), None, v);
        }
    }
}

fn slo_alert(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for row in &f.snapshot.rows {
        let slo = &f.slos[row.slo];
        for severity in [AlertSeverity::Page, AlertSeverity::Ticket] {
            let firing = row.alert[severity as usize];
            let extra = Some(("severity", severity.as_str()));
            slo_sample(
                enc,
                m,
                slo,
                row.region.as_deref(),
                extra,
                f64::from(u8::from(firing)),
            );
        }
    }
}

/// The families whose series the cardinality limits bound: (family, series exposed,
/// records overflowed). The SLO family (its series are (SLO, region) pairs, shown
/// under `sloxide_slo_events_total`) only when SLOs are configured.
fn bounded(f: &Frame<'_>) -> impl Iterator<Item = (&'static str, usize, u64)> {
    let span_samples =
        f.r.spans
            .iter()
            .map(|s| StatusSamples::of(&s.labels).count())
            .sum();
    let slos = f.agg.slos();
    let slo_family = (families::SLO_EVENTS.name, slos.len(), slos.overflowed());
    [
        (
            families::SPANS.name,
            span_samples,
            f.agg.spans().overflowed(),
        ),
        (
            families::SPAN_DURATION.name,
            f.r.spans.len(),
            f.agg.spans().overflowed(),
        ),
        (
            families::SPAN_DURATION_QUANTILES.name,
            f.r.durations.len(),
            f.agg.durations().overflowed(),
        ),
        (
            families::LOG_RECORDS.name,
            f.r.logs.len(),
            f.agg.logs().overflowed(),
        ),
    ]
    .into_iter()
    .chain((!f.slos.is_empty()).then_some(slo_family))
}

fn series_active(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for (family, active, _) in bounded(f) {
        enc.sample_u64(m, &[("family", family)], active as u64);
    }
}

fn series_overflow(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for (family, _, overflowed) in bounded(f) {
        enc.sample_u64(m, &[("family", family)], overflowed);
    }
}

fn series_lock_hold(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_f64(m, &[], f.longest_hold.as_secs_f64());
}

fn clamped(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.agg.clamped());
}

fn accepted(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>, signal: Signal) {
    for t in Transport::ALL {
        let value = f.telemetry.accepted(t, signal);
        enc.sample_u64(m, &[("transport", t.as_str())], value);
    }
}

fn rejected(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>, signal: Signal) {
    let reason = signal.reject_reason();
    for t in Transport::ALL {
        let value = f.telemetry.rejected(t, signal, reason);
        let labels = [("transport", t.as_str()), ("reason", reason.as_str())];
        enc.sample_u64(m, &labels, value);
    }
}

fn accepted_spans(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    accepted(f, m, enc, Signal::Traces);
}

fn refused_spans(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    rejected(f, m, enc, Signal::Traces);
}

fn accepted_log_records(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    accepted(f, m, enc, Signal::Logs);
}

fn refused_log_records(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    rejected(f, m, enc, Signal::Logs);
}

fn refused_requests(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for t in Transport::ALL {
        for s in Signal::ALL {
            for r in &REFUSALS {
                let value = f.telemetry.refused_requests(t, s, r.reason);
                let labels = [
                    ("transport", t.as_str()),
                    ("signal", s.as_str()),
                    ("reason", r.label),
                ];
                enc.sample_u64(m, &labels, value);
            }
        }
    }
}

fn in_flight_bytes(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.telemetry.in_flight().0 as u64);
}

fn in_flight_limit_bytes(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.telemetry.in_flight().1 as u64);
}

fn admission_waits(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.telemetry.admission_waits());
}

fn reclaimed(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.telemetry.reclaimed());
}

/// One sample per port of `value`.
fn per_port(
    f: &Frame<'_>,
    m: &Metric,
    enc: &mut Encoder<'_>,
    value: fn(&ConnectionMetrics, Port) -> u64,
) {
    for port in Port::ALL {
        let v = value(&f.telemetry.connections, port);
        enc.sample_u64(m, &[("port", port.as_str())], v);
    }
}

fn connections_open(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    per_port(f, m, enc, ConnectionMetrics::open);
}

fn connections_limit(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    per_port(f, m, enc, ConnectionMetrics::limit);
}

fn connections_accepted(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    per_port(f, m, enc, ConnectionMetrics::accepted);
}

fn accept_errors(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    per_port(f, m, enc, ConnectionMetrics::accept_errors);
}

fn connections_timed_out(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for port in Port::ALL {
        for timeout in Timeout::ALL {
            let v = f.telemetry.connections.timeouts(port, timeout);
            enc.sample_u64(
                m,
                &[("port", port.as_str()), ("timeout", timeout.as_str())],
                v,
            );
        }
    }
}

fn connections_evicted(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    per_port(f, m, enc, ConnectionMetrics::evictions);
}

fn tls_handshake_failures(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    per_port(f, m, enc, ConnectionMetrics::handshake_failures);
}

fn tls_certificate_reloads(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for listeners in TlsListeners::ALL {
        for (result, applied) in [("applied", true), ("refused", false)] {
            let v = f
                .telemetry
                .connections
                .certificate_reloads(listeners, applied);
            enc.sample_u64(
                m,
                &[("listeners", listeners.as_str()), ("result", result)],
                v,
            );
        }
    }
}

fn checkpoint_last_success(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_f64(m, &[], f.state.last_success_seconds());
}

fn checkpoint_duration(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_f64(m, &[], f.state.last_duration_seconds());
}

fn checkpoint_size(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.state.last_size_bytes());
}

fn checkpoint_failures(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for (reason, n) in f.state.failures() {
        enc.sample_u64(m, &[("reason", reason)], n);
    }
}

fn checkpoint_rejected(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for (reason, n) in f.state.rejections() {
        enc.sample_u64(m, &[("reason", reason)], n);
    }
}

fn restore_outcome(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    let (outcome, generation) = f.state.outcome().labels();
    enc.sample_u64(m, &[("outcome", outcome), ("generation", generation)], 1);
}

fn restore_slo_decisions(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    for (decision, n) in f.state.decisions() {
        enc.sample_u64(m, &[("decision", decision)], n);
    }
}

fn reload_successful(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[], f.state.reload_successful());
}

fn reload_timestamp(f: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_f64(m, &[], f.agg.applied_unix_nanos() as f64 / 1e9);
}

fn build_info(_: &Frame<'_>, m: &Metric, enc: &mut Encoder<'_>) {
    enc.sample_u64(m, &[("version", env!("CARGO_PKG_VERSION"))], 1);
}
