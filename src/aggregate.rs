//! The series state: spans and log records turned into per-service, per-region
//! counters, classic histograms and per-minute HDR quantiles, in lock-sharded maps.
//!
//! [`Aggregator`] is the [`Recorder`] the ingest stage hands each decoded batch to. It
//! works per resource: the service and the resource's region are resolved once per
//! resource, then each span costs a label-set hash, one shard lock for its counters
//! and buckets, and one for its quantile histogram. A background [`Aggregator::tick`]
//! computes the quantiles of the last complete minute and expires idle series; a scrape
//! copies each shard's numbers out under its lock and formats them afterwards.

pub mod hdr;
pub mod series;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::classify::{Dimension, Label, MAX_SPAN_LABELS, Plan, Verdict};
use crate::clock::{Clock, slot_time};
use crate::config::Config;
use crate::config::MAX_DIMENSIONS;
use crate::config::slo::Source;
use crate::ingest::Recorder;
use crate::otlp::logs::LogBatch;
use crate::otlp::spans::{SpanView, TraceBatch};
use crate::otlp::{Severity, SpanKind, StatusCode, Value};
use crate::slo::SloEngine;
use crate::store::{Family, Fold, MAX_LABELS};
use series::{HdrSlot, QuantileSeries, Recorded, SpanSeries};

const NANOS_PER_SEC: u64 = 1_000_000_000;

const _: () = assert!(MAX_SPAN_LABELS <= MAX_LABELS);
const _: () = assert!(std::mem::size_of::<Pending>() == 24);

/// Every series sloxide keeps, and the rules that fill them.
#[derive(Debug)]
pub struct Aggregator {
    plan: Arc<Plan>,
    clock: Arc<dyn Clock>,
    bounds_nanos: Box<[u64]>,
    quantiles: Box<[f64]>,
    late_slack: u64,
    max_skew: u64,
    idle_expiry_secs: u64,
    /// `sloxide_spans_total` and `sloxide_span_duration_seconds`: (service, region,
    /// span kind, dimensions...).
    spans: Family<SpanSeries>,
    /// `sloxide_span_duration_quantile_seconds`: (service, region, span kind).
    durations: Family<QuantileSeries>,
    /// `sloxide_log_records_total`: (service, region, severity).
    logs: Family<u64>,
    clamped: AtomicU64,
    slos: SloEngine,
    /// When this aggregation (and so its configuration) was made, Unix nanoseconds.
    applied: u64,
}

impl Aggregator {
    /// The aggregation for `config`, reading time from `clock`.
    pub fn new(config: &Config, plan: Arc<Plan>, clock: Arc<dyn Clock>) -> Self {
        let (max, per_service) = (
            config.limits.max_series,
            config.limits.max_series_per_service,
        );
        Self {
            bounds_nanos: config
                .histogram
                .buckets
                .iter()
                .map(|b| (b * 1e9).round() as u64)
                .collect(),
            quantiles: config.histogram.quantiles.clone().into_boxed_slice(),
            late_slack: config.timing.late_slack.as_nanos() as u64,
            max_skew: config.timing.max_skew.as_nanos() as u64,
            idle_expiry_secs: config.limits.series_idle_expiry.as_secs().max(1),
            spans: Family::new(max, per_service, Fold::Service),
            durations: Family::new(max, per_service, Fold::Service),
            logs: Family::new(max, per_service, Fold::Service),
            clamped: AtomicU64::new(0),
            applied: clock.now_nanos(),
            slos: SloEngine::new(config),
            plan,
            clock,
        }
    }

    /// The compiled plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The SLO engine.
    pub fn slos(&self) -> &SloEngine {
        &self.slos
    }

