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
//! wait is bounded. Waiting reservations queue in order: bytes given back go to the
//! oldest first, and only the reservations they admit are woken, so a large request is
//! not passed over by small ones forever, and a release does not wake every waiter
//! (with thousands waiting under overload, that cost more CPU than the requests). A
//! gRPC request reserves a guess at its headers, and its declared length instead (more
//! or less) when the length prefix arrives, without waiting.
//!
//! What a request turns out to need beyond its reservation (a chunked body, a
//! decompressed body, the decode of one) is charged without waiting, up to a hard
//! ceiling of one and a half times the budget; a charge past the ceiling refuses the
//! request (503) rather than wait, because requests that wait for more while holding
//! some could hold the whole budget and wait for each other. The one wait for more:
//! a compressed body, before it is inflated, waits for room for what it is expected to
//! become ([`Reservation::grow`]), ahead of new requests, and only while the requests
//! waiting so could not hold each other up for good.
//!
//! A reservation is taken before its body arrives, so a client could hold room it
//! never fills: send headers that declare a large body, then nothing (or a byte now and
//! then). While reservations wait for room, the budget takes room back from such
//! requests: a body read that has run for [`RECLAIM_GRACE`] and, at its pace so far,
//! would not be in before its `limits.body_read_timeout` is told to give its room up
//! ([`BodyRead::reclaimed`]), and its request is refused as overloaded (retryable);
//! the furthest behind (the most bytes short of its pace) first, and only as many as
//! the waiting reservations need. A
//! body that arrives at a pace that brings its declared length (or the guess, without
//! one) in time keeps its room, and so do the reads of an HTTP/2 connection that brings
//! in, for all of them, what they need ([`behind`]); without anyone waiting, nothing is
//! taken back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
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

/// How long a body read keeps its room, while others wait for room, before its pace is
/// judged: long enough for a body sent at once to arrive, short enough that a request
/// waiting `limits.admission_wait` (1 s by default) gets the room.
const RECLAIM_GRACE: Duration = Duration::from_millis(500);

/// How often the budget looks for room to take back while reservations wait.
const RECLAIM_EVERY: Duration = Duration::from_millis(100);

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
    /// Reservations waiting for room, oldest first.
    queue: Mutex<VecDeque<Waiter>>,
    /// How many are in `queue`, so that a release skips its lock when none waits.
    queued: AtomicUsize,
    /// The bodies being read under a reservation, for [`Shared::reclaim_behind`].
    reads: Mutex<Reads>,
    /// Whether a task runs [`Shared::reclaim_behind`] while reservations wait.
    reclaiming: AtomicBool,
    /// Body reads that gave their room up, since the start.
    reclaimed: AtomicU64,
}

/// The body reads in progress: a slab, so that one joins and leaves in constant time.
#[derive(Debug, Default)]
struct Reads {
    slots: Vec<Option<Arc<Reading>>>,
    free: Vec<usize>,
}

/// One body being read, as the budget sees it when it looks for room to take back.
#[derive(Debug)]
struct Reading {
    started: Instant,
    /// When the body must be in (`limits.body_read_timeout` after the headers).
    deadline: Instant,
    /// The body's declared length, or a guess while it has none.
    expected: AtomicUsize,
    /// What its request holds of the budget: what taking the room back gives.
    holds: AtomicUsize,
    received: AtomicUsize,
    /// The body bytes read by the requests of this one's connection, all together
    /// (this one's added as they arrive), and their count when this read began.
    conn: Option<(Arc<AtomicU64>, u64)>,
    reclaimed: AtomicBool,
    wake: Notify,
}

impl Reading {
    /// How many bytes the read is short of its pace, if it has run for
    /// [`RECLAIM_GRACE`] and is behind: nothing has arrived, or at the pace so far the
    /// rest would arrive after its deadline. The pace asks for the body in proportion
    /// to the time its deadline allows: after a tenth of that time, a tenth of it.
    fn shortfall(&self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < RECLAIM_GRACE {
            return None;
        }
        let received = self.received.load(Ordering::Relaxed);
        let expected = self.expected.load(Ordering::Relaxed).max(received);
        let allowed = self.deadline.saturating_duration_since(self.started);
        let due = (elapsed.as_nanos() * expected as u128)
            .div_ceil(allowed.as_nanos().max(1))
            .min(expected as u128) as u64;
        let received = received as u64;
        (received < due).then(|| due - received)
    }
}

