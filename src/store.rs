//! The family store: every series sloxide keeps lives in a [`Family`], one per metric
//! family (spans, span durations, log records, SLO windows).
//!
//! A family is a lock-sharded map from label sets to series ([`Sharded`]) plus the
//! cardinality rules around it ([`Cardinality`]): admission under `max_series` and
//! `max_series_per_service`, folding a refused label set into an overflow series, giving
//! a slot back when an idle series expires, and timed visits for the scrape and the
//! tick. The span, log and SLO families are each one [`Family::new`] call with their
//! [`Fold`] rule; none of them repeats this logic.
//!
//! The key is the label values as `&str`s: a known series is found with one hash and
//! one comparison, without building an owned key. Owned labels are made once, when a
//! series is created, as one block of bytes inside its entry ([`Labels`]), so that the
//! comparison reads the entry's own cache lines. `DashMap` cannot do this (its lookups
//! need `K: Borrow<Q>`, and a stored label block has no borrowed form as a list of
//! `&str`), so this is a `hashbrown::HashTable` per shard behind a `Mutex`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use hashbrown::HashTable;

mod labels;
pub use labels::Labels;

/// The label value every label but the kept one (or every label) takes in an overflow
/// series.
pub const OVERFLOW: &str = "__overflow__";

/// The most labels a series of any family has.
pub const MAX_LABELS: usize = 16;

/// One series: its labels, when it last saw an event, and its numbers.
#[derive(Debug)]
pub struct Entry<T> {
    hash: u64,
    /// Label values, in the family's label order.
    pub labels: Labels,
    /// Unix seconds of the last event (for idle expiry).
    pub last_seen: u64,
    /// False for an overflow series, which no cardinality limit counts.
    own: bool,
    /// The series' numbers.
    pub value: T,
}

impl<T> Entry<T> {
    /// True for an admitted series, false for an overflow series.
    pub fn is_own(&self) -> bool {
        self.own
    }
}

/// Label sets to series, in `2^k` shards picked by the label hash.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[Mutex<HashTable<Entry<T>>>]>,
    mask: u64,
    hasher: foldhash::fast::FixedState,
    /// The longest time, in nanoseconds, that a visit (a scrape, the tick) held one
    /// shard's lock since [`Sharded::take_longest_hold`] last read it: how long ingest
    /// into that shard could have waited. Ingest's own updates are not timed.
    longest_hold: AtomicU64,
    /// Lookups that found their shard locked ([`Sharded::contended`]).
    contended: AtomicU64,
}

/// How many shards: a power of two, at least four per core and at least 16.
pub fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(4, usize::from);
    (cores * 4).max(16).next_power_of_two()
}

