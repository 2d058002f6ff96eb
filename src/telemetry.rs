//! The daemon's own metrics: one named event per thing that happens to a request.
//!
//! Every self-metric is an atomic counter in [`Telemetry`], bumped through one method
//! per event (as Vector's `internal_events` do), so the events are easy to find and
//! to test. Debug-level `tracing` events go with the refusals.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::export::text::{Encoder, MetricType};
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
    const ALL: [Self; 2] = [Self::Grpc, Self::Http];

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
    const ALL: [Self; 2] = [Self::Traces, Self::Logs];

    /// The `signal` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
        }
    }
}

/// Why a whole request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The body could not be decoded (400 / INVALID_ARGUMENT).
    Decode,
    /// The body, or its decompressed form, was over the limit (413 / RESOURCE_EXHAUSTED).
    TooLarge,
    /// An unsupported content type or content encoding (415).
    Unsupported,
    /// Too many requests in flight (503 / UNAVAILABLE).
    Overloaded,
}

impl RefusalReason {
    const ALL: [Self; 4] = [
        Self::Decode,
        Self::TooLarge,
        Self::Unsupported,
        Self::Overloaded,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::TooLarge => "too_large",
            Self::Unsupported => "unsupported",
            Self::Overloaded => "overloaded",
        }
    }
}

const RECORD_REASONS: [RejectReason; 2] =
    [RejectReason::InvalidSpanTime, RejectReason::MissingLogTime];

/// The counters behind the `sloxide_receiver_*` families.
///
/// All counters use `Ordering::Relaxed`: each is an independent monotonic total, read
/// only for exposition, and no other memory is published through them.
#[derive(Debug, Default)]
pub struct Telemetry {
    accepted: [[AtomicU64; 2]; 2],
    rejected: [[[AtomicU64; 2]; 2]; 2],
    refused_requests: [[[AtomicU64; 4]; 2]; 2],
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
        self.rejected[transport as usize][signal as usize][reason as usize]
            .fetch_add(count, Ordering::Relaxed);
    }

    /// A whole request refused before anything in it was counted.
    pub fn request_refused(
        &self,
        transport: Transport,
        signal: Signal,
        reason: RefusalReason,
        detail: &dyn std::fmt::Display,
    ) {
        tracing::debug!(
            transport = transport.as_str(),
            signal = signal.as_str(),
            reason = reason.as_str(),
            %detail,
            "request refused"
        );
        self.refused_requests[transport as usize][signal as usize][reason as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The accepted total for one transport and signal.
    pub fn accepted(&self, transport: Transport, signal: Signal) -> u64 {
        self.accepted[transport as usize][signal as usize].load(Ordering::Relaxed)
    }

    /// Renders the receiver families and `sloxide_build_info`.
    pub fn render(&self, enc: &mut Encoder<'_>) {
        for (signal, accepted, rejected, noun) in [
            (
                Signal::Traces,
                "sloxide_receiver_accepted_spans_total",
                "sloxide_receiver_refused_spans_total",
                "spans",
            ),
            (
                Signal::Logs,
                "sloxide_receiver_accepted_log_records_total",
                "sloxide_receiver_refused_log_records_total",
                "log records",
            ),
        ] {
            enc.family(
                accepted,
                MetricType::Counter,
                &format!("OTLP {noun} accepted and counted."),
            );
            for t in Transport::ALL {
                enc.sample_u64(
                    accepted,
                    &[("transport", t.as_str())],
                    self.accepted(t, signal),
                );
            }
            enc.family(
                rejected,
                MetricType::Counter,
                &format!("OTLP {noun} rejected one by one (reported in partial_success)."),
            );
            for t in Transport::ALL {
                for reason in RECORD_REASONS {
                    let reason_applies = matches!(
                        (signal, reason),
                        (Signal::Traces, RejectReason::InvalidSpanTime)
                            | (Signal::Logs, RejectReason::MissingLogTime)
                    );
                    if reason_applies {
                        let v = self.rejected[t as usize][signal as usize][reason as usize]
                            .load(Ordering::Relaxed);
                        enc.sample_u64(
                            rejected,
                            &[("transport", t.as_str()), ("reason", reason.as_str())],
                            v,
                        );
                    }
                }
            }
        }
        let name = "sloxide_receiver_refused_requests_total";
        enc.family(
            name,
            MetricType::Counter,
            "OTLP requests refused whole; nothing in them was counted.",
        );
        for t in Transport::ALL {
            for s in Signal::ALL {
                for r in RefusalReason::ALL {
                    let v = self.refused_requests[t as usize][s as usize][r as usize]
                        .load(Ordering::Relaxed);
                    let labels = [
                        ("transport", t.as_str()),
                        ("signal", s.as_str()),
                        ("reason", r.as_str()),
                    ];
                    enc.sample_u64(name, &labels, v);
                }
            }
        }
        enc.family(
            "sloxide_build_info",
            MetricType::Gauge,
            "Always 1; the version label names the running build.",
        );
        enc.sample_u64(
            "sloxide_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
    }
}
