//! The numbers each series keeps. Plain data: counts, sums, minute indexes and
//! histogram counts, so that checkpointing can serialise them.

use super::hdr::{self, Counts};
use crate::otlp::StatusCode;

/// Lowest value the quantile histograms hold: 1 µs.
pub const HDR_LOW_MICROS: u64 = hdr::LOW;
/// Highest value the quantile histograms hold: 1 h.
pub const HDR_HIGH_MICROS: u64 = hdr::HIGH;

/// Counters and classic buckets of one `(service, region, span_kind, dimensions)` set.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanSeries {
    /// Spans by status code, indexed by [`StatusCode`]: unset, ok, error.
    pub by_status: [u64; 3],
    /// Spans per bucket, not cumulative; the last slot is above the highest bound.
    pub buckets: Buckets,
    /// Sum of durations, nanoseconds.
    pub sum_nanos: u128,
    /// A recent span with valid ids per bucket, sampled once a second.
    pub exemplars: Exemplars,
}

/// How many bucket counters a span series holds inside itself: the default 14 bounds
/// and +Inf fit. More go to the heap.
const INLINE_BUCKETS: usize = 16;

/// The bucket counters of a span series, inside the series up to [`INLINE_BUCKETS`], so
/// that counting a span needs no pointer read after the series is found: with the
/// counters behind a pointer, its load and then the counter's line were two misses one
/// after the other, on every span.
#[derive(Debug, Clone)]
pub enum Buckets {
    /// `len` counters in place.
    Inline {
        /// How many of `counts` are buckets.
        len: u8,
        /// The counters, zero past `len`.
        counts: [u64; INLINE_BUCKETS],
    },
    /// More than [`INLINE_BUCKETS`] counters.
    Heap(Box<[u64]>),
}