impl<T> Sharded<T> {
    /// An empty map with `shards` shards (rounded up to a power of two).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Self {
            shards: (0..n).map(|_| Mutex::new(HashTable::new())).collect(),
            mask: n as u64 - 1,
            hasher: foldhash::fast::FixedState::with_seed(0x5107_1de5),
            longest_hold: AtomicU64::new(0),
            contended: AtomicU64::new(0),
        }
    }

    /// The hash of a label set.
    #[inline]
    pub fn hash(&self, labels: &[&str]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for l in labels {
            h.write(l.as_bytes());
            h.write_u8(0xff); // not valid UTF-8, so it separates values unambiguously
        }
        h.finish()
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, HashTable<Entry<T>>> {
        // Take the shard from the high bits: the table uses the low ones.
        let index = ((hash >> 48) & self.mask) as usize;
        let shard = &self.shards[index];
        // The same compare-and-swap as `lock`'s fast path; only when it fails (another
        // thread holds the shard) is the shared counter written, then the lock waited for.
        match shard.try_lock() {
            Ok(table) => table,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.contended.fetch_add(1, Ordering::Relaxed);
                shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }
        }
    }

    /// Lookups (a record, a restore) that found their shard's lock held by another
    /// thread and waited for it, since the map was made.
    pub fn contended(&self) -> u64 {
        self.contended.load(Ordering::Relaxed)
    }

    /// Applies `f` to the series of `labels`. A missing series is created with
    /// `create` (marked `own`), unless `create` returns `None`, in which case nothing
    /// is applied and `false` is returned.
    #[inline]
    pub fn update(
        &self,
        labels: &[&str],
        now_secs: u64,
        own: bool,
        create: impl FnOnce() -> Option<T>,
        f: impl FnOnce(&mut T),
    ) -> bool {
        let hash = self.hash(labels);
        let mut shard = self.shard(hash);
        let eq = |e: &Entry<T>| e.hash == hash && e.labels.matches(labels);
        if let Some(entry) = shard.find_mut(hash, eq) {
            // The newest wins: a restored series keeps the later of its two times.
            entry.last_seen = entry.last_seen.max(now_secs);
            f(&mut entry.value);
            return true;
        }
        let Some(mut value) = create() else {
            return false;
        };
        f(&mut value);
        let labels = Labels::new(labels);
        shard.insert_unique(
            hash,
            Entry {
                hash,
                labels,
                last_seen: now_secs,
                own,
                value,
            },
            |e| e.hash,
        );
        true
    }

    /// Visits every series, one shard at a time, holding each shard's lock only for
    /// that shard's visits.
    pub fn for_each(&self, f: impl FnMut(&mut Entry<T>)) {
        self.for_each_shard(f, || {});
    }

    /// Like [`Sharded::for_each`], and calls `between` after each shard's lock is
    /// released, so a caller can process one shard's copy before taking the next lock.
    pub fn for_each_shard(&self, mut f: impl FnMut(&mut Entry<T>), mut between: impl FnMut()) {
        for shard in self.shards.iter() {
            self.hold(shard, |table| {
                for entry in table.iter_mut() {
                    f(entry);
                }
            });
            between();
        }
    }

    /// Runs `f` on a shard under its lock, timing the hold.
    fn hold<R>(
        &self,
        shard: &Mutex<HashTable<Entry<T>>>,
        f: impl FnOnce(&mut HashTable<Entry<T>>) -> R,
    ) -> R {
        let mut table = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = Instant::now();
        let r = f(&mut table);
        let held = start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        drop(table);
        self.longest_hold.fetch_max(held, Ordering::Relaxed);
        r
    }

    /// The longest time a visit held one shard's lock since the last call, and resets it.
    pub fn take_longest_hold(&self) -> Duration {
        Duration::from_nanos(self.longest_hold.swap(0, Ordering::Relaxed))
    }

    /// Visits every series, holding a shard's lock for at most `chunk` series at a time,
    /// so that heavy per-series work (quantiles) never holds up ingest for long.
    pub fn for_each_chunked(&self, chunk: usize, mut f: impl FnMut(&mut Entry<T>)) {
        let chunk = chunk.max(1);
        for shard in self.shards.iter() {
            let mut done = 0;
            loop {
                let visited = self.hold(shard, |table| {
                    let mut visited = 0;
                    for entry in table.iter_mut().skip(done).take(chunk) {
                        f(entry);
                        visited += 1;
                    }
                    visited
                });
                done += visited;
                // Entries added or removed between chunks may be visited twice or
                // missed once; the next tick visits them again.
                if visited < chunk {
                    break;
                }
            }
        }
    }

    /// Removes the series for which `keep` returns false; `removed` sees each one.
    pub fn retain(
        &self,
        mut keep: impl FnMut(&mut Entry<T>) -> bool,
        mut removed: impl FnMut(&Entry<T>),
    ) {
        for shard in self.shards.iter() {
            self.hold(shard, |table| {
                table.retain(|e| {
                    let k = keep(e);
                    if !k {
                        removed(e);
                    }
                    k
                })
            });
        }
    }

    /// How many series.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// True when there is no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// The label-set limits of one family, and its overflow count.
#[derive(Debug)]
pub struct Cardinality {
    max_series: usize,
    max_per_service: usize,
    active: AtomicUsize,
    per_service: Mutex<HashMap<Box<str>, usize>>,
    overflow: AtomicU64,
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

/// Which label an overflow series keeps; every other label becomes [`OVERFLOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Label 0 is the service: kept when only the service is over its limit
    /// (`max_series_per_service`), replaced too when the family is full.
    Service,
    /// Label 0 names what the series belongs to (an SLO): always kept, so that each
    /// one has its own overflow series.
    First,
}

