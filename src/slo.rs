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

use crate::config::Config;
use crate::config::duration::format_duration;
use crate::config::slo::AlertSeverity;
use crate::store::{Family, Fold};
use ring::{Layout, Ring, RingCopy};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One tier of an SLO, resolved to window positions.
#[derive(Debug, Clone)]
struct TierRule {
    severity: AlertSeverity,
    long: usize,
    short: usize,
    threshold: f64,
}

/// What the engine knows of one configured SLO.
#[derive(Debug, Clone)]
pub struct SloRuntime {
    /// The SLO's name (its `slo` label).
    pub name: Box<str>,
    /// The service it belongs to (its `service` label).
    pub service: Arc<str>,
    /// The objective, as an exact fraction.
    pub budget: math::Budget,
    /// The rolling period, in seconds.
    pub period_secs: f64,
    layout: Layout,
    /// The `window` label of each window, in window order.
    pub window_labels: Vec<String>,
    hour: usize,
    period: usize,
    tiers: Vec<TierRule>,
}

/// The live state of one (SLO, region).
#[derive(Debug, Clone)]
pub struct SloSeries {
    slo: usize,
    /// The SLO's service, under which the series was admitted.
    service: Arc<str>,
    events: u64,
    bad: u64,
    rings: Box<[Ring]>,
}

/// A copy of one (SLO, region) series, taken under its shard lock for a checkpoint.
#[derive(Debug, Clone)]
pub struct SeriesCopy {
    /// Its rings, in [`ShardCopy::rings`].
    rings: std::ops::Range<usize>,
    /// Index of the SLO.
    pub slo: usize,
    /// The SLO's name and the region.
    pub labels: crate::store::Labels,
    /// Unix seconds of the last event.
    pub last_seen: u64,
    /// False for an overflow series.
    pub own: bool,
    /// Cumulative events.
    pub events: u64,
    /// Cumulative bad events.
    pub bad: u64,
}

/// One shard's series, copied under its lock into buffers reused from shard to shard.
#[derive(Debug, Default)]
pub struct ShardCopy {
    /// The series.
    pub series: Vec<SeriesCopy>,
    rings: Vec<RingCopy>,
    slots: Vec<[u64; 2]>,
}

impl ShardCopy {
    /// The rings of `series` (one of [`ShardCopy::series`]): each slot size with its
    /// occupied slots.
    pub fn rings_of<'a>(
        &'a self,
        series: &SeriesCopy,
    ) -> impl Iterator<Item = (u64, impl Iterator<Item = (u64, u64, u64)> + 'a)> + 'a {
        self.rings[series.rings.clone()]
            .iter()
            .map(|r| (r.slot_secs, r.occupied(&self.slots)))
    }

    fn clear(&mut self) {
        self.series.clear();
        self.rings.clear();
        self.slots.clear();
    }
}

/// Saved ring slots to put back into a series: (slot size in seconds, the occupied
/// slots as [`Ring::occupied`] gives them).
pub type SavedRing = (u64, Vec<(u64, u64, u64)>);

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
    /// Whether a tier of each severity holds, indexed by [`AlertSeverity`].
    pub alert: [bool; 2],
}

/// The values one tick computed, ordered by SLO, then roll-up, then region.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The rows.
    pub rows: Vec<Row>,
    /// Unix seconds of the tick that computed them (0 before the first).
    pub at: u64,
    /// Per SLO, in configuration order: the period window's slots, summed over the
    /// regions, for the status page's burn-down.
    pub burndown: Vec<Burndown>,
}

/// The bad events in each slot of an SLO's period window, summed over its regions:
/// the history the status page draws the budget burn-down from (with the roll-up's
/// period total). The period's ring has slots of `max(10 s, period / 60)`, so this is
/// at most 61 slots; they add up to the roll-up's bad events over the period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Burndown {
    /// Unix seconds at which the oldest slot starts.
    pub start: u64,
    /// Seconds per slot.
    pub step: u64,
    /// Bad events per slot, oldest first; the last is the slot holding the tick.
    pub bad: Vec<u64>,
}

/// Per (SLO, region) rings and the snapshot of derived values.
#[derive(Debug)]
pub struct SloEngine {
    slos: Vec<SloRuntime>,
    /// Keyed by (SLO name, region); admitted under the SLO's service.
    series: Family<SloSeries>,
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
            // A series holds about 7.5 KiB of ring slots, 20 times a span series'
            // numbers: four times the shards keeps a checkpoint's copy of one shard
            // (about 150 series per 10 000) well under a millisecond.
            series: Family::with_shards(
                config.limits.max_series,
                config.limits.max_series_per_service,
                Fold::First,
                crate::store::default_shards() * 4,
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
        let fresh = || self.fresh(slo);
        self.series.record(
            &[&rt.name, region],
            &rt.service,
            now_secs,
            total,
            fresh,
            apply,
        );
    }

    fn fresh(&self, slo: usize) -> SloSeries {
        let rt = &self.slos[slo];
        SloSeries {
            slo,
            service: rt.service.clone(),
            events: 0,
            bad: 0,
            rings: rt.layout.rings(),
        }
    }