impl Buckets {
    /// `len` zeroed counters.
    pub fn new(len: usize) -> Self {
        match u8::try_from(len) {
            Ok(small) if len <= INLINE_BUCKETS => Self::Inline {
                len: small,
                counts: [0; INLINE_BUCKETS],
            },
            _ => Self::Heap(vec![0; len].into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for Buckets {
    type Target = [u64];

    #[inline(always)]
    fn deref(&self) -> &[u64] {
        match self {
            Self::Inline { len, counts } => &counts[..usize::from(*len)],
            Self::Heap(counts) => counts,
        }
    }
}

impl std::ops::DerefMut for Buckets {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u64] {
        match self {
            Self::Inline { len, counts } => &mut counts[..usize::from(*len)],
            Self::Heap(counts) => counts,
        }
    }
}

impl PartialEq for Buckets {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A span that fell in a bucket: the ids that lead to its trace, its duration and when
/// it ended. A zero `end_nanos` is an empty slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exemplar {
    /// The span's trace id.
    pub trace_id: [u8; 16],
    /// The span's id.
    pub span_id: [u8; 8],
    /// Its duration.
    pub duration_nanos: u64,
    /// When it ended, Unix nanoseconds.
    pub end_nanos: u64,
}

/// One [`Exemplar`] slot per bucket, fixed when the series is made, and the second in
/// which they last took spans. They are samples, not counts: checkpoints leave them
/// out, and two series whose counts are equal are equal whatever their exemplars.
#[derive(Debug, Clone)]
pub struct Exemplars {
    /// One per bucket.
    pub slots: Box<[Exemplar]>,
    second: u64,
}

impl Exemplars {
    /// Empty slots for `buckets` buckets.
    pub fn new(buckets: usize) -> Self {
        Self {
            slots: vec![Exemplar::default(); buckets].into_boxed_slice(),
            second: 0,
        }
    }

    /// True the first time it is asked in each second of `now_secs` (of the recording
    /// clock): the spans being recorded then may become exemplars. So a series pays one
    /// comparison per group of spans, and touches its slots once a second.
    #[inline]
    pub fn due(&mut self, now_secs: u64) -> bool {
        if self.second == now_secs {
            return false;
        }
        self.second = now_secs;
        true
    }

    /// Makes a span of `bucket` its exemplar, when its ids are valid: neither all zero,
    /// as OTLP has it.
    #[inline]
    pub fn keep(
        &mut self,
        bucket: usize,
        trace_id: &[u8; 16],
        span_id: &[u8; 8],
        duration_nanos: u64,
        end_nanos: u64,
    ) {
        if u128::from_ne_bytes(*trace_id) == 0 || u64::from_ne_bytes(*span_id) == 0 {
            return;
        }
        if let Some(slot) = self.slots.get_mut(bucket) {
            *slot = Exemplar {
                trace_id: *trace_id,
                span_id: *span_id,
                duration_nanos,
                end_nanos,
            };
        }
    }
}

impl PartialEq for Exemplars {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl SpanSeries {
    /// A series with `bounds` buckets plus the +Inf one.
    pub fn new(bounds: usize) -> Self {
        Self {
            by_status: [0; 3],
            buckets: Buckets::new(bounds + 1),
            sum_nanos: 0,
            exemplars: Exemplars::new(bounds + 1),
        }
    }

    /// Counts one span. `bucket` is the index of the first bound at or above its duration.
    #[inline]
    pub fn record(&mut self, status: StatusCode, bucket: usize, duration_nanos: u64) {
        self.by_status[status as usize] += 1;
        self.buckets[bucket] += 1;
        self.sum_nanos += u128::from(duration_nanos);
    }

    /// All spans counted.
    pub fn count(&self) -> u64 {
        self.by_status.iter().sum()
    }
}

/// One minute of durations in an HDR histogram, in microseconds.
#[derive(Debug, Clone)]
pub struct MinuteHistogram {
    /// The minute (Unix seconds / 60) these counts belong to.
    pub minute: u64,
    /// Durations recorded for that minute.
    pub count: u64,
    hist: Option<Counts>,
}

impl MinuteHistogram {
    fn empty() -> Self {
        Self {
            minute: 0,
            count: 0,
            hist: None,
        }
    }
}

/// Where a duration counts in a minute histogram: its counter (the low 15 bits), and
/// whether it was outside 1 µs .. 1 h and so clamped to the nearest bound (the top
/// bit). Computed once per span, before its series is locked; two bytes, so that a
/// held span stays 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HdrSlot(u16);

impl HdrSlot {
    const CLAMPED: u16 = 1 << 15;

    /// The counter of `duration_nanos`.
    #[inline]
    pub fn of(duration_nanos: u64) -> Self {
        let micros = duration_nanos / 1_000;
        let clamped = micros.clamp(HDR_LOW_MICROS, HDR_HIGH_MICROS);
        let flag = if clamped == micros { 0 } else { Self::CLAMPED };
        Self(hdr::index_of(clamped) as u16 | flag)
    }

    #[inline(always)]
    fn index(self) -> usize {
        usize::from(self.0 & !Self::CLAMPED)
    }

    #[inline(always)]
    fn clamped(self) -> bool {
        self.0 & Self::CLAMPED != 0
    }
}

const _: () = assert!(hdr::COUNTS <= HdrSlot::CLAMPED as usize);

/// The quantile summary of one `(service, region, span_kind)`: the durations of the
/// current and the previous minute, and cumulative sum and count.
#[derive(Debug, Clone)]
pub struct QuantileSeries {
    minutes: [MinuteHistogram; 2],
    /// Cumulative sum of durations, nanoseconds.
    pub sum_nanos: u128,
    /// Cumulative count.
    pub count: u64,
    /// The minute the quantiles below describe, and how many values they saw.
    computed: Option<(u64, u64)>,
    /// Quantile values in seconds, in the configured order; empty when the last
    /// complete minute had no span.
    pub quantiles: Vec<f64>,
    /// Durations counted in their minute's `count` but not yet in its histogram: the
    /// counter index, plus [`STAGED_SLOT`] for the second minute slot. Each is a
    /// random line of a 13 KB array that is rarely in cache; adding them
    /// [`STAGED`] at a time, all asked for first, overlaps those misses.
    staged: [u16; STAGED],
    n_staged: u8,
}

/// How many durations a quantile series holds before adding them to its histograms.
const STAGED: usize = 32;
/// The bit of a staged duration that says it belongs to the second minute slot.
const STAGED_SLOT: u16 = 1 << 12;

const _: () = assert!(hdr::COUNTS <= STAGED_SLOT as usize && STAGED <= u8::MAX as usize);

/// What happened to a value on its way into a quantile histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded as is.
    Exact,
    /// Outside 1 µs .. 1 h: recorded at the nearest bound.
    Clamped,
    /// Its minute is neither the current nor the previous one: counted in the sum and
    /// count only.
    TooOld,
}

impl Default for QuantileSeries {
    fn default() -> Self {
        Self {
            minutes: [MinuteHistogram::empty(), MinuteHistogram::empty()],
            sum_nanos: 0,
            count: 0,
            computed: None,
            quantiles: Vec::new(),
            staged: [0; STAGED],
            n_staged: 0,
        }
    }
}

impl QuantileSeries {
    /// Counts one duration that ended in `minute`, at `now_minute`.
    pub fn record(&mut self, duration_nanos: u64, minute: u64, now_minute: u64) -> Recorded {
        self.record_at(
            duration_nanos,
            HdrSlot::of(duration_nanos),
            minute,
            now_minute,
        )
    }

    /// [`QuantileSeries::record`] with the duration's counter already found.
    #[inline]
    pub fn record_at(
        &mut self,
        duration_nanos: u64,
        hdr_slot: HdrSlot,
        minute: u64,
        now_minute: u64,
    ) -> Recorded {
        self.sum_nanos += u128::from(duration_nanos);
        self.count += 1;
        // A span from the near future belongs to the current minute: its own slot is
        // the previous minute's, which is still being reported.
        let minute = minute.min(now_minute);
        if minute + 1 < now_minute {
            return Recorded::TooOld;
        }
        let at = (minute % 2) as usize;
        if self.minutes[at].minute != minute {
            if self.minutes[at].minute > minute {
                return Recorded::TooOld;
            }
            // The slot's old minute is dropped; what is staged for it goes with it.
            self.flush_staged();
            let slot = &mut self.minutes[at];
            slot.minute = minute;
            slot.count = 0;
            if let Some(h) = slot.hist.as_mut() {
                h.reset();
            }
        }
        let slot = &mut self.minutes[at];
        slot.hist.get_or_insert_with(Counts::new);
        slot.count += 1;
        self.staged[usize::from(self.n_staged)] =
            hdr_slot.index() as u16 | (at as u16 * STAGED_SLOT);
        self.n_staged += 1;
        if usize::from(self.n_staged) == STAGED {
            self.flush_staged();
        }
        if hdr_slot.clamped() {
            Recorded::Clamped
        } else {
            Recorded::Exact
        }
    }

    /// Adds the staged durations to their histograms: every counter's line is asked
    /// for first, so that their cache misses overlap.
    fn flush_staged(&mut self) {
        let staged = &self.staged[..usize::from(self.n_staged)];
        for &s in staged {
            let at = usize::from(s >= STAGED_SLOT);
            if let Some(h) = &self.minutes[at].hist {
                h.prefetch(usize::from(s & (STAGED_SLOT - 1)));
            }
        }
        for &s in staged {
            let at = usize::from(s >= STAGED_SLOT);
            if let Some(h) = &mut self.minutes[at].hist {
                h.add(usize::from(s & (STAGED_SLOT - 1)), 1);
            }
        }
        self.n_staged = 0;
    }

    /// Computes the quantiles of `last_complete` (the minute before the current one),
    /// unless they are already computed from the same counts.
    pub fn compute(&mut self, last_complete: u64, quantiles: &[f64]) {
        self.flush_staged();
        let slot = &self.minutes[(last_complete % 2) as usize];
        let count = if slot.minute == last_complete {
            slot.count
        } else {
            0
        };
        if self.computed == Some((last_complete, count)) {
            return;
        }
        self.computed = Some((last_complete, count));
        self.quantiles.clear();
        if count == 0 {
            return;
        }
        if let Some(hist) = slot.hist.as_ref() {
            self.quantiles.extend(
                quantiles
                    .iter()
                    .map(|&q| hist.value_at_quantile(q) as f64 / 1e6),
            );
        }
    }

    /// The minute histograms that hold values, for a checkpoint: (minute, count,
    /// recorded values in microseconds with their counts).
    pub fn saved_minutes(&mut self) -> impl Iterator<Item = (u64, u64, Vec<(u64, u64)>)> + '_ {
        self.flush_staged();
        self.minutes.iter().filter(|m| m.count > 0).map(|m| {
            let values = m
                .hist
                .as_ref()
                .map_or_else(Vec::new, |h| h.recorded().collect());
            (m.minute, m.count, values)
        })
    }

    /// Adds a saved minute histogram back (from [`QuantileSeries::saved_minutes`]). A
    /// minute older than the one its slot holds is dropped, as a late span's would be.
    pub fn restore_minute(&mut self, minute: u64, count: u64, values: &[(u64, u64)]) {
        self.flush_staged();
        let slot = &mut self.minutes[(minute % 2) as usize];
        if slot.minute > minute {
            return;
        }
        if slot.minute < minute {
            slot.minute = minute;
            slot.count = 0;
            if let Some(h) = slot.hist.as_mut() {
                h.reset();
            }
        }
        let hist = slot.hist.get_or_insert_with(Counts::new);
        for &(value, n) in values {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            hist.add(
                hdr::index_of(value.clamp(HDR_LOW_MICROS, HDR_HIGH_MICROS)),
                n,
            );
        }
        slot.count = slot.count.saturating_add(count);
        self.computed = None;
    }

    /// Bytes held by the histograms (for the memory figures).
    pub fn histogram_bytes(&self) -> usize {
        self.minutes.iter().filter(|m| m.hist.is_some()).count() * Counts::BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_describe_the_last_complete_minute() {
        let mut q = QuantileSeries::default();
        for ms in 1..=100u64 {
            assert_eq!(q.record(ms * 1_000_000, 10, 10), Recorded::Exact);
        }
        q.compute(9, &[0.5, 0.99]);
        assert!(q.quantiles.is_empty(), "minute 9 saw nothing");
        q.compute(10, &[0.5, 0.99]);
        let (p50, p99) = (q.quantiles[0], q.quantiles[1]);
        assert!((p50 - 0.050).abs() <= 0.050 * 0.01, "{p50}");
        assert!((p99 - 0.099).abs() <= 0.099 * 0.01, "{p99}");
        // Minute 11 starts: the minute-10 counts stay until minute 12 reuses the slot.
        assert_eq!(q.record(5_000_000, 11, 11), Recorded::Exact);
        assert_eq!(q.record(5_000_000, 9, 11), Recorded::TooOld);
        assert_eq!(q.record(5_000, 12, 12), Recorded::Exact);
        q.compute(11, &[0.5]);
        assert!((q.quantiles[0] - 0.005).abs() < 0.005 * 0.01);
        assert_eq!(q.count, 103);
        assert_eq!(q.record(10, 12, 12), Recorded::Clamped, "below 1 µs");
        assert_eq!(
            q.record(7_200_000_000_000, 12, 12),
            Recorded::Clamped,
            "over 1 h"
        );
    }

    #[test]
    fn saved_minutes_restore_to_the_same_quantiles() {
        let mut q = QuantileSeries::default();
        for ms in 1..=200u64 {
            q.record(ms * 1_000_000, 10, 10);
        }
        q.record(7_000_000, 11, 11);
        let saved: Vec<_> = q.saved_minutes().collect();
        assert_eq!(saved.len(), 2);
        let mut back = QuantileSeries::default();
        for (minute, count, values) in &saved {
            back.restore_minute(*minute, *count, values);
        }
        q.compute(10, &[0.5, 0.9, 0.99]);
        back.compute(10, &[0.5, 0.9, 0.99]);
        assert_eq!(back.quantiles, q.quantiles);
        assert!(!back.quantiles.is_empty());
        let counts =
            |s: &mut QuantileSeries| s.saved_minutes().map(|m| (m.0, m.1)).collect::<Vec<_>>();
        assert_eq!(counts(&mut back), counts(&mut q));
    }

    /// Saved minutes: (minute, count, (value, count) of each counter that holds some).
    type Saved = Vec<(u64, u64, Vec<(u64, u64)>)>;

    /// The minute slots as they were counted before durations were staged: each one
    /// added to its histogram at once.
    #[derive(Default)]
    struct Unstaged {
        minutes: [(u64, u64, Counts); 2],
    }

    impl Unstaged {
        fn record(&mut self, duration_nanos: u64, minute: u64, now_minute: u64) {
            let minute = minute.min(now_minute);
            if minute + 1 < now_minute {
                return;
            }
            let slot = &mut self.minutes[(minute % 2) as usize];
            if slot.0 != minute {
                if slot.0 > minute {
                    return;
                }
                *slot = (minute, 0, Counts::new());
            }
            slot.1 += 1;
            slot.2.add(HdrSlot::of(duration_nanos).index(), 1);
        }

        fn saved(&self) -> Saved {
            let minutes = self.minutes.iter().filter(|m| m.1 > 0);
            minutes
                .map(|m| (m.0, m.1, m.2.recorded().collect()))
                .collect()
        }
    }

    proptest::proptest! {
        /// Staged durations land where an immediate add would have put them, whatever
        /// comes between: minutes turning over (with staged durations of the minute
        /// dropped), late and early spans, quantiles computed, checkpoints and restores.
        #[test]
        fn staged_durations_count_as_if_added_at_once(
            steps in proptest::collection::vec((0u8..8, 1u64..5_000_000_000, 0u64..4), 1..400),
        ) {
            let (mut staged, mut unstaged) = (QuantileSeries::default(), Unstaged::default());
            let mut now = 100u64;
            for (op, duration, back) in steps {
                match op {
                    0 => now += 1,
                    1 => {
                        staged.compute(now - 1, &[0.5, 0.99]);
                        let mut expected = Unstaged::default();
                        for (minute, count, values) in unstaged.saved() {
                            if minute == now - 1 {
                                expected.minutes[0] = (minute, count, Counts::new());
                                for (v, n) in values {
                                    expected.minutes[0].2.add(hdr::index_of(v), n as u32);
                                }
                            }
                        }
                        let want: Vec<f64> = if expected.minutes[0].1 == 0 {
                            Vec::new()
                        } else {
                            [0.5, 0.99]
                                .iter()
                                .map(|&q| expected.minutes[0].2.value_at_quantile(q) as f64 / 1e6)
                                .collect()
                        };
                        proptest::prop_assert_eq!(&staged.quantiles, &want);
                    }
                    2 => {
                        let saved: Vec<_> = staged.saved_minutes().collect();
                        proptest::prop_assert_eq!(&saved, &unstaged.saved());
                        let mut back = QuantileSeries::default();
                        for (minute, count, values) in &saved {
                            back.restore_minute(*minute, *count, values);
                        }
                        let again: Vec<_> = back.saved_minutes().collect();
                        proptest::prop_assert_eq!(again, saved);
                    }
                    _ => {
                        // Mostly this minute, some late, a few from the next one.
                        let minute = (now + 1).saturating_sub(back);
                        staged.record(duration, minute, now);
                        unstaged.record(duration, minute, now);
                    }
                }
            }
            let saved: Vec<_> = staged.saved_minutes().collect();
            proptest::prop_assert_eq!(saved, unstaged.saved());
        }
    }

    #[test]
    fn buckets_count_the_same_in_place_and_on_the_heap() {
        for bounds in [0, 14, INLINE_BUCKETS - 1, INLINE_BUCKETS, 64] {
            let mut s = SpanSeries::new(bounds);
            assert_eq!(s.buckets.len(), bounds + 1);
            assert_eq!(
                matches!(s.buckets, Buckets::Inline { .. }),
                bounds < INLINE_BUCKETS,
                "{bounds} bounds"
            );
            for bucket in 0..=bounds {
                s.record(StatusCode::Ok, bucket, 5);
                s.record(StatusCode::Error, bounds, 5);
            }
            let mut want = vec![1u64; bounds + 1];
            want[bounds] += bounds as u64 + 1;
            assert_eq!(&*s.buckets, &want[..]);
            assert_eq!(s.count(), 2 * (bounds as u64 + 1));
            assert_ne!(s, SpanSeries::new(bounds));
        }
    }

    #[test]
    fn a_quantile_histogram_stays_small() {
        let mut q = QuantileSeries::default();
        q.record(1_000_000, 1, 1);
        q.record(1_000_000, 2, 2);
        let bytes = q.histogram_bytes();
        assert!(bytes <= 2 * 13 * 1024, "{bytes} bytes for two minutes");
    }
}

#[cfg(test)]
mod exemplar_tests {
    use super::*;

    #[test]
    fn spans_with_valid_ids_become_exemplars_once_a_second() {
        let mut s = SpanSeries::new(2);
        let (trace, id) = ([7u8; 16], [9u8; 8]);
        assert!(s.exemplars.due(10));
        assert!(!s.exemplars.due(10), "once per second");
        assert!(s.exemplars.due(11));
        // All-zero ids and a bucket that does not exist: nothing kept.
        s.exemplars.keep(0, &[0; 16], &id, 1, 2);
        s.exemplars.keep(1, &trace, &[0; 8], 1, 2);
        s.exemplars.keep(3, &trace, &id, 1, 2);
        assert!(s.exemplars.slots.iter().all(|e| e.end_nanos == 0));
        s.exemplars.keep(2, &trace, &id, 5, 6);
        assert_eq!(
            s.exemplars.slots[2],
            Exemplar {
                trace_id: trace,
                span_id: id,
                duration_nanos: 5,
                end_nanos: 6,
            }
        );
        // Exemplars are samples: they do not make two series' counts differ.
        assert_eq!(s, SpanSeries::new(2));
    }
}