/// One metric family's series: the sharded map and the cardinality rules around it.
#[derive(Debug)]
pub struct Family<T> {
    series: Sharded<T>,
    limits: Cardinality,
    fold: Fold,
}

impl<T> Family<T> {
    /// An empty family admitting `max_series` label sets, `max_per_service` per service,
    /// whose overflow series are made by `fold`.
    pub fn new(max_series: usize, max_per_service: usize, fold: Fold) -> Self {
        Self::with_shards(max_series, max_per_service, fold, default_shards())
    }

    /// Like [`Family::new`], with `shards` shards: families of large series take more,
    /// so that a visit copying a shard holds its lock for fewer bytes.
    pub fn with_shards(
        max_series: usize,
        max_per_service: usize,
        fold: Fold,
        shards: usize,
    ) -> Self {
        Self {
            series: Sharded::new(shards),
            limits: Cardinality::new(max_series, max_per_service),
            fold,
        }
    }

    /// How many shards.
    pub fn shards(&self) -> usize {
        self.series.shards.len()
    }

    /// Applies `apply` to the series of `labels` (of `service`), creating it with
    /// `create` if it is new and admitted; a label set that is not admitted goes to its
    /// overflow series instead, and its `count` records are counted as overflowed. One
    /// hash and one shard lock when the series exists.
    #[inline]
    pub fn record(
        &self,
        labels: &[&str],
        service: &str,
        now_secs: u64,
        count: u64,
        create: impl Fn() -> T,
        mut apply: impl FnMut(&mut T),
    ) {
        let mut verdict = Admission::Own;
        let counted = self.series.update(
            labels,
            now_secs,
            true,
            || {
                verdict = self.limits.admit(service);
                (verdict == Admission::Own).then(&create)
            },
            &mut apply,
        );
        if counted {
            return;
        }
        self.limits.count_overflow(count);
        let mut folded = [OVERFLOW; MAX_LABELS];
        if self.fold == Fold::First || verdict == Admission::ServiceOverflow {
            folded[0] = labels[0];
        }
        self.series.update(
            &folded[..labels.len()],
            now_secs,
            false,
            || Some(create()),
            &mut apply,
        );
    }

    /// Removes the series for which `keep` is false, giving each admitted one's slot
    /// back to the service `service_of` names.
    pub fn expire(
        &self,
        mut keep: impl FnMut(&Entry<T>) -> bool,
        service_of: impl Fn(&Entry<T>) -> &str,
    ) {
        self.series.retain(
            |e| keep(e),
            |e| {
                if e.own {
                    self.limits.release(service_of(e));
                }
            },
        );
    }

    /// Puts a series back from a checkpoint (or from the state before a reload): an
    /// admitted one (`own`) is admitted again under today's limits, or folded into its
    /// overflow series if they refuse it; an overflow series keeps its labels. `merge`
    /// adds the saved numbers to the series, which is created with `create` if missing.
    /// Nothing is counted as overflowed: these records were counted when they arrived.
    pub fn restore(
        &self,
        labels: &[&str],
        service: &str,
        last_seen: u64,
        own: bool,
        create: impl Fn() -> T,
        mut merge: impl FnMut(&mut T),
    ) {
        if labels.is_empty() || labels.len() > MAX_LABELS {
            return;
        }
        // Only a label set shaped like an overflow series (every label past the first is
        // OVERFLOW) may come back as one; anything else goes through admission.
        let overflow_shaped = labels[1..].iter().all(|l| *l == OVERFLOW);
        if !own && overflow_shaped {
            self.series
                .update(labels, last_seen, false, || Some(create()), &mut merge);
            return;
        }
        self.record(labels, service, last_seen, 0, create, merge);
    }

    /// Removes the series that saw no event after `cutoff` (Unix seconds); label 0 is
    /// the service.
    pub fn expire_idle(&self, cutoff: u64) {
        self.expire(|e| e.last_seen > cutoff, |e| &e.labels[0]);
    }

