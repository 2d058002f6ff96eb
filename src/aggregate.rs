//! The series state: spans and log records turned into per-service, per-region
//! counters, classic histograms and per-minute HDR quantiles, in lock-sharded maps.
//!
//! [`Aggregator`] is the [`Recorder`] the ingest stage hands each decoded batch to. It
//! works per resource: the service and the resource's region are resolved once per
//! resource, then each span costs a label-set hash, one shard lock for its counters
//! and buckets, and one for its quantile histogram. A background [`Aggregator::tick`]
//! computes the quantiles of the last complete minute and expires idle series; a scrape
//! copies each shard's numbers out under its lock and formats them afterwards.

pub mod render;
pub mod series;
pub mod shards;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::classify::{Dimension, Label, MAX_SPAN_LABELS, Plan};
use crate::clock::{Clock, slot_time};
use crate::config::Config;
use crate::config::MAX_DIMENSIONS;
use crate::config::slo::{Severity, Source, SpanKind};
use crate::ingest::Recorder;
use crate::otlp::Value;
use crate::otlp::logs::LogBatch;
use crate::otlp::spans::TraceBatch;
use crate::slo::SloEngine;
use series::{QuantileSeries, Recorded, SpanSeries};
use shards::{Sharded, default_shards};

/// The label value every label but `service` (or every label) takes in an overflow series.
pub const OVERFLOW: &str = "__overflow__";

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The label-set limits of one family, and its overflow count.
#[derive(Debug)]
pub struct Cardinality {
    max_series: usize,
    max_per_service: usize,
    active: AtomicUsize,
    per_service: Mutex<HashMap<Box<str>, usize>>,
    overflow: AtomicU64,
}

/// Whether a new label set gets a series of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It does.
    Own,
    /// Its service has `max_series_per_service` label sets: fold into the service's
    /// overflow series.
    ServiceOverflow,
    /// The family has `max_series` label sets: fold into the family's overflow series.
    FamilyOverflow,
}

impl Cardinality {
    /// Limits of `max_series` label sets, `max_per_service` of them per service.
    pub fn new(max_series: usize, max_per_service: usize) -> Self {
        Self {
            max_series,
            max_per_service,
            active: AtomicUsize::new(0),
            per_service: Mutex::new(HashMap::new()),
            overflow: AtomicU64::new(0),
        }
    }

    /// Admits a new label set of `service`, or says where it overflows to.
    pub fn admit(&self, service: &str) -> Admission {
        // The map's lock serialises admissions, so the limits hold exactly.
        let mut per = self
            .per_service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Relaxed: `active` is only changed under the `per_service` lock.
        if self.active.load(Ordering::Relaxed) >= self.max_series {
            return Admission::FamilyOverflow;
        }
        if per.get(service).is_some_and(|n| *n >= self.max_per_service) {
            return Admission::ServiceOverflow;
        }
        *per.entry(service.into()).or_insert(0) += 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        Admission::Own
    }

