//! The receivers' own metrics: one named event per thing that happens to a request,
//! and the one table that says how each refusal is answered and counted.
//!
//! Every self-metric is an atomic counter in [`Telemetry`], bumped through one method
//! per event (as Vector's `internal_events` do), so the events are easy to find and
//! to test. Debug-level `tracing` events go with the refusals. `export::render` writes
//! them out.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::otlp::RejectReason;

/// The transport a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
}

impl Transport {
    /// Both transports, in label order.
    pub const ALL: [Self; 2] = [Self::Grpc, Self::Http];

    /// The `transport` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// The OTLP signal of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Log records.
    Logs,
}

impl Signal {
    /// Both signals, in label order.
    pub const ALL: [Self; 2] = [Self::Traces, Self::Logs];

    /// The `signal` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
        }
    }

    /// Why a record of this signal can be rejected one by one.
    pub fn reject_reason(self) -> RejectReason {
        match self {
            Self::Traces => RejectReason::InvalidSpanTime,
            Self::Logs => RejectReason::MissingLogTime,
        }
    }
}

/// Why a whole request was refused. [`REFUSALS`] says how each is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The body could not be decoded.
    Decode,
    /// The body, or its decompressed form, was over the limit.
    TooLarge,
    /// An unsupported content type or content encoding.
    Unsupported,
    /// Too many requests in flight, or shutting down.
    Overloaded,
    /// The client went away, or its body stream failed, before the body was complete:
    /// there was nothing to decode, and usually nobody to answer.
    Aborted,
    /// The body did not arrive within `limits.body_read_timeout`.
    Timeout,
    /// No valid bearer token (`auth`): refused before the body was read.
    Unauthenticated,
    /// sloxide failed while decoding or recording the body (it panicked: a bug, whose
    /// message is in the log). Not retryable: the same body would fail
    /// the same way, and the records counted before the failure would count twice.
    Internal,
}

/// How one refusal reason is answered on each transport and counted.
#[derive(Debug)]
pub struct Refusal {
    /// The reason.
    pub reason: RefusalReason,
    /// Its `reason` label on `sloxide_receiver_refused_requests_total`.
    pub label: &'static str,
    /// The OTLP/HTTP status.
    pub http: http::StatusCode,
    /// The OTLP/gRPC status code.
    pub grpc: tonic::Code,
}

/// Every refusal, in [`RefusalReason`] order: the one place that maps a reason to its
/// HTTP status, gRPC code and self-metric label.
pub const REFUSALS: [Refusal; 8] = [
    Refusal {
        reason: RefusalReason::Decode,
        label: "decode",
        http: http::StatusCode::BAD_REQUEST,
        grpc: tonic::Code::InvalidArgument,
    },
    Refusal {
        reason: RefusalReason::TooLarge,
        label: "too_large",
        http: http::StatusCode::PAYLOAD_TOO_LARGE,
        grpc: tonic::Code::ResourceExhausted,
    },
    Refusal {
        reason: RefusalReason::Unsupported,
        label: "unsupported",
        http: http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        grpc: tonic::Code::Unimplemented,
    },
    Refusal {
        reason: RefusalReason::Overloaded,
        label: "overloaded",
        http: http::StatusCode::SERVICE_UNAVAILABLE,
        grpc: tonic::Code::Unavailable,
    },
    Refusal {
        reason: RefusalReason::Aborted,
        label: "aborted",
        http: http::StatusCode::BAD_REQUEST,
        grpc: tonic::Code::Cancelled,
    },
    Refusal {
        reason: RefusalReason::Timeout,
        label: "timeout",
        http: http::StatusCode::REQUEST_TIMEOUT,
        grpc: tonic::Code::DeadlineExceeded,
    },
    Refusal {
        reason: RefusalReason::Unauthenticated,
        label: "unauthenticated",
        http: http::StatusCode::UNAUTHORIZED,
        grpc: tonic::Code::Unauthenticated,
    },
    Refusal {
        reason: RefusalReason::Internal,
        label: "internal",
        http: http::StatusCode::INTERNAL_SERVER_ERROR,
        grpc: tonic::Code::Internal,
    },
];

