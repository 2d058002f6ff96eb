//! Rolling windows as rings of (total, bad) counts.
//!
//! Each window `W` of an SLO is answered by a ring of slots of `max(10 s, W / 60)`
//! (whole seconds), so a window's sum covers between `W - slot` and `W` of the most
//! recent time: the error is at most one slot, `max(10 s, W / 60)` (`docs/slo.md`).
//! Windows with the same slot size share a ring. For the default windows of a 30-day SLO
//! that is eight rings and 472 slots: 7,552 bytes of slots per (SLO, region).

use std::time::Duration;

/// One ring: `slots[i % len]` holds the counts of slot `i` (Unix seconds / slot size)
/// for `i` in `head - len + 1 ..= head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    slot_secs: u64,
    head: u64,
    slots: Box<[[u64; 2]]>,
}

impl Ring {
    /// A ring of `len` slots of `slot_secs` seconds.
    pub fn new(slot_secs: u64, len: usize) -> Self {
        Self {
            slot_secs: slot_secs.max(1),
            head: 0,
            slots: vec![[0, 0]; len.max(1)].into_boxed_slice(),
        }
    }

    /// Slot size in seconds.
    pub fn slot_secs(&self) -> u64 {
        self.slot_secs
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Moves the head to `slot`, clearing the slots it passes.
    fn advance_to(&mut self, slot: u64) {
        if slot <= self.head {
            return;
        }
        let steps = (slot - self.head).min(self.len());
        for k in 1..=steps {
            let i = ((self.head + k) % self.len()) as usize;
            self.slots[i] = [0, 0];
        }
        self.head = slot;
    }

    /// Counts events at Unix second `t`. Events older than the ring are dropped: they
    /// lie outside every window the ring serves.
    #[inline]
    pub fn add(&mut self, t: u64, total: u64, bad: u64) {
        let slot = t / self.slot_secs;
        self.advance_to(slot);
        if slot + self.len() <= self.head {
            return;
        }
        let s = &mut self.slots[(slot % self.len()) as usize];
        s[0] = s[0].saturating_add(total);
        s[1] = s[1].saturating_add(bad);
    }

    /// The slots that hold events, oldest first: (slot index, total, bad), where the
    /// index is the Unix seconds the slot covers divided by [`Ring::slot_secs`].
    pub fn occupied(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        occupied(self.head, &self.slots)
    }

    /// Appends this ring's slots to `slots` (one buffer for many rings, so copying a
    /// shard's rings under its lock allocates nothing once the buffer has grown).
    pub fn copy_into(&self, slots: &mut Vec<[u64; 2]>) -> RingCopy {
        let start = slots.len();
        slots.extend_from_slice(&self.slots);
        RingCopy {
            slot_secs: self.slot_secs,
            head: self.head,
            start,
            len: self.slots.len(),
        }
    }

    /// Seconds of history the ring holds.
    pub fn span_secs(&self) -> u64 {
        self.slot_secs * self.len()
    }

    /// Adds saved slots (from [`Ring::occupied`] of a ring with slots of `from_secs`
    /// seconds) into this ring, each at the time it starts. When `from_secs` divides
    /// this ring's slot size the result is exact; otherwise a saved slot lands whole in
    /// the slot holding its start, off by at most one saved slot at a window's edge.
    pub fn merge(&mut self, from_secs: u64, slots: impl IntoIterator<Item = (u64, u64, u64)>) {
        for (index, total, bad) in slots {
            if let Some(t) = index.checked_mul(from_secs) {
                self.add(t, total, bad);
            }
        }
    }

    /// Clears the slots that time `now` has left behind.
    pub fn advance(&mut self, now: u64) {
        self.advance_to(now / self.slot_secs);
    }

    /// The slots of the `n` slots ending with the one holding `now` that the ring
    /// holds, oldest first, as at most two runs of the slot array (it wraps), with the
    /// position of the first from the window's first slot (`now / slot size + 1 - n`,
    /// or 0). Slots ahead of `now` (events from the near future) are left out. Slicing
    /// rather than taking every slot's index modulo the length keeps a division out of
    /// the tick's innermost loop.
    fn window(&self, now: u64, n: u64) -> (usize, &[[u64; 2]], &[[u64; 2]]) {
        let current = now / self.slot_secs;
        let first = (current + 1).saturating_sub(n);
        let oldest_kept = (self.head + 1).saturating_sub(self.len());
        let (lo, hi) = (first.max(oldest_kept), current.min(self.head));
        if lo > hi {
            return (0, &[], &[]);
        }
        // At most the ring's length: lo is at or after its oldest slot, hi at or
        // before its newest.
        let count = (hi - lo + 1) as usize;
        let at = (lo % self.len()) as usize;
        let len = self.slots.len();
        let (older, newer) = if at + count <= len {
            (&self.slots[at..at + count], &self.slots[..0])
        } else {
            (&self.slots[at..], &self.slots[..at + count - len])
        };
        ((lo - first) as usize, older, newer)
    }

    /// (total, bad) over the `n` slots ending with the one holding `now`. Slots ahead
    /// of `now` (events from the near future) are left out.
    pub fn sum(&self, now: u64, n: u64) -> (u64, u64) {
        let (_, older, newer) = self.window(now, n);
        add_up(older, add_up(newer, (0, 0)))
    }

    /// As [`Ring::sum`], and adds each slot's bad count into `bad_per_slot`, whose
    /// first element stands for the window's oldest slot (`now / slot size + 1 - n`, or
    /// 0). Slots past its end are left out of it (not out of the sum).
    pub fn sum_into(&self, now: u64, n: u64, bad_per_slot: &mut [u64]) -> (u64, u64) {
        let (offset, older, newer) = self.window(now, n);
        let into = bad_per_slot.get_mut(offset..).unwrap_or_default();
        for (acc, s) in into.iter_mut().zip(older.iter().chain(newer)) {
            *acc = acc.saturating_add(s[1]);
        }
        add_up(older, add_up(newer, (0, 0)))
    }
}

/// `acc` plus the (total, bad) of `slots`.
#[inline]
fn add_up(slots: &[[u64; 2]], acc: (u64, u64)) -> (u64, u64) {
    slots.iter().fold(acc, |(t, b), s| {
        (t.saturating_add(s[0]), b.saturating_add(s[1]))
    })
}

/// The occupied slots of a ring whose newest slot is `head`.
fn occupied(head: u64, slots: &[[u64; 2]]) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let len = slots.len() as u64;
    let oldest = (head + 1).saturating_sub(len);
    (oldest..=head).filter_map(move |index| {
        let [total, bad] = slots[(index % len) as usize];
        (total > 0 || bad > 0).then_some((index, total, bad))
    })
}