    /// Gives back the slot of an expired series of `service`.
    pub fn release(&self, service: &str) {
        let mut per = self
            .per_service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = per.get_mut(service) {
            *n -= 1;
            if *n == 0 {
                per.remove(service);
            }
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts records folded into an overflow series.
    pub fn count_overflow(&self, n: u64) {
        self.overflow.fetch_add(n, Ordering::Relaxed);
    }

    /// Records counted in an overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

/// Every series sloxide keeps, and the rules that fill them.
#[derive(Debug)]
pub struct Aggregator {
    plan: Arc<Plan>,
    clock: Arc<dyn Clock>,
    bounds_nanos: Box<[u64]>,
    le_labels: Box<[String]>,
    quantiles: Box<[f64]>,
    quantile_labels: Box<[String]>,
    late_slack: u64,
    max_skew: u64,
    idle_expiry_secs: u64,
    spans: Sharded<SpanSeries>,
    span_limits: Cardinality,
    durations: Sharded<QuantileSeries>,
    duration_limits: Cardinality,
    logs: Sharded<u64>,
    log_limits: Cardinality,
    clamped: AtomicU64,
    slos: SloEngine,
}

impl Aggregator {
    /// The aggregation for `config`, reading time from `clock`.
    pub fn new(config: &Config, plan: Arc<Plan>, clock: Arc<dyn Clock>) -> Self {
        let limits = &config.limits;
        let card = || Cardinality::new(limits.max_series, limits.max_series_per_service);
        Self {
            bounds_nanos: config
                .histogram
                .buckets
                .iter()
                .map(|b| (b * 1e9).round() as u64)
                .collect(),
            le_labels: config
                .histogram
                .buckets
                .iter()
                .map(|b| shortest(*b))
                .chain(["+Inf".to_owned()])
                .collect(),
            quantiles: config.histogram.quantiles.clone().into_boxed_slice(),
            quantile_labels: config
                .histogram
                .quantiles
                .iter()
                .map(|q| shortest(*q))
                .collect(),
            late_slack: config.timing.late_slack.as_nanos() as u64,
            max_skew: config.timing.max_skew.as_nanos() as u64,
            idle_expiry_secs: limits.series_idle_expiry.as_secs().max(1),
            spans: Sharded::new(default_shards()),
            span_limits: card(),
            durations: Sharded::new(default_shards()),
            duration_limits: card(),
            logs: Sharded::new(default_shards()),
            log_limits: card(),
            clamped: AtomicU64::new(0),
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
    fn record_spans(&self, labels: &[&str], spans: &[Pending], run: &[u16], now_secs: u64) {
        let n = self.bounds_nanos.len();
        let count = run.len() as u64;
        let apply = |s: &mut SpanSeries| {
            for &i in run {
                let p = &spans[usize::from(i)];
                s.record(usize::from(p.status), p.bucket as usize, p.duration);
            }
        };
        let mut verdict = Admission::Own;
        let counted = self.spans.update(
            labels,
            now_secs,
            true,
            || {
                verdict = self.span_limits.admit(labels[0]);
                (verdict == Admission::Own).then(|| SpanSeries::new(n))
            },
            apply,
        );
        if !counted {
            self.span_limits
                .overflow
                .fetch_add(count, Ordering::Relaxed);
            let mut folded = [OVERFLOW; MAX_SPAN_LABELS];
            if verdict == Admission::ServiceOverflow {
                folded[0] = labels[0];
            }
            self.spans.update(
                &folded[..labels.len()],
                now_secs,
                false,
                || Some(SpanSeries::new(n)),
                apply,
            );
        }
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
        let count = run.len() as u64;
        let mut apply = |q: &mut QuantileSeries| {
            for &i in run {
                let p = &spans[usize::from(i)];
                if q.record(p.duration, p.minute, now_minute) == Recorded::Clamped {
                    clamped += 1;
                }
            }
        };
        let mut verdict = Admission::Own;
        let counted = self.durations.update(
            labels,
            now_secs,
            true,
            || {
                verdict = self.duration_limits.admit(labels[0]);
                (verdict == Admission::Own).then(QuantileSeries::default)
            },
            &mut apply,
        );
        if !counted {
            self.duration_limits
                .overflow
                .fetch_add(count, Ordering::Relaxed);
            let service = if verdict == Admission::ServiceOverflow {
                labels[0]
            } else {
                OVERFLOW
            };
            self.durations.update(
                &[service, OVERFLOW, OVERFLOW],
                now_secs,
                false,
                || Some(QuantileSeries::default()),
                &mut apply,
            );
        }
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
            self.record_spans(&labels[..3 + n_dims], spans, run, now_secs);
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
        let mut verdict = Admission::Own;
        let counted = self.logs.update(
            labels,
            now_secs,
            true,
            || {
                verdict = self.log_limits.admit(labels[0]);
                (verdict == Admission::Own).then_some(0)
            },
            |c| *c += 1,
        );
        if !counted {
            self.log_limits.overflow.fetch_add(1, Ordering::Relaxed);
            let service = if verdict == Admission::ServiceOverflow {
                labels[0]
            } else {
                OVERFLOW
            };
            self.logs.update(
                &[service, OVERFLOW, OVERFLOW],
                now_secs,
                false,
                || Some(0),
                |c| *c += 1,
            );
        }
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
        let keep = |last_seen: u64| last_seen > cutoff;
        self.spans.retain(
            |e| keep(e.last_seen),
            |e| {
                if e.own {
                    self.span_limits.release(&e.labels[0]);
                }
            },
        );
        self.durations.retain(
            |e| keep(e.last_seen),
            |e| {
                if e.own {
                    self.duration_limits.release(&e.labels[0]);
                }
            },
        );
        self.logs.retain(
            |e| keep(e.last_seen),
            |e| {
                if e.own {
                    self.log_limits.release(&e.labels[0]);
                }
            },
        );
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
}

/// String equality that first checks for the very same bytes: labels borrowed from one
/// resource usually are, and this skips the memcmp call.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

/// How many distinct label sets of one resource are grouped before they are recorded.
const GROUPS: usize = 8;
/// How many spans are held before they are recorded.
const GROUPED_SPANS: usize = 256;

/// What one span adds to its series.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    group: u8,
    status: u8,
    bucket: u32,
    duration: u64,
    minute: u64,
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
    len: usize,
}

impl<'a, 'p> SpanGroups<'a, 'p> {
    fn new(dims: &'p [Dimension]) -> Self {
        Self {
            dims,
            keys: std::array::from_fn(|_| GroupKey {
                kind: SpanKind::Unspecified,
                region: Label::Borrowed(""),
                raw: [Value::Missing; MAX_DIMENSIONS],
                dims: std::array::from_fn(|_| Label::Borrowed("")),
            }),
            n_groups: 0,
            spans: [Pending::default(); GROUPED_SPANS],
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

/// SLO events of one resource, summed per (SLO, region, second) before they are
/// recorded, so that a resource costs one series update per such group, not per event.
/// A fixed array: the hot path does not allocate.
struct Tallies<'a> {
    open: [(usize, Label<'a>, u64, u64, u64); Tallies::CAPACITY],
    len: usize,
}

impl Default for Tallies<'_> {
    fn default() -> Self {
        Self {
            open: std::array::from_fn(|_| (0, Label::Borrowed(""), 0, 0, 0)),
            len: 0,
        }
    }
}

impl<'a> Tallies<'a> {
    /// At most this many groups are held before they are recorded.
    const CAPACITY: usize = 16;

    #[inline]
    fn add(
        &mut self,
        agg: &Aggregator,
        slo: usize,
        region: &Label<'a>,
        t: u64,
        bad: bool,
        now_secs: u64,
    ) {
        let bad = u64::from(bad);
        if let Some(open) = self.open[..self.len]
            .iter_mut()
            .find(|o| o.0 == slo && o.2 == t && same(o.1.as_str(), region.as_str()))
        {
            open.3 += 1;
            open.4 += bad;
            return;
        }
        if self.len == Self::CAPACITY {
            self.flush(agg, now_secs);
        }
        self.open[self.len] = (slo, region.clone(), t, 1, bad);
        self.len += 1;
    }

    fn flush(&mut self, agg: &Aggregator, now_secs: u64) {
        for (slo, region, t, total, bad) in &self.open[..self.len] {
            agg.slos
                .record(*slo, region.as_str(), *t, *total, *bad, now_secs);
        }
        self.len = 0;
    }
}

/// A float label value in its shortest form (`0.5`, `0.999`, `16.384`).
fn shortest(v: f64) -> String {
    let mut s = String::new();
    crate::export::text::write_f64(v, &mut s);
    s
}

impl Recorder for Aggregator {
    fn record_traces(&self, batch: &TraceBatch<'_>) {
        let plan = &*self.plan;
        let now = self.clock.now_nanos();
        let now_secs = now / NANOS_PER_SEC;
        let now_minute = now_secs / 60;
        let mut groups = SpanGroups::new(plan.dimensions());
        for run in &batch.resources {
            let resource = batch.resource_attrs(run);
            let service = plan.service(resource);
            let resource_region = plan.region_in(resource);
            let slos = plan.slos_of(service.as_str());
            // Spans with the same labels are recorded together, one lookup per group.
            let mut tallies = Tallies::default();
            for span in batch.events_of(run) {
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
                for slo in slos.iter().filter(|s| s.source == Source::Spans) {
                    if let Some(bad) = slo.classify_span(span, attrs, resource) {
                        let region = &groups.keys[usize::from(g)].region;
                        tallies.add(self, slo.index, region, at / NANOS_PER_SEC, bad, now_secs);
                    }
                }
                groups.push(Pending {
                    group: g,
                    status: match span.status {
                        1 => 1,
                        2 => 2,
                        _ => 0,
                    },
                    bucket: self.bounds_nanos.partition_point(|b| *b < duration) as u32,
                    duration,
                    minute: at / NANOS_PER_SEC / 60,
                });
            }
            self.flush(service.as_str(), &mut groups, now_minute, now_secs);
            tallies.flush(self, now_secs);
        }
    }

    fn record_logs(&self, batch: &LogBatch<'_>) {
        let plan = &*self.plan;
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
                for slo in slos.iter().filter(|s| s.source == Source::Logs) {
                    if let Some(bad) = slo.classify_log(record, attrs, resource) {
                        tallies.add(self, slo.index, &region, at / NANOS_PER_SEC, bad, now_secs);
                    }
                }
            }
            tallies.flush(self, now_secs);
        }
    }
}
