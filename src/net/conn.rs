//! One connection: its TLS handshake, its HTTP/1 or HTTP/2 server, and the watch that
//! closes it when it sends no request head in time or stays idle.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The clock of one connection: what it is doing, for the watch.
///
/// Times are milliseconds since the connection was accepted (`epoch`); 0 in
/// `head_since` means "no head begun". Relaxed: each field is read on its own, and a
/// stale read only moves a check to the next wake-up.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Responses still being sent ([`Tracked`] bodies not yet dropped).
    sending: AtomicUsize,
    requests: AtomicU64,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    h2: AtomicBool,
    /// Told to close to make room at the port's cap ([`Open::make_room`]).
    evict: tokio::sync::Notify,
    /// Picked for eviction and not yet gone (so not picked twice).
    evicting: AtomicBool,
    /// Body bytes the connection's requests have read so far, counted by the in-flight
    /// budget's body reads, to tell a stalled request from one whose connection is busy
    /// with the bodies of others.
    received: Arc<AtomicU64>,
}

/// What a check of a connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing due; check again at this instant.
    Until(Instant),
    /// No complete request head in time.
    HeaderTimeout,
    /// Idle for too long.
    IdleTimeout,
}

impl ConnState {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            evicting: AtomicBool::new(false),
            received: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The count of body bytes the connection's requests have read, shared.
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// Since when the connection has been idle, if it holds nothing a client waits on
    /// now (no request being handled, no response being sent), and whether it ever sent
    /// a complete request head (if not, it has been idle since it was accepted).
    pub fn idle_mark(&self) -> Option<(bool, Instant)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 || self.sending.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some((false, self.epoch));
        }
        Some((true, self.at(self.idle_since.load(Ordering::Relaxed))))
    }

    /// Whether it ever sent a complete request head.
    pub fn served(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// Completes once the connection is picked to make room; it should then close if it
    /// is still idle ([`ConnState::idle_mark`]), or call [`ConnState::spared`].
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Picked to make room, it was busy again: it may be picked later.
    pub fn spared(&self) {
        self.evicting.store(false, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// When the connection was accepted.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// A request head arrived (`h2`: over HTTP/2); it is in flight until the returned
    /// guard is dropped, when its response is ready. Sending the response is not being
    /// in flight: a client that does not take it (an HTTP/2 window it never opens, a
    /// socket it never reads) leaves the connection idle, and only the response's
    /// progress (`progress`) keeps it from the idle timeout.
    pub fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A response moved on (a frame of it was taken to be sent, or it ended): the idle
    /// clock starts again.
    fn progress(&self) {
        self.idle_since.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes were read: with no request in flight and no response being sent on
    /// HTTP/1, they begin the next head. (Read while a response is still written, they
    /// are a pipelined request's, which HTTP/1 reads only after that response: a slow
    /// reader is the idle timeout's, not the header timeout's.)
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.sending.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Judges the connection at `now` against the two timeouts.
    pub fn check(&self, now: Instant, header: Duration, idle: Duration) -> Verdict {
        if self.requests.load(Ordering::Relaxed) == 0 {
            let due = self.epoch + header;
            return if now >= due {
                Verdict::HeaderTimeout
            } else {
                Verdict::Until(due)
            };
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Until(now + idle);
        }
        let idle_due = self.at(self.idle_since.load(Ordering::Relaxed)) + idle;
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            // HTTP/1: the first bytes of the next request started its head's clock.
            // (HTTP/2 peers send pings and window updates between requests.)
            let head_due = self.at(head) + header;
            if now >= head_due {
                return Verdict::HeaderTimeout;
            }
            if now < idle_due {
                return Verdict::Until(head_due.min(idle_due));
            }
        }
        if now >= idle_due {
            Verdict::IdleTimeout
        } else {
            Verdict::Until(idle_due)
        }
    }
}

/// The open connections of one port, for [`Open::make_room`].
#[derive(Debug, Default)]
pub struct Open {
    conns: std::sync::Mutex<std::collections::HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
}

impl Open {
    /// Registers a connection until the returned guard is dropped.
    pub fn add(self: &Arc<Self>, state: Arc<ConnState>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, state);
        Registered {
            open: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<ConnState>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells one idle connection to close, so that a new one can be taken at the
    /// port's cap: one that never sent a complete request head, open for at least
    /// [`SILENT_FOR`], the oldest first; else one that has been idle after its requests
    /// for at least [`IDLE_FOR`], the longest idle first. False when none is.
    pub fn make_room(&self) -> bool {
        let now = Instant::now();
        let conns = self.lock();
        let idlest = conns
            .values()
            .filter(|c| !c.evicting.load(Ordering::Relaxed))
            .filter_map(|c| c.idle_mark().map(|mark| (mark, c)))
            .filter(|((served, since), _)| {
                let least = if *served { IDLE_FOR } else { SILENT_FOR };
                now.saturating_duration_since(*since) >= least
            })
            .min_by_key(|(mark, _)| *mark);
        match idlest {
            Some((_, c)) => {
                c.evicting.store(true, Ordering::Relaxed);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// How long a connection must have been open without a complete request head before
/// it may be evicted: a client that has just connected is about to send one.
pub const SILENT_FOR: Duration = Duration::from_millis(100);

/// How long a connection must have been idle after its requests before it may be
/// evicted: a keep-alive connection between two close requests is in use.
pub const IDLE_FOR: Duration = Duration::from_secs(1);

/// A connection's place in [`Open`]; it leaves when this is dropped.
#[derive(Debug)]
pub struct Registered {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

/// A request in flight; dropped when its response is ready.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        if state.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            state.idle_since.store(state.now_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that tells its connection's [`ConnState`] each time a frame of it
/// is taken to be sent, and when it is dropped (sent, or its stream reset).
pub struct Tracked<B> {
    inner: B,
    state: Arc<ConnState>,
}

impl<B> Tracked<B> {
    /// `inner`, on the connection of `state`.
    pub fn new(inner: B, state: Arc<ConnState>) -> Self {
        state.sending.fetch_add(1, Ordering::Relaxed);
        Self { inner, state }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.state.sending.fetch_sub(1, Ordering::Relaxed);
        self.state.progress();
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(Some(Ok(_)))) {
            self.state.progress();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's stream that tells its [`ConnState`] when bytes arrive.
pub struct Watched<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T> Watched<T> {
    /// Watches `inner`.
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream in clear text or under TLS.
pub enum MaybeTls<T> {
    /// Clear text.
    Plain(T),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<T>>),
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(2);
    const IDLE: Duration = Duration::from_secs(3);

    #[test]
    fn a_connection_is_judged_by_its_head_then_by_its_idleness() {
        let state = ConnState::new();
        let t0 = state.epoch();
        assert_eq!(state.check(t0, HEADER, IDLE), Verdict::Until(t0 + HEADER));
        assert_eq!(
            state.check(t0 + HEADER, HEADER, IDLE),
            Verdict::HeaderTimeout
        );

        let state = ConnState::new();
        let t0 = state.epoch();
        let request = state.request_started(false);
        // In flight: no timeout, however long.
        assert!(matches!(
            state.check(t0 + IDLE * 10, HEADER, IDLE),
            Verdict::Until(_)
        ));
        drop(request);
        let idle_from = state.at(state.idle_since.load(Ordering::Relaxed));
        assert_eq!(
            state.check(idle_from, HEADER, IDLE),
            Verdict::Until(idle_from + IDLE)
        );
        assert_eq!(
            state.check(idle_from + IDLE, HEADER, IDLE),
            Verdict::IdleTimeout
        );
        // HTTP/1: a byte of the next head starts the header clock.
        state.bytes_read();
        let head_from = state.at(state.head_since.load(Ordering::Relaxed));
        assert_eq!(
            state.check(head_from + HEADER, HEADER, IDLE),
            Verdict::HeaderTimeout
        );
        // HTTP/2: bytes between requests are pings, not heads.
        state.h2.store(true, Ordering::Relaxed);
        assert!(matches!(
            state.check(head_from + HEADER, HEADER, IDLE),
            Verdict::Until(_) | Verdict::IdleTimeout
        ));
    }

    #[test]
    fn room_is_made_by_evicting_old_silent_connections_then_long_idle_ones_never_busy_ones() {
        let open = Arc::new(Open::default());
        let old_silent = ConnState::new();
        let a = open.add(old_silent.clone());
        let served = ConnState::new();
        let _b = open.add(served.clone());
        drop(served.request_started(false));
        std::thread::sleep(SILENT_FOR + Duration::from_millis(20));
        let young_silent = ConnState::new();
        let _c = open.add(young_silent.clone());
        let busy = ConnState::new();
        let _d = open.add(busy.clone());
        let _in_flight = busy.request_started(true);
        // The silent one open long enough goes first, though the served one has been
        // idle about as long.
        assert!(open.make_room());
        assert!(old_silent.evicting.load(Ordering::Relaxed));
        // Then none: the other silent one has just connected, the served one has been
        // idle less than IDLE_FOR, the busy one is busy.
        assert!(!open.make_room());
        // A connection picked and found busy can be picked again.
        old_silent.spared();
        assert!(open.make_room());
        assert!(old_silent.evicting.load(Ordering::Relaxed));
        // Later: the other silent one (now open long enough) first, then the served
        // one, idle for IDLE_FOR; never the busy one.
        std::thread::sleep(IDLE_FOR);
        assert!(open.make_room());
        assert!(young_silent.evicting.load(Ordering::Relaxed));
        assert!(!served.evicting.load(Ordering::Relaxed));
        assert!(open.make_room());
        assert!(served.evicting.load(Ordering::Relaxed));
        assert!(!open.make_room());
        assert!(!busy.evicting.load(Ordering::Relaxed));
        // A connection leaves the registry with its guard.
        drop(a);
        assert_eq!(open.lock().len(), 3);
    }

    #[test]
    fn a_response_waiting_to_be_sent_is_idle_time_and_its_progress_is_not() {
        let state = ConnState::new();
        let request = state.request_started(true);
        let since = || state.idle_since.load(Ordering::Relaxed);
        let pause = || std::thread::sleep(Duration::from_millis(5));
        pause();
        // Handled: its response is ready, and not yet taken by the client.
        drop(request);
        let body = Tracked::new(http_body_util::Empty::<Bytes>::new(), state.clone());
        let ready = state.at(since());
        assert_eq!(
            state.check(ready, HEADER, IDLE),
            Verdict::Until(ready + IDLE)
        );
        assert_eq!(
            state.check(ready + IDLE, HEADER, IDLE),
            Verdict::IdleTimeout
        );
        // HTTP/1: bytes read while the response is written do not start a head's clock.
        state.bytes_read();
        assert_eq!(state.head_since.load(Ordering::Relaxed), 0);
        // Later, a frame of it is sent: the idle clock starts again.
        pause();
        state.progress();
        let moved = state.at(since());
        assert!(moved > ready);
        assert_eq!(
            state.check(ready + IDLE, HEADER, IDLE),
            Verdict::Until(moved + IDLE)
        );
        // Its end is progress too.
        pause();
        drop(body);
        let ended = state.at(since());
        assert!(ended > moved);
        assert_eq!(
            state.check(moved + IDLE, HEADER, IDLE),
            Verdict::Until(ended + IDLE)
        );
        assert_eq!(state.sending.load(Ordering::Relaxed), 0);
    }
}
