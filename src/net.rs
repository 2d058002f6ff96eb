//! The connection layer of all three ports: one accept loop of our own, on hyper's
//! server connections (HTTP/1 and HTTP/2), with a cap on open connections per port,
//! a descriptor budget, accept errors that back off instead of spinning, header and
//! idle timeouts, optional TLS (rustls), and graceful shutdown.
//!
//! ```text
//! TcpListener ─ accept loop (cap: a permit per connection; errors back off)
//!   └─ per connection task: TCP_NODELAY → [stall guard] → [TLS handshake, by the
//!      header deadline] → hyper auto (h1/h2) → service (tonic or axum)
//!      watched by ConnState: header_read_timeout, idle_timeout, stop (graceful)
//! ```

pub mod conn;
pub mod metrics;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::telemetry::Telemetry;
use conn::{ConnState, MaybeTls, Open, Registered, Tracked, Verdict, Watched};
pub use metrics::{Port, Timeout, TlsListeners};
use tls::Certificates;

/// The metrics port's own cap on open connections, so that `/healthz`, `/readyz` and
/// `/metrics` answer while the OTLP ports are full; also its share of the descriptor
/// budget.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// Descriptors kept for the daemon's own files (checkpoints, the configuration, the
/// certificate files, the runtime): the OTLP ports' caps never reach into them.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The first pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`] and
/// starts again after an accept that works.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// See [`ACCEPT_BACKOFF_MIN`].
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Accept errors are logged at most this often per port, with the count since.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a connection told to close (idle, or shutting down) may take to finish
/// before it is dropped, beyond the timeouts: the header timeout.
/// How long a connection may go on after the port is told to stop: less than the
/// daemon's drain, so requests that never finish cannot outlast it.
const SHUTDOWN_DROP: Duration = Duration::from_secs(9);

fn grace(timeouts: &Timeouts) -> Duration {
    timeouts.header_read
}

/// The two connection timeouts (`limits.header_read_timeout`, `limits.idle_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No complete request head (TLS handshake included) within this: closed.
    pub header_read: Duration,
    /// No request being handled and no response moving for this long: closed (HTTP/2
    /// with a GOAWAY).
    pub idle: Duration,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does) and returns
/// the soft limit then in force; `None` where it cannot be read.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_nofile_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            } else {
                tracing::debug!(
                    "cannot raise the descriptor limit from {} to {}: {}",
                    limit.rlim_cur,
                    limit.rlim_max,
                    io::Error::last_os_error()
                );
            }
        }
        Some(limit.rlim_cur as u64)
    }
}

/// The cap of each OTLP port: `configured`, lowered so that both OTLP ports at their
/// cap leave [`METRICS_MAX_CONNECTIONS`] and [`RESERVED_DESCRIPTORS`] of `nofile`
/// descriptors free. At least 1.
pub fn otlp_cap(configured: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return configured;
    };
    let spare = nofile.saturating_sub(METRICS_MAX_CONNECTIONS as u64 + RESERVED_DESCRIPTORS);
    let each = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
    configured.min(each)
}

/// Completes once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// What accepts connections: a listener, or a test's stand-in.
pub trait Acceptor: Send + 'static {
    /// An accepted connection.
    type Io: Send + 'static;
    /// The next connection, or the accept error.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Acceptor for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        let (stream, _) = TcpListener::accept(self).await?;
        Ok(stream)
    }
}

/// The pause after each failed accept: doubling from [`ACCEPT_BACKOFF_MIN`] to
/// [`ACCEPT_BACKOFF_MAX`].
#[derive(Debug)]
pub struct Backoff(Option<Duration>);

impl Backoff {
    /// No failure yet.
    pub fn new() -> Self {
        Self(None)
    }

