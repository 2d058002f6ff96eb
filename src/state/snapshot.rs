//! Copying the families into a [`Checkpoint`], and adding a checkpoint's series back.
//!
//! A periodic checkpoint holds the SLO family only: after a crash the cumulative
//! counters restart from zero (restoring an older value would read as a counter reset
//! to Prometheus, and a spike of the whole value), so the span and log families of a
//! periodic checkpoint would never be used. The checkpoint written after the drain at
//! shutdown, and the in-memory one a reload carries across, hold everything.

use std::collections::HashMap;

use crate::aggregate::Aggregator;
use crate::aggregate::series::{QuantileSeries, SpanSeries};
use crate::config::Config;
use crate::config::slo::{Indicator, Slo};
use crate::families;
use crate::slo::SavedRing;
use crate::telemetry::{REFUSALS, Signal, Telemetry, Transport};

use super::FORMAT_VERSION;
use super::proto::{
    Checkpoint, FamilyCount, Header, LogSeries, MinuteHistogram, QuantileSeries as SavedQuantiles,
    ReceiverCounter, Ring as SavedRingProto, SloFingerprint, SloSeries as SavedSlo, Slot,
    SpanSeries as SavedSpans,
};

/// What a checkpoint holds besides the SLO family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The SLO family only (a periodic checkpoint).
    Windows,
    /// Every family and the receiver counters (shutdown, reload).
    Everything,
}

/// What became of one configured SLO's saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloDecision {
    /// Same identity: its counts were restored.
    Kept,
    /// Its filter or indicator (or service or source) changed: it starts empty,
    /// because its saved events were judged by another rule.
    Reset,
    /// Not in the checkpoint: it starts empty.
    New,
    /// In the checkpoint but no longer configured: its state is dropped.
    Removed,
}

impl SloDecision {
    /// Every decision, in label order.
    pub const ALL: [Self; 4] = [Self::Kept, Self::Reset, Self::New, Self::Removed];

    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kept => "kept",
            Self::Reset => "reset",
            Self::New => "new",
            Self::Removed => "removed",
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// True when the cumulative counters were restored (a clean shutdown or a reload).
    pub counters: bool,
    /// Why the span families were not restored, when counters were and they were not.
    pub spans_skipped: Option<String>,
    /// Each SLO's decision, configured SLOs first (configuration order), then removed.
    pub slos: Vec<(String, SloDecision)>,
    /// Series put back, per family: spans, quantiles, logs, SLO.
    pub series: [usize; 4],
}

/// The largest count a restore takes from a file.
const MAX_RESTORED: u64 = 1 << 62;

