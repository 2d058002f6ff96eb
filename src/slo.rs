//! The SLO engine: per (SLO, region) window rings, and the precomputed SLI, burn-rate,
//! budget, exhaustion and alert values that `/metrics` serves.
//!
//! Recording adds an event to its (SLO, region) series: the cumulative counters and
//! one slot of each ring. Once a second, [`SloEngine::tick`] sums every window of every
//! series, adds the regions up into the roll-up, applies [`math`] and publishes a
//! [`Snapshot`]. A scrape renders the latest snapshot; it never touches the rings.

pub mod math;
pub mod ring;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aggregate::shards::{Sharded, default_shards};
use crate::aggregate::{Admission, Cardinality, OVERFLOW};
use crate::config::Config;
use crate::config::duration::format_duration;
use crate::config::slo::AlertSeverity;
use crate::export::text::{Encoder, MetricType};
use ring::{Layout, Ring};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One tier of an SLO, resolved to window positions.
#[derive(Debug, Clone)]
struct TierRule {
    severity: AlertSeverity,
    long: usize,
    short: usize,
    threshold: f64,
}

/// How the render reads an event count off a row, and a setting off an SLO.
type CountOf = fn(&Row) -> u64;
type SettingOf = fn(&SloRuntime) -> f64;

/// What the engine knows of one configured SLO.
#[derive(Debug, Clone)]
struct SloRuntime {
    name: Box<str>,
    service: Box<str>,
    budget: math::Budget,
    period_secs: f64,
    layout: Layout,
    window_labels: Vec<String>,
    hour: usize,
    period: usize,
    tiers: Vec<TierRule>,
}

/// The live state of one (SLO, region).
#[derive(Debug, Clone)]
pub struct SloSeries {
    slo: usize,
    events: u64,
    bad: u64,
    rings: Box<[Ring]>,
}

/// The computed values of one (SLO, region), or of an SLO's roll-up (`region: None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index of the SLO.
    pub slo: usize,
    /// The region; `None` for the roll-up across regions.
    pub region: Option<Box<str>>,
    /// Cumulative events (per region only).
    pub events: u64,
    /// Cumulative bad events (per region only).
    pub bad: u64,
    /// (total, bad) per window, in the SLO's window order.
    pub windows: Vec<(u64, u64)>,
    /// SLI per window; `None` while the window holds no event.
    pub sli: Vec<Option<f64>>,
    /// Burn rate per window.
    pub burn: Vec<f64>,
    /// Error budget remaining over the period.
    pub budget_remaining: f64,
    /// Seconds until the budget is spent at the 1h burn rate.
    pub exhaustion: Option<f64>,
    /// Whether a page tier and a ticket tier hold.
    pub alert: [bool; 2],
}

/// The values one tick computed, ordered by SLO, then roll-up, then region.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The rows.
    pub rows: Vec<Row>,
}

/// Per (SLO, region) rings and the snapshot of derived values.
#[derive(Debug)]
pub struct SloEngine {
    slos: Vec<SloRuntime>,
    series: Sharded<SloSeries>,
    limits: Cardinality,
    min_events: u64,
    snapshot: Mutex<Arc<Snapshot>>,
}

impl SloEngine {
    /// The engine for `config`'s SLOs.
    pub fn new(config: &Config) -> Self {
        let slos = config
            .slos
            .iter()
            .map(|slo| {
                let windows = slo.windows(&config.alerting);
                let position = |w: Duration| windows.iter().position(|x| *x == w).unwrap_or(0);
                SloRuntime {
                    name: slo.name.as_str().into(),
                    service: slo.service.as_str().into(),
                    budget: math::Budget::from_percent(slo.objective),
                    period_secs: slo.period.as_secs_f64(),
                    layout: Layout::new(&windows, config.timing.max_skew),
                    window_labels: windows.iter().map(|w| format_duration(*w)).collect(),
                    hour: position(Duration::from_secs(3_600)),
                    period: position(slo.period),
                    tiers: config
                        .alerting
                        .tiers()
                        .map(|(severity, tier)| TierRule {
                            severity,
                            long: position(tier.long),
                            short: position(tier.short),
                            threshold: tier.threshold(slo.period),
                        })
                        .collect(),
                }
            })
            .collect();
        let engine = Self {
            slos,
            series: Sharded::new(default_shards()),
            limits: Cardinality::new(
                config.limits.max_series,
                config.limits.max_series_per_service,
            ),
            min_events: config.alerting.min_events,
            snapshot: Mutex::new(Arc::new(Snapshot::default())),
        };
        engine.publish(0);
        engine
    }