/// The reads to take room back from, `now`: those behind on their own
/// ([`Reading::shortfall`]), unless their connection is busy with others. On HTTP/2 a
/// request can receive nothing for a while because its client sends the bodies of its
/// other requests on the connection first: the reads behind on one connection are
/// excused when the body bytes its requests read since the first of them began, beyond
/// what they read themselves, cover all their shortfalls. So a connection must bring
/// in, for its requests together, about what each alone would have to: a client that
/// sends one body and opens many requests it does not send is not excused for them.
/// (On HTTP/1 a connection has one request at a time, which is judged alone.)
fn behind<'r>(
    reads: impl Iterator<Item = &'r Arc<Reading>>,
    now: Instant,
) -> Vec<(&'r Arc<Reading>, u64)> {
    let mut alone = Vec::new();
    // (connection, its count now, its count when the read began, the read, its shortfall)
    let mut shared: Vec<(*const AtomicU64, u64, u64, &'r Arc<Reading>, u64)> = Vec::new();
    for reading in reads {
        if reading.reclaimed.load(Ordering::Relaxed) {
            continue;
        }
        let Some(short) = reading.shortfall(now) else {
            continue;
        };
        match &reading.conn {
            Some((conn, began)) => {
                shared.push((
                    Arc::as_ptr(conn),
                    conn.load(Ordering::Relaxed),
                    *began,
                    reading,
                    short,
                ));
            }
            None => alone.push((reading, short)),
        }
    }
    shared.sort_by_key(|&(conn, ..)| conn);
    for group in shared.chunk_by(|a, b| a.0 == b.0) {
        let now_count = group.iter().map(|g| g.1).max().unwrap_or(0);
        let since = group.iter().map(|g| g.2).min().unwrap_or(0);
        let own: u64 = group
            .iter()
            .map(|g| g.3.received.load(Ordering::Relaxed) as u64)
            .sum();
        let others = now_count.saturating_sub(since).saturating_sub(own);
        let short: u64 = group.iter().map(|g| g.4).sum();
        if others < short {
            alone.extend(group.iter().map(|g| (g.3, g.4)));
        }
    }
    alone
}

/// A reservation waiting for room: its bytes are added for it, and it is told.
#[derive(Debug)]
struct Waiter {
    bytes: usize,
    /// For a request that already holds room and waits for more before it inflates its
    /// body ([`Reservation::grow`]): what it holds. Such waiters queue ahead of new
    /// requests, and may be admitted up to the ceiling.
    holding: Option<usize>,
    admitted: oneshot::Sender<()>,
}

impl Waiter {
    /// The most the budget may hold once this waiter is admitted.
    fn limit(&self, shared: &Shared) -> usize {
        match self.holding {
            Some(_) => shared.ceiling,
            None => shared.total,
        }
    }
}

impl Shared {
    /// Adds `bytes` if the total stays within `limit`.
    fn try_add(&self, bytes: usize, limit: usize) -> bool {
        let mut now = self.in_use.load(Ordering::SeqCst);
        loop {
            let next = now.saturating_add(bytes);
            if next > limit && bytes > 0 {
                return false;
            }
            // SeqCst: see `release`. Nothing else is published through the sum.
            match self
                .in_use
                .compare_exchange_weak(now, next, Ordering::SeqCst, Ordering::SeqCst)
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
        // SeqCst here and on `queued`: a waiter stores `queued` then reads `in_use`
        // (`admit_waiting`), a release writes `in_use` then reads `queued`; one of the
        // two sees the other, so freed room is never left with a waiter asleep.
        self.in_use.fetch_sub(bytes, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.admit_waiting();
        }
    }

    /// Admits waiting reservations, oldest first, while the budget has room for the
    /// oldest: each is added for its waiter, and only that waiter is woken.
    fn admit_waiting(&self) {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(oldest) = queue.front() {
            if oldest.admitted.is_closed() {
                // It gave up (timed out, or its request is gone).
                queue.pop_front();
                continue;
            }
            if !self.try_add(oldest.bytes, oldest.limit(self)) {
                // No room for the oldest: it waits, and those behind it with it.
                break;
            }
            if let Some(oldest) = queue.pop_front()
                && oldest.admitted.send(()).is_err()
            {
                // It gave up after the check: its bytes go back, for the next.
                self.in_use.fetch_sub(oldest.bytes, Ordering::SeqCst);
            }
        }
        self.queued.store(queue.len(), Ordering::SeqCst);
    }

    /// Why a request that would hold `holding` in all cannot have it: the other requests
    /// hold the rest (overloaded, retryable), or the request alone is past the ceiling
    /// (it never could be taken: too large).
    fn refusal(&self, holding: usize) -> IngestError {
        if holding > self.ceiling {
            IngestError::OverBudget {
                ceiling: self.ceiling,
            }
        } else {
            IngestError::Overloaded
        }
    }

    fn reads(&self) -> MutexGuard<'_, Reads> {
        self.reads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How much must come free for every reservation waiting now to be admitted, in
    /// order: each against its own limit (the budget, or the ceiling for a request
    /// that grows), after those before it.
    fn room_wanted(&self) -> usize {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut level = self.in_use.load(Ordering::SeqCst);
        let mut wanted = 0;
        for waiter in queue.iter().filter(|w| !w.admitted.is_closed()) {
            level = level.saturating_add(waiter.bytes);
            wanted = wanted.max(level.saturating_sub(waiter.limit(self)));
        }
        wanted
    }

    /// Tells body reads that are behind ([`behind`]) to give their room up, the
    /// furthest behind (the most bytes short of their pace) first, until what they give
    /// makes room for every reservation waiting now ([`Shared::room_wanted`], less
    /// what reads told before are still to give back): a waiter does not cost every
    /// slow upload its room, only as many as it needs.
    fn reclaim_behind(&self) {
        let wanted = self.room_wanted();
        let reads = self.reads();
        // Reads told before that have not given their room up yet will.
        let coming: usize = reads
            .slots
            .iter()
            .flatten()
            .filter(|r| r.reclaimed.load(Ordering::Relaxed))
            .map(|r| r.holds.load(Ordering::Relaxed))
            .sum();
        let mut needed = wanted.saturating_sub(coming);
        let mut late = behind(reads.slots.iter().flatten(), Instant::now());
        late.sort_by_key(|&(_, short)| std::cmp::Reverse(short));
        for (reading, _) in late {
            if needed == 0 {
                break;
            }
            needed = needed.saturating_sub(reading.holds.load(Ordering::Relaxed));
            reading.reclaimed.store(true, Ordering::Relaxed);
            // A permit is kept when the reader is not waiting on it yet.
            reading.wake.notify_one();
        }
    }

    /// Looks for room to take back every [`RECLAIM_EVERY`] while reservations wait; one
    /// such task at a time, started by the first reservation that waits.
    async fn reclaim_while_waiting(self: Arc<Self>) {
        loop {
            // Nobody may wait any more: the one that started this task may have been
            // admitted at once after all.
            if self.queued.load(Ordering::SeqCst) > 0 {
                self.reclaim_behind();
            }
            tokio::time::sleep(RECLAIM_EVERY).await;
            if self.queued.load(Ordering::SeqCst) == 0 {
                // SeqCst with a waiter's `queued` then `reclaiming`: either it sees this
                // task gone and starts another, or this task sees it and goes on.
                self.reclaiming.store(false, Ordering::SeqCst);
                if self.queued.load(Ordering::SeqCst) == 0
                    || self.reclaiming.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        }
    }

    /// Adds `bytes` within the budget, waiting for room until `deadline`.
    async fn reserve(self: &Arc<Self>, bytes: usize, deadline: Instant) -> Result<(), IngestError> {
        let bytes = bytes.min(self.total);
        // Room now, and nobody waiting for it first.
        if self.queued.load(Ordering::SeqCst) == 0 && self.try_add(bytes, self.total) {
            return Ok(());
        }
        let (admitted, wait) = oneshot::channel();
        {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.push_back(Waiter {
                bytes,
                holding: None,
                admitted,
            });
            self.queued.store(queue.len(), Ordering::SeqCst);
        }
        self.wait_for(bytes, wait, deadline).await
    }

    /// Adds `bytes` for a request that holds `holding` already, up to the ceiling,
    /// waiting for room until `deadline` ahead of new requests: `Ok(true)` once added.
    /// `Ok(false)` adds nothing: the request alone would pass the ceiling, or, with the
    /// requests already waiting to grow, one of them might never be admitted (see
    /// [`Reservation::grow`]).
    async fn grow(
        self: &Arc<Self>,
        bytes: usize,
        holding: usize,
        deadline: Instant,
    ) -> Result<bool, IngestError> {
        if holding.saturating_add(bytes) > self.ceiling {
            return Ok(false);
        }
        // Room now, and nobody waiting: the usual case, without the queue's lock.
        if self.queued.load(Ordering::SeqCst) == 0 && self.try_add(bytes, self.ceiling) {
            return Ok(true);
        }
        let (admitted, wait) = oneshot::channel();
        {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Growing requests queue ahead of new ones, oldest first.
            let growing = queue.iter().take_while(|w| w.holding.is_some()).count();
            if growing == 0 && self.try_add(bytes, self.ceiling) {
                return Ok(true);
            }
            // What other requests hold comes back in time: their bodies are read (or
            // taken back when behind, or timed out), their decodes run with their room
            // in hand. What growing requests hold comes back only once each is
            // admitted, in order. So the oldest is admitted once it fits beside what it
            // and those behind it hold, then the next one likewise. This one waits only
            // while that holds for each of them, itself last.
            let growers = queue
                .iter()
                .take(growing)
                .filter(|w| !w.admitted.is_closed())
                .map(|w| (w.holding.unwrap_or(0), w.bytes))
                .chain([(holding, bytes)]);
            let mut held_from_here: usize = growers.clone().map(|(held, _)| held).sum();
            for (held, wants) in growers {
                if held_from_here.saturating_add(wants) > self.ceiling {
                    return Ok(false);
                }
                held_from_here -= held;
            }
            queue.insert(
                growing,
                Waiter {
                    bytes,
                    holding: Some(holding),
                    admitted,
                },
            );
            self.queued.store(queue.len(), Ordering::SeqCst);
        }
        self.wait_for(bytes, wait, deadline).await.map(|()| true)
    }

    /// Waits, queued, until `bytes` are added for this waiter or `deadline` passes.
    async fn wait_for(
        self: &Arc<Self>,
        bytes: usize,
        wait: oneshot::Receiver<()>,
        deadline: Instant,
    ) -> Result<(), IngestError> {
        let mut wait = Wait {
            shared: self,
            bytes,
            wait,
            taken: false,
        };
        // Room may have come free before this waiter was queued (or be held only for
        // waiters that gave up).
        self.admit_waiting();
        if wait.wait.try_recv().is_ok() {
            wait.taken = true;
            return Ok(());
        }
        // It waits: room is to be taken back from body reads that are behind.
        if !self.reclaiming.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().reclaim_while_waiting());
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout_at(deadline, &mut wait.wait).await {
            Ok(Ok(())) => {
                wait.taken = true;
                Ok(())
            }
            // Timed out (or, never, dropped unadmitted): refused. Admitted at the last
            // moment, the bytes go back when `wait` is dropped.
            Ok(Err(_)) | Err(_) => Err(IngestError::Overloaded),
        }
    }
}

/// A reservation's place in the queue. Dropped unadmitted (timed out, or its request
/// cancelled), it closes its channel, so it is not admitted after; admitted just before,
/// it gives the bytes back. Its entry leaves the queue when it reaches the front: the
/// queue holds at most the requests that arrived within one `limits.admission_wait`.
struct Wait<'a> {
    shared: &'a Shared,
    bytes: usize,
    wait: oneshot::Receiver<()>,
    /// Admitted, and the bytes handed to the caller.
    taken: bool,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.wait.close();
        if self.wait.try_recv().is_ok() {
            self.shared.release(self.bytes);
        } else {
            // It may have been the oldest, holding back those behind it that fit now.
            self.shared.admit_waiting();
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
                queue: Mutex::new(VecDeque::new()),
                queued: AtomicUsize::new(0),
                reads: Mutex::new(Reads::default()),
                reclaiming: AtomicBool::new(false),
                reclaimed: AtomicU64::new(0),
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

    /// Body reads that gave their room up for waiting reservations, since the start.
    pub fn reclaimed(&self) -> u64 {
        self.shared.reclaimed.load(Ordering::Relaxed)
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

    /// Registers the read of the request's body, expected to be `expected` bytes long
    /// (a guess while it has no declared length) and due by `deadline`, so that the
    /// budget can take the room back if it falls behind while others wait. `conn`
    /// counts the body bytes read by the requests of its connection, when known (this
    /// read adds its own). The
    /// registration ends when the returned [`BodyRead`] is dropped.
    pub fn body_read(
        &self,
        expected: usize,
        deadline: Instant,
        conn: Option<Arc<AtomicU64>>,
    ) -> BodyRead {
        let reading = Arc::new(Reading {
            started: Instant::now(),
            deadline,
            expected: AtomicUsize::new(expected),
            holds: AtomicUsize::new(self.reserved),
            received: AtomicUsize::new(0),
            conn: conn.map(|c| {
                let now = c.load(Ordering::Relaxed);
                (c, now)
            }),
            reclaimed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let mut reads = self.budget.reads();
        let slot = match reads.free.pop() {
            Some(slot) => {
                reads.slots[slot] = Some(reading.clone());
                slot
            }
            None => {
                reads.slots.push(Some(reading.clone()));
                reads.slots.len() - 1
            }
        };
        drop(reads);
        BodyRead {
            budget: self.budget.clone(),
            slot,
            reading,
        }
    }

    /// Sets the reservation to the base and `bytes` in all, once the request knows what
    /// it will hold (a gRPC body whose length prefix just arrived: the whole message
    /// and its decode): what the guess held beyond is given back, and what it lacks is
    /// added without waiting, up to the hard ceiling, past which the request is refused
    /// (overloaded; too large when the request alone is past it). It does not wait: on
    /// an HTTP/2 connection, a stream that waited here would hold the connection's
    /// flow-control window with what it has sent, while streams that hold room wait for
    /// that window.
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
                return Err(self.budget.refusal(want));
            }
            self.reserved = want;
        }
        Ok(())
    }

    /// Makes room for the request to hold `bytes` more than it uses now (a compressed
    /// body about to be inflated and decoded: what it is expected to become), waiting
    /// for it until `deadline`, ahead of new requests, up to the hard ceiling; then
    /// refused (overloaded). Without this, such a body would be charged as it inflates,
    /// without waiting, and large bodies that arrived together and inflated together
    /// could all pass the ceiling and all be refused, where uncompressed bodies of the
    /// same size would wait their turn. It may use the room between the budget and the
    /// ceiling: when the budget is full of compressed bodies that have arrived, that is
    /// the only room they can grow into.
    ///
    /// Requests waiting to grow hold room while they wait. So a request waits only
    /// while every one of them, in turn, fits under the ceiling beside what it and
    /// those after it hold; otherwise, and when it alone would pass the ceiling, nothing
    /// is added and it is charged as it inflates, as before (and may be refused then).
    pub async fn grow(&mut self, bytes: usize, deadline: Instant) -> Result<(), IngestError> {
        let more = self
            .used
            .saturating_add(bytes)
            .saturating_sub(self.reserved);
        if more == 0 {
            return Ok(());
        }
        if self.budget.grow(more, self.reserved, deadline).await? {
            self.reserved += more;
        }
        Ok(())
    }

    /// Gives back what the request holds beyond its base, what it uses, and `bytes`
    /// more: room made for an estimate that turned out larger than what came.
    pub fn trim(&mut self, bytes: usize) {
        let keep = BASE_RESERVATION
            .saturating_add(self.used)
            .saturating_add(bytes);
        if keep < self.reserved {
            self.budget.release(self.reserved - keep);
            self.reserved = keep;
        }
    }

    /// Accounts for `bytes` more held by the request: out of its reservation while it
    /// lasts, then added without waiting, up to the budget's hard ceiling. Past the
    /// ceiling the request is refused (overloaded; too large when it alone is past it)
    /// and nothing is added.
    pub fn charge(&mut self, bytes: usize) -> Result<(), IngestError> {
        let used = self.used.saturating_add(bytes);
        if used > self.reserved {
            let more = used - self.reserved;
            if !self.budget.try_add(more, self.budget.ceiling) {
                return Err(self.budget.refusal(used));
            }
            self.reserved = used;
        }
        self.used = used;
        Ok(())
    }

    /// Takes back a charge of `bytes` whose memory is gone (a decompression that was
    /// given up): they stay reserved for the request, as room for what comes next.
    pub fn uncharge(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// The refusal of a request that needed more than `room` (what [`Reservation::room`]
    /// gave) beyond what it uses: too large when that was all the ceiling leaves it, with
    /// no other request holding anything; otherwise overloaded. (Since decompression is
    /// charged as it goes, only the tests ask: [`Reservation::charge`] refuses the same.)
    #[cfg(test)]
    pub fn refused_past(&self, room: usize) -> IngestError {
        self.budget
            .refusal(self.used.saturating_add(room).saturating_add(1))
    }

    /// What the request may still add before its charges are refused: the rest of its
    /// reservation and the room under the ceiling. (Only the tests ask.)
    #[cfg(test)]
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

/// A body being read, registered with the budget ([`Reservation::body_read`]).
#[derive(Debug)]
pub struct BodyRead {
    budget: Arc<Shared>,
    slot: usize,
    reading: Arc<Reading>,
}

impl BodyRead {
    /// Counts `bytes` more of the body as arrived, for the read and its connection.
    #[inline]
    pub fn arrived(&self, bytes: usize) {
        self.reading.received.fetch_add(bytes, Ordering::Relaxed);
        if let Some((conn, _)) = &self.reading.conn {
            conn.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Sets the body's expected length (a gRPC message's, once its prefix is in).
    pub fn expect(&self, bytes: usize) {
        self.reading.expected.store(bytes, Ordering::Relaxed);
    }

    /// Sets what the read's request holds of the budget: what taking its room back
    /// gives.
    #[inline]
    pub fn holds(&self, bytes: usize) {
        self.reading.holds.store(bytes, Ordering::Relaxed);
    }

    /// Completes when the budget has taken the room back: the read is behind and others
    /// wait. The request must then give its reservation up: it is counted as reclaimed
    /// ([`Budget::reclaimed`]) here, so a read told to that finishes first is not.
    pub async fn reclaimed(&self) {
        self.reading.wake.notified().await;
        self.budget.reclaimed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for BodyRead {
    fn drop(&mut self) {
        let mut reads = self.budget.reads();
        reads.slots[self.slot] = None;
        reads.free.push(self.slot);
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
        // Past the ceiling on its own: it could never be taken, so too large.
        assert!(matches!(
            a.charge(1),
            Err(IngestError::OverBudget { ceiling }) if ceiling == 24 * KIB
        ));
        assert!(matches!(a.refused_past(0), IngestError::OverBudget { .. }));
        assert_eq!(budget.in_use_bytes(), 24 * KIB);
        // Past it only with what another request holds: overloaded, worth a retry.
        drop(a);
        let _other = budget.admit(0, soon()).await.unwrap();
        let mut b = budget.admit(8 * KIB, soon()).await.unwrap();
        let room = b.room();
        // Its 12 KiB reservation, and what the 24 KiB ceiling leaves beside the 16 held.
        assert_eq!(room, 20 * KIB);
        assert!(matches!(b.charge(room + 1), Err(IngestError::Overloaded)));
        assert!(matches!(b.refused_past(room), IngestError::Overloaded));
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
        // Past the ceiling on its own: refused as too large, nothing taken.
        assert!(matches!(
            b.expect(64 * KIB),
            Err(IngestError::OverBudget { .. })
        ));
        // Within it on its own, past it with what `a` holds: overloaded.
        assert!(matches!(b.expect(42 * KIB), Err(IngestError::Overloaded)));
        assert_eq!(budget.in_use_bytes(), 2 * BASE_RESERVATION + 36 * KIB);
    }

    /// Counts the polls of the future it wraps.
    struct Polls<F> {
        inner: std::pin::Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }

    impl<F: Future> Future for Polls<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn waiters_are_admitted_oldest_first_and_a_small_one_does_not_pass_a_large_one() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let mut a = budget.admit(12 * KIB, soon()).await.unwrap();
        let later = || Instant::now() + Duration::from_secs(5);
        let spawn = |want: usize| {
            let budget = budget.clone();
            let deadline = later();
            tokio::spawn(async move { budget.admit(want, deadline).await })
        };
        let large = spawn(10 * KIB);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let small = spawn(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // 4 KiB come free: enough for the small one, not for the large one before it.
        a.expect(8 * KIB).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!large.is_finished() && !small.is_finished());
        // Then enough for the large one: it goes first, the small one still waits.
        drop(a);
        let large = large.await.unwrap().unwrap();
        assert_eq!(large.bytes(), 14 * KIB);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!small.is_finished());
        drop(large);
        assert_eq!(small.await.unwrap().unwrap().bytes(), BASE_RESERVATION);
        assert_eq!(budget.in_use_bytes(), 0);
        assert_eq!(budget.waits(), 2);
    }

    #[tokio::test]
    async fn a_request_that_grows_waits_ahead_of_new_ones_and_up_to_the_ceiling() {
        // 64 KiB, a ceiling of 96.
        let budget = Arc::new(Budget::new(64 * KIB));
        let mut a = budget.admit(20 * KIB, soon()).await.unwrap();
        let mut b = budget.admit(0, soon()).await.unwrap();
        // Room for 12 KiB more than it uses: 8 more than it holds, added at once.
        b.grow(12 * KIB, soon()).await.unwrap();
        assert_eq!((b.bytes(), budget.in_use_bytes()), (12 * KIB, 36 * KIB));
        // Within what it holds and does not use yet: nothing to add.
        b.charge(2 * KIB).unwrap();
        b.grow(10 * KIB, soon()).await.unwrap();
        assert_eq!(b.bytes(), 12 * KIB);
        let c = budget.admit(24 * KIB, soon()).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 64 * KIB);
        // The budget is full: a new request waits, and `a`, asking after it to grow by
        // more than the ceiling leaves, waits ahead of it.
        let later = Instant::now() + Duration::from_secs(5);
        let budget2 = budget.clone();
        let new = tokio::spawn(async move { budget2.admit(0, later).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let grown = tokio::spawn(async move { a.grow(70 * KIB, later).await.map(|()| a) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!grown.is_finished() && !new.is_finished());
        // `b` is done: room for the new one (4 KiB) but not for `a` (46 more), so
        // neither goes.
        drop(b);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!grown.is_finished() && !new.is_finished());
        // Then `c`: `a` grows past the budget (70 of 64 KiB), and the new one waits
        // until the budget has room.
        drop(c);
        let a = grown.await.unwrap().unwrap();
        assert_eq!((a.bytes(), budget.in_use_bytes()), (70 * KIB, 70 * KIB));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!new.is_finished());
        drop(a);
        assert_eq!(new.await.unwrap().unwrap().bytes(), BASE_RESERVATION);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn a_request_does_not_wait_to_grow_when_it_would_hold_up_an_older_one_for_good() {
        // 32 KiB, a ceiling of 48.
        let budget = Arc::new(Budget::new(32 * KIB));
        let x = budget.admit(8 * KIB, soon()).await.unwrap();
        let mut y = budget.admit(8 * KIB, soon()).await.unwrap();
        let mut w = budget.admit(4 * KIB, soon()).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 32 * KIB);
        // `y` waits: what it holds (12) and wants (30 more) fit under the ceiling.
        let later = Instant::now() + Duration::from_secs(5);
        let grown = tokio::spawn(async move { y.grow(42 * KIB, later).await.map(|()| y) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!grown.is_finished());
        // `w` wanting 4 KiB more: waiting behind `y`, it would hold its 8 until `y` is
        // admitted, and `y` (30 more beside 12 and 8) could not be. It does not wait,
        // and nothing is added (it will be charged as it goes).
        w.grow(12 * KIB, soon()).await.unwrap();
        assert_eq!(w.bytes(), 8 * KIB);
        // Alone past the ceiling: nothing added either.
        w.grow(49 * KIB, soon()).await.unwrap();
        assert_eq!(w.bytes(), 8 * KIB);
        // Once what the others hold comes back, `y` grows.
        drop(x);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!grown.is_finished());
        drop(w);
        let y = grown.await.unwrap().unwrap();
        assert_eq!(y.bytes(), 42 * KIB);
        drop(y);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn a_request_that_cannot_grow_in_time_is_refused_and_holds_no_more() {
        let budget = Budget::new(64 * KIB);
        let mut a = budget.admit(12 * KIB, soon()).await.unwrap();
        let mut b = budget.admit(12 * KIB, soon()).await.unwrap();
        a.grow(64 * KIB, soon()).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 80 * KIB);
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(matches!(
            b.grow(40 * KIB, deadline).await,
            Err(IngestError::Overloaded)
        ));
        assert_eq!((b.bytes(), budget.in_use_bytes()), (16 * KIB, 80 * KIB));
        drop((a, b));
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn room_made_for_more_than_came_is_given_back() {
        let budget = Budget::new(64 * KIB);
        let mut a = budget.admit(0, soon()).await.unwrap();
        a.charge(KIB).unwrap();
        a.grow(10 * KIB, soon()).await.unwrap();
        assert_eq!(a.bytes(), 11 * KIB);
        // 3 KiB came of the 10 expected; 2 more are wanted (its decode).
        a.charge(3 * KIB).unwrap();
        a.trim(2 * KIB);
        assert_eq!((a.bytes(), budget.in_use_bytes()), (10 * KIB, 10 * KIB));
        // Never more than it holds.
        a.trim(100 * KIB);
        assert_eq!(a.bytes(), 10 * KIB);
        drop(a);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_wakes_only_the_waiters_it_admits() {
        const WAITERS: usize = 300;
        let budget = Arc::new(Budget::new(BASE_RESERVATION));
        let first = budget.admit(0, soon()).await.unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..WAITERS {
            let budget = budget.clone();
            let done_tx = done_tx.clone();
            let admit = async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                let held = budget.admit(0, deadline).await.unwrap();
                // Each holds the whole budget a moment, then hands it to the next.
                tokio::task::yield_now().await;
                drop(held);
                done_tx.send(()).unwrap();
            };
            tokio::spawn(Polls {
                inner: Box::pin(admit),
                polls: polls.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        for _ in 0..WAITERS {
            tokio::time::timeout(Duration::from_secs(20), done.recv())
                .await
                .unwrap()
                .unwrap();
        }
        // Each waiter is polled when spawned, when admitted and after its yield, give or
        // take a spurious wake: a release that woke every waiter made it about
        // WAITERS * WAITERS / 2.
        let polls = polls.load(Ordering::Relaxed);
        assert!(polls <= 4 * WAITERS, "{polls} polls for {WAITERS} waiters");
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_holds_nothing_and_is_not_admitted_after() {
        let budget = Arc::new(Budget::new(8 * KIB));
        let a = budget.admit(4 * KIB, soon()).await.unwrap();
        // One times out; one is cancelled (its request went away).
        let timed_out = budget.admit(0, Instant::now() + Duration::from_millis(10));
        assert!(matches!(timed_out.await, Err(IngestError::Overloaded)));
        let cancelled = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget
                    .admit(0, Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancelled.abort();
        let _ = cancelled.await;
        // Behind both, a live one gets the room when it comes free.
        let live = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget
                    .admit(KIB, Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a);
        let live = live.await.unwrap().unwrap();
        assert_eq!(budget.in_use_bytes(), live.bytes());
        drop(live);
        assert_eq!(budget.in_use_bytes(), 0);
        assert_eq!(budget.shared.queued.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn when_the_oldest_waiter_gives_up_the_next_one_that_fits_is_admitted() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let _held = budget.admit(6 * KIB, soon()).await.unwrap();
        // 6 KiB free: not enough for the oldest (14 KiB), enough for the next (4 KiB).
        let oldest = budget.admit(10 * KIB, Instant::now() + Duration::from_millis(30));
        let next = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget
                    .admit(0, Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        // The oldest times out with nothing given back; the next gets in at once.
        assert!(matches!(oldest.await, Err(IngestError::Overloaded)));
        let next = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("admitted when the oldest gave up")
            .unwrap()
            .unwrap();
        assert_eq!(next.bytes(), BASE_RESERVATION);
    }

    #[tokio::test]
    async fn a_body_that_is_behind_gives_its_room_to_a_waiting_request() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let a = budget.admit(12 * KIB, soon()).await.unwrap();
        // Headers, then nothing: the body never comes.
        let read = a.body_read(12 * KIB, Instant::now() + Duration::from_secs(30), None);
        let squatter = tokio::spawn(async move {
            read.reclaimed().await;
            drop(read);
            drop(a);
        });
        let started = Instant::now();
        let b = budget
            .admit(8 * KIB, Instant::now() + Duration::from_secs(5))
            .await
            .expect("admitted once the room is taken back");
        assert!(started.elapsed() >= RECLAIM_GRACE - Duration::from_millis(20));
        assert!(started.elapsed() < RECLAIM_GRACE + Duration::from_secs(1));
        squatter.await.unwrap();
        assert_eq!(budget.reclaimed(), 1);
        assert_eq!(budget.in_use_bytes(), b.bytes());
        drop(b);
        assert!(budget.shared.reads().slots.iter().all(Option::is_none));
    }

    #[tokio::test]
    async fn a_waiter_takes_back_only_the_room_it_needs() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let deadline = Instant::now() + Duration::from_secs(30);
        // Two requests that send nothing, each holding 8 KiB; the first, begun
        // earlier, is further behind.
        let a = budget.admit(4 * KIB, soon()).await.unwrap();
        let a_read = a.body_read(4 * KIB, deadline, None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = budget.admit(4 * KIB, soon()).await.unwrap();
        let b_read = b.body_read(4 * KIB, deadline, None);
        let first = tokio::spawn(async move {
            a_read.reclaimed().await;
            drop((a_read, a));
        });
        // A waiter that needs 6 KiB: the first one's room is enough.
        let c = budget
            .admit(2 * KIB, Instant::now() + Duration::from_secs(5))
            .await
            .expect("admitted once the room is taken back");
        first.await.unwrap();
        // The second keeps its room: nothing more was needed.
        let kept = tokio::time::timeout(RECLAIM_EVERY * 5, b_read.reclaimed()).await;
        assert!(kept.is_err(), "the second read gave its room up too");
        assert_eq!(budget.reclaimed(), 1);
        assert_eq!(budget.in_use_bytes(), b.bytes() + c.bytes());
        drop((b_read, b, c));
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn the_room_wanted_counts_each_waiter_against_its_own_limit() {
        // 16 KiB, a ceiling of 24. A request that grows past the budget (20 of 16).
        let budget = Arc::new(Budget::new(16 * KIB));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(budget.admit(0, soon()).await.unwrap());
        }
        let mut x = budget.admit(0, soon()).await.unwrap();
        x.grow(8 * KIB, soon()).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 20 * KIB);
        assert_eq!(budget.shared.room_wanted(), 0);
        // A new request of 4 KiB waits: 8 KiB must come free for it, not 4.
        let later = Instant::now() + Duration::from_secs(5);
        let budget2 = budget.clone();
        let new = tokio::spawn(async move { budget2.admit(0, later).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(budget.shared.room_wanted(), 8 * KIB);
        // One of the others asks to grow by 6 KiB, ahead of it: against the ceiling,
        // 2 KiB for it, then 14 for the new one after it.
        let mut g = held.pop().unwrap();
        let grown = tokio::spawn(async move { g.grow(10 * KIB, later).await.map(|()| g) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(budget.shared.room_wanted(), 14 * KIB);
        drop((x, held));
        let g = grown.await.unwrap().unwrap();
        let new = new.await.unwrap().unwrap();
        drop((g, new));
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[tokio::test]
    async fn a_body_on_pace_keeps_its_room_and_nothing_is_taken_back_while_none_waits() {
        let budget = Arc::new(Budget::new(16 * KIB));
        let a = budget.admit(12 * KIB, soon()).await.unwrap();
        let read = a.body_read(12 * KIB, Instant::now() + Duration::from_secs(30), None);
        // Half of it at once: at that pace it is in long before its deadline.
        read.arrived(6 * KIB);
        let refused = budget
            .admit(8 * KIB, Instant::now() + Duration::from_millis(800))
            .await;
        assert!(matches!(refused, Err(IngestError::Overloaded)));
        assert_eq!(budget.reclaimed(), 0);
        drop(read);
        // A body with nothing in, past the grace, with nobody waiting: it keeps its room.
        let stalled = a.body_read(12 * KIB, Instant::now() + Duration::from_secs(30), None);
        let kept = tokio::time::timeout(RECLAIM_GRACE * 2, stalled.reclaimed()).await;
        assert!(kept.is_err());
        assert_eq!(budget.reclaimed(), 0);
        // A read is behind when its pace would miss its deadline: a tenth in after a
        // third of its time is; half in is not.
        let slow = Reading {
            started: Instant::now() - Duration::from_secs(1),
            deadline: Instant::now() + Duration::from_secs(2),
            expected: AtomicUsize::new(10_000),
            holds: AtomicUsize::new(10_000),
            received: AtomicUsize::new(1_000),
            conn: None,
            reclaimed: AtomicBool::new(false),
            wake: Notify::new(),
        };
        assert!(slow.shortfall(Instant::now()).is_some());
        slow.received.store(5_000, Ordering::Relaxed);
        assert!(slow.shortfall(Instant::now()).is_none());
    }

    /// A read begun `ago` before now, due 30 s after it began, with `received` of
    /// `expected` bytes in, on connection `conn` (whose count was 0 when it began).
    fn reading(
        ago: Duration,
        expected: usize,
        received: usize,
        conn: Option<&Arc<AtomicU64>>,
    ) -> Arc<Reading> {
        let started = Instant::now() - ago;
        Arc::new(Reading {
            started,
            deadline: started + Duration::from_secs(30),
            expected: AtomicUsize::new(expected),
            holds: AtomicUsize::new(expected),
            received: AtomicUsize::new(received),
            conn: conn.map(|c| (c.clone(), 0)),
            reclaimed: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    #[test]
    fn reads_on_a_connection_busy_with_others_are_not_behind_but_its_squatters_are() {
        let now = Instant::now();
        let count = |reads: &[Arc<Reading>]| behind(reads.iter(), now).len();
        // Nothing in after a second: behind, on its own or on an idle connection.
        let idle = Arc::new(AtomicU64::new(0));
        assert_eq!(
            count(&[reading(Duration::from_secs(1), 300_000, 0, None)]),
            1
        );
        let waiting = reading(Duration::from_secs(1), 300_000, 0, Some(&idle));
        assert_eq!(count(std::slice::from_ref(&waiting)), 1);
        // Within the grace, or on pace: not behind.
        assert_eq!(
            count(&[reading(Duration::from_millis(100), 300_000, 0, None)]),
            0
        );
        assert_eq!(
            count(&[reading(Duration::from_secs(3), 300_000, 40_000, None)]),
            0
        );
        // The same read, while its connection brought in 1 MB for another request (the
        // client sends that body first): excused.
        idle.store(1_000_000, Ordering::Relaxed);
        let busy = reading(Duration::from_secs(1), 300_000, 300_000, Some(&idle));
        assert_eq!(count(&[waiting.clone(), busy]), 0);
        // Ten requests of 1 MiB that send nothing, beside one body sent at 500 KB in
        // 3 s: the connection brought in less than the ten need together.
        let conn = Arc::new(AtomicU64::new(500_000));
        let mut reads: Vec<_> = (0..10)
            .map(|_| reading(Duration::from_secs(3), 1 << 20, 0, Some(&conn)))
            .collect();
        reads.push(reading(
            Duration::from_secs(3),
            600_000,
            500_000,
            Some(&conn),
        ));
        assert_eq!(count(&reads), 10);
        // Two of them alone would be excused by it.
        reads.truncate(2);
        assert_eq!(count(&reads), 0);
        // A read told already is not told again.
        waiting.reclaimed.store(true, Ordering::Relaxed);
        idle.store(0, Ordering::Relaxed);
        assert_eq!(count(&[waiting]), 0);
    }

    #[test]
    fn the_clients_deadline_can_shorten_the_wait() {
        let now = Instant::now();
        let client = now + Duration::from_millis(10);
        assert!(wait_deadline(Duration::from_secs(1), Some(client)) <= client);
        assert!(wait_deadline(Duration::from_secs(1), None) >= now + Duration::from_secs(1));
    }
}
