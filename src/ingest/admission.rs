//! Admission by memory: what requests hold in flight is counted in bytes (bodies as
//! they arrive, their decompressed form, and an estimate of their decoded batch), not
//! by a count of requests, so a client that opens requests and stalls holds only the
//! bytes it has actually sent.
//!
//! A new request is admitted while the bytes held are under the budget; when they are
//! not, it waits, for at most `limits.admission_wait` (or what is left of its gRPC
//! deadline), and is then refused with 503 / UNAVAILABLE. A burst is thereby absorbed
//! rather than refused, and the wait is bounded. Once admitted, a request is never made
//! to wait for memory again: its body, decompressed body and decode are charged as they
//! come. Waiting for more while holding some would let a burst of half-read requests
//! hold the whole budget and wait for each other. So the budget can be passed by what
//! admitted requests bring, but never by new ones, and the largest part (decompressing
//! and decoding) runs a few at a time ([`super::Ingest`]'s decode slots).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::IngestError;

/// What a request is charged when its headers arrive, before any of its body: its share
/// of buffers and bookkeeping.
pub const BASE_RESERVATION: usize = 4 << 10;

/// The bytes that requests in flight may hold before new ones wait.
#[derive(Debug)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    total: usize,
    in_use: AtomicUsize,
    /// The most bytes held at once since [`Budget::take_peak_bytes`] last read it.
    peak: AtomicUsize,
    /// Woken when bytes are given back.
    freed: Notify,
}

impl Budget {
    /// A budget of `bytes` (at least one base reservation).
    pub fn new(bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                total: bytes.max(BASE_RESERVATION),
                in_use: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
        }
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> usize {
        self.shared.total
    }

    /// The bytes held by requests in flight now.
    pub fn in_use_bytes(&self) -> usize {
        self.shared.in_use.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since the last call (what the allocator may be
    /// holding on to), and starts over.
    pub fn take_peak_bytes(&self) -> usize {
        let now = self.in_use_bytes();
        self.shared.peak.swap(0, Ordering::Relaxed).max(now)
    }

    /// Admits a new request, charging its base, once the bytes held are under the
    /// budget; waits for that until `deadline` at most, then refuses it (overloaded).
    pub async fn admit(&self, deadline: Instant) -> Result<Reservation, IngestError> {
        let shared = &self.shared;
        loop {
            // Registered before the check, so a release between the check and the wait
            // is not missed.
            let freed = shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_admit() {
                let mut reservation = Reservation {
                    budget: shared.clone(),
                    bytes: 0,
                };
                reservation.charge(BASE_RESERVATION);
                return Ok(reservation);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(IngestError::Overloaded);
            }
        }
    }

    fn try_admit(&self) -> bool {
        self.shared.in_use.load(Ordering::Relaxed) + BASE_RESERVATION <= self.shared.total
    }
}

/// What one request holds of the [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Shared>,
    bytes: usize,
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Charges `bytes` more to this request, without waiting: the memory is in use (or
    /// about to be) whatever the budget says; new requests wait while it is over.
    pub fn charge(&mut self, bytes: usize) {
        self.bytes += bytes;
        let shared = &self.budget;
        // Relaxed: a plain sum, read for admission and exposition; nothing else is
        // published through it.
        let now = shared.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        shared.peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let shared = &self.budget;
        let before = shared.in_use.fetch_sub(self.bytes, Ordering::Relaxed);
        if before - self.bytes + BASE_RESERVATION <= shared.total {
            shared.freed.notify_waiters();
        }
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
    async fn charges_add_up_and_are_given_back() {
        let budget = Budget::new(64 * KIB);
        assert_eq!(budget.total_bytes(), 64 * KIB);
        let mut a = budget.admit(soon()).await.unwrap();
        assert_eq!(a.bytes(), BASE_RESERVATION);
        a.charge(10 * KIB + 1);
        assert_eq!(a.bytes(), BASE_RESERVATION + 10 * KIB + 1);
        assert_eq!(budget.in_use_bytes(), a.bytes());
        drop(a);
        assert_eq!(budget.in_use_bytes(), 0);
        assert_eq!(budget.take_peak_bytes(), BASE_RESERVATION + 10 * KIB + 1);
        assert_eq!(budget.take_peak_bytes(), 0);
    }

    #[tokio::test]
    async fn a_full_budget_makes_new_requests_wait_then_refuses_them() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let mut a = budget.admit(soon()).await.unwrap();
        // An admitted request is charged whatever it brings, past the budget.
        a.charge(100 * KIB);
        let started = Instant::now();
        let refused = budget.admit(soon()).await.unwrap_err();
        assert!(matches!(refused, IngestError::Overloaded));
        assert!(started.elapsed() >= Duration::from_millis(45));
        // A wait that the holder ends in time is admitted.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                budget.admit(deadline).await.map(|r| r.bytes())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), BASE_RESERVATION);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn requests_are_admitted_until_the_budget_is_reached() {
        let budget = Budget::new(4 * BASE_RESERVATION);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(budget.admit(soon()).await.unwrap());
        }
        assert!(budget.admit(soon()).await.is_err());
        held.pop();
        assert!(budget.admit(soon()).await.is_ok());
    }

    #[test]
    fn the_clients_deadline_can_shorten_the_wait() {
        let now = Instant::now();
        let client = now + Duration::from_millis(10);
        assert!(wait_deadline(Duration::from_secs(1), Some(client)) <= client);
        assert!(wait_deadline(Duration::from_secs(1), None) >= now + Duration::from_secs(1));
    }
}