/// A ring copied into a shared slot buffer by [`Ring::copy_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCopy {
    /// Slot size in seconds.
    pub slot_secs: u64,
    head: u64,
    start: usize,
    len: usize,
}

impl RingCopy {
    /// Its occupied slots, as [`Ring::occupied`] gives them, read from `slots` (the
    /// buffer it was copied into).
    pub fn occupied<'a>(
        &self,
        slots: &'a [[u64; 2]],
    ) -> impl Iterator<Item = (u64, u64, u64)> + 'a {
        occupied(self.head, &slots[self.start..self.start + self.len])
    }
}

/// One window: which ring answers it, over how many slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// The window's length.
    pub window: Duration,
    /// Index of its ring.
    pub ring: usize,
    /// How many slots it sums.
    pub slots: u64,
}

/// The rings and windows of one SLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    rings: Vec<(u64, usize)>,
    /// The windows, in the order given.
    pub windows: Vec<WindowSpec>,
}

/// The slot size for a window: `max(10 s, W / 60)`, in whole seconds.
pub fn slot_secs(window: Duration) -> u64 {
    (window.as_secs() / 60).max(10)
}

impl Layout {
    /// The layout answering `windows`, with room for events up to `max_skew` ahead.
    pub fn new(windows: &[Duration], max_skew: Duration) -> Self {
        let mut rings: Vec<(u64, usize)> = Vec::new();
        let mut specs = Vec::with_capacity(windows.len());
        for &window in windows {
            let slot = slot_secs(window);
            let n = window.as_secs().div_ceil(slot).max(1);
            // The window's slots, the slots events from the near future may occupy,
            // and the current one.
            let len = (n + max_skew.as_secs().div_ceil(slot) + 1) as usize;
            let ring = match rings.iter().position(|(s, _)| *s == slot) {
                Some(i) => {
                    rings[i].1 = rings[i].1.max(len);
                    i
                }
                None => {
                    rings.push((slot, len));
                    rings.len() - 1
                }
            };
            specs.push(WindowSpec {
                window,
                ring,
                slots: n,
            });
        }
        Self {
            rings,
            windows: specs,
        }
    }

