//! The ingest stage shared by both transports: admission, body limits, decompression,
//! decoding into a [`Batch`](crate::otlp::Batch), and handing the batch to the
//! [`Recorder`].
//!
//! The transports ([`grpc`], [`http`]) only move bytes and map [`IngestError`]s to their
//! status codes; neither knows what happens to a record after [`Ingest::export`].

pub mod buffers;
pub mod grpc;
pub mod http;

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::otlp::json::{self, JsonError};
use crate::otlp::logs::{LogBatch, walk_logs};
use crate::otlp::spans::{TraceBatch, walk_traces};
use crate::otlp::wire::DecodeError;
use crate::otlp::{AttrKeys, Batch, RejectReason};
use crate::telemetry::{RefusalReason, Signal, Telemetry, Transport};
use buffers::BufferPool;

/// The stage after decoding. The aggregation implements it; it must not block.
pub trait Recorder: Send + Sync + 'static {
    /// Records the accepted spans of one request.
    fn record_traces(&self, batch: &TraceBatch<'_>);
    /// Records the accepted log records of one request.
    fn record_logs(&self, batch: &LogBatch<'_>);
}

/// A recorder that keeps nothing (the receivers' own counters still count).
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl Recorder for Discard {
    fn record_traces(&self, _: &TraceBatch<'_>) {}
    fn record_logs(&self, _: &LogBatch<'_>) {}
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf` (and every gRPC message).
    Protobuf,
    /// `application/json`, the OTLP/JSON mapping.
    Json,
}

/// The size limits on one request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The body as received (compressed).
    pub max_request_bytes: usize,
    /// The body once decompressed.
    pub max_decompressed_bytes: usize,
}

/// How many requests may be in flight at once across both transports, before new ones
/// are refused with 503 / UNAVAILABLE. It bounds memory at about this many bodies.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// A request that was refused as a whole: nothing in it was counted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A protobuf body the walker could not walk.
    #[error("undecodable protobuf body: {0}")]
    Decode(#[from] DecodeError),
    /// A JSON body that is not OTLP/JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The body as received is over `limits.max_request_bytes`.
    #[error("request body is over limits.max_request_bytes ({limit} bytes)")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The decompressed body is over `limits.max_decompressed_bytes`.
    #[error("decompressed body is over limits.max_decompressed_bytes ({limit} bytes)")]
    DecompressedTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A body marked gzip that is not valid gzip.
    #[error("invalid gzip body: {0}")]
    Gzip(#[source] std::io::Error),
    /// A content type other than protobuf or JSON.
    #[error("unsupported content type {0:?}; send application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    /// A content encoding other than gzip or identity.
    #[error("unsupported content encoding {0:?}; send gzip or identity")]
    UnsupportedEncoding(String),
    /// Too many requests in flight, or shutting down.
    #[error("server overloaded or shutting down; retry later")]
    Overloaded,
    /// The client's body stream failed before it was complete.
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
}

impl IngestError {
    /// The `reason` label under which this refusal is counted.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Self::Decode(_) | Self::Json(_) | Self::Gzip(_) | Self::BodyRead(_) => {
                RefusalReason::Decode
            }
            Self::BodyTooLarge { .. } | Self::DecompressedTooLarge { .. } => {
                RefusalReason::TooLarge
            }
            Self::UnsupportedContentType(_) | Self::UnsupportedEncoding(_) => {
                RefusalReason::Unsupported
            }
            Self::Overloaded => RefusalReason::Overloaded,
        }
    }

    /// The gRPC status this refusal is answered with.
    pub fn grpc_status(&self) -> tonic::Status {
        tonic::Status::new(self.reason().refusal().grpc, self.to_string())
    }

    /// The HTTP status this refusal is answered with.
    pub fn http_status(&self) -> ::http::StatusCode {
        self.reason().refusal().http
    }
}

/// What became of an accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Records counted.
    pub accepted: u64,
    /// Records rejected one by one; non-zero means a partial success.
    pub rejected: u64,
    /// Why the first rejected record was rejected.
    pub reason: Option<RejectReason>,
}

/// What decoded requests go to: the attribute keys to extract, the body limits, and
/// the recorder. A reload swaps it ([`Ingest::retarget`]).
#[derive(Clone)]
pub struct Target {
    /// The attribute keys the walkers extract.
    pub keys: AttrKeys,
    /// The body limits.
    pub limits: BodyLimits,
    /// Where decoded batches go.
    pub recorder: Arc<dyn Recorder>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The entry point both transports call.
#[derive(Debug)]
pub struct Ingest {
    /// Read for the whole decode-and-record of a request, so a retarget waits for the
    /// requests in flight and none straddles two targets.
    target: RwLock<Target>,
    /// Entered (asynchronously) by the transports before they decode, and closed by a
    /// retarget: while a reload carries the counts across, requests wait here as
    /// parked tasks instead of blocking the runtime's worker threads on `target`.
    gate: tokio::sync::RwLock<()>,
    /// The body limits, readable without a lock.
    max_request_bytes: AtomicUsize,
    max_decompressed_bytes: AtomicUsize,
    telemetry: Arc<Telemetry>,
    in_flight: Arc<Semaphore>,
    closing: AtomicBool,
    buffers: BufferPool,
}

thread_local! {
    // Decoding is synchronous, so each worker thread keeps one batch per signal and
    // reuses its capacity: no allocation per request once warmed up.
    static TRACE_BATCH: std::cell::Cell<Option<TraceBatch<'static>>> = const { std::cell::Cell::new(None) };
    static LOG_BATCH: std::cell::Cell<Option<LogBatch<'static>>> = const { std::cell::Cell::new(None) };
}

impl Ingest {
    /// An ingest stage feeding `target`, with at most `max_in_flight` requests at once.
    pub fn new(target: Target, max_in_flight: usize, telemetry: Arc<Telemetry>) -> Self {
        let keep = target.limits.max_request_bytes.min(4 << 20);
        Self {
            max_request_bytes: AtomicUsize::new(target.limits.max_request_bytes),
            max_decompressed_bytes: AtomicUsize::new(target.limits.max_decompressed_bytes),
            gate: tokio::sync::RwLock::new(()),
            target: RwLock::new(target),
            telemetry,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            closing: AtomicBool::new(false),
            buffers: BufferPool::new(max_in_flight.max(1) * 2, keep),
        }
    }

    fn target(&self) -> std::sync::RwLockReadGuard<'_, Target> {
        self.target
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no request is being decoded or recorded, runs `during` with new
    /// ones held back, then sends them to `target`. Call it off the async runtime (it
    /// blocks); the transports' requests wait at [`Ingest::enter`] meanwhile.
    pub fn retarget(&self, target: Target, during: impl FnOnce()) {
        let _closed = self.gate.blocking_write();
        let mut current = self
            .target
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        during();
        // Relaxed: read per request as plain numbers; the lock above orders the rest.
        self.max_request_bytes
            .store(target.limits.max_request_bytes, Ordering::Relaxed);
        self.max_decompressed_bytes
            .store(target.limits.max_decompressed_bytes, Ordering::Relaxed);
        *current = target;
    }

    /// Waits, without blocking a thread, until no retarget is under way; hold the
    /// guard across [`Ingest::export`].
    pub async fn enter(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// [`Ingest::enter`] when it need not wait: `None` while a retarget is under way.
    pub fn try_enter(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        self.gate.try_read().ok()
    }

    /// The body limits.
    pub fn limits(&self) -> BodyLimits {
        BodyLimits {
            max_request_bytes: self.max_request_bytes.load(Ordering::Relaxed),
            max_decompressed_bytes: self.max_decompressed_bytes.load(Ordering::Relaxed),
        }
    }

    /// The self-metrics.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The pool that request bodies are read into.
    pub fn buffers(&self) -> &BufferPool {
        &self.buffers
    }

    /// Admits one request, or refuses it when too many are in flight or the daemon is
    /// shutting down. Hold the permit until the response is built.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        // Relaxed: a request racing the shutdown flag is drained like any in-flight one.
        if self.closing.load(Ordering::Relaxed) {
            return Err(IngestError::Overloaded);
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| IngestError::Overloaded)
    }

    /// Refuses new requests from now on (shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Counts a refused request. The transports call it once per refusal, whichever
    /// stage refused.
    pub fn refused(&self, transport: Transport, signal: Signal, err: &IngestError) {
        self.telemetry
            .request_refused(transport, signal, err.reason(), err);
    }

    /// Decompresses a gzip body into `out`, stopping as soon as it passes
    /// `max_decompressed_bytes`, so a small bomb never expands past the limit.
    pub fn gunzip(&self, src: &[u8], out: &mut Vec<u8>) -> Result<(), IngestError> {
        out.clear();
        let limit = self.limits().max_decompressed_bytes;
        let decoder = flate2::read::MultiGzDecoder::new(src);
        decoder
            .take(limit as u64 + 1)
            .read_to_end(out)
            .map_err(IngestError::Gzip)?;
        if out.len() > limit {
            return Err(IngestError::DecompressedTooLarge { limit });
        }
        Ok(())
    }

    /// Decodes a complete (decompressed) body, records what it holds, and counts the
    /// records. On error nothing from the body was recorded; the transport counts the
    /// refusal.
    pub fn export(
        &self,
        transport: Transport,
        signal: Signal,
        encoding: Encoding,
        body: &[u8],
    ) -> Result<Accepted, IngestError> {
        let target = self.target();
        let Target { keys, recorder, .. } = &*target;
        let result = match (signal, encoding) {
            (Signal::Traces, Encoding::Protobuf) => with_trace_batch(|batch| {
                walk_traces(body, keys, batch)?;
                recorder.record_traces(batch);
                Ok(Accepted::of(batch))
            }),
            (Signal::Traces, Encoding::Json) => json::decode_traces(body)
                .map_err(IngestError::from)
                .map(|req| {
                    with_trace_batch(|batch| {
                        json::fill_traces(&req, keys, batch);
                        recorder.record_traces(batch);
                        Accepted::of(batch)
                    })
                }),
            (Signal::Logs, Encoding::Protobuf) => with_log_batch(|batch| {
                walk_logs(body, keys, batch)?;
                recorder.record_logs(batch);
                Ok(Accepted::of(batch))
            }),
            (Signal::Logs, Encoding::Json) => json::decode_logs(body)
                .map_err(IngestError::from)
                .map(|req| {
                    with_log_batch(|batch| {
                        json::fill_logs(&req, keys, batch);
                        recorder.record_logs(batch);
                        Accepted::of(batch)
                    })
                }),
        };
        drop(target);
        match result {
            Ok(accepted) => {
                self.telemetry
                    .records_accepted(transport, signal, accepted.accepted);
                if let Some(reason) = accepted.reason {
                    self.telemetry
                        .records_rejected(transport, signal, reason, accepted.rejected);
                }
                Ok(accepted)
            }
            Err(err) => Err(err),
        }
    }
}

/// Runs `f` on this thread's reusable trace batch.
fn with_trace_batch<'a, R>(f: impl FnOnce(&mut TraceBatch<'a>) -> R) -> R {
    let mut batch: TraceBatch<'a> = TRACE_BATCH.take().unwrap_or_default().recycle();
    let out = f(&mut batch);
    TRACE_BATCH.set(Some(batch.recycle()));
    out
}

/// Runs `f` on this thread's reusable log batch.
fn with_log_batch<'a, R>(f: impl FnOnce(&mut LogBatch<'a>) -> R) -> R {
    let mut batch: LogBatch<'a> = LOG_BATCH.take().unwrap_or_default().recycle();
    let out = f(&mut batch);
    LOG_BATCH.set(Some(batch.recycle()));
    out
}

impl Accepted {
    fn of<E>(batch: &Batch<'_, E>) -> Self {
        Self {
            accepted: batch.events.len() as u64,
            rejected: batch.rejected,
            reason: batch.reject_reason,
        }
    }

    /// The partial success's `error_message`, when something was rejected.
    pub fn message(&self) -> Option<&'static str> {
        self.reason.map(RejectReason::message)
    }

    /// The OTLP `Export*ServiceResponse` for `signal`, in `encoding`: empty, or a
    /// partial success naming the records rejected one by one.
    pub fn response(&self, signal: Signal, encoding: Encoding) -> Vec<u8> {
        let rejected = self.rejected as i64;
        let error_message = || self.message().unwrap_or_default().to_owned();
        match signal {
            Signal::Traces => encode(
                &ExportTraceServiceResponse {
                    partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: error_message(),
                    }),
                },
                encoding,
            ),
            Signal::Logs => encode(
                &ExportLogsServiceResponse {
                    partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                        rejected_log_records: rejected,
                        error_message: error_message(),
                    }),
                },
                encoding,
            ),
        }
    }
}

/// A response message as protobuf or as OTLP/JSON.
fn encode<M: Message + serde::Serialize>(msg: &M, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).unwrap_or_default(),
    }
}