    /// Counts a run of spans that share `labels` into their series (or the overflow
    /// series): one lookup and one shard lock for the whole run.
    fn record_spans(
        &self,
        labels: &[&str],
        events: &[SpanView<'_>],
        spans: &[Pending],
        run: &[u16],
        now_secs: u64,
    ) {
        let n = self.bounds_nanos.len();
        self.spans.record(
            labels,
            labels[0],
            now_secs,
            run.len() as u64,
            || SpanSeries::new(n),
            |s| {
                for &i in run {
                    let p = &spans[usize::from(i)];
                    s.record(p.status, p.bucket as usize, p.duration);
                }
                // Once a second, the run's spans with ids become their buckets'
                // exemplars (the last one of each bucket stays).
                if s.exemplars.due(now_secs) {
                    for &i in run {
                        let p = &spans[usize::from(i)];
                        if let Some(span) = events.get(p.span as usize)
                            && let (Some(trace), Some(id)) = (span.trace_id, span.span_id)
                        {
                            s.exemplars
                                .keep(p.bucket as usize, trace, id, p.duration, span.end);
                        }
                    }
                }
            },
        );
    }

    /// Records the durations of a run into the quantile series of `labels`
    /// (service, region, span kind).
    fn record_durations(
        &self,
        labels: &[&str; 3],
        spans: &[Pending],
        run: &[u16],
        now_minute: u64,
        now_secs: u64,
    ) {
        let mut clamped = 0;
        self.durations.record(
            labels,
            labels[0],
            now_secs,
            run.len() as u64,
            QuantileSeries::default,
            |q| {
                for &i in run {
                    let p = &spans[usize::from(i)];
                    let recorded = q.record_at(p.duration, p.hdr, u64::from(p.minute), now_minute);
                    if recorded == Recorded::Clamped {
                        clamped += 1;
                    }
                }
            },
        );
        if clamped > 0 {
            self.clamped.fetch_add(clamped, Ordering::Relaxed);
        }
    }

    /// Records every group of `service`'s spans: one lookup per group and series.
    fn flush(
        &self,
        service: &str,
        groups: &mut SpanGroups<'_, '_>,
        now_minute: u64,
        now_secs: u64,
    ) {
        // Order the held spans by group (a counting sort of their indexes), so that each
        // group's spans are one run and no group rescans the others'.
        let spans = &groups.spans[..groups.len];
        let mut starts = [0usize; GROUPS + 1];
        for p in spans {
            starts[usize::from(p.group) + 1] += 1;
        }
        for g in 0..GROUPS {
            starts[g + 1] += starts[g];
        }
        let mut next = starts;
        let mut order = [0u16; GROUPED_SPANS];
        for (i, p) in spans.iter().enumerate() {
            let slot = &mut next[usize::from(p.group)];
            order[*slot] = i as u16;
            *slot += 1;
        }
        let n_dims = groups.dims.len();
        for (g, key) in groups.keys[..groups.n_groups].iter().enumerate() {
            let mut labels = [""; MAX_SPAN_LABELS];
            labels[0] = service;
            labels[1] = key.region.as_str();
            labels[2] = key.kind.as_str();
            for (slot, value) in labels[3..].iter_mut().zip(&key.dims[..n_dims]) {
                *slot = value.as_str();
            }
            let run = &order[starts[g]..starts[g + 1]];
            self.record_spans(&labels[..3 + n_dims], groups.events, spans, run, now_secs);
            self.record_durations(
                &[labels[0], labels[1], labels[2]],
                spans,
                run,
                now_minute,
                now_secs,
            );
        }
        groups.n_groups = 0;
        groups.len = 0;
    }

    fn record_log(&self, labels: &[&str; 3], now_secs: u64) {
        self.logs
            .record(labels, labels[0], now_secs, 1, || 0, |c| *c += 1);
    }

    /// Once a second: computes the SLO values and the quantiles of the last complete
    /// minute, and removes series idle for `series_idle_expiry`.
    pub fn tick(&self) {
        let now = self.clock.now_nanos();
        self.slos.tick(now);
        let now_secs = now / NANOS_PER_SEC;
        let last_complete = (now_secs / 60).saturating_sub(1);
        // Computing a series' quantiles reads its minute histogram a few times; doing it
        // 8 series per lock hold keeps each hold to about 0.1 ms.
        self.durations
            .for_each_chunked(8, |e| e.value.compute(last_complete, &self.quantiles));
        let cutoff = now_secs.saturating_sub(self.idle_expiry_secs);
        self.spans.expire_idle(cutoff);
        self.durations.expire_idle(cutoff);
        self.logs.expire_idle(cutoff);
    }

    /// The longest time a scrape or the tick held one series shard lock (of any family,
    /// SLOs included) since the last call, and resets it: how long ingest into that
    /// shard could have waited on them. `render` reads it for
    /// `sloxide_series_lock_hold_max_seconds`.
    pub fn take_longest_lock_hold(&self) -> std::time::Duration {
        [
            self.spans.take_longest_hold(),
            self.durations.take_longest_hold(),
            self.logs.take_longest_hold(),
            self.slos.take_longest_hold(),
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
    }

    /// Durations outside the quantile histograms' 1 µs .. 1 h range, recorded at the bound.
    pub fn clamped(&self) -> u64 {
        self.clamped.load(Ordering::Relaxed)
    }

    /// When this aggregation, and so the configuration it was built from, was made
    /// (Unix nanoseconds): `sloxide_config_last_reload_success_timestamp_seconds`.
    pub fn applied_unix_nanos(&self) -> u64 {
        self.applied
    }

    /// Adds clamped durations saved by a checkpoint.
    pub fn add_clamped(&self, n: u64) {
        self.clamped.fetch_add(n, Ordering::Relaxed);
    }

    /// The span series (counters and classic buckets).
    pub fn spans(&self) -> &Family<SpanSeries> {
        &self.spans
    }

    /// The span quantile series.
    pub fn durations(&self) -> &Family<QuantileSeries> {
        &self.durations
    }

    /// The log record series.
    pub fn logs(&self) -> &Family<u64> {
        &self.logs
    }
}

/// The index of the first bound at or above `duration` (the bucket it counts in):
/// the bounds below it, counted without a branch per bound, as the bounds are few (14
/// by default); a binary search mispredicted on about every other step.
#[inline]
fn bucket_of(bounds: &[u64], duration: u64) -> u32 {
    bounds.iter().map(|b| u32::from(*b < duration)).sum()
}

/// String equality that first checks for the very same bytes: labels borrowed from one
/// resource usually are, and this skips the comparison.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len())
        || crate::otlp::same_bytes(a.as_bytes(), b.as_bytes())
}

/// How many distinct label sets of one resource are grouped before they are recorded.
const GROUPS: usize = 8;
/// How many spans are held before they are recorded.
const GROUPED_SPANS: usize = 256;

/// What one span adds to its series: 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The span's index in the batch's events, for its exemplar.
    span: u32,
    group: u8,
    status: StatusCode,
    /// Its counter in the minute histogram.
    hdr: HdrSlot,
    bucket: u32,
    duration: u64,
    /// The minute (Unix seconds / 60) its end time counts in.
    minute: u32,
}