impl RefusalReason {
    /// This reason's row of [`REFUSALS`].
    pub fn refusal(self) -> &'static Refusal {
        &REFUSALS[self as usize]
    }

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        self.refusal().label
    }

    /// The reason behind a gRPC error that tonic produced itself, before sloxide's
    /// service saw the message (framing, its decompression, its message size limit).
    /// tonic reports an oversize message as OUT_OF_RANGE, and a body it cannot
    /// decompress or frame as INTERNAL; anything not in [`REFUSALS`] is a body that
    /// could not be decoded too.
    pub fn of_grpc_code(code: tonic::Code) -> Option<Self> {
        match code {
            tonic::Code::Ok => None,
            tonic::Code::OutOfRange => Some(Self::TooLarge),
            tonic::Code::Internal => Some(Self::Decode),
            code => Some(
                REFUSALS
                    .iter()
                    .find(|r| r.grpc == code)
                    .map_or(Self::Decode, |r| r.reason),
            ),
        }
    }
}

/// The counters behind the `sloxide_receiver_*` families.
///
/// All counters use `Ordering::Relaxed`: each is an independent monotonic total, read
/// only for exposition, and no other memory is published through them.
#[derive(Debug, Default)]
pub struct Telemetry {
    accepted: [[AtomicU64; 2]; 2],
    rejected: [[[AtomicU64; 2]; 2]; 2],
    refused_requests: [[[AtomicU64; REFUSALS.len()]; 2]; 2],
    budget: std::sync::OnceLock<std::sync::Arc<crate::ingest::admission::Budget>>,
    /// The connection layer's counters (`net`).
    pub connections: crate::net::metrics::ConnectionMetrics,
    /// When each refusal reason may be logged at warn again.
    refusal_log: [EveryFew; REFUSALS.len()],
}

/// A client's address in a log line, `unknown` without one (formatted only when the
/// line is written).
struct PeerText(Option<std::net::SocketAddr>);

impl std::fmt::Display for PeerText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => std::fmt::Display::fmt(&peer, f),
            None => f.write_str("unknown"),
        }
    }
}

/// How often each refusal reason is logged at warn, at most: the line after a quiet
/// spell comes at once, and each line says how many were refused since the last.
pub const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A rate limit for a log line: at most one every `every`, counting the events between
/// (the refusal log here, the accept-error log of `net`).
#[derive(Debug, Default)]
pub struct EveryFew(std::sync::Mutex<Spell>);

#[derive(Debug, Default)]
struct Spell {
    /// When the last line was due.
    last: Option<std::time::Instant>,
    /// Events since then.
    since: u64,
}

impl EveryFew {
    /// Notes one event at `now`: `Some(n)` when a line is due, `n` being the events since
    /// the last line, this one included; `None` when the line would come too soon.
    pub fn note(&self, now: std::time::Instant, every: std::time::Duration) -> Option<u64> {
        let mut spell = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        spell.since += 1;
        match spell.last {
            Some(last) if now.saturating_duration_since(last) < every => None,
            _ => {
                spell.last = Some(now);
                Some(std::mem::take(&mut spell.since))
            }
        }
    }
}

impl Telemetry {
    /// Records accepted into the aggregation.
    pub fn records_accepted(&self, transport: Transport, signal: Signal, count: u64) {
        self.accepted[transport as usize][signal as usize].fetch_add(count, Ordering::Relaxed);
    }

    /// Records rejected one by one, while the rest of their request was kept.
    pub fn records_rejected(
        &self,
        transport: Transport,
        signal: Signal,
        reason: RejectReason,
        count: u64,
    ) {
        tracing::debug!(
            transport = transport.as_str(),
            signal = signal.as_str(),
            reason = reason.as_str(),
            count,
            "records rejected"
        );
        self.add_rejected(transport, signal, reason, count);
    }

