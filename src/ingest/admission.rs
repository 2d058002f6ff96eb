//! Admission by memory: what requests hold in flight is counted in bytes (bodies,
//! their decompressed form, and an estimate of their decoded batch), not by a count of
//! requests.
//!
//! A request reserves what it is expected to need before it reads its body: its
//! declared length when it has one (`Content-Length`, the gRPC length prefix), else a
//! small guess, plus the decode of an uncompressed body. A reservation waits while the
//! budget (`limits.max_in_flight_bytes`) cannot hold it, for at most
//! `limits.admission_wait` (or what is left of the client's gRPC deadline), and is then
//! refused with 503 / UNAVAILABLE: a burst is absorbed rather than refused, and the
//! wait is bounded. A gRPC request reserves a guess at its headers, and its declared
//! length instead (more or less) when the length prefix arrives, without waiting.
//!
//! What a request turns out to need beyond its reservation (a chunked body, a
//! decompressed body, the decode of one) is charged without waiting, up to a hard
//! ceiling of one and a half times the budget; a charge past the ceiling refuses the
//! request (503) rather than wait, because requests that wait for more while holding
//! some could hold the whole budget and wait for each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::IngestError;

/// What a request whose body length is not known yet reserves for it, with its base (a
/// chunked HTTP body; a gRPC message until its length prefix arrives): 1 MiB in all,
/// what an HTTP/2 stream on the gRPC port may send before sloxide reads it. So the
/// default budget admits a whole connection's streams (256) at once, and streams that
/// wait for room cannot hold up, through the connection's shared flow-control window,
/// streams of their connection that were admitted. What the request holds beyond is
/// charged as it arrives.
pub const UNKNOWN_LENGTH: usize = (1 << 20) - BASE_RESERVATION;

/// What every request reserves on top of its body: its share of buffers and
/// bookkeeping.
pub const BASE_RESERVATION: usize = 4 << 10;

/// The bytes that requests in flight may hold before new reservations wait.
#[derive(Debug)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    total: usize,
    /// The hard ceiling for charges that do not wait.
    ceiling: usize,
    in_use: AtomicUsize,
    /// The most bytes held at once since [`Budget::take_peak_bytes`] last read it.
    peak: AtomicUsize,
    /// Reservations that found the budget full and waited.
    waits: AtomicU64,
    /// Woken when bytes are given back.
    freed: Notify,
}

impl Shared {
    /// Adds `bytes` if the total stays within `limit`.
    fn try_add(&self, bytes: usize, limit: usize) -> bool {
        let mut now = self.in_use.load(Ordering::Relaxed);
        loop {
            let next = now.saturating_add(bytes);
            if next > limit && bytes > 0 {
                return false;
            }
            // Relaxed: a plain sum, read for admission and exposition; nothing else is
            // published through it.
            match self
                .in_use
                .compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(seen) => now = seen,
            }
        }
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Adds `bytes` within the budget, waiting for room until `deadline`.
    async fn reserve(&self, bytes: usize, deadline: Instant) -> Result<(), IngestError> {
        let bytes = bytes.min(self.total);
        let mut waited = false;
        loop {
            // Registered before the check, so a release between the check and the wait
            // is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_add(bytes, self.total) {
                return Ok(());
            }
            if !waited {
                waited = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(IngestError::Overloaded);
            }
        }
    }
}

impl Budget {
    /// A budget of `bytes` (at least one base reservation).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.max(BASE_RESERVATION);
        Self {
            shared: Arc::new(Shared {
                total,
                ceiling: total.saturating_add(total / 2),
                in_use: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                waits: AtomicU64::new(0),
                freed: Notify::new(),
            }),
        }
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> usize {
        self.shared.total
    }

    /// The hard ceiling: charges that would pass it refuse their request.
    pub fn ceiling_bytes(&self) -> usize {
        self.shared.ceiling
    }

    /// The bytes held by requests in flight now.
    pub fn in_use_bytes(&self) -> usize {
        self.shared.in_use.load(Ordering::Relaxed)
    }

    /// Reservations that have found the budget full and waited, since the start.
    pub fn waits(&self) -> u64 {
        self.shared.waits.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since the last call (what the allocator may be
    /// holding on to), and starts over.
    pub fn take_peak_bytes(&self) -> usize {
        let now = self.in_use_bytes();
        self.shared.peak.swap(0, Ordering::Relaxed).max(now)
    }

    /// Admits a new request with a reservation of its base and `expected` bytes, waiting
    /// for room until `deadline` at most, then refusing it (overloaded).
    pub async fn admit(
        &self,
        expected: usize,
        deadline: Instant,
    ) -> Result<Reservation, IngestError> {
        let bytes = BASE_RESERVATION
            .saturating_add(expected)
            .min(self.shared.total);
        self.shared.reserve(bytes, deadline).await?;
        Ok(Reservation {
            budget: self.shared.clone(),
            reserved: bytes,
            used: 0,
        })
    }
}

/// What one request holds of the [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Shared>,
    /// Bytes taken from the budget.
    reserved: usize,
    /// Bytes of them accounted for by what the request holds.
    used: usize,
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.reserved
    }