/// The labels one group of spans shares (besides the service).
struct GroupKey<'a> {
    kind: SpanKind,
    region: Label<'a>,
    /// The dimension attributes as they were on the wire. Spans of one resource with the
    /// same raw values get the same labels, so grouping compares these and turns them
    /// into labels only when a group opens. Against comparing labels (UTF-8 check and
    /// memcmp per span and dimension), this took recording 1000 spans with
    /// `config/example.yaml` from about 59 to about 31 µs, with the counting sort in
    /// `flush` (benches/pipeline.rs, `sloxide_record_only`).
    raw: [Value<'a>; MAX_DIMENSIONS],
    dims: [Label<'a>; MAX_DIMENSIONS],
}

/// Spans of one resource grouped by label set, so that each series is looked up once
/// per group rather than once per span, even when label sets interleave (a request's
/// routes usually do). Fixed arrays, reused for every resource of a request: the
/// grouping allocates nothing and copies little.
struct SpanGroups<'a, 'p> {
    dims: &'p [Dimension],
    keys: [GroupKey<'a>; GROUPS],
    n_groups: usize,
    spans: [Pending; GROUPED_SPANS],
    /// The batch's spans, which [`Pending::span`] indexes.
    events: &'a [SpanView<'a>],
    len: usize,
}

impl<'a, 'p> SpanGroups<'a, 'p> {
    fn new(dims: &'p [Dimension], events: &'a [SpanView<'a>]) -> Self {
        Self {
            dims,
            keys: std::array::from_fn(|_| GroupKey {
                kind: SpanKind::Unspecified,
                region: Label::Borrowed(""),
                raw: [Value::Missing; MAX_DIMENSIONS],
                dims: std::array::from_fn(|_| Label::Borrowed("")),
            }),
            n_groups: 0,
            spans: [Pending {
                span: 0,
                group: 0,
                status: StatusCode::Unset,
                hdr: HdrSlot::of(0),
                bucket: 0,
                duration: 0,
                minute: 0,
            }; GROUPED_SPANS],
            events,
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == GROUPED_SPANS
    }

    /// The open group of a span of this kind and attribute row. `region` is the span's
    /// own region; `None` when the resource's applies (and so every group's).
    #[inline]
    fn find(&self, kind: SpanKind, region: Option<&Label<'_>>, attrs: &[Value<'_>]) -> Option<u8> {
        self.keys[..self.n_groups]
            .iter()
            .position(|k| {
                k.kind == kind
                    && region.is_none_or(|r| same(k.region.as_str(), r.as_str()))
                    && self
                        .dims
                        .iter()
                        .zip(&k.raw)
                        .all(|(d, raw)| raw.same(&attrs[d.index]))
            })
            .map(|g| g as u8)
    }

    /// Opens a group for these labels. `label(d)` gives dimension `d`'s label.
    fn open(
        &mut self,
        kind: SpanKind,
        region: Label<'a>,
        attrs: &[Value<'a>],
        label: impl Fn(&Dimension) -> Label<'a>,
    ) -> u8 {
        let key = &mut self.keys[self.n_groups];
        key.kind = kind;
        key.region = region;
        for (i, d) in self.dims.iter().enumerate() {
            key.raw[i] = attrs[d.index];
            key.dims[i] = label(d);
        }
        self.n_groups += 1;
        (self.n_groups - 1) as u8
    }

    fn push(&mut self, p: Pending) {
        self.spans[self.len] = p;
        self.len += 1;
    }
}

/// The SLO events of one (SLO, region, second) group, summed before they are recorded.
#[derive(Debug, Clone)]
struct Tally<'a> {
    slo: usize,
    region: Label<'a>,
    /// Unix second the events are placed at.
    at: u64,
    total: u64,
    bad: u64,
}

/// SLO events of one resource, summed per (SLO, region, second) before they are
/// recorded, so that a resource costs one series update per such group, not per event.
/// A fixed array: the hot path does not allocate.
struct Tallies<'a> {
    open: [Tally<'a>; Tallies::CAPACITY],
    len: usize,
}

impl Default for Tallies<'_> {
    fn default() -> Self {
        Self {
            open: std::array::from_fn(|_| Tally {
                slo: 0,
                region: Label::Borrowed(""),
                at: 0,
                total: 0,
                bad: 0,
            }),
            len: 0,
        }
    }
}

impl<'a> Tallies<'a> {
    /// At most this many groups are held before they are recorded.
    const CAPACITY: usize = 16;

    /// Counts one event of `slo` in `region` at Unix second `at`, unless `verdict`
    /// ignores it.
    #[inline]
    fn add(
        &mut self,
        slos: &SloEngine,
        slo: usize,
        region: &Label<'a>,
        at: u64,
        verdict: Verdict,
        now_secs: u64,
    ) {
        let bad = match verdict {
            Verdict::Ignored => return,
            Verdict::Good => 0,
            Verdict::Bad => 1,
        };
        if let Some(open) = self.open[..self.len]
            .iter_mut()
            .find(|o| o.slo == slo && o.at == at && same(o.region.as_str(), region.as_str()))
        {
            open.total += 1;
            open.bad += bad;
            return;
        }
        if self.len == Self::CAPACITY {
            self.flush(slos, now_secs);
        }
        self.open[self.len] = Tally {
            slo,
            region: region.clone(),
            at,
            total: 1,
            bad,
        };
        self.len += 1;
    }

    fn flush(&mut self, slos: &SloEngine, now_secs: u64) {
        for t in &self.open[..self.len] {
            slos.record(t.slo, t.region.as_str(), t.at, t.total, t.bad, now_secs);
        }
        self.len = 0;
    }
}

impl Recorder for Aggregator {
    fn record_traces(&self, batch: &TraceBatch<'_>) {
        let plan = &*self.plan;
        debug_assert!(
            batch.resources.is_empty() || batch.width >= plan.trace_keys().len(),
            "a trace batch walked with the plan's trace keys"
        );
        let now = self.clock.now_nanos();
        let now_secs = now / NANOS_PER_SEC;
        let now_minute = now_secs / 60;
        let mut groups = SpanGroups::new(plan.dimensions(), &batch.events);
        for run in &batch.resources {
            let resource = batch.resource_attrs(run);
            let service = plan.service(resource);
            let resource_region = plan.region_in(resource);
            let slos = plan.slos_of(service.as_str());
            // Spans with the same labels are recorded together, one lookup per group.
            let mut tallies = Tallies::default();
            for (index, span) in (run.events.start..).zip(batch.events_of(run)) {
                let attrs = batch.row(span.attrs);
                // A resource's region is every span's; only without one does a span's
                // own attributes decide it.
                let own_region = match resource_region {
                    Some(_) => None,
                    None => Some(plan.region(&None, attrs)),
                };
                let kind = SpanKind::from_otlp(span.kind);
                let duration = span.duration_nanos();
                let at = slot_time(span.end, now, self.late_slack, self.max_skew);
                if groups.is_full() {
                    self.flush(service.as_str(), &mut groups, now_minute, now_secs);
                }
                let g = match groups.find(kind, own_region.as_ref(), attrs) {
                    Some(g) => g,
                    None => {
                        if groups.n_groups == GROUPS {
                            self.flush(service.as_str(), &mut groups, now_minute, now_secs);
                        }
                        let region = own_region
                            .or_else(|| resource_region.clone())
                            .unwrap_or(Label::Borrowed(plan.region_default()));
                        groups.open(kind, region, attrs, |d| plan.dimension(d, attrs, resource))
                    }
                };
                let (region, second) = (&groups.keys[usize::from(g)].region, at / NANOS_PER_SEC);
                for slo in slos.iter().filter(|s| s.source == Source::Spans) {
                    let verdict = slo.classify_span(span, attrs, resource);
                    tallies.add(&self.slos, slo.index, region, second, verdict, now_secs);
                }
                groups.push(Pending {
                    span: index,
                    group: g,
                    status: StatusCode::from_otlp(span.status),
                    hdr: HdrSlot::of(duration),
                    bucket: bucket_of(&self.bounds_nanos, duration),
                    duration,
                    minute: (at / NANOS_PER_SEC / 60) as u32,
                });
            }
            self.flush(service.as_str(), &mut groups, now_minute, now_secs);
            tallies.flush(&self.slos, now_secs);
        }
    }

    fn record_logs(&self, batch: &LogBatch<'_>) {
        let plan = &*self.plan;
        debug_assert!(
            batch.resources.is_empty() || batch.width >= plan.keys().len(),
            "a log batch walked with all the plan's keys"
        );
        let now = self.clock.now_nanos();
        let now_secs = now / NANOS_PER_SEC;
        for run in &batch.resources {
            let resource = batch.resource_attrs(run);
            let service = plan.service(resource);
            let resource_region = plan.region_in(resource);
            let slos = plan.slos_of(service.as_str());
            let mut tallies = Tallies::default();
            for record in batch.events_of(run) {
                let attrs = batch.row(record.attrs);
                let region = plan.region(&resource_region, attrs);
                let severity = Severity::from_otlp(record.severity).as_str();
                self.record_log(&[service.as_str(), region.as_str(), severity], now_secs);
                let at = slot_time(record.event_time(), now, self.late_slack, self.max_skew);
                let second = at / NANOS_PER_SEC;
                for slo in slos.iter().filter(|s| s.source == Source::Logs) {
                    let verdict = slo.classify_log(record, attrs, resource);
                    tallies.add(&self.slos, slo.index, &region, second, verdict, now_secs);
                }
            }
            tallies.flush(&self.slos, now_secs);
        }
    }
}
