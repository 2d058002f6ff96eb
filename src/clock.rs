//! Time, behind a trait so that tests drive it without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time in Unix nanoseconds.
    fn now_nanos(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `nanos`.
    pub fn new(nanos: u64) -> Self {
        Self(AtomicU64::new(nanos))
    }

    /// Sets the time.
    pub fn set(&self, nanos: u64) {
        // Relaxed: tests set the clock from one thread before recording on it.
        self.0.store(nanos, Ordering::Relaxed);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where an event is counted in time: its own time when that lies within
/// `[now - late_slack, now + max_skew]`, otherwise its arrival time (`now`).
#[inline]
pub fn slot_time(event: u64, now: u64, late_slack: u64, max_skew: u64) -> u64 {
    if event >= now.saturating_sub(late_slack) && event <= now.saturating_add(max_skew) {
        event
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_outside_the_slack_count_at_arrival() {
        let now = 1_000_000;
        assert_eq!(slot_time(now - 100, now, 100, 10), now - 100);
        assert_eq!(slot_time(now - 101, now, 100, 10), now);
        assert_eq!(slot_time(now + 10, now, 100, 10), now + 10);
        assert_eq!(slot_time(now + 11, now, 100, 10), now);
        assert_eq!(slot_time(0, now, 100, 10), now);
    }
}