    /// The pause after one more failure.
    pub fn pause(&mut self) -> Duration {
        let next = self
            .0
            .map_or(ACCEPT_BACKOFF_MIN, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
        self.0 = Some(next);
        next
    }

    /// An accept worked.
    pub fn reset(&mut self) {
        self.0 = None;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// An open connection's hold on its port: its permit under the cap, and its place in
/// the open-connections gauge.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    port: Port,
    telemetry: Arc<Telemetry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.telemetry.connections.closed(self.port);
    }
}

/// Accepts on `acceptor` until `stop` turns true, at most `cap.available_permits()`
/// connections open at once, handing each to `open` with its [`Slot`]. At the cap, a
/// connection that arrives makes room: `make_room` tells a silent or long-idle
/// connection to close ([`conn::Open::make_room`]; false when there is none, and then
/// the new one waits for one to close, with the kernel's backlog holding the rest). So
/// silent sockets and idle connections cannot keep new clients out. An accept error is
/// counted, logged (at most every [`ACCEPT_ERROR_LOG_EVERY`]) and followed by a pause
/// ([`Backoff`]): running out of descriptors never makes it spin.
pub async fn accept_loop<A: Acceptor>(
    mut acceptor: A,
    port: Port,
    cap: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
    make_room: impl Fn() -> bool,
    mut open: impl FnMut(A::Io, Slot),
) {
    let mut backoff = Backoff::new();
    let log = crate::telemetry::EveryFew::default();
    'accept: loop {
        // The stop comes first: once told to stop, the loop accepts no more.
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok(io) => {
                backoff.reset();
                let permit = match cap.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(tokio::sync::TryAcquireError::Closed) => break,
                    Err(tokio::sync::TryAcquireError::NoPermits) => loop {
                        // Asked again while the one told to close is still busy, or
                        // while none is idle: another may be by then.
                        let retry = if make_room() {
                            Duration::from_millis(50)
                        } else {
                            Duration::from_millis(250)
                        };
                        tokio::select! {
                            biased;
                            () = stopped(&mut stop) => break 'accept,
                            permit = cap.clone().acquire_owned() => match permit {
                                Ok(permit) => break permit,
                                Err(_) => break 'accept,
                            },
                            () = tokio::time::sleep(retry) => {}
                        }
                    },
                };
                telemetry.connections.opened(port);
                let slot = Slot {
                    _permit: permit,
                    port,
                    telemetry: telemetry.clone(),
                };
                open(io, slot);
            }
            Err(e) if connection_error(&e) => {
                // One connection failed before it was accepted (reset or aborted by its
                // peer): nothing is short, so the next accept need not wait.
                telemetry.connections.accept_failed(port);
                tracing::debug!(
                    port = port.as_str(),
                    "a connection failed as it was accepted: {e}"
                );
            }
            Err(e) => {
                telemetry.connections.accept_failed(port);
                let pause = backoff.pause();
                if let Some(count) = log.note(Instant::now(), ACCEPT_ERROR_LOG_EVERY) {
                    tracing::error!(
                        port = port.as_str(),
                        errors = count,
                        "cannot accept connections: {e}; pausing {pause:?} after each failure{}",
                        descriptor_hint(&e)
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stopped(&mut stop) => break,
                }
            }
        }
    }
}

/// An accept error that concerns one connection only, not the listener.
fn connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

fn descriptor_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => {
            " (out of file descriptors: raise the limit, e.g. LimitNOFILE, or lower limits.max_connections)"
        }
        Some(libc::ENOBUFS | libc::ENOMEM) => " (out of kernel memory for sockets)",
        _ => "",
    }
}

/// How one port serves its connections.
pub struct Listener<S, B> {
    /// Which port.
    pub port: Port,
    /// Most connections open at once.
    pub cap: usize,
    /// Header and idle timeouts.
    pub timeouts: Timeouts,
    /// TLS, when on.
    pub tls: Option<Arc<Certificates>>,
    /// Close connections whose writes stall for `export::serve::WRITE_STALL` (the
    /// metrics port).
    pub stall_guard: bool,
    /// HTTP/1 and HTTP/2 settings.
    pub http: auto::Builder<TokioExecutor>,
    /// The service each request goes to.
    pub service: S,
    /// Turns hyper's request into the service's.
    pub request: fn(http::Request<Incoming>) -> http::Request<B>,
    /// Where the counters go.
    pub telemetry: Arc<Telemetry>,
}