    /// Bytes of ring slots per (SLO, region) for each SLO, in configuration order.
    pub fn ring_bytes(&self) -> Vec<(String, usize)> {
        self.slos
            .iter()
            .map(|s| (s.name.to_string(), s.layout.slot_bytes()))
            .collect()
    }

    /// Counts `total` events (`bad` of them bad) of SLO `slo` in `region` at Unix second
    /// `t` (already placed by the late-slack rule).
    pub fn record(&self, slo: usize, region: &str, t: u64, total: u64, bad: u64, now_secs: u64) {
        let rt = &self.slos[slo];
        let apply = |s: &mut SloSeries| {
            s.events += total;
            s.bad += bad;
            for ring in s.rings.iter_mut() {
                ring.add(t, total, bad);
            }
        };
        let fresh = || SloSeries {
            slo,
            events: 0,
            bad: 0,
            rings: rt.layout.rings(),
        };
        let mut verdict = Admission::Own;
        let counted = self.series.update(
            &[&rt.name, region],
            now_secs,
            true,
            || {
                verdict = self.limits.admit(&rt.service);
                (verdict == Admission::Own).then(fresh)
            },
            apply,
        );
        if !counted {
            self.limits.count_overflow(total);
            self.series.update(
                &[&rt.name, OVERFLOW],
                now_secs,
                false,
                || Some(fresh()),
                apply,
            );
        }
    }

    /// Advances every ring to now, recomputes every row, publishes the snapshot, and
    /// forgets (SLO, region) series that saw nothing for a whole period.
    pub fn tick(&self, now_nanos: u64) {
        let now = now_nanos / NANOS_PER_SEC;
        self.series.retain(
            |e| now.saturating_sub(e.last_seen) <= self.slos[e.value.slo].period_secs as u64,
            |e| {
                if e.own {
                    self.limits.release(&self.slos[e.value.slo].service);
                }
            },
        );
        self.publish(now);
    }

