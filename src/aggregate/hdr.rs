//! The counts of one minute histogram: durations in microseconds, 1 µs to 1 h, at two
//! significant figures, in the bucket layout of an HDR histogram with those bounds.
//!
//! The layout is HdrHistogram's: 25 buckets, each twice as wide as the one before, of 128
//! counters (256 in the first), so a value and the highest value its counter stands for
//! differ by less than 1/128 of it. Every index, value and quantile is the one the
//! `hdrhistogram` crate gives for `Histogram::new_with_bounds(1, 3_600_000_000, 2)` (a
//! test checks it), so checkpoints written when sloxide used that crate restore to the
//! same counts. The one difference: a quantile's total is the sum of the counters, where
//! the crate kept counting past a counter that saturated (4 billion durations in one
//! counter in one minute).
//!
//! sloxide indexes the counters itself so that it can prefetch many counters before it
//! counts them (a quantile series adds its durations 32 at a time): each span's counter
//! is one random line of a 13 KB array, and those misses were the largest single cost
//! of recording (docs/benchmarks.md).

/// Lowest value held: 1 µs.
pub const LOW: u64 = 1;
/// Highest value held: 1 h in µs.
pub const HIGH: u64 = 3_600_000_000;
/// log2 of half the counters of a bucket.
const HALF_MAGNITUDE: u32 = 7;
/// Half the counters of a bucket: 128.
const HALF: usize = 1 << HALF_MAGNITUDE;
/// Values below 256 all land in the first bucket, one counter per value.
const FIRST_BUCKET_MASK: u64 = (1 << (HALF_MAGNITUDE + 1)) - 1;
/// 64 minus the bits of the largest value in the first bucket.
const LEADING_ZERO_BASE: u32 = 64 - (HALF_MAGNITUDE + 1);
/// Counters: (25 buckets + 1) × 128, as HdrHistogram sizes them.
pub const COUNTS: usize = 3328;

const _: () = assert!(index_of(HIGH) < COUNTS);

/// The bucket of `value`: how many times it is wider than the first bucket, in powers
/// of two.
#[inline(always)]
const fn bucket_of(value: u64) -> u32 {
    LEADING_ZERO_BASE - (value | FIRST_BUCKET_MASK).leading_zeros()
}

/// The counter of `micros`, which must lie in [`LOW`] ..= [`HIGH`].
#[inline(always)]
pub const fn index_of(micros: u64) -> usize {
    let bucket = bucket_of(micros);
    let sub = (micros >> bucket) as usize;
    ((bucket as usize + 1) << HALF_MAGNITUDE) + sub - HALF
}

/// The lowest value counter `index` stands for.
fn lowest_value(index: usize) -> u64 {
    let bucket = (index >> HALF_MAGNITUDE) as i64 - 1;
    let sub = (index & (HALF - 1)) + HALF;
    if bucket < 0 {
        (sub - HALF) as u64
    } else {
        (sub as u64) << bucket
    }
}

/// The highest value counted with `value`.
fn highest_equivalent(value: u64) -> u64 {
    let bucket = bucket_of(value);
    ((value >> bucket) << bucket) + (1 << bucket) - 1
}

/// The lowest value counted with `value`.
fn lowest_equivalent(value: u64) -> u64 {
    let bucket = bucket_of(value);
    (value >> bucket) << bucket
}

/// One minute's counters: 13 KB on the heap.
#[derive(Debug, Clone)]
pub struct Counts(Box<[u32; COUNTS]>);

impl Default for Counts {
    fn default() -> Self {
        Self::new()
    }
}

impl Counts {
    /// Zeroed counters, made on the heap (from zeroed pages, not a 13 KB stack copy).
    pub fn new() -> Self {
        Self(
            vec![0u32; COUNTS]
                .into_boxed_slice()
                .try_into()
                .expect("COUNTS counters"),
        )
    }

    /// Asks for the line of counter `index` ahead of [`Counts::add`].
    #[inline(always)]
    pub fn prefetch(&self, index: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(c) = self.0.get(index) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch is a hint: it reads nothing and cannot fault, and the
            // pointer is to a live counter anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(c).cast::<i8>()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }

    /// Adds `n` to counter `index` (saturating).
    #[inline(always)]
    pub fn add(&mut self, index: usize, n: u32) {
        if let Some(c) = self.0.get_mut(index) {
            *c = c.saturating_add(n);
        }
    }

    /// Sets every counter to zero.
    pub fn reset(&mut self) {
        self.0.fill(0);
    }

    /// The value at `quantile` (0 to 1) of the counted values, in microseconds: the
    /// highest value of the counter where the count reaches `quantile` of the total
    /// (the lowest, for quantile 0), as HdrHistogram computes it; 0 when nothing is
    /// counted.
    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        let quantile = quantile.min(1.0);
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        let wanted = ((quantile * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, &c) in self.0.iter().enumerate() {
            seen += u64::from(c);
            if seen >= wanted {
                let value = lowest_value(index);
                return if quantile == 0.0 {
                    lowest_equivalent(value)
                } else {
                    highest_equivalent(value)
                };
            }
        }
        0
    }

    /// The counters that hold values: the highest value each stands for, and its count.
    pub fn recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(index, &c)| (highest_equivalent(lowest_value(index)), u64::from(c)))
    }

    /// Bytes held.
    pub const BYTES: usize = COUNTS * std::mem::size_of::<u32>();
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;
    use proptest::prelude::*;

    use super::*;

    fn crate_histogram() -> Histogram<u32> {
        Histogram::new_with_bounds(LOW, HIGH, 2).unwrap()
    }

    #[test]
    fn the_layout_is_hdrhistograms() {
        let h = crate_histogram();
        assert_eq!(h.distinct_values(), COUNTS);
        for v in (1..5_000)
            .chain([HIGH - 1, HIGH])
            .chain((0..32).map(|s| 1u64 << s))
        {
            let v = v.clamp(LOW, HIGH);
            assert_eq!(highest_equivalent(v), h.highest_equivalent(v), "{v}");
            assert_eq!(lowest_equivalent(v), h.lowest_equivalent(v), "{v}");
            assert_eq!(
                lowest_value(index_of(v)),
                h.lowest_equivalent(v),
                "counter of {v}"
            );
        }
    }

    proptest! {
        #[test]
        fn quantiles_and_saved_values_are_hdrhistograms(
            values in prop::collection::vec((LOW..=HIGH, 1u32..4), 1..300),
            small in prop::collection::vec(LOW..2_000u64, 0..100),
        ) {
            let mut ours = Counts::new();
            let mut theirs = crate_histogram();
            for &(v, n) in &values {
                ours.add(index_of(v), n);
                theirs.record_n(v, n).unwrap();
            }
            for &v in &small {
                ours.add(index_of(v), 1);
                theirs.record(v).unwrap();
            }
            for q in [0.0, 0.001, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
                prop_assert_eq!(ours.value_at_quantile(q), theirs.value_at_quantile(q), "q {}", q);
            }
            let saved: Vec<_> = theirs
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value().into()))
                .collect();
            prop_assert_eq!(ours.recorded().collect::<Vec<_>>(), saved);
        }
    }

    #[test]
    fn empty_counts_give_zero_and_counters_saturate() {
        let mut c = Counts::new();
        assert_eq!(c.value_at_quantile(0.5), 0);
        c.add(index_of(7), u32::MAX);
        c.add(index_of(7), 5);
        assert_eq!(c.recorded().collect::<Vec<_>>(), [(7, u64::from(u32::MAX))]);
        c.reset();
        assert_eq!(c.recorded().count(), 0);
    }
}
