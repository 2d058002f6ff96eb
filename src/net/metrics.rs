//! The connection layer's self-metrics: open connections, accept errors, timeouts,
//! TLS handshakes and certificate reloads, per port. `export::render` writes them out.

use std::sync::atomic::{AtomicU64, Ordering};

/// A listening port, as the `port` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// OTLP/gRPC (`listen.otlp_grpc`).
    OtlpGrpc,
    /// OTLP/HTTP (`listen.otlp_http`).
    OtlpHttp,
    /// Prometheus, health and readiness (`listen.metrics`).
    Metrics,
}

impl Port {
    /// Every port, in label order.
    pub const ALL: [Self; 3] = [Self::OtlpGrpc, Self::OtlpHttp, Self::Metrics];

    /// The `port` label value, which is also the `listen` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
            Self::Metrics => "metrics",
        }
    }
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// `limits.header_read_timeout`: no complete request head (or TLS handshake) in time.
    Header,
    /// `limits.idle_timeout`: no request being handled and no response moving for that
    /// long.
    Idle,
}

impl Timeout {
    /// Both, in label order.
    pub const ALL: [Self; 2] = [Self::Header, Self::Idle];

    /// The `timeout` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
        }
    }
}

/// The certificates of one group of listeners: the OTLP ports share `tls`, the metrics
/// port has `metrics.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsListeners {
    /// Both OTLP ports (`tls`).
    Otlp,
    /// The metrics port (`metrics.tls`).
    Metrics,
}

impl TlsListeners {
    /// Both, in label order.
    pub const ALL: [Self; 2] = [Self::Otlp, Self::Metrics];

    /// The `listeners` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Otlp => "otlp",
            Self::Metrics => "metrics",
        }
    }

    /// The configuration key of its TLS settings.
    pub fn key(self) -> &'static str {
        match self {
            Self::Otlp => "tls",
            Self::Metrics => "metrics.tls",
        }
    }
}

/// Counters and gauges of one port.
#[derive(Debug, Default)]
struct PortCounters {
    open: AtomicU64,
    limit: AtomicU64,
    accepted: AtomicU64,
    accept_errors: AtomicU64,
    timed_out: [AtomicU64; 2],
    evicted: AtomicU64,
    handshake_failures: AtomicU64,
}

/// The counters behind the `sloxide_connections_*`, `sloxide_accept_errors_total` and
/// `sloxide_tls_*` families. Relaxed: each is an independent number, read only for
/// exposition.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    ports: [PortCounters; 3],
    /// Per [`TlsListeners`]: (reloads that applied, reloads refused).
    reloads: [[AtomicU64; 2]; 2],
}

impl ConnectionMetrics {
    fn port(&self, port: Port) -> &PortCounters {
        &self.ports[port as usize]
    }

    /// The effective cap on open connections of `port`.
    pub fn set_limit(&self, port: Port, limit: usize) {
        self.port(port).limit.store(limit as u64, Ordering::Relaxed);
    }

    /// A connection was accepted; it is open until [`ConnectionMetrics::closed`].
    pub fn opened(&self, port: Port) {
        let p = self.port(port);
        p.accepted.fetch_add(1, Ordering::Relaxed);
        p.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection accepted on `port` is closed.
    pub fn closed(&self, port: Port) {
        self.port(port).open.fetch_sub(1, Ordering::Relaxed);
    }

    /// accept(2) failed on `port`.
    pub fn accept_failed(&self, port: Port) {
        self.port(port)
            .accept_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of `port` was closed by `timeout`.
    pub fn timed_out(&self, port: Port, timeout: Timeout) {
        self.port(port).timed_out[timeout as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection of `port` was closed to make room for a new one.
    pub fn evicted(&self, port: Port) {
        self.port(port).evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections of `port` closed to make room for new ones.
    pub fn evictions(&self, port: Port) -> u64 {
        self.port(port).evicted.load(Ordering::Relaxed)
    }

    /// A TLS handshake on `port` failed (or did not finish in time).
    pub fn handshake_failed(&self, port: Port) {
        self.port(port)
            .handshake_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Certificate files of `listeners` were read again: `applied` or refused.
    pub fn certificate_reloaded(&self, listeners: TlsListeners, applied: bool) {
        self.reloads[listeners as usize][usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    /// Open connections of `port`.
    pub fn open(&self, port: Port) -> u64 {
        self.port(port).open.load(Ordering::Relaxed)
    }

    /// The effective cap of `port`.
    pub fn limit(&self, port: Port) -> u64 {
        self.port(port).limit.load(Ordering::Relaxed)
    }

    /// Connections accepted on `port`.
    pub fn accepted(&self, port: Port) -> u64 {
        self.port(port).accepted.load(Ordering::Relaxed)
    }

    /// Failed accepts on `port`.
    pub fn accept_errors(&self, port: Port) -> u64 {
        self.port(port).accept_errors.load(Ordering::Relaxed)
    }

    /// Connections of `port` closed by `timeout`.
    pub fn timeouts(&self, port: Port, timeout: Timeout) -> u64 {
        self.port(port).timed_out[timeout as usize].load(Ordering::Relaxed)
    }

    /// Failed TLS handshakes on `port`.
    pub fn handshake_failures(&self, port: Port) -> u64 {
        self.port(port).handshake_failures.load(Ordering::Relaxed)
    }

    /// Certificate reloads of `listeners` that applied (`true`) or were refused.
    pub fn certificate_reloads(&self, listeners: TlsListeners, applied: bool) -> u64 {
        self.reloads[listeners as usize][usize::from(!applied)].load(Ordering::Relaxed)
    }
}