    fn publish(&self, now: u64) {
        let mut rows: Vec<Row> = Vec::new();
        self.series.for_each(|e| {
            let s = &mut e.value;
            let rt = &self.slos[s.slo];
            for ring in s.rings.iter_mut() {
                ring.advance(now);
            }
            let windows = rt
                .layout
                .windows
                .iter()
                .map(|w| s.rings[w.ring].sum(now, w.slots))
                .collect();
            rows.push(Row {
                slo: s.slo,
                region: Some(e.labels[1].clone()),
                events: s.events,
                bad: s.bad,
                windows,
                sli: Vec::new(),
                burn: Vec::new(),
                budget_remaining: 1.0,
                exhaustion: None,
                alert: [false, false],
            });
        });
        // The roll-up is the sum over regions: every region's rings share slot bounds.
        for (slo, rt) in self.slos.iter().enumerate() {
            let mut windows = vec![(0, 0); rt.layout.windows.len()];
            for row in rows.iter().filter(|r| r.slo == slo) {
                for (acc, w) in windows.iter_mut().zip(&row.windows) {
                    acc.0 += w.0;
                    acc.1 += w.1;
                }
            }
            rows.push(Row {
                slo,
                region: None,
                events: 0,
                bad: 0,
                windows,
                sli: Vec::new(),
                burn: Vec::new(),
                budget_remaining: 1.0,
                exhaustion: None,
                alert: [false, false],
            });
        }
        for row in &mut rows {
            self.derive(row);
        }
        rows.sort_by(|a, b| (a.slo, &a.region).cmp(&(b.slo, &b.region)));
        *self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Snapshot { rows });
    }

    fn derive(&self, row: &mut Row) {
        let rt = &self.slos[row.slo];
        row.sli = row.windows.iter().map(|(t, b)| math::sli(*t, *b)).collect();
        row.burn = row
            .windows
            .iter()
            .map(|(t, b)| math::burn_rate(*t, *b, rt.budget))
            .collect();
        let (total, bad) = row.windows[rt.period];
        row.budget_remaining = math::budget_remaining(total, bad, rt.budget);
        row.exhaustion =
            math::exhaustion_seconds(row.budget_remaining, row.burn[rt.hour], rt.period_secs);
        row.alert = [false, false];
        for tier in &rt.tiers {
            if math::tier_holds(
                row.burn[tier.long],
                row.burn[tier.short],
                tier.threshold,
                row.windows[tier.long].0,
                self.min_events,
            ) {
                row.alert[tier.severity as usize] = true;
            }
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The longest time the tick held one SLO shard lock since the last call.
    pub fn take_longest_hold(&self) -> std::time::Duration {
        self.series.take_longest_hold()
    }

    /// Writes the `sloxide_slo_*` families from the latest snapshot.
    pub fn render(&self, enc: &mut Encoder<'_>) {
        if self.slos.is_empty() {
            return;
        }
        let snap = self.snapshot();
        let emit = |enc: &mut Encoder<'_>,
                    name: &str,
                    rt: &SloRuntime,
                    region: Option<&str>,
                    extra: Option<(&str, &str)>,
                    value: f64| {
            let mut pairs = [
                ("slo", &*rt.name),
                ("service", &*rt.service),
                ("", ""),
                ("", ""),
            ];
            let mut n = 2;
            for pair in [region.map(|r| ("region", r)), extra].into_iter().flatten() {
                pairs[n] = pair;
                n += 1;
            }
            enc.sample_f64(name, &pairs[..n], value);
        };

        // Event counts: per region only (no roll-up row), so that sum() is right.
        let counts: [(&str, &str, CountOf); 2] = [
            (
                "sloxide_slo_events_total",
                "Events that the SLO's filter selected, per region.",
                |r| r.events,
            ),
            (
                "sloxide_slo_bad_events_total",
                "The bad events among sloxide_slo_events_total.",
                |r| r.bad,
            ),
        ];
        for (name, help, count) in counts {
            enc.family(name, MetricType::Counter, help);
            for row in snap.rows.iter().filter(|r| r.region.is_some()) {
                let rt = &self.slos[row.slo];
                emit(
                    enc,
                    name,
                    rt,
                    row.region.as_deref(),
                    None,
                    count(row) as f64,
                );
            }
        }
        // Configuration: one series per SLO.
        let settings: [(&str, &str, SettingOf); 2] = [
            (
                "sloxide_slo_objective_ratio",
                "The SLO's objective as a ratio, e.g. 0.999.",
                |rt| rt.budget.objective_ratio(),
            ),
            (
                "sloxide_slo_period_seconds",
                "The rolling period of the SLO's error budget.",
                |rt| rt.period_secs,
            ),
        ];
        for (name, help, setting) in settings {
            enc.family(name, MetricType::Gauge, help);
            for rt in &self.slos {
                emit(enc, name, rt, None, None, setting(rt));
            }
        }
        let name = "sloxide_slo_sli_ratio";
        enc.family(name, MetricType::Gauge, "Good / total events over the window; absent while the window holds no event. No region label: all regions together.");
        for row in &snap.rows {
            let rt = &self.slos[row.slo];
            for (w, sli) in rt.window_labels.iter().zip(&row.sli) {
                if let Some(v) = sli {
                    emit(
                        enc,
                        name,
                        rt,
                        row.region.as_deref(),
                        Some(("window", w)),
                        *v,
                    );
                }
            }
        }
        let name = "sloxide_slo_burn_rate";
        enc.family(
            name,
            MetricType::Gauge,
            "(bad / total) / (1 - objective) over the window; 0 while the window holds no event.",
        );
        for row in &snap.rows {
            let rt = &self.slos[row.slo];
            for (w, burn) in rt.window_labels.iter().zip(&row.burn) {
                emit(
                    enc,
                    name,
                    rt,
                    row.region.as_deref(),
                    Some(("window", w)),
                    *burn,
                );
            }
        }
        let name = "sloxide_slo_error_budget_remaining_ratio";
        enc.family(name, MetricType::Gauge, "1 - bad / ((1 - objective) * total) over the period; 1 with no events, negative once overspent.");
        for row in &snap.rows {
            let rt = &self.slos[row.slo];
            emit(
                enc,
                name,
                rt,
                row.region.as_deref(),
                None,
                row.budget_remaining,
            );
        }
        let name = "sloxide_slo_budget_exhaustion_seconds";
        enc.family(name, MetricType::Gauge, "Seconds until the remaining budget is spent if the 1h burn rate holds; absent while it is 0; 0 once spent.");
        for row in &snap.rows {
            if let Some(v) = row.exhaustion {
                let rt = &self.slos[row.slo];
                emit(enc, name, rt, row.region.as_deref(), None, v);
            }
        }
        let name = "sloxide_slo_alert";
        enc.family(
            name,
            MetricType::Gauge,
            "1 while a multiwindow burn-rate tier of that severity holds, else 0.",
        );
        for row in &snap.rows {
            let rt = &self.slos[row.slo];
            for (i, severity) in [AlertSeverity::Page, AlertSeverity::Ticket]
                .iter()
                .enumerate()
            {
                let extra = Some(("severity", severity.as_str()));
                emit(
                    enc,
                    name,
                    rt,
                    row.region.as_deref(),
                    extra,
                    f64::from(u8::from(row.alert[i])),
                );
            }
        }
    }
}