    /// Visits every series, holding one shard's lock at a time (timed).
    pub fn for_each(&self, f: impl FnMut(&mut Entry<T>)) {
        self.series.for_each(f);
    }

    /// Visits every series shard by shard (timed), calling `between` after each shard's
    /// lock is released.
    pub fn for_each_shard(&self, f: impl FnMut(&mut Entry<T>), between: impl FnMut()) {
        self.series.for_each_shard(f, between);
    }

    /// Visits every series, at most `chunk` per lock hold (timed).
    pub fn for_each_chunked(&self, chunk: usize, f: impl FnMut(&mut Entry<T>)) {
        self.series.for_each_chunked(chunk, f);
    }

    /// The longest lock hold of a visit since the last call, and resets it.
    pub fn take_longest_hold(&self) -> Duration {
        self.series.take_longest_hold()
    }

    /// Records that found their series' shard locked by another thread and waited.
    pub fn contended(&self) -> u64 {
        self.series.contended()
    }

    /// Records counted in an overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.limits.overflowed()
    }

    /// Adds overflowed records saved by a checkpoint.
    pub fn add_overflowed(&self, n: u64) {
        self.limits.count_overflow(n);
    }

    /// How many series, overflow series included.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when there is no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_found_by_borrowed_labels() {
        let map: Sharded<u64> = Sharded::new(4);
        assert!(map.update(&["a", "b"], 1, true, || Some(0), |v| *v += 1));
        assert!(map.update(&["a", "b"], 2, true, || panic!("exists"), |v| *v += 1));
        // Separators keep ["ab", ""] apart from ["a", "b"].
        assert!(map.update(&["ab", ""], 2, true, || Some(10), |v| *v += 1));
        assert!(!map.update(&["x"], 2, true, || None, |_| panic!("not created")));
        let mut seen = Vec::new();
        map.for_each(|e| seen.push((e.labels.to_strings(), e.value, e.last_seen)));
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (vec!["a".into(), "b".into()], 2, 2),
                (vec!["ab".into(), "".into()], 11, 2)
            ]
        );
        let mut gone = 0;
        map.retain(|e| e.value > 5, |_| gone += 1);
        assert_eq!((gone, map.len()), (1, 1));
    }

    #[test]
    fn families_fold_refused_label_sets_and_give_slots_back() {
        let family: Family<u64> = Family::new(3, 2, Fold::Service);
        let add = |labels: &[&str], t| family.record(labels, labels[0], t, 1, || 0, |v| *v += 1);
        add(&["a", "x"], 1);
        add(&["a", "y"], 1);
        add(&["a", "z"], 1); // a's third: service overflow
        add(&["b", "x"], 1);
        add(&["c", "x"], 2); // family full: family overflow
        let mut seen = Vec::new();
        family.for_each(|e| seen.push((e.labels.to_strings().join("/"), e.value, e.own)));
        seen.sort();
        let o = OVERFLOW;
        assert_eq!(
            seen,
            vec![
                (format!("{o}/{o}"), 1, false),
                (format!("a/{o}"), 1, false),
                ("a/x".into(), 1, true),
                ("a/y".into(), 1, true),
                ("b/x".into(), 1, true),
            ]
        );
        assert_eq!(family.overflowed(), 2);
        // Expiry gives b's and a's slots back; c is then admitted.
        family.expire_idle(2);
        assert!(family.is_empty());
        add(&["c", "x"], 3);
        family.for_each(|e| assert!(e.own, "admitted after expiry"));

        let slos: Family<u64> = Family::new(1, 1, Fold::First);
        slos.record(&["slo-a", "eu"], "svc", 1, 5, || 0, |v| *v += 5);
        slos.record(&["slo-b", "us"], "svc", 1, 7, || 0, |v| *v += 7);
        let mut seen = Vec::new();
        slos.for_each(|e| seen.push((e.labels.to_strings().join("/"), e.value)));
        seen.sort();
        assert_eq!(
            seen,
            vec![("slo-a/eu".into(), 5), (format!("slo-b/{o}"), 7)]
        );
        assert_eq!(slos.overflowed(), 7);
    }
}