    /// Fresh, empty rings.
    pub fn rings(&self) -> Box<[Ring]> {
        self.rings
            .iter()
            .map(|&(s, len)| Ring::new(s, len))
            .collect()
    }

    /// The slot size of ring `ring`, in seconds.
    pub fn slot_secs(&self, ring: usize) -> u64 {
        self.rings[ring].0
    }

    /// Bytes of ring slots per (SLO, region).
    pub fn slot_bytes(&self) -> usize {
        self.rings.iter().map(|(_, len)| len * 16).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn default_windows_of_a_30_day_slo_stay_small() {
        let windows = [300, 1_800, 3_600, 7_200, 21_600, 86_400, 259_200, 2_592_000].map(d);
        let layout = Layout::new(&windows, d(60));
        assert_eq!(layout.rings.len(), 8);
        assert!(
            layout.slot_bytes() <= 8 * 1024,
            "{} bytes",
            layout.slot_bytes()
        );
        let slots: Vec<u64> = layout
            .windows
            .iter()
            .map(|w| layout.rings[w.ring].0)
            .collect();
        assert_eq!(slots, [10, 30, 60, 120, 360, 1_440, 4_320, 43_200]);
    }

    #[test]
    fn saved_slots_merge_back_by_time_into_equal_or_coarser_rings() {
        let mut fine = Ring::new(10, 12);
        fine.add(1_000, 2, 1);
        fine.add(1_015, 3, 0);
        fine.add(1_045, 1, 1);
        let saved: Vec<_> = fine.occupied().collect();
        assert_eq!(saved, [(100, 2, 1), (101, 3, 0), (104, 1, 1)]);
        let mut buffer = vec![[9, 9]];
        let copy = fine.copy_into(&mut buffer);
        assert_eq!(copy.occupied(&buffer).collect::<Vec<_>>(), saved);
        let mut same = Ring::new(10, 12);
        same.merge(10, saved.iter().copied());
        assert_eq!(same, fine);
        let mut coarse = Ring::new(30, 4);
        coarse.merge(10, saved.iter().copied());
        assert_eq!(
            coarse.occupied().collect::<Vec<_>>(),
            [(33, 5, 1), (34, 1, 1)]
        );
        // 10 s slots into 25 s ones: each lands whole in the slot holding its start.
        let mut odd = Ring::new(25, 4);
        odd.merge(10, saved.iter().copied());
        assert_eq!(odd.occupied().collect::<Vec<_>>(), [(40, 5, 1), (41, 1, 1)]);
        // An index whose time overflows is dropped, not wrapped.
        let mut far = Ring::new(10, 4);
        far.merge(u64::MAX, [(2, 1, 0)]);
        assert_eq!(far.occupied().count(), 0);
    }

    #[test]
    fn a_ring_forgets_what_leaves_it() {
        let mut r = Ring::new(10, 4);
        r.add(1_000, 1, 0);
        r.add(1_015, 1, 1);
        assert_eq!(r.sum(1_019, 2), (2, 1));
        assert_eq!(r.sum(1_019, 1), (1, 1));
        r.advance(1_100);
        assert_eq!(r.sum(1_100, 4), (0, 0));
        r.add(1_000, 5, 5); // too old for the ring now
        assert_eq!(r.sum(1_100, 4), (0, 0));
    }

    #[test]
    fn a_window_sum_can_hand_out_its_slots() {
        let mut r = Ring::new(10, 8);
        r.add(1_000, 4, 1);
        r.add(1_025, 2, 2);
        r.add(1_061, 9, 0); // ahead of `now` below: in neither
        let mut bad = [0u64; 4];
        assert_eq!(r.sum_into(1_039, 4, &mut bad), r.sum(1_039, 4));
        assert_eq!(bad, [1, 0, 2, 0]);
        // Near the epoch the window has fewer slots than asked: they start at slot 0.
        let mut early = Ring::new(10, 8);
        early.add(15, 3, 1);
        let mut bad = [0u64; 3];
        assert_eq!(early.sum_into(15, 6, &mut bad), (3, 1));
        assert_eq!(bad, [0, 1, 0]);
    }

    proptest! {
        /// Every window sum equals a direct count of the recorded events whose time lies
        /// in the slots the window covers, which span between W - slot and W.
        #[test]
        fn window_sums_match_a_brute_force_recount(
            events in prop::collection::vec((0u64..40_000, any::<bool>(), 0u64..3), 1..300),
            window_idx in 0usize..5,
            later in 0u64..30_000,
        ) {
            let windows = [d(300), d(1_800), d(3_600), d(7_200), d(21_600)];
            let max_skew = d(60);
            let layout = Layout::new(&windows, max_skew);
            let mut rings = layout.rings();
            let base = 1_700_000_000u64;
            // Record in arrival order; each event time is within the slack of its
            // arrival clock (late by up to 5 minutes, early by up to max_skew).
            let mut recorded = Vec::new();
            for (offset, bad, skew) in &events {
                let now = base + offset;
                let t = match skew { 0 => now, 1 => now.saturating_sub(300), _ => now + 60 };
                for ring in rings.iter_mut() {
                    ring.advance(now);
                    ring.add(t, 1, u64::from(*bad));
                }
                recorded.push((t, *bad));
            }
            // Queried at or after the last arrival: time does not run backwards.
            let last = events.iter().map(|e| e.0).max().unwrap_or(0);
            let now = base + last + later;
            for ring in rings.iter_mut() {
                ring.advance(now);
            }
            let spec = &layout.windows[window_idx];
            let ring = &rings[spec.ring];
            let s = ring.slot_secs();
            let current = now / s;
            let first = (current + 1).saturating_sub(spec.slots);
            let (mut total, mut bad) = (0, 0);
            for (t, b) in &recorded {
                let slot = t / s;
                if slot >= first && slot <= current {
                    total += 1;
                    bad += u64::from(*b);
                }
            }
            prop_assert_eq!(ring.sum(now, spec.slots), (total, bad));
            // The same, with the bad events of each slot handed out.
            let mut per_slot = vec![0u64; (current + 1 - first) as usize];
            prop_assert_eq!(ring.sum_into(now, spec.slots, &mut per_slot), (total, bad));
            prop_assert_eq!(per_slot.iter().sum::<u64>(), bad);
            for (k, got) in per_slot.iter().enumerate() {
                let slot = first + k as u64;
                let want = recorded
                    .iter()
                    .filter(|(t, b)| *b && t / s == slot)
                    .count() as u64;
                prop_assert_eq!(*got, want, "slot {}", slot);
            }
            // The covered span is within one slot of the window.
            let covered_from = first * s;
            let w = spec.window.as_secs();
            prop_assert!(now - covered_from <= w && now - covered_from + s >= w);
        }
    }
}