    /// Sets the reservation to the base and `bytes` in all, once the request knows what
    /// it will hold (a gRPC body whose length prefix just arrived: the whole message
    /// and its decode): what the guess held beyond is given back, and what it lacks is
    /// added without waiting, up to the hard ceiling, past which the request is refused
    /// (overloaded). It does not wait: on an HTTP/2 connection, a stream that waited
    /// here would hold the connection's flow-control window with what it has sent,
    /// while streams that hold room wait for that window.
    pub fn expect(&mut self, bytes: usize) -> Result<(), IngestError> {
        let want = BASE_RESERVATION.saturating_add(bytes).max(self.used);
        if want < self.reserved {
            self.budget.release(self.reserved - want);
            self.reserved = want;
        } else if want > self.reserved {
            if !self
                .budget
                .try_add(want - self.reserved, self.budget.ceiling)
            {
                return Err(IngestError::Overloaded);
            }
            self.reserved = want;
        }
        Ok(())
    }

    /// Accounts for `bytes` more held by the request: out of its reservation while it
    /// lasts, then added without waiting, up to the budget's hard ceiling. Past the
    /// ceiling the request is refused (overloaded) and nothing is added.
    pub fn charge(&mut self, bytes: usize) -> Result<(), IngestError> {
        let used = self.used.saturating_add(bytes);
        if used > self.reserved {
            let more = used - self.reserved;
            if !self.budget.try_add(more, self.budget.ceiling) {
                return Err(IngestError::Overloaded);
            }
            self.reserved = used;
        }
        self.used = used;
        Ok(())
    }

    /// What the request may still add before its charges are refused: the rest of its
    /// reservation and the room under the ceiling.
    pub fn room(&self) -> usize {
        let free = self
            .budget
            .ceiling
            .saturating_sub(self.budget.in_use.load(Ordering::Relaxed));
        (self.reserved - self.used).saturating_add(free)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

/// When a wait gives up: after `wait`, or at the client's own deadline if that comes
/// first.
pub fn wait_deadline(wait: Duration, client_deadline: Option<Instant>) -> Instant {
    let own = Instant::now() + wait;
    client_deadline.map_or(own, |d| d.min(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1 << 10;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn reservations_are_used_then_charged_and_given_back() {
        let budget = Budget::new(64 * KIB);
        assert_eq!(budget.total_bytes(), 64 * KIB);
        assert_eq!(budget.ceiling_bytes(), 96 * KIB);
        let mut a = budget.admit(10 * KIB, soon()).await.unwrap();
        assert_eq!(a.bytes(), BASE_RESERVATION + 10 * KIB);
        // Within the reservation: nothing more is taken.
        a.charge(10 * KIB).unwrap();
        assert_eq!(budget.in_use_bytes(), BASE_RESERVATION + 10 * KIB);
        // Past it: what goes beyond is added.
        a.charge(10 * KIB).unwrap();
        assert_eq!(budget.in_use_bytes(), 20 * KIB);
        drop(a);
        assert_eq!(budget.in_use_bytes(), 0);
        assert_eq!(budget.take_peak_bytes(), 20 * KIB);
        assert_eq!(budget.take_peak_bytes(), 0);
        assert_eq!(budget.waits(), 0);
    }

    #[tokio::test]
    async fn a_full_budget_makes_new_requests_wait_then_refuses_them() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let a = budget.admit(12 * KIB, soon()).await.unwrap();
        let started = Instant::now();
        let refused = budget.admit(0, soon()).await.unwrap_err();
        assert!(matches!(refused, IngestError::Overloaded));
        assert!(started.elapsed() >= Duration::from_millis(45));
        assert_eq!(budget.waits(), 1);
        // A wait that the holder ends in time is admitted.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                budget.admit(KIB, deadline).await.map(|r| r.bytes())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), BASE_RESERVATION + KIB);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn charges_stop_at_the_ceiling_and_no_request_waits_for_more_than_exists() {
        let budget = Budget::new(16 * KIB);
        // An expectation past the budget is cut to the budget, so it can be admitted.
        let mut a = budget.admit(1 << 30, soon()).await.unwrap();
        assert_eq!(a.bytes(), 16 * KIB);
        a.charge(16 * KIB).unwrap();
        a.charge(8 * KIB).unwrap();
        assert_eq!(budget.in_use_bytes(), 24 * KIB);
        assert_eq!(a.room(), 0);
        assert!(matches!(a.charge(1), Err(IngestError::Overloaded)));
        assert_eq!(budget.in_use_bytes(), 24 * KIB);
    }

    #[tokio::test]
    async fn an_expectation_sets_the_reservation_within_the_ceiling() {
        let budget = Budget::new(32 * KIB);
        let mut a = budget.admit(0, soon()).await.unwrap();
        a.charge(2 * KIB).unwrap();
        a.expect(8 * KIB).unwrap();
        assert_eq!(a.bytes(), 12 * KIB);
        // Less than the guess: the rest is given back, never below what is used.
        a.expect(KIB).unwrap();
        assert_eq!(a.bytes(), BASE_RESERVATION + KIB);
        a.expect(0).unwrap();
        assert_eq!(a.bytes(), BASE_RESERVATION);
        let mut b = budget.admit(16 * KIB, soon()).await.unwrap();
        // Past the budget, within the ceiling (48 KiB): taken without waiting.
        b.expect(36 * KIB).unwrap();
        assert_eq!(budget.in_use_bytes(), 2 * BASE_RESERVATION + 36 * KIB);
        // Past the ceiling: refused, nothing taken.
        assert!(matches!(b.expect(64 * KIB), Err(IngestError::Overloaded)));
        assert_eq!(budget.in_use_bytes(), 2 * BASE_RESERVATION + 36 * KIB);
    }

    #[test]
    fn the_clients_deadline_can_shorten_the_wait() {
        let now = Instant::now();
        let client = now + Duration::from_millis(10);
        assert!(wait_deadline(Duration::from_secs(1), Some(client)) <= client);
        assert!(wait_deadline(Duration::from_secs(1), None) >= now + Duration::from_secs(1));
    }
}