    /// Copies every series out, one shard lock at a time; `each` gets a shard's copies
    /// after its lock is released.
    pub fn copy_series(&self, mut each: impl FnMut(&ShardCopy)) {
        // Room for a shard of average size, twice over, so that copying under a lock
        // rarely grows the buffers (growing copies what they hold).
        let per_shard = self.series.len() / self.series.shards() + 1;
        let slots = self
            .slos
            .iter()
            .map(|s| s.layout.slot_bytes() / 16)
            .max()
            .unwrap_or(0);
        let mut copy = ShardCopy {
            series: Vec::with_capacity(per_shard * 2),
            rings: Vec::with_capacity(per_shard * 2 * 8),
            slots: Vec::with_capacity(per_shard * 2 * slots),
        };
        // Both closures fill or drain the one buffer, never at the same time.
        let copy = std::cell::RefCell::new(&mut copy);
        self.series.for_each_shard(
            |e| {
                let mut c = copy.borrow_mut();
                let ShardCopy {
                    series,
                    rings,
                    slots,
                } = &mut **c;
                let first = rings.len();
                rings.extend(e.value.rings.iter().map(|r| r.copy_into(slots)));
                series.push(SeriesCopy {
                    rings: first..rings.len(),
                    slo: e.value.slo,
                    labels: e.labels.clone(),
                    last_seen: e.last_seen,
                    own: e.is_own(),
                    events: e.value.events,
                    bad: e.value.bad,
                });
            },
            || {
                let mut c = copy.borrow_mut();
                each(&c);
                c.clear();
            },
        );
    }

    /// Adds a saved (SLO, region) series into SLO `slo`'s series of `region`, under
    /// today's limits. Each of today's rings is filled from the saved ring of the same
    /// slot size; when there is none (the period or the tiers changed), from the finest
    /// saved ring whose history covers today's ring, else from the one with the longest
    /// history, each saved slot placed at the time it starts. Slots older than a ring
    /// are dropped by time.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_series(
        &self,
        slo: usize,
        region: &str,
        last_seen: u64,
        own: bool,
        events: u64,
        bad: u64,
        saved: &[SavedRing],
    ) {
        let rt = &self.slos[slo];
        // The seconds of history a saved ring holds, from its oldest to its newest slot.
        let history = |(secs, slots): &SavedRing| match (slots.first(), slots.last()) {
            (Some(first), Some(last)) => (last.0.saturating_sub(first.0) + 1).saturating_mul(*secs),
            _ => 0,
        };
        let merge = |s: &mut SloSeries| {
            s.events = s.events.saturating_add(events);
            s.bad = s.bad.saturating_add(bad);
            for ring in s.rings.iter_mut() {
                let target = ring.slot_secs();
                let source = saved
                    .iter()
                    .find(|(secs, _)| *secs == target)
                    .or_else(|| {
                        saved
                            .iter()
                            .filter(|r| r.0 > 0 && history(r) >= ring.span_secs())
                            .min_by_key(|r| r.0)
                    })
                    .or_else(|| saved.iter().filter(|r| r.0 > 0).max_by_key(|r| history(r)));
                if let Some((secs, slots)) = source {
                    ring.merge(*secs, slots.iter().copied());
                }
            }
        };
        self.series.restore(
            &[&rt.name, region],
            &rt.service,
            last_seen,
            own,
            || self.fresh(slo),
            merge,
        );
    }

    /// Advances every ring to now, recomputes every row, publishes the snapshot, and
    /// forgets (SLO, region) series that saw nothing for a whole period.
    pub fn tick(&self, now_nanos: u64) {
        let now = now_nanos / NANOS_PER_SEC;
        self.series.expire(
            |e| now.saturating_sub(e.last_seen) <= self.slos[e.value.slo].period_secs as u64,
            |e| &e.value.service,
        );
        self.publish(now);
    }

    fn publish(&self, now: u64) {
        let mut rows: Vec<Row> = Vec::new();
        // The bad events in each slot of every SLO's period window, summed over its
        // regions while each region's windows are summed (the same slots, read once).
        let mut burndown: Vec<Burndown> = self
            .slos
            .iter()
            .map(|rt| {
                let w = &rt.layout.windows[rt.period];
                let step = rt.layout.slot_secs(w.ring);
                let first = (now / step + 1).saturating_sub(w.slots);
                Burndown {
                    start: first * step,
                    step,
                    bad: vec![0; (now / step + 1 - first) as usize],
                }
            })
            .collect();
        self.series.for_each(|e| {
            let s = &mut e.value;
            let rt = &self.slos[s.slo];
            for ring in s.rings.iter_mut() {
                ring.advance(now);
            }
            let history = &mut burndown[s.slo].bad;
            let windows = rt
                .layout
                .windows
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let ring = &s.rings[w.ring];
                    if i == rt.period {
                        ring.sum_into(now, w.slots, history)
                    } else {
                        ring.sum(now, w.slots)
                    }
                })
                .collect();
            rows.push(Row {
                slo: s.slo,
                region: Some(e.labels[1].into()),
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
            let mut windows = vec![(0u64, 0u64); rt.layout.windows.len()];
            for row in rows.iter().filter(|r| r.slo == slo) {
                for (acc, w) in windows.iter_mut().zip(&row.windows) {
                    acc.0 = acc.0.saturating_add(w.0);
                    acc.1 = acc.1.saturating_add(w.1);
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
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Snapshot {
            rows,
            at: now,
            burndown,
        });
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

    /// Records that found their (SLO, region) series' shard locked by another thread
    /// and waited for it.
    pub fn contended(&self) -> u64 {
        self.series.contended()
    }

    /// The configured SLOs, in configuration order (a row's `slo` indexes this).
    pub fn definitions(&self) -> &[SloRuntime] {
        &self.slos
    }

    /// How many (SLO, region) series, overflow series included.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when no (SLO, region) series exists.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Records folded into an (SLO, overflow) series so far.
    pub fn overflowed(&self) -> u64 {
        self.series.overflowed()
    }

    /// Adds overflowed records saved by a checkpoint.
    pub fn add_overflowed(&self, n: u64) {
        self.series.add_overflowed(n);
    }
}