/// hyper's HTTP settings for a port: HTTP/1 and HTTP/2 (h2c, or ALPN under TLS) with
/// tokio's timer, HTTP/1 header timeouts off (the connection watch does them, counting
/// from the first byte of a head rather than from the previous response).
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    builder
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, R> Listener<S, B>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    R::Error: Into<BoxError>,
{
    /// Serves `listener` until `stop` turns true, then lets the open connections
    /// finish (idle ones close at once, HTTP/2 ones get a GOAWAY) and returns once
    /// they all have.
    pub async fn serve(self, listener: TcpListener, stop: watch::Receiver<bool>) {
        let cap = Arc::new(Semaphore::new(self.cap));
        self.telemetry.connections.set_limit(self.port, self.cap);
        let port = self.port;
        let telemetry = self.telemetry.clone();
        let this = Arc::new(self);
        let stopped = stop.clone();
        let open = Arc::new(Open::default());
        let room = open.clone();
        accept_loop(
            listener,
            port,
            cap.clone(),
            telemetry,
            stop,
            move || room.make_room(),
            |stream, slot| {
                if let Err(e) = stream.set_nodelay(true) {
                    // Without it Nagle's algorithm holds back small writes (responses,
                    // window updates) and gRPC throughput halves (examples/loadgen.rs).
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
                let peer = stream.peer_addr().ok();
                let this = this.clone();
                let stop = stopped.clone();
                // Registered at once, so that a burst of silent connections can be
                // evicted before their tasks first run.
                let state = ConnState::new();
                let registered = open.add(state.clone());
                tokio::spawn(async move {
                    let conn = Conn {
                        state,
                        _registered: registered,
                        _slot: slot,
                    };
                    if this.stall_guard {
                        let stream = crate::export::serve::StallGuarded::new(
                            stream,
                            crate::export::serve::WRITE_STALL,
                        );
                        this.connection(stream, peer, conn, stop).await;
                    } else {
                        this.connection(stream, peer, conn, stop).await;
                    }
                });
            },
        )
        .await;
        // Every connection holds a permit until it is closed.
        let all = u32::try_from(this.cap).unwrap_or(u32::MAX);
        let _ = cap.acquire_many(all).await;
    }

    async fn connection<T>(
        &self,
        stream: T,
        peer: Option<std::net::SocketAddr>,
        conn: Conn,
        mut stop: watch::Receiver<bool>,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = conn.state.clone();
        let header_due =
            tokio::time::Instant::from_std(state.epoch().into_std() + self.timeouts.header_read);
        let stream = match &self.tls {
            None => MaybeTls::Plain(stream),
            Some(certificates) => {
                let handshake = certificates.acceptor().accept(stream);
                let done = tokio::select! {
                    done = tokio::time::timeout_at(header_due, handshake) => done,
                    () = stopped(&mut stop) => return,
                    // A handshake is never busy: it has sent no request.
                    () = state.evicted() => {
                        self.telemetry.connections.evicted(self.port);
                        return;
                    }
                };
                match done {
                    Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        self.telemetry.connections.handshake_failed(self.port);
                        tracing::debug!(port = self.port.as_str(), "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        self.telemetry.connections.handshake_failed(self.port);
                        self.telemetry
                            .connections
                            .timed_out(self.port, Timeout::Header);
                        return;
                    }
                }
            }
        };
        let service = Adapter {
            service: self.service.clone(),
            request: self.request,
            state: state.clone(),
            peer: peer.map(Peer),
        };
        let io = TokioIo::new(Watched::new(stream, state.clone()));
        let conn = self.http.serve_connection(io, service);
        tokio::pin!(conn);
        let mut closing = false;
        let mut idle_noted = false;
        let mut drop_at: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let verdict = if idle_noted {
                Verdict::Until(drop_at.unwrap_or(now + self.timeouts.idle))
            } else {
                state.check(now, self.timeouts.header_read, self.timeouts.idle)
            };
            let wake = match verdict {
                Verdict::Until(at) => drop_at.map_or(at, |d| d.min(at)),
                Verdict::HeaderTimeout => {
                    self.telemetry
                        .connections
                        .timed_out(self.port, Timeout::Header);
                    return;
                }
                Verdict::IdleTimeout => {
                    self.telemetry
                        .connections
                        .timed_out(self.port, Timeout::Idle);
                    idle_noted = true;
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    let at = now + grace(&self.timeouts);
                    drop_at = Some(at);
                    at
                }
            };
            if drop_at.is_some_and(|d| now >= d) {
                return;
            }
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(port = self.port.as_str(), "connection ended: {e}");
                    }
                    return;
                }
                () = state.evicted() => {
                    if state.idle_mark().is_none() {
                        state.spared();
                        continue;
                    }
                    self.telemetry.connections.evicted(self.port);
                    // Never served: nothing to tell it. Else as the idle timeout does
                    // (HTTP/2: a GOAWAY, so the client knows no stream was seen), with
                    // a short grace.
                    if !state.served() {
                        return;
                    }
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    let at = tokio::time::Instant::now() + EVICT_GRACE;
                    drop_at = Some(drop_at.map_or(at, |d| d.min(at)));
                }
                () = stopped(&mut stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    // Requests in flight finish within the daemon's drain; a connection
                    // that still has one then (a client that stopped reading its
                    // response) is dropped, so the port's task ends and the drain with it.
                    let deadline = tokio::time::Instant::now() + SHUTDOWN_DROP;
                    drop_at = Some(drop_at.map_or(deadline, |d| d.min(deadline)));
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// How long an evicted connection that has served requests gets to close after its
/// GOAWAY (HTTP/2) before it is dropped.
const EVICT_GRACE: Duration = Duration::from_secs(1);

/// What a connection's task holds: its clock, its place among the port's open
/// connections, and its slot under the port's cap (given back when the task ends).
struct Conn {
    state: Arc<ConnState>,
    _registered: Registered,
    _slot: Slot,
}

/// The port's service as hyper calls it: each request is in flight for the
/// connection's watch until its response is ready; then each frame of the response's
/// body taken to be sent, and its end, count as the connection's progress.
struct Adapter<S, B> {
    service: S,
    request: fn(http::Request<Incoming>) -> http::Request<B>,
    state: Arc<ConnState>,
    peer: Option<Peer>,
}

/// The address of the client a request came from: an extension of every request the
/// listeners hand on (for the logs of refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::SocketAddr);

impl Peer {
    /// The peer of `request`, when a listener put it there.
    pub fn of<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
        request.extensions().get::<Peer>().map(|p| p.0)
    }
}

/// The body bytes read so far by a connection's requests, all of them together: an
/// extension of every request the listeners hand on, counted by the in-flight budget's
/// body reads. On HTTP/2 a request can receive nothing for a while because its client
/// is sending the bodies of other requests on the same connection; the budget reads
/// this to tell that from a stall. Body bytes only: frames, pings and headers do not
/// count.
#[derive(Debug, Clone)]
pub struct ConnReceived(pub Arc<std::sync::atomic::AtomicU64>);

impl ConnReceived {
    /// The count of the connection a request (its `extensions`) came on, when a
    /// listener put it there.
    pub fn of(extensions: &http::Extensions) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        extensions.get::<ConnReceived>().map(|c| c.0.clone())
    }
}