    /// A whole request refused before anything in it was counted.
    ///
    /// Logged at warn, with the peer's address, at most once per reason every
    /// [`REFUSAL_LOG_EVERY`] (with the number refused since the last line); every
    /// refusal is logged at debug.
    pub fn request_refused(
        &self,
        transport: Transport,
        signal: Signal,
        reason: RefusalReason,
        detail: &dyn std::fmt::Display,
        peer: Option<std::net::SocketAddr>,
    ) {
        let peer = PeerText(peer);
        match self.refusal_log[reason as usize].note(std::time::Instant::now(), REFUSAL_LOG_EVERY) {
            Some(refused) => tracing::warn!(
                transport = transport.as_str(),
                signal = signal.as_str(),
                reason = reason.as_str(),
                %peer,
                refused,
                "request refused: {detail} ({refused} refused for this reason since the last such line)"
            ),
            None => tracing::debug!(
                transport = transport.as_str(),
                signal = signal.as_str(),
                reason = reason.as_str(),
                %peer,
                "request refused: {detail}"
            ),
        }
        self.add_refused_requests(transport, signal, reason, 1);
    }

    /// Adds rejected records without logging an event (the event method logs, then
    /// adds; a restore adds a checkpoint's saved counts).
    pub fn add_rejected(
        &self,
        transport: Transport,
        signal: Signal,
        reason: RejectReason,
        count: u64,
    ) {
        self.rejected[transport as usize][signal as usize][reason as usize]
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Adds refused requests without logging an event.
    pub fn add_refused_requests(
        &self,
        transport: Transport,
        signal: Signal,
        reason: RefusalReason,
        count: u64,
    ) {
        self.refused_requests[transport as usize][signal as usize][reason as usize]
            .fetch_add(count, Ordering::Relaxed);
    }

    /// The accepted total for one transport and signal.
    pub fn accepted(&self, transport: Transport, signal: Signal) -> u64 {
        self.accepted[transport as usize][signal as usize].load(Ordering::Relaxed)
    }

    /// Records of one transport and signal rejected one by one for `reason`.
    pub fn rejected(&self, transport: Transport, signal: Signal, reason: RejectReason) -> u64 {
        self.rejected[transport as usize][signal as usize][reason as usize].load(Ordering::Relaxed)
    }

    /// Reports on `budget` from now on (the ingest stage's in-flight budget).
    pub fn watch_budget(&self, budget: std::sync::Arc<crate::ingest::admission::Budget>) {
        let _ = self.budget.set(budget);
    }

    /// Requests that waited for room in the in-flight budget.
    pub fn admission_waits(&self) -> u64 {
        self.budget.get().map_or(0, |b| b.waits())
    }

    /// Requests whose room in the in-flight budget was taken back for waiting ones.
    pub fn reclaimed(&self) -> u64 {
        self.budget.get().map_or(0, |b| b.reclaimed())
    }

    /// Bytes held by requests in flight, and the budget; zeros before one is watched.
    pub fn in_flight(&self) -> (usize, usize) {
        self.budget
            .get()
            .map_or((0, 0), |b| (b.in_use_bytes(), b.total_bytes()))
    }

    /// Requests of one transport and signal refused whole for `reason`.
    pub fn refused_requests(
        &self,
        transport: Transport,
        signal: Signal,
        reason: RefusalReason,
    ) -> u64 {
        self.refused_requests[transport as usize][signal as usize][reason as usize]
            .load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_line_is_due_at_once_then_once_per_interval_with_the_count_since() {
        let log = EveryFew::default();
        let every = Duration::from_secs(10);
        let t0 = std::time::Instant::now();
        assert_eq!(log.note(t0, every), Some(1));
        for i in 1..=99 {
            assert_eq!(log.note(t0 + Duration::from_millis(i * 50), every), None);
        }
        assert_eq!(log.note(t0 + every, every), Some(100));
        assert_eq!(log.note(t0 + every + Duration::from_secs(1), every), None);
    }

    #[test]
    fn the_refusal_table_is_in_reason_order_and_reads_back() {
        for (i, r) in REFUSALS.iter().enumerate() {
            assert_eq!(r.reason as usize, i);
            // tonic's own INTERNAL is a body it could not take; sloxide's is its own.
            if r.reason != RefusalReason::Internal {
                assert_eq!(RefusalReason::of_grpc_code(r.grpc), Some(r.reason));
            }
        }
        assert_eq!(RefusalReason::of_grpc_code(tonic::Code::Ok), None);
        assert_eq!(
            RefusalReason::of_grpc_code(tonic::Code::Internal),
            Some(RefusalReason::Decode)
        );
        assert_eq!(
            RefusalReason::of_grpc_code(tonic::Code::OutOfRange),
            Some(RefusalReason::TooLarge)
        );
    }
}