/// A stable fingerprint of what an SLO's counts depend on: name, service, source,
/// filter and indicator (FNV-1a 64 over their canonical text). Objective, period and
/// alerting are left out: changing them keeps the counts.
pub fn fingerprint(slo: &Slo) -> u64 {
    let f = &slo.filter;
    let mut text = format!(
        "name={}\nservice={}\nsource={}\nkinds={}\nnames={}\n",
        slo.name,
        slo.service,
        slo.source,
        f.span_kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(","),
        f.span_names.join("\u{1f}"),
    );
    let attributes = |text: &mut String, name: &str, m: &[(String, Vec<String>)]| {
        for (key, values) in m {
            text.push_str(&format!("{name}:{key}={}\n", values.join("\u{1f}")));
        }
    };
    attributes(&mut text, "filter", &f.attributes);
    match &slo.indicator {
        Indicator::Latency {
            threshold,
            attribute,
            unit,
        } => text.push_str(&format!(
            "latency threshold_nanos={} attribute={} unit={}\n",
            threshold.as_nanos(),
            attribute.as_deref().unwrap_or("-"),
            unit
        )),
        Indicator::Availability => text.push_str("availability\n"),
        Indicator::Events { bad } => {
            text.push_str(&format!(
                "events severity_at_least={}\n",
                bad.severity_at_least.map_or("-", |s| s.as_str())
            ));
            attributes(&mut text, "bad", &bad.attributes);
        }
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A saved series' labels as `&str`s, when there are `len` of them.
fn labels_of(saved: &[String], len: usize) -> Option<Vec<&str>> {
    (saved.len() == len).then(|| saved.iter().map(String::as_str).collect())
}

fn split(sum: u128) -> (u64, u64) {
    (sum as u64, (sum >> 64) as u64)
}

fn join(low: u64, high: u64) -> u128 {
    u128::from(low) | (u128::from(high) << 64)
}

/// The accepted and rejected record families of a signal.
fn record_families(signal: Signal) -> (&'static families::Metric, &'static families::Metric) {
    match signal {
        Signal::Traces => (
            &families::RECEIVER_ACCEPTED_SPANS,
            &families::RECEIVER_REFUSED_SPANS,
        ),
        Signal::Logs => (
            &families::RECEIVER_ACCEPTED_LOG_RECORDS,
            &families::RECEIVER_REFUSED_LOG_RECORDS,
        ),
    }
}

/// The receiver counters as (family, `name=value` labels, value).
fn receiver_counters(telemetry: &Telemetry) -> Vec<ReceiverCounter> {
    let mut out = Vec::new();
    let label = |k: &str, v: &str| format!("{k}={v}");
    for signal in Signal::ALL {
        let (accepted, rejected) = record_families(signal);
        let reason = signal.reject_reason();
        for t in Transport::ALL {
            out.push(ReceiverCounter {
                family: accepted.name.into(),
                labels: vec![label("transport", t.as_str())],
                value: telemetry.accepted(t, signal),
            });
            out.push(ReceiverCounter {
                family: rejected.name.into(),
                labels: vec![
                    label("transport", t.as_str()),
                    label("reason", reason.as_str()),
                ],
                value: telemetry.rejected(t, signal, reason),
            });
        }
    }
    for t in Transport::ALL {
        for s in Signal::ALL {
            for r in &REFUSALS {
                out.push(ReceiverCounter {
                    family: families::RECEIVER_REFUSED_REQUESTS.name.into(),
                    labels: vec![
                        label("transport", t.as_str()),
                        label("signal", s.as_str()),
                        label("reason", r.label),
                    ],
                    value: telemetry.refused_requests(t, s, r.reason),
                });
            }
        }
    }
    out
}

/// Adds saved receiver counters back, matched by family and labels; a counter this
/// build does not know is skipped.
fn restore_receiver_counters(telemetry: &Telemetry, saved: &[ReceiverCounter]) {
    for c in saved {
        let label = |key: &str| {
            c.labels
                .iter()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        };
        let Some(t) = Transport::ALL
            .into_iter()
            .find(|t| label("transport") == Some(t.as_str()))
        else {
            continue;
        };
        for signal in Signal::ALL {
            let (accepted, rejected) = record_families(signal);
            if c.family == accepted.name {
                telemetry.records_accepted(t, signal, c.value);
            } else if c.family == rejected.name {
                telemetry.add_rejected(t, signal, signal.reject_reason(), c.value);
            }
        }
        if c.family == families::RECEIVER_REFUSED_REQUESTS.name {
            let signal = Signal::ALL
                .into_iter()
                .find(|s| label("signal") == Some(s.as_str()));
            let reason = REFUSALS.iter().find(|r| label("reason") == Some(r.label));
            if let (Some(signal), Some(r)) = (signal, reason) {
                telemetry.add_refused_requests(t, signal, r.reason, c.value);
            }
        }
    }
}

/// The checkpoint of `agg` (built from `config`) and `telemetry` now: the SLO family
/// always, everything else when `scope` says so. Each shard's numbers are copied under
/// its lock, the messages are built after it is released.
pub fn snapshot(
    agg: &Aggregator,
    telemetry: &Telemetry,
    config: &Config,
    scope: Scope,
    clean_shutdown: bool,
    written_unix_nanos: u64,
) -> Checkpoint {
    let header = Header {
        format_version: FORMAT_VERSION,
        sloxide_version: env!("CARGO_PKG_VERSION").into(),
        written_unix_nanos,
        clean_shutdown,
        slos: config
            .slos
            .iter()
            .map(|s| SloFingerprint {
                name: s.name.clone(),
                identity: fingerprint(s),
            })
            .collect(),
        bucket_bounds: config.histogram.buckets.clone(),
        dimensions: config.dimensions.clone(),
    };
    let mut checkpoint = Checkpoint {
        header: Some(header),
        ..Checkpoint::default()
    };
    let definitions = agg.slos().definitions();
    agg.slos().copy_series(|shard| {
        for s in &shard.series {
            checkpoint.slos.push(SavedSlo {
                slo: definitions[s.slo].name.to_string(),
                region: s.labels[1].to_string(),
                last_seen: s.last_seen,
                own: s.own,
                events: s.events,
                bad: s.bad,
                rings: shard
                    .rings_of(s)
                    .map(|(slot_secs, slots)| SavedRingProto {
                        slot_secs,
                        slots: slots
                            .map(|(index, total, bad)| Slot { index, total, bad })
                            .collect(),
                    })
                    .collect(),
            });
        }
    });
    if scope == Scope::Windows {
        return checkpoint;
    }
    agg.spans().for_each(|e| {
        let (low, high) = split(e.value.sum_nanos);
        checkpoint.spans.push(SavedSpans {
            labels: e.labels.to_strings(),
            last_seen: e.last_seen,
            own: e.is_own(),
            by_status: e.value.by_status.to_vec(),
            buckets: e.value.buckets.to_vec(),
            sum_nanos_low: low,
            sum_nanos_high: high,
        });
    });
    agg.durations().for_each(|e| {
        let (low, high) = split(e.value.sum_nanos);
        checkpoint.quantiles.push(SavedQuantiles {
            labels: e.labels.to_strings(),
            last_seen: e.last_seen,
            own: e.is_own(),
            sum_nanos_low: low,
            sum_nanos_high: high,
            count: e.value.count,
            minutes: e
                .value
                .saved_minutes()
                .map(|(minute, count, values)| MinuteHistogram {
                    minute,
                    count,
                    values: values.iter().map(|v| v.0).collect(),
                    counts: values.iter().map(|v| v.1).collect(),
                })
                .collect(),
        });
    });
    agg.logs().for_each(|e| {
        checkpoint.logs.push(LogSeries {
            labels: e.labels.to_strings(),
            last_seen: e.last_seen,
            own: e.is_own(),
            count: e.value,
        });
    });
    checkpoint.clamped = agg.clamped();
    checkpoint.overflowed = overflow_counts(agg)
        .into_iter()
        .map(|(family, count)| FamilyCount {
            family: family.into(),
            count,
        })
        .collect();
    checkpoint.receiver = receiver_counters(telemetry);
    checkpoint
}

/// Each family's overflowed records, under its `sloxide_series_overflow_total` label
/// (`sloxide_span_duration_seconds` shares the span family's).
fn overflow_counts(agg: &Aggregator) -> [(&'static str, u64); 4] {
    [
        (families::SPANS.name, agg.spans().overflowed()),
        (
            families::SPAN_DURATION_QUANTILES.name,
            agg.durations().overflowed(),
        ),
        (families::LOG_RECORDS.name, agg.logs().overflowed()),
        (families::SLO_EVENTS.name, agg.slos().overflowed()),
    ]
}

/// Adds `checkpoint`'s series into `agg` (built from `config`) and `telemetry`, at
/// Unix second `now`.
///
/// The SLO windows of an SLO whose identity is unchanged always come back. The
/// cumulative counters (span, quantile and log families, the SLO event counters, the
/// overflow and receiver counters) come back only with `counters`: after a clean
/// shutdown or across a reload, never after a crash. The span families also need the
/// same histogram bounds and dimensions as before; otherwise they start empty.
/// Nothing is restored into the future: slots later than `now + timing.max_skew` and
/// minutes after the current one are dropped, and last-seen times are capped at `now`
/// (a checkpoint written under a clock that ran ahead must not freeze the windows).
pub fn restore(
    agg: &Aggregator,
    telemetry: &Telemetry,
    config: &Config,
    checkpoint: &Checkpoint,
    counters: bool,
    now: u64,
) -> RestoreReport {
    let latest = now.saturating_add(config.timing.max_skew.as_secs());
    let seen = |t: u64| t.min(now);
    // No real counter comes near 2^62; a larger saved one is damage, and capping it
    // leaves room for the counting that follows.
    let count = |n: u64| n.min(MAX_RESTORED);
    let mut report = RestoreReport {
        counters,
        ..RestoreReport::default()
    };
    let header = checkpoint.header.clone().unwrap_or_default();
    let saved: HashMap<&str, u64> = header
        .slos
        .iter()
        .map(|f| (f.name.as_str(), f.identity))
        .collect();
    let mut kept: HashMap<&str, usize> = HashMap::new();
    for (i, slo) in config.slos.iter().enumerate() {
        let decision = match saved.get(slo.name.as_str()) {
            None => SloDecision::New,
            Some(&identity) if identity == fingerprint(slo) => {
                kept.insert(slo.name.as_str(), i);
                SloDecision::Kept
            }
            Some(_) => SloDecision::Reset,
        };
        report.slos.push((slo.name.clone(), decision));
    }
    for f in &header.slos {
        if !config.slos.iter().any(|s| s.name == f.name) {
            report.slos.push((f.name.clone(), SloDecision::Removed));
        }
    }
    for s in &checkpoint.slos {
        let Some(&slo) = kept.get(s.slo.as_str()) else {
            continue;
        };
        let rings: Vec<SavedRing> = s
            .rings
            .iter()
            .filter(|r| r.slot_secs > 0)
            .map(|r| {
                let slots = r
                    .slots
                    .iter()
                    .filter(|x| {
                        x.index
                            .checked_mul(r.slot_secs)
                            .is_some_and(|t| t <= latest)
                    })
                    .map(|x| (x.index, count(x.total), count(x.bad)))
                    .collect();
                (r.slot_secs, slots)
            })
            .collect();
        let (events, bad) = if counters {
            (count(s.events), count(s.bad))
        } else {
            (0, 0)
        };
        agg.slos().restore_series(
            slo,
            &s.region,
            seen(s.last_seen),
            s.own,
            events,
            bad,
            &rings,
        );
        report.series[3] += 1;
    }
    if !counters {
        return report;
    }
    restore_receiver_counters(telemetry, &checkpoint.receiver);
    agg.add_clamped(checkpoint.clamped);
    for saved in &checkpoint.overflowed {
        match saved.family.as_str() {
            f if f == families::SPANS.name => agg.spans().add_overflowed(saved.count),
            f if f == families::SPAN_DURATION_QUANTILES.name => {
                agg.durations().add_overflowed(saved.count)
            }
            f if f == families::LOG_RECORDS.name => agg.logs().add_overflowed(saved.count),
            f if f == families::SLO_EVENTS.name => agg.slos().add_overflowed(saved.count),
            _ => {}
        }
    }
    let dims = config.dimensions.len();
    report.spans_skipped = if header.bucket_bounds != config.histogram.buckets {
        Some("histogram.buckets changed".into())
    } else if header.dimensions != config.dimensions {
        Some("dimensions changed".into())
    } else {
        None
    };
    if report.spans_skipped.is_none() {
        let n = config.histogram.buckets.len();
        for s in &checkpoint.spans {
            let Some(labels) = labels_of(&s.labels, 3 + dims) else {
                continue;
            };
            if s.by_status.len() != 3 || s.buckets.len() != n + 1 {
                continue;
            }
            agg.spans().restore(
                &labels,
                labels[0],
                seen(s.last_seen),
                s.own,
                || SpanSeries::new(n),
                |series| {
                    for (a, b) in series.by_status.iter_mut().zip(&s.by_status) {
                        *a = a.saturating_add(count(*b));
                    }
                    for (a, b) in series.buckets.iter_mut().zip(&s.buckets) {
                        *a = a.saturating_add(count(*b));
                    }
                    let sum = join(s.sum_nanos_low, s.sum_nanos_high);
                    series.sum_nanos = series.sum_nanos.saturating_add(sum);
                },
            );
            report.series[0] += 1;
        }
    }
    for q in &checkpoint.quantiles {
        let Some(labels) = labels_of(&q.labels, 3) else {
            continue;
        };
        agg.durations().restore(
            &labels,
            labels[0],
            seen(q.last_seen),
            q.own,
            QuantileSeries::default,
            |series| {
                let sum = join(q.sum_nanos_low, q.sum_nanos_high);
                series.sum_nanos = series.sum_nanos.saturating_add(sum);
                series.count = series.count.saturating_add(count(q.count));
                for m in q.minutes.iter().filter(|m| m.minute <= now / 60) {
                    let values: Vec<(u64, u64)> = m
                        .values
                        .iter()
                        .copied()
                        .zip(m.counts.iter().copied())
                        .collect();
                    series.restore_minute(m.minute, m.count, &values);
                }
            },
        );
        report.series[1] += 1;
    }
    for l in &checkpoint.logs {
        let Some(labels) = labels_of(&l.labels, 3) else {
            continue;
        };
        agg.logs().restore(
            &labels,
            labels[0],
            seen(l.last_seen),
            l.own,
            || 0,
            |c| *c = c.saturating_add(count(l.count)),
        );
        report.series[2] += 1;
    }
    report
}

/// A Unix time in seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// What `sloxide state inspect` prints for one checkpoint file.
pub fn describe(checkpoint: &Checkpoint, path: &std::path::Path, size: u64) -> String {
    use std::fmt::Write as _;
    let header = checkpoint.header.clone().unwrap_or_default();
    let secs = header.written_unix_nanos / 1_000_000_000;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({size} bytes)", path.display());
    let _ = writeln!(
        out,
        "  format {}, written by sloxide {} at {} (unix {secs})",
        header.format_version,
        header.sloxide_version,
        utc(secs)
    );
    let _ = writeln!(
        out,
        "  clean shutdown: {}",
        if header.clean_shutdown {
            "yes (counters and windows are restored)"
        } else {
            "no (a periodic checkpoint: after a crash only the SLO windows are restored)"
        }
    );
    let _ = writeln!(
        out,
        "  series: spans {}, quantiles {}, logs {}, slo {}",
        checkpoint.spans.len(),
        checkpoint.quantiles.len(),
        checkpoint.logs.len(),
        checkpoint.slos.len()
    );
    let _ = writeln!(out, "  slos: {}", header.slos.len());
    for f in &header.slos {
        let _ = writeln!(out, "    {} (identity {:016x})", f.name, f.identity);
        let mut regions: Vec<&SavedSlo> =
            checkpoint.slos.iter().filter(|s| s.slo == f.name).collect();
        regions.sort_by(|a, b| a.region.cmp(&b.region));
        for s in regions {
            let (window_total, window_bad) =
                s.rings
                    .iter()
                    .max_by_key(|r| r.slot_secs)
                    .map_or((0, 0), |r| {
                        r.slots.iter().fold((0u64, 0u64), |(t, b), x| {
                            (t.saturating_add(x.total), b.saturating_add(x.bad))
                        })
                    });
            let _ = writeln!(
                out,
                "      {}: {} events, {} bad (cumulative); {} events, {} bad in the longest ring",
                s.region, s.events, s.bad, window_total, window_bad
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_764_115_200 + 3_723), "2025-11-26T01:02:03Z");
    }
}