impl<S, B, R> hyper::service::Service<http::Request<Incoming>> for Adapter<S, B>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Response = http::Response<Tracked<R>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let in_flight = self
            .state
            .request_started(req.version() == http::Version::HTTP_2);
        let mut req = req;
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(peer);
        }
        req.extensions_mut()
            .insert(ConnReceived(self.state.received()));
        let request = (self.request)(req);
        let service = self.service.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(service, request).await?;
            // Sending from here on: counted before the request stops being in flight,
            // so the connection never looks idle in between.
            let response = response.map(|body| Tracked::new(body, state));
            drop(in_flight);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Fails with `errno` until `until`, then hands out connections.
    struct Exhausted {
        until: Instant,
        calls: Arc<AtomicU64>,
        errno: i32,
    }

    impl Acceptor for Exhausted {
        type Io = ();

        async fn accept(&mut self) -> io::Result<()> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if Instant::now() < self.until {
                return Err(io::Error::from_raw_os_error(self.errno));
            }
            Ok(())
        }
    }

    /// Runs the accept loop on `acceptor` until it has opened three connections.
    async fn three_connections(acceptor: Exhausted, telemetry: Arc<Telemetry>) -> u64 {
        let (stop_tx, stop) = watch::channel(false);
        let opened = Arc::new(AtomicU64::new(0));
        let seen = opened.clone();
        let stopper = stop_tx.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            accept_loop(
                acceptor,
                Port::OtlpGrpc,
                Arc::new(Semaphore::new(4)),
                telemetry,
                stop,
                || false,
                move |(), slot| {
                    drop(slot);
                    if seen.fetch_add(1, Ordering::Relaxed) + 1 == 3 {
                        let _ = stopper.send(true);
                    }
                },
            ),
        )
        .await
        .expect("the loop stops when told");
        opened.load(Ordering::Relaxed)
    }

    #[test]
    fn the_backoff_doubles_to_a_second_and_starts_again_after_a_success() {
        let mut b = Backoff::new();
        let pauses: Vec<u64> = (0..10).map(|_| b.pause().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.pause(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn accept_errors_are_logged_at_most_every_ten_seconds_with_their_count() {
        let log = crate::telemetry::EveryFew::default();
        let t0 = Instant::now();
        assert_eq!(log.note(t0, ACCEPT_ERROR_LOG_EVERY), Some(1));
        for i in 1..100 {
            assert_eq!(
                log.note(t0 + Duration::from_millis(i * 50), ACCEPT_ERROR_LOG_EVERY),
                None
            );
        }
        assert_eq!(
            log.note(t0 + ACCEPT_ERROR_LOG_EVERY, ACCEPT_ERROR_LOG_EVERY),
            Some(100)
        );
    }

    #[test]
    fn the_otlp_cap_leaves_the_metrics_port_and_the_reserve_their_descriptors() {
        assert_eq!(otlp_cap(4096, None), 4096);
        assert_eq!(otlp_cap(4096, Some(1 << 20)), 4096);
        assert_eq!(otlp_cap(4096, Some(1024)), (1024 - 64 - 128) / 2);
        assert_eq!(otlp_cap(4096, Some(256)), 32);
        assert_eq!(otlp_cap(4096, Some(10)), 1);
    }

    #[tokio::test]
    async fn emfile_makes_the_loop_back_off_count_and_recover() {
        let telemetry = Arc::new(Telemetry::default());
        let calls = Arc::new(AtomicU64::new(0));
        let acceptor = Exhausted {
            until: Instant::now() + Duration::from_millis(1500),
            calls: calls.clone(),
            errno: libc::EMFILE,
        };
        let started = Instant::now();
        let opened = three_connections(acceptor, telemetry.clone()).await;
        let calls = calls.load(Ordering::Relaxed);
        let errors = telemetry.connections.accept_errors(Port::OtlpGrpc);
        // 1.5 s of EMFILE: pauses of 5, 10, 20 ... 640, 1000 ms, so about nine failed
        // accepts; a spinning loop would make millions.
        assert!((6..=12).contains(&errors), "{errors} accept errors");
        assert_eq!(
            calls,
            errors + 3,
            "every failure counted, then three accepts"
        );
        assert_eq!(opened, 3);
        assert_eq!(telemetry.connections.accepted(Port::OtlpGrpc), 3);
        assert_eq!(telemetry.connections.open(Port::OtlpGrpc), 0);
        // The last pause is at most a second, so it recovers within one after the
        // errors stop; the three accepts after it do not wait (the backoff reset).
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_connection_aborted_before_its_accept_costs_no_pause() {
        let telemetry = Arc::new(Telemetry::default());
        let calls = Arc::new(AtomicU64::new(0));
        let acceptor = Exhausted {
            until: Instant::now() + Duration::from_millis(200),
            calls: calls.clone(),
            errno: libc::ECONNABORTED,
        };
        assert_eq!(three_connections(acceptor, telemetry.clone()).await, 3);
        // Without a pause the loop retries at once: far more than the handful of
        // attempts that back-off (5, 10, 20, 40, 80 ms) would allow in 200 ms.
        let errors = telemetry.connections.accept_errors(Port::OtlpGrpc);
        assert!(errors > 50, "{errors} accept errors");
        assert_eq!(calls.load(Ordering::Relaxed), errors + 3);
    }
}
