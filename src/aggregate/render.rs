//! Exposition of the span and log families and the cardinality self-metrics.
//!
//! A scrape first copies every shard's numbers into reused scratch vectors, holding
//! each shard's lock only for its copy, then sorts and formats without any lock.

use std::sync::Arc;

use super::{Aggregator, OVERFLOW};
use crate::export::text::{Encoder, MetricType};

type Labels = Arc<[Box<str>]>;

/// Buffers reused from one scrape to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    spans: Vec<SpanSnap>,
    numbers: Vec<u64>,
    durations: Vec<DurationSnap>,
    quantiles: Vec<f64>,
    logs: Vec<(Labels, u64)>,
}

#[derive(Debug)]
struct SpanSnap {
    labels: Labels,
    at: usize,
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

const STATUS: [&str; 3] = ["unset", "ok", "error"];

impl Aggregator {
    /// Writes the span, log and cardinality families.
    pub fn render(&self, enc: &mut Encoder<'_>, scratch: &mut Scratch) {
        // Read before this scrape's own holds: they show in the next scrape.
        let longest_hold = self.take_longest_lock_hold();
        let Scratch {
            spans,
            numbers,
            durations,
            quantiles,
            logs,
        } = scratch;
        spans.clear();
        numbers.clear();
        durations.clear();
        quantiles.clear();
        logs.clear();

        self.spans.for_each(|e| {
            let at = numbers.len();
            numbers.extend_from_slice(&e.value.by_status);
            numbers.extend_from_slice(&e.value.buckets);
            spans.push(SpanSnap {
                labels: e.labels.clone(),
                at,
                sum_nanos: e.value.sum_nanos,
            });
        });
        self.durations.for_each(|e| {
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
        self.logs
            .for_each(|e| logs.push((e.labels.clone(), e.value)));
        spans.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        durations.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        logs.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        let dims = self.plan.dimensions();
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(8 + dims.len());
        let buckets = self.le_labels.len();

        let name = "sloxide_spans_total";
        enc.family(
            name,
            MetricType::Counter,
            "Spans accepted, by service, region, span kind and status code.",
        );
        let mut span_total_series = 0;
        for s in spans.iter() {
            let counts = &numbers[s.at..s.at + 3];
            let overflow = &*s.labels[2] == OVERFLOW;
            let statuses: &[usize] = if overflow { &[3] } else { &[0, 1, 2] };
            span_total_series += statuses.len();
            for &status in statuses {
                pairs.clear();
                push_span_labels(&mut pairs, &s.labels, dims.iter().map(|d| d.label.as_str()));
                let (code, value) = if status == 3 {
                    (OVERFLOW, counts.iter().sum())
                } else {
                    (STATUS[status], counts[status])
                };
                pairs.insert(3, ("status_code", code));
                enc.sample_u64(name, &pairs, value);
            }
        }

        let name = "sloxide_span_duration_seconds";
        enc.family(
            name,
            MetricType::Histogram,
            "Span durations in seconds, by service, region and span kind.",
        );
        for s in spans.iter() {
            let counts = &numbers[s.at + 3..s.at + 3 + buckets];
            let mut cumulative = 0;
            for (i, n) in counts.iter().enumerate() {
                cumulative += n;
                pairs.clear();
                push_span_labels(&mut pairs, &s.labels, dims.iter().map(|d| d.label.as_str()));
                pairs.push(("le", &self.le_labels[i]));
                enc.sample_u64("sloxide_span_duration_seconds_bucket", &pairs, cumulative);
            }
            pairs.clear();
            push_span_labels(&mut pairs, &s.labels, dims.iter().map(|d| d.label.as_str()));
            enc.sample_f64(
                "sloxide_span_duration_seconds_sum",
                &pairs,
                s.sum_nanos as f64 / 1e9,
            );
            enc.sample_u64("sloxide_span_duration_seconds_count", &pairs, cumulative);
        }

        let name = "sloxide_span_duration_quantile_seconds";
        enc.family(
            name,
            MetricType::Summary,
            "Quantiles of the durations of spans that ended in the last complete minute (HDR histogram, 1% precision); sum and count are cumulative.",
        );
        for d in durations.iter() {
            for (q, v) in self
                .quantile_labels
                .iter()
                .zip(&quantiles[d.at..d.at + d.len])
            {
                pairs.clear();
                push_span_labels(&mut pairs, &d.labels, std::iter::empty());
                pairs.push(("quantile", q));
                enc.sample_f64(name, &pairs, *v);
            }
            pairs.clear();
            push_span_labels(&mut pairs, &d.labels, std::iter::empty());
            enc.sample_f64(
                "sloxide_span_duration_quantile_seconds_sum",
                &pairs,
                d.sum_nanos as f64 / 1e9,
            );
            enc.sample_u64(
                "sloxide_span_duration_quantile_seconds_count",
                &pairs,
                d.count,
            );
        }

        let name = "sloxide_log_records_total";
        enc.family(
            name,
            MetricType::Counter,
            "Log records accepted, by service, region and severity.",
        );
        for (labels, count) in logs.iter() {
            let pairs = [
                ("service", &*labels[0]),
                ("region", &*labels[1]),
                ("severity", &*labels[2]),
            ];
            enc.sample_u64(name, &pairs, *count);
        }

        let families = [
            (
                "sloxide_spans_total",
                span_total_series,
                self.span_limits.overflowed(),
            ),
            (
                "sloxide_span_duration_seconds",
                spans.len(),
                self.span_limits.overflowed(),
            ),
            (
                "sloxide_span_duration_quantile_seconds",
                durations.len(),
                self.duration_limits.overflowed(),
            ),
            (
                "sloxide_log_records_total",
                logs.len(),
                self.log_limits.overflowed(),
            ),
        ];
        self.slos.render(enc);

        let name = "sloxide_series_active";
        enc.family(
            name,
            MetricType::Gauge,
            "Series currently exposed, per family (overflow series included).",
        );
        for (family, active, _) in families {
            enc.sample_u64(name, &[("family", family)], active as u64);
        }
        let name = "sloxide_series_overflow_total";
        enc.family(name, MetricType::Counter, "Records counted in an overflow series because their label set hit max_series or max_series_per_service.");
        for (family, _, overflowed) in families {
            enc.sample_u64(name, &[("family", family)], overflowed);
        }
        let name = "sloxide_series_lock_hold_max_seconds";
        enc.family(name, MetricType::Gauge, "Longest time a scrape or the tick held one series shard lock (ingest into that shard waits meanwhile), since the previous scrape.");
        enc.sample_f64(name, &[], longest_hold.as_secs_f64());
        let name = "sloxide_span_duration_clamped_total";
        enc.family(name, MetricType::Counter, "Span durations outside the quantile histograms' 1us..1h range, recorded at the nearest bound.");
        enc.sample_u64(name, &[], self.clamped());
    }
}

fn push_span_labels<'a>(
    pairs: &mut Vec<(&'a str, &'a str)>,
    labels: &'a [Box<str>],
    dims: impl Iterator<Item = &'a str>,
) {
    pairs.push(("service", &labels[0]));
    pairs.push(("region", &labels[1]));
    pairs.push(("span_kind", &labels[2]));
    for (name, value) in dims.zip(&labels[3..]) {
        pairs.push((name, value));
    }
}
