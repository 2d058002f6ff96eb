//! A lock-sharded map from label sets to series, looked up by borrowed labels.
//!
//! The key is the label values as `&str`s: a known series is found with one hash and
//! one comparison, without building an owned key. Owned labels are made once, when a
//! series is created. `DashMap` cannot do this (its lookups need `K: Borrow<Q>`, and a
//! boxed label list has no borrowed form as a list of `&str`), so this is a
//! `hashbrown::HashTable` per shard behind a `Mutex`.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashbrown::HashTable;

/// One series: its labels, when it last saw an event, and its numbers.
#[derive(Debug)]
pub struct Entry<T> {
    hash: u64,
    /// Label values, in the family's label order.
    pub labels: Arc<[Box<str>]>,
    /// Unix seconds of the last event (for idle expiry).
    pub last_seen: u64,
    /// False for an overflow series, which no cardinality limit counts.
    pub own: bool,
    /// The series' numbers.
    pub value: T,
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
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let eq = |e: &Entry<T>| {
            e.hash == hash
                && e.labels.len() == labels.len()
                && e.labels.iter().zip(labels).all(|(a, b)| **a == **b)
        };
        if let Some(entry) = shard.find_mut(hash, eq) {
            entry.last_seen = now_secs;
            f(&mut entry.value);
            return true;
        }
        let Some(mut value) = create() else {
            return false;
        };
        f(&mut value);
        let labels: Arc<[Box<str>]> = labels.iter().map(|l| Box::<str>::from(*l)).collect();
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
    pub fn for_each(&self, mut f: impl FnMut(&mut Entry<T>)) {
        for shard in self.shards.iter() {
            self.hold(shard, |table| {
                for entry in table.iter_mut() {
                    f(entry);
                }
            });
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
        map.for_each(|e| seen.push((e.labels.to_vec(), e.value, e.last_seen)));
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
}
