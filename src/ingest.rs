//! The ingest stage shared by both transports: admission, body limits, decompression,
//! decoding into a [`Batch`](crate::otlp::Batch), and handing the batch to the
//! [`Recorder`].
//!
//! The transports ([`grpc`], [`http`]) only move bytes and map [`IngestError`]s to their
//! status codes; neither knows what happens to a record after [`Ingest::export`].

pub mod admission;
pub mod buffers;
pub mod decoders;
pub mod grpc;
pub mod http;
mod inflate;

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::time::Instant;

use crate::auth::BearerTokens;
use crate::config::{Compression, Compressions};
use crate::otlp::json::{self, JsonError};
use crate::otlp::logs::{LogBatch, walk_logs, walk_logs_pieces};
use crate::otlp::spans::{TraceBatch, walk_traces, walk_traces_pieces};
use crate::otlp::wire::DecodeError;
use crate::otlp::{AttrKeys, Batch, RejectReason};
use crate::telemetry::{RefusalReason, Signal, Telemetry, Transport};
use admission::{Budget, Reservation};
use buffers::{BufferPool, Received, View};
use decoders::DecodePool;

/// The stage after decoding. The aggregation implements it; it must not block.
pub trait Recorder: Send + Sync + 'static {
    /// Records the accepted spans of one request, walked with the plan's trace keys
    /// (or with all its keys: the trace keys are their first).
    fn record_traces(&self, batch: &TraceBatch<'_>);
    /// Records the accepted log records of one request, walked with all the plan's keys.
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

/// The limits on one request body: its sizes, and the compressions it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The body as received (compressed).
    pub max_request_bytes: usize,
    /// The body once decompressed.
    pub max_decompressed_bytes: usize,
    /// Records (spans or log records) in one request.
    pub max_records: usize,
    /// The compressions accepted (`limits.compression`); uncompressed is always accepted.
    pub compression: Compressions,
    /// How long a body may take to arrive, from its headers to its last byte.
    pub body_read_timeout: Duration,
    /// How long a request waits for room in the in-flight budget before it is refused.
    pub admission_wait: Duration,
}

/// How a compressed body is laid out: what one `Content-Encoding` (or `grpc-encoding`)
/// value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gzip (RFC 1952); concatenated members are read as one body.
    Gzip,
    /// A zstd frame, or several one after another.
    Zstd,
    /// zlib-wrapped deflate (RFC 1950): what HTTP and gRPC mean by `deflate`, and what the
    /// OpenTelemetry Collector sends for both `compression: deflate` and `zlib`.
    Zlib,
    /// Snappy in its framing format when the body opens with the framing format's stream
    /// identifier, else one raw snappy block: `Content-Encoding: snappy` carried framed
    /// bodies from older Collectors and carries blocks from newer ones.
    Snappy,
    /// Snappy in its framing format only (`x-snappy-framed`).
    SnappyFramed,
}

/// The first chunk of every snappy framed stream: the stream identifier `sNaPpY`.
const SNAPPY_STREAM_IDENTIFIER: [u8; 10] = *b"\xff\x06\x00\x00sNaPpY";

impl Format {
    /// The format of a `Content-Encoding` value (case-insensitive); `None` for
    /// `identity` and for codings sloxide does not know.
    pub fn of_content_encoding(value: &str) -> Option<Self> {
        const NAMES: [(&str, Format); 6] = [
            ("gzip", Format::Gzip),
            ("zstd", Format::Zstd),
            ("deflate", Format::Zlib),
            ("zlib", Format::Zlib),
            ("snappy", Format::Snappy),
            ("x-snappy-framed", Format::SnappyFramed),
        ];
        NAMES
            .iter()
            .find(|(name, _)| value.eq_ignore_ascii_case(name))
            .map(|(_, format)| *format)
    }

    /// The `limits.compression` entry that turns this format on.
    pub fn compression(self) -> Compression {
        match self {
            Self::Gzip => Compression::Gzip,
            Self::Zstd => Compression::Zstd,
            Self::Zlib => Compression::Deflate,
            Self::Snappy | Self::SnappyFramed => Compression::Snappy,
        }
    }
}

/// The most a snappy block can expand: a 3-byte copy element writes at most 64 bytes.
const SNAPPY_MAX_RATIO: usize = 22;

/// The largest zstd window a body may ask for, as a power of two: enough for the
/// limit (a window beyond the whole output buffers nothing), and never below the
/// 8 MiB every zstd decoder is expected to support, nor above zstd's default 128 MiB.
fn zstd_window_log_max(limit: usize) -> u32 {
    let needed = usize::BITS - limit.max(1).saturating_sub(1).leading_zeros();
    needed.clamp(23, 27)
}

/// Decompresses `src`, laid out as `format`, onto the end of `out`, stopping as soon as
/// more than `limit` bytes came out, so a small bomb never expands past the limit. A
/// snappy block declares its length up front and is refused before anything is
/// allocated when that is over the limit.
pub fn decompress(
    format: Format,
    src: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), IngestError> {
    decompress_charged(format, src, limit, out, &mut |_| Ok(()))
}

/// How much a decompression writes between two calls of its `grow`.
const DECOMPRESS_STEP: u64 = inflate::STEP as u64;

/// [`decompress`], telling `grow` of what it writes as it goes, at most
/// [`DECOMPRESS_STEP`] at a time (a snappy block, and a zstd frame whose stated size is
/// believed or that is decoded in one pass: that size or its bound, before it is
/// written, which may pass what is written); an error from `grow` stops it there.
fn decompress_charged(
    format: Format,
    src: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> Result<(), IngestError>,
) -> Result<(), IngestError> {
    let start = out.len();
    let cap = (limit as u64).saturating_add(1);
    let invalid = |source| IngestError::Decompress {
        compression: format.compression(),
        source,
    };
    let read = match format {
        Format::Gzip | Format::Zlib => inflate::inflate(
            format == Format::Gzip,
            src,
            limit,
            stated_size_of(format, src),
            out,
            grow,
        )?,
        Format::Zstd => inflate::inflate_zstd(
            src,
            limit,
            stated_size_of(format, src),
            one_pass_bound_max(src.len()),
            zstd_window_log_max(limit),
            out,
            grow,
        )?,
        Format::Snappy if !src.starts_with(&SNAPPY_STREAM_IDENTIFIER) => {
            let len = snap::raw::decompress_len(src).map_err(|e| invalid(e.into()))?;
            if len > limit {
                return Err(IngestError::DecompressedTooLarge { limit });
            }
            // No element of a snappy block writes more than 64 bytes for its 3 bytes, so
            // a block declaring more than that ratio is corrupt: refused before its
            // declared length is allocated, so a few bytes cannot claim the whole limit.
            if len > src.len().saturating_mul(SNAPPY_MAX_RATIO) {
                return Err(invalid(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "a snappy block of {} bytes cannot hold the {len} bytes it declares",
                        src.len()
                    ),
                )));
            }
            grow(len)?;
            out.resize(start + len, 0);
            let written = snap::raw::Decoder::new()
                .decompress(src, &mut out[start..])
                .map_err(|e| invalid(e.into()))?;
            out.truncate(start + written);
            return Ok(());
        }
        Format::Snappy | Format::SnappyFramed => {
            read_in_steps(snap::read::FrameDecoder::new(src), cap, out, grow)?
        }
    };
    read.map_err(invalid)?;
    if out.len() - start > limit {
        return Err(IngestError::DecompressedTooLarge { limit });
    }
    Ok(())
}

/// Reads at most `cap` bytes of `reader` onto the end of `out`, [`DECOMPRESS_STEP`] at a
/// time, telling `grow` of each step's bytes once it is read. The outer error is
/// `grow`'s, the inner one the reader's.
fn read_in_steps(
    reader: impl Read,
    cap: u64,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> Result<(), IngestError>,
) -> Result<std::io::Result<()>, IngestError> {
    let mut reader = reader.take(cap);
    loop {
        let n = match (&mut reader).take(DECOMPRESS_STEP).read_to_end(out) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        grow(n)?;
        if (n as u64) < DECOMPRESS_STEP {
            return Ok(Ok(()));
        }
    }
}

/// What a compressed body is taken to inflate to, as a multiple of its size, when its
/// format does not state its size: OTLP requests of mixed traffic compress about 6 to 1
/// with gzip and with zstd (docs/benchmarks.md); one service's repeated spans, more.
const INFLATE_GUESS_RATIO: usize = 8;

/// The most a compressed body's stated size is believed, as a multiple of its size.
/// A body states its size for free, and room made for it is held until its decode is
/// done (waiting for a decode thread too): believed without bound, a few bytes that
/// claimed megabytes held that much room each, and crowded out honest compressed
/// exports (a loopback attack of 27-byte zstd frames claiming 11 MiB left them a quarter
/// of their exports). OTLP traffic compresses about 6 to 20 to 1; a body that states
/// more than this is taken at [`INFLATE_GUESS_RATIO`], and charged for the rest as it
/// inflates.
const STATED_RATIO_MAX: usize = 64;

/// The least room a zstd body that states no size may be decoded in one pass into,
/// whatever its size: two whole blocks. Its bound counts each compressed block at the
/// most a block can hold (128 KiB with a Collector's 4 MiB window), so a body of a few
/// hundred bytes is bounded by a block, hundreds of times its size; decoded in steps
/// instead, its context would allocate a window of up to 4 MiB, and be made again for
/// the next body.
const ONE_PASS_BOUND_MIN: usize = 256 << 10;

/// The most room a zstd body of `len` bytes that states no size is decoded in one pass
/// into (within the limit too): [`STATED_RATIO_MAX`] times its size, and at least
/// [`ONE_PASS_BOUND_MIN`].
fn one_pass_bound_max(len: usize) -> usize {
    len.saturating_mul(STATED_RATIO_MAX).max(ONE_PASS_BOUND_MIN)
}

/// How many of a compressed body's first bytes [`inflated_estimate`] reads: a zstd
/// frame header (at most 18 bytes) or a snappy block's length and stream identifier.
const STATED_SIZE_HEAD: usize = 18;

/// What a compressed body laid out as `format`, `len` bytes long, which opens with
/// `head` (its first [`STATED_SIZE_HEAD`] bytes, or all of it) and ends with `tail`,
/// is expected to inflate to, at most `limit`: the size the body states where its
/// format writes one (a gzip member's `ISIZE`, a zstd frame's content size, a snappy
/// block's length) and it is at most [`STATED_RATIO_MAX`] times `len`, else
/// [`INFLATE_GUESS_RATIO`] times `len`. Only an expectation, for making room before
/// inflating ([`Reservation::grow`]): the inflation is charged as it goes all the same,
/// so a body that states too little, or too much, is bounded as any other.
fn inflated_estimate(
    format: Format,
    head: &[u8],
    tail: [u8; 4],
    len: usize,
    limit: usize,
) -> usize {
    stated_size(format, head, tail, len)
        .unwrap_or_else(|| len.saturating_mul(INFLATE_GUESS_RATIO))
        .min(limit)
}

/// The size a compressed body laid out as `format`, `len` bytes long, which opens with
/// `head` and ends with `tail` (as for [`inflated_estimate`]), states it inflates to,
/// where its format writes one and it is at most [`STATED_RATIO_MAX`] times `len`.
fn stated_size(format: Format, head: &[u8], tail: [u8; 4], len: usize) -> Option<usize> {
    // The smallest gzip member: a 10-byte header, an empty block, an 8-byte trailer.
    const GZIP_MIN: usize = 20;
    let stated = match format {
        // The last member's size modulo 2^32: the body's, when it is one member.
        Format::Gzip if len >= GZIP_MIN => Some(u32::from_le_bytes(tail) as usize),
        Format::Zstd => zstd::zstd_safe::get_frame_content_size(head)
            .ok()
            .flatten()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        Format::Snappy if !head.starts_with(&SNAPPY_STREAM_IDENTIFIER) => {
            snap::raw::decompress_len(head).ok()
        }
        _ => None,
    };
    stated.filter(|&n| n <= len.saturating_mul(STATED_RATIO_MAX))
}

/// [`stated_size`] of the whole compressed body `src`.
fn stated_size_of(format: Format, src: &[u8]) -> Option<usize> {
    let head = &src[..src.len().min(STATED_SIZE_HEAD)];
    let tail = src.last_chunk::<4>().copied().unwrap_or_default();
    stated_size(format, head, tail, src.len())
}

/// [`inflated_estimate`] of the compressed body in `raw` from byte `start` (within
/// its prefix), read from its first and last bytes without joining it.
fn inflated_estimate_of(format: Format, raw: &Received, start: usize, limit: usize) -> usize {
    debug_assert!(start <= MAX_PREFIX, "a body starts within its prefix");
    let mut head = [0; MAX_PREFIX + STATED_SIZE_HEAD];
    let n = match head.get_mut(..start + STATED_SIZE_HEAD) {
        Some(head) => raw.head(head),
        None => 0,
    };
    let mut tail = [0; 4];
    raw.tail(&mut tail);
    let head = head.get(start..n).unwrap_or_default();
    inflated_estimate(format, head, tail, raw.len() - start, limit)
}

/// Uncompressed protobuf bodies up to this size are decoded on the async worker that
/// read them (a 1000-span request, about 380 KB, takes about 100 µs); larger ones, and
/// every compressed body, go to the decode threads ([`decoders`]), so no request can
/// stall the health and metrics endpoints for long.
pub const INLINE_PROTOBUF_BYTES: usize = 1 << 20;
/// As [`INLINE_PROTOBUF_BYTES`], for JSON, which decodes several times slower.
pub const INLINE_JSON_BYTES: usize = 256 << 10;
/// Compressed bodies up to this size are decompressed where they were read, as long as
/// they inflate to no more than [`INLINE_PROTOBUF_BYTES`] (a gzipped 1000-span request
/// is about 20 to 60 KB); larger ones, and ones that inflate further, go to a decode
/// thread.
pub const INLINE_COMPRESSED_BYTES: usize = 128 << 10;
/// The longest prefix [`Ingest::read_body`] hands to its `on_prefix`.
pub const MAX_PREFIX: usize = 16;

/// Decompresses `src` into `out` under `limit`, and within what `reservation` may still
/// hold: the output is charged as it comes, a step at a time, so a body that would
/// take the in-flight budget past its ceiling is refused as soon as it would, rather
/// than decompressed further (overloaded while other requests hold part of the budget;
/// too large when the request alone was past it), and no more than one step of it is
/// ever held uncharged. On error nothing stays charged: the output is not used; on
/// success, what the body became is.
fn decompress_within(
    format: Format,
    src: &[u8],
    limit: usize,
    reservation: &mut Reservation,
    out: &mut Vec<u8>,
) -> Result<(), IngestError> {
    let mut charged = 0;
    let before = out.len();
    let result = decompress_charged(format, src, limit, out, &mut |n| {
        reservation.charge(n)?;
        charged += n;
        Ok(())
    });
    match result {
        Err(_) => reservation.uncharge(charged),
        // What was charged ahead of a zstd frame (its stated size, or its bound) and not
        // written: charged is what the body became.
        Ok(()) => reservation.uncharge(charged.saturating_sub(out.len() - before)),
    }
    result
}

/// The budget reserved for decoding a body, as a multiple of its size, before it has
/// arrived: a protobuf batch refers into the body, while JSON is decoded into owned
/// structures first. Once a JSON body is here, its decode is charged by what its
/// objects become ([`json::decode_charge`]).
pub(crate) fn decode_estimate(encoding: Encoding, len: usize) -> usize {
    match encoding {
        Encoding::Protobuf => len,
        Encoding::Json => len.saturating_mul(2),
    }
}

/// A request that was refused as a whole: nothing in it was counted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A protobuf body the walker could not walk.
    #[error("undecodable protobuf body: {0}")]
    Decode(DecodeError),
    /// More records than `limits.max_records_per_request` (the limit), in either
    /// encoding.
    #[error("more than limits.max_records_per_request ({0}) records in one request")]
    TooManyRecords(usize),
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
    /// A compressed body that is not valid in its compression.
    #[error("invalid {compression} body: {source}")]
    Decompress {
        /// The compression the body claimed.
        compression: Compression,
        /// What the decoder found.
        #[source]
        source: std::io::Error,
    },
    /// A gRPC message frame that sloxide itself had to read (to decompress it) and could
    /// not.
    #[error("malformed gRPC message frame: {0}")]
    Frame(&'static str),
    /// A content type other than protobuf or JSON.
    #[error("unsupported content type {0:?}; send application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    /// A request on the gRPC port that is not gRPC.
    #[error("unsupported content type {0:?} on the OTLP/gRPC port; send application/grpc")]
    NotGrpc(String),
    /// A content encoding sloxide does not know.
    #[error("unsupported content encoding {encoding:?}; send {accepted}")]
    UnsupportedEncoding {
        /// The encoding as sent.
        encoding: String,
        /// What `limits.compression` accepts.
        accepted: Compressions,
    },
    /// A compression that `limits.compression` leaves out.
    #[error("{compression} is turned off by limits.compression; send {accepted}")]
    CompressionOff {
        /// The compression the body used.
        compression: Compression,
        /// What `limits.compression` accepts.
        accepted: Compressions,
    },
    /// The in-flight budget stayed full for the whole wait, or shutting down.
    #[error("server overloaded or shutting down; retry later")]
    Overloaded,
    /// The request's body was behind (nothing yet, or too slow to be in before
    /// `limits.body_read_timeout`) while other requests waited for the room it held.
    #[error(
        "server overloaded: the request body had not arrived, or was arriving too slowly to be in within limits.body_read_timeout, while other requests waited for the room it held; retry later"
    )]
    Reclaimed,
    /// The request alone needs more than any one request may hold of the in-flight
    /// budget: it could never be taken, however long it waited.
    #[error(
        "the request needs more than the in-flight budget lets one request hold ({ceiling} bytes, 1.5 times limits.max_in_flight_bytes)"
    )]
    OverBudget {
        /// What one request may hold, in bytes.
        ceiling: usize,
    },
    /// No valid bearer token (`auth`).
    #[error("missing or invalid bearer token (auth)")]
    Unauthenticated,
    /// The body did not arrive in time.
    #[error("the request body did not arrive within limits.body_read_timeout ({0:?})")]
    Timeout(Duration),
    /// The client's body stream failed before it was complete.
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    /// The decode or recording of this body panicked: a bug in sloxide.
    #[error("sloxide failed on this request (a bug; its log says more): {0}")]
    Internal(&'static str),
}

impl IngestError {
    /// The `reason` label under which this refusal is counted.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Self::Decode(_) | Self::Json(_) | Self::Decompress { .. } | Self::Frame(_) => {
                RefusalReason::Decode
            }
            Self::BodyRead(_) => RefusalReason::Aborted,
            Self::BodyTooLarge { .. }
            | Self::TooManyRecords(_)
            | Self::DecompressedTooLarge { .. }
            | Self::OverBudget { .. } => RefusalReason::TooLarge,
            Self::UnsupportedContentType(_)
            | Self::NotGrpc(_)
            | Self::UnsupportedEncoding { .. }
            | Self::CompressionOff { .. } => RefusalReason::Unsupported,
            Self::Overloaded | Self::Reclaimed => RefusalReason::Overloaded,
            Self::Timeout(_) => RefusalReason::Timeout,
            Self::Unauthenticated => RefusalReason::Unauthenticated,
            Self::Internal(_) => RefusalReason::Internal,
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

impl From<DecodeError> for IngestError {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::TooManyRecords(max) => Self::TooManyRecords(max),
            error => Self::Decode(error),
        }
    }
}

/// A JSON request's `records` against `limits.max_records_per_request`.
fn too_many(records: usize, max: usize) -> Result<(), IngestError> {
    if records > max {
        return Err(IngestError::TooManyRecords(max));
    }
    Ok(())
}

/// Who decides what became of a request whose client may leave while it is decoded:
/// whoever records it takes it ([`Claim::record`]), or its handler's [`Unanswered`]
/// guard, dropped first, gives it up. Exactly one of them wins, so a request is either
/// recorded (and counted accepted) or counted as aborted, never both.
#[derive(Debug, Clone, Default)]
pub struct Claim(Arc<AtomicU8>);

impl Claim {
    const OPEN: u8 = 0;
    const RECORDING: u8 = 1;
    const ABANDONED: u8 = 2;

    /// Takes the request for recording; false when its handler has given it up.
    pub fn record(&self) -> bool {
        match self.0.compare_exchange(
            Self::OPEN,
            Self::RECORDING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(now) => now == Self::RECORDING,
        }
    }

    /// Gives the request up; false when it is being recorded (or was).
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// See [`Ingest::unanswered`].
#[derive(Debug)]
pub struct Unanswered<'a> {
    ingest: &'a Ingest,
    transport: Transport,
    signal: Signal,
    peer: Option<std::net::SocketAddr>,
    claim: Claim,
    answered: bool,
}

impl Unanswered<'_> {
    /// What whoever records the request takes it with.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The request came to an end (accepted, or refused and counted so).
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        // Not given up when it is being recorded: then it counts as accepted.
        if !self.answered && self.claim.abandon() {
            let err = IngestError::BodyRead("the client left before its answer".into());
            self.ingest
                .refused(self.transport, self.signal, &err, self.peer);
        }
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
    /// The attribute keys the log walk extracts.
    pub keys: AttrKeys,
    /// The attribute keys the trace walk extracts (the first of `keys`).
    pub trace_keys: AttrKeys,
    /// The body limits.
    pub limits: BodyLimits,
    /// Where decoded batches go.
    pub recorder: Arc<dyn Recorder>,
    /// The bearer tokens requests must carry (`auth`); `None`: any request.
    pub auth: Option<Arc<BearerTokens>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("keys", &self.keys)
            .field("trace_keys", &self.trace_keys)
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
    max_records: AtomicUsize,
    compression: AtomicU8,
    body_read_timeout_nanos: AtomicU64,
    admission_wait_nanos: AtomicU64,
    /// `Target::auth`, readable without the target's lock.
    auth: RwLock<Option<Arc<BearerTokens>>>,
    telemetry: Arc<Telemetry>,
    budget: Arc<Budget>,
    decoders: DecodePool,
    closing: AtomicBool,
    buffers: Arc<BufferPool>,
    /// Requests held more than [`RELEASE_AFTER_BYTES`]: give the memory back once they
    /// are done.
    release_pending: AtomicBool,
}

/// Once requests in flight have held this much, their memory is given back to the OS
/// when they are done ([`Ingest::release_memory`]).
pub const RELEASE_AFTER_BYTES: usize = 32 << 20;

/// How many records' worth of decode buffers each worker thread keeps between
/// requests: the Collector's default batch (8192) fits, so steady traffic allocates
/// nothing, while the memory of a larger request is given back when it is done.
pub const RETAINED_RECORDS: usize = 8192;

thread_local! {
    // Decoding is synchronous, so each worker thread keeps one batch per signal and
    // reuses its capacity: no allocation per request once warmed up.
    static TRACE_BATCH: std::cell::Cell<Option<TraceBatch<'static>>> = const { std::cell::Cell::new(None) };
    static LOG_BATCH: std::cell::Cell<Option<LogBatch<'static>>> = const { std::cell::Cell::new(None) };
}

impl Ingest {
    /// An ingest stage feeding `target`, whose requests hold at most
    /// `max_in_flight_bytes` at once ([`admission`]).
    pub fn new(target: Target, max_in_flight_bytes: usize, telemetry: Arc<Telemetry>) -> Self {
        // Idle buffers are kept up to 1 MiB each (a 1000-span request is about 380 KB),
        // 64 at most: what the pool can pin is bounded.
        let keep = target.limits.max_request_bytes.min(1 << 20);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let budget = Arc::new(Budget::new(max_in_flight_bytes));
        telemetry.watch_budget(budget.clone());
        Self {
            max_request_bytes: AtomicUsize::new(target.limits.max_request_bytes),
            max_decompressed_bytes: AtomicUsize::new(target.limits.max_decompressed_bytes),
            max_records: AtomicUsize::new(target.limits.max_records),
            compression: AtomicU8::new(target.limits.compression.bits()),
            body_read_timeout_nanos: AtomicU64::new(nanos(target.limits.body_read_timeout)),
            admission_wait_nanos: AtomicU64::new(nanos(target.limits.admission_wait)),
            auth: RwLock::new(target.auth.clone()),
            gate: tokio::sync::RwLock::new(()),
            target: RwLock::new(target),
            telemetry,
            budget,
            decoders: DecodePool::new(cores.max(2)),
            closing: AtomicBool::new(false),
            buffers: Arc::new(BufferPool::new(64, keep)),
            release_pending: AtomicBool::new(false),
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
        self.max_records
            .store(target.limits.max_records, Ordering::Relaxed);
        self.compression
            .store(target.limits.compression.bits(), Ordering::Relaxed);
        self.body_read_timeout_nanos
            .store(nanos(target.limits.body_read_timeout), Ordering::Relaxed);
        self.admission_wait_nanos
            .store(nanos(target.limits.admission_wait), Ordering::Relaxed);
        *self
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = target.auth.clone();
        *current = target;
    }

    /// Waits, without blocking a thread, until no retarget is under way; hold the
    /// guard across [`Ingest::export`].
    pub async fn enter(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// The body limits.
    pub fn limits(&self) -> BodyLimits {
        BodyLimits {
            max_request_bytes: self.max_request_bytes.load(Ordering::Relaxed),
            max_decompressed_bytes: self.max_decompressed_bytes.load(Ordering::Relaxed),
            max_records: self.max_records.load(Ordering::Relaxed),
            compression: Compressions::from_bits(self.compression.load(Ordering::Relaxed)),
            body_read_timeout: Duration::from_nanos(
                self.body_read_timeout_nanos.load(Ordering::Relaxed),
            ),
            admission_wait: Duration::from_nanos(self.admission_wait_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The self-metrics.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The pool that request bodies are read into.
    pub fn buffers(&self) -> &Arc<BufferPool> {
        &self.buffers
    }

    /// Refuses a request without a valid token when `auth` is configured; before
    /// admission, so it costs neither memory nor decoding.
    pub fn authenticate(&self, headers: &::http::HeaderMap) -> Result<(), IngestError> {
        let auth = self
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match auth.as_ref() {
            Some(tokens) if !tokens.allows(headers) => Err(IngestError::Unauthenticated),
            _ => Ok(()),
        }
    }

    /// The `WWW-Authenticate` value of a 401 (see [`BearerTokens::challenge`]).
    pub fn challenge(&self) -> Option<::http::HeaderValue> {
        self.auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|tokens| tokens.challenge())
    }

    /// Admits one request with a reservation of its base and `expected` bytes (what its
    /// body and decode are expected to hold), waiting for room for at most
    /// `limits.admission_wait` (or until `client_deadline`); refuses it when the budget
    /// stays full or the daemon is shutting down. Hold the reservation until the
    /// response is built.
    pub async fn admit(
        &self,
        expected: usize,
        client_deadline: Option<Instant>,
    ) -> Result<Reservation, IngestError> {
        // Relaxed: a request racing the shutdown flag is drained like any in-flight one.
        if self.closing.load(Ordering::Relaxed) {
            return Err(IngestError::Overloaded);
        }
        let wait = self.limits().admission_wait;
        self.budget
            .admit(expected, admission::wait_deadline(wait, client_deadline))
            .await
    }

    /// Reads `body` into `out`, charging its bytes to `reservation` as they arrive:
    /// refused when it passes `limit` bytes (checked as it arrives, so an oversize body
    /// is never held whole), when it has not ended by `deadline` (timeout), when the
    /// transport fails it (aborted), when it would take the budget past its ceiling
    /// (overloaded; too large when it alone would), or when it falls behind while other
    /// requests wait for room (overloaded: [`admission`]'s reclaiming). `expected` is
    /// the body's declared length, or a guess; `conn` counts the body bytes read by the
    /// requests of its connection ([`crate::net::ConnReceived`]), when known. The body
    /// is kept in the pieces it arrived in ([`Received`]). Once `prefix` bytes (at most
    /// [`MAX_PREFIX`]) are in, `on_prefix` reads them and says how much the request is
    /// expected to hold in all (body and decode), and how long the body is; the
    /// reservation is set to the first ([`Reservation::expect`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn read_body<B>(
        &self,
        body: &mut B,
        out: &mut Received,
        limit: usize,
        reservation: &mut Reservation,
        deadline: Instant,
        expected: usize,
        conn: Option<Arc<std::sync::atomic::AtomicU64>>,
        prefix: usize,
        on_prefix: impl Fn(&[u8]) -> Result<(usize, usize), IngestError>,
    ) -> Result<(), IngestError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        debug_assert!(
            prefix <= MAX_PREFIX,
            "on_prefix sees at most MAX_PREFIX bytes"
        );
        let mut prefix_seen = prefix == 0;
        let reading = reservation.body_read(expected, deadline, conn);
        let reclaimed = reading.reclaimed();
        tokio::pin!(reclaimed);
        loop {
            let frame = tokio::select! {
                biased;
                frame = tokio::time::timeout_at(deadline, body.frame()) => match frame {
                    Err(_) => return Err(IngestError::Timeout(self.limits().body_read_timeout)),
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(e))) => return Err(IngestError::BodyRead(e.to_string())),
                    Ok(Some(Ok(frame))) => frame,
                },
                () = &mut reclaimed => return Err(IngestError::Reclaimed),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if out.len() + data.len() > limit {
                return Err(IngestError::BodyTooLarge {
                    limit: limit.min(self.limits().max_request_bytes),
                });
            }
            reservation.charge(data.len())?;
            reading.arrived(data.len());
            reading.holds(reservation.bytes());
            out.push(data);
            if !prefix_seen && out.len() >= prefix {
                prefix_seen = true;
                let mut head = [0; MAX_PREFIX];
                let n = out.head(&mut head[..prefix.min(MAX_PREFIX)]);
                let (hold, body_len) = on_prefix(&head[..n])?;
                reservation.expect(hold)?;
                reading.expect(body_len);
                reading.holds(reservation.bytes());
            }
        }
    }

    /// Decompresses (when `compressed`), decodes and records the body in `raw[start..]`,
    /// charging its decompressed size and decode to `reservation` (refused past the
    /// budget's ceiling: overloaded, or too large when it alone is past it). Small
    /// bodies are decoded here: uncompressed ones up to [`INLINE_PROTOBUF_BYTES`]
    /// ([`INLINE_JSON_BYTES`]), compressed ones up to [`INLINE_COMPRESSED_BYTES`] that
    /// inflate to no more than [`INLINE_PROTOBUF_BYTES`].
    /// Any other goes to a decode thread ([`decoders`]), waiting for one for at most
    /// `limits.admission_wait` (or until `client_deadline`) before it is refused
    /// (overloaded). Waits (as a parked task) while a reload is under way.
    #[allow(clippy::too_many_arguments)]
    pub async fn process(
        self: &Arc<Self>,
        transport: Transport,
        signal: Signal,
        encoding: Encoding,
        compressed: Option<Format>,
        mut raw: Received,
        start: usize,
        mut reservation: Reservation,
        client_deadline: Option<Instant>,
        claim: &Claim,
    ) -> Result<Accepted, IngestError> {
        let limits = self.limits();
        let inline = match encoding {
            Encoding::Protobuf => INLINE_PROTOBUF_BYTES,
            Encoding::Json => INLINE_JSON_BYTES,
        };
        let wait = admission::wait_deadline(limits.admission_wait, client_deadline);
        // Room for what a compressed body becomes (inflated, and its decode) is made
        // before it is inflated, waiting for it if need be, so that bodies that arrive
        // together take turns rather than all pass the ceiling as they inflate.
        if let Some(format) = compressed {
            let expected = inflated_estimate_of(format, &raw, start, limits.max_decompressed_bytes);
            reservation
                .grow(
                    expected.saturating_add(decode_estimate(encoding, expected)),
                    wait,
                )
                .await?;
        }
        // A small compressed body (what a Collector sends by default) is inflated here
        // when it stays small; one that grows past that goes to a decode thread whole.
        let mut inflated = None;
        if let Some(format) = compressed
            && raw.len() - start <= INLINE_COMPRESSED_BYTES
        {
            let cap = INLINE_PROTOBUF_BYTES.min(limits.max_decompressed_bytes);
            let mut out = self.buffers.get();
            let src = &raw.join()[start..];
            let decompressed = decoders::contain(|| {
                decompress_within(format, src, cap, &mut reservation, &mut out)
            })
            .unwrap_or(Err(IngestError::Internal("its decompression failed")));
            match decompressed {
                Ok(()) => {
                    // Room made for a larger estimate goes back.
                    reservation.trim(decode_estimate(encoding, out.len()));
                    inflated = Some(out);
                }
                // Too large for here, or a zstd frame whose window is larger than this
                // small cap allows (the full limit may allow it): a decode thread tries
                // again with the full limit.
                Err(
                    IngestError::DecompressedTooLarge { .. }
                    | IngestError::Decompress {
                        compression: Compression::Zstd,
                        ..
                    },
                ) if cap < limits.max_decompressed_bytes => {}
                Err(err) => return Err(err),
            }
        }
        let done = compressed.is_none() || inflated.is_some();
        let len = inflated.as_ref().map_or(raw.len() - start, |b| b.len());
        if done && len <= inline {
            let _entered = self.enter().await;
            let inflated = inflated.as_ref().map(|b| &b[..]);
            // A panic here is refused as on a decode thread, not left to take the
            // connection down (which clients retry, with the same body).
            return decoders::contain(|| {
                self.export_decompressed(
                    transport,
                    signal,
                    encoding,
                    inflated,
                    &mut raw,
                    start,
                    &mut reservation,
                    // Decoded where it arrived, in one go: its handler cannot give it
                    // up meanwhile.
                    &|| claim.record(),
                )
            })
            .unwrap_or(Err(IngestError::Internal("its decode failed")));
        }
        let Some(slot) = self.decoders.slot(wait).await else {
            return Err(IngestError::Overloaded);
        };
        let _entered = self.enter().await;
        let ingest = self.clone();
        let claim = claim.clone();
        let work = move |caller_waits: &dyn Fn() -> bool| {
            // The client still waits: its stream is open, and its deadline (gRPC) has
            // not passed, after which it has given up and will send the request again;
            // then the request is taken for recording, so that its handler, if dropped
            // from now on, does not also count it as aborted.
            let wanted = || {
                caller_waits()
                    && client_deadline.is_none_or(|at| Instant::now() < at)
                    && claim.record()
            };
            let mut reservation = reservation;
            let mut raw = raw;
            let inflated = match (inflated, compressed) {
                (Some(inflated), _) => Some(inflated),
                (None, None) => None,
                (None, Some(format)) => {
                    let mut out = ingest.buffers.get();
                    decompress_within(
                        format,
                        &raw.join()[start..],
                        limits.max_decompressed_bytes,
                        &mut reservation,
                        &mut out,
                    )?;
                    reservation.trim(decode_estimate(encoding, out.len()));
                    Some(out)
                }
            };
            let inflated = inflated.as_ref().map(|b| &b[..]);
            ingest.export_decompressed(
                transport,
                signal,
                encoding,
                inflated,
                &mut raw,
                start,
                &mut reservation,
                &wanted,
            )
        };
        self.decoders.run(slot, work).await.map_err(|e| match e {
            decoders::RunError::Panicked => IngestError::Internal("its decode thread failed"),
            decoders::RunError::Unavailable => IngestError::Overloaded,
        })?
    }

    /// Gives memory that large requests used back to the OS once they are done; call it
    /// off the async workers, about once a second (the daemon's tick does). The
    /// allocator keeps freed memory for reuse, and a few requests of tens of megabytes
    /// would otherwise leave the daemon's RSS at their peak for good.
    pub fn release_memory(&self) {
        let peak = self.budget.take_peak_bytes();
        if peak >= RELEASE_AFTER_BYTES {
            self.release_pending.store(true, Ordering::Relaxed);
        }
        if self.release_pending.load(Ordering::Relaxed)
            && self.budget.in_use_bytes() < RELEASE_AFTER_BYTES
        {
            self.release_pending.store(false, Ordering::Relaxed);
            crate::memory::release_free_memory();
        }
    }

    /// Refuses new requests from now on (shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Counts a refused request. The transports call it once per refusal, whichever
    /// stage refused.
    pub fn refused(
        &self,
        transport: Transport,
        signal: Signal,
        err: &IngestError,
        peer: Option<std::net::SocketAddr>,
    ) {
        self.telemetry
            .request_refused(transport, signal, err.reason(), err, peer);
    }

    /// A guard for one request's handling: dropped before [`Unanswered::answered`] (its
    /// client reset the stream or closed the connection while the request waited for
    /// room, for a decode thread or for its body, or while it was decoded), it counts
    /// the request as refused, `aborted`, as a body stream that failed is, unless it was
    /// taken for recording first ([`Claim`]); once given up, it is not recorded.
    pub fn unanswered(
        &self,
        transport: Transport,
        signal: Signal,
        peer: Option<std::net::SocketAddr>,
    ) -> Unanswered<'_> {
        Unanswered {
            ingest: self,
            transport,
            signal,
            peer,
            claim: Claim::default(),
            answered: false,
        }
    }

    /// Decompresses a body laid out as `format` into `out` (emptied first), bounded by
    /// `max_decompressed_bytes` as [`decompress`] is.
    pub fn decompress(
        &self,
        format: Format,
        src: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), IngestError> {
        out.clear();
        decompress(format, src, self.limits().max_decompressed_bytes, out)
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
        self.export_body(transport, signal, encoding, View::Joined(body), 0, &|| true)
    }

    /// [`Ingest::export`] of `inflated`, the body decompressed, or when it was not
    /// compressed, of the body as it was received (`raw` from byte `start`), after its
    /// decode is charged to `reservation`.
    #[allow(clippy::too_many_arguments)]
    fn export_decompressed(
        &self,
        transport: Transport,
        signal: Signal,
        encoding: Encoding,
        inflated: Option<&[u8]>,
        raw: &mut Received,
        start: usize,
        reservation: &mut Reservation,
        wanted: &dyn Fn() -> bool,
    ) -> Result<Accepted, IngestError> {
        let decode = match (encoding, inflated) {
            (Encoding::Protobuf, _) => {
                decode_estimate(encoding, inflated.map_or(raw.len() - start, <[u8]>::len))
            }
            // JSON is charged for what its objects become, known only once it is here.
            (Encoding::Json, Some(body)) => json::decode_charge(body),
            (Encoding::Json, None) => json::decode_charge(&raw.join()[start..]),
        };
        reservation.charge(decode)?;
        match inflated {
            Some(body) => {
                self.export_body(transport, signal, encoding, View::Joined(body), 0, wanted)
            }
            None => {
                self.export_received(transport, signal, encoding, raw, start, reservation, wanted)
            }
        }
    }

    /// [`Ingest::export`] of a body as it was received, from byte `start`. An
    /// uncompressed protobuf body is walked in the pieces it arrived in, and what the
    /// walk will copy (messages across pieces), held on top of the pieces, is charged to
    /// `reservation` first; when that would be most of the body, the body is joined
    /// instead and its pieces let go, so it is held once, as a joined body always was.
    /// Anything else is joined.
    #[allow(clippy::too_many_arguments)]
    fn export_received(
        &self,
        transport: Transport,
        signal: Signal,
        encoding: Encoding,
        body: &mut Received,
        start: usize,
        reservation: &mut Reservation,
        wanted: &dyn Fn() -> bool,
    ) -> Result<Accepted, IngestError> {
        let copied = match (encoding, body.view()) {
            (Encoding::Protobuf, View::Pieces(pieces, _)) => {
                Some(crate::otlp::joined_len(pieces, start))
            }
            _ => None,
        };
        match copied {
            Some(copied) if copied <= (body.len() - start) / 2 => reservation.charge(copied)?,
            _ => {
                body.join();
            }
        }
        self.export_body(transport, signal, encoding, body.view(), start, wanted)
    }

    /// Decodes and records `body` from byte `skip`: a joined body of either encoding, or
    /// a protobuf one in pieces. Just before recording, `wanted` says whether the client
    /// still waits for the answer: a decode thread's caller may have gone meanwhile (its
    /// client reset the stream, or its deadline passed), and a client that was not
    /// answered sends the request again, so its records are not counted now.
    fn export_body(
        &self,
        transport: Transport,
        signal: Signal,
        encoding: Encoding,
        body: View<'_>,
        skip: usize,
        wanted: &dyn Fn() -> bool,
    ) -> Result<Accepted, IngestError> {
        let gone = || {
            IngestError::BodyRead(
                "the client left, or its deadline passed, before its answer".into(),
            )
        };
        let target = self.target();
        let Target {
            keys,
            trace_keys,
            recorder,
            limits,
            ..
        } = &*target;
        let max = limits.max_records;
        let result = match (signal, encoding) {
            (Signal::Traces, Encoding::Protobuf) => with_trace_batch(|batch| {
                batch.max_records = max;
                match body {
                    View::Joined(body) => walk_traces(&body[skip..], trace_keys, batch)?,
                    View::Pieces(pieces, joined) => {
                        walk_traces_pieces(pieces, skip, joined, trace_keys, batch)?
                    }
                }
                if !wanted() {
                    return Err(gone());
                }
                recorder.record_traces(batch);
                Ok(Accepted::of(batch))
            }),
            (Signal::Traces, Encoding::Json) => json::decode_traces(one_slice(body, skip))
                .map_err(IngestError::from)
                .and_then(|req| {
                    let records = req
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len())
                        .sum();
                    too_many(records, max).map(|()| req)
                })
                .and_then(|req| if wanted() { Ok(req) } else { Err(gone()) })
                .map(|req| {
                    with_trace_batch(|batch| {
                        json::fill_traces(&req, trace_keys, batch);
                        recorder.record_traces(batch);
                        Accepted::of(batch)
                    })
                }),
            (Signal::Logs, Encoding::Protobuf) => with_log_batch(|batch| {
                batch.max_records = max;
                match body {
                    View::Joined(body) => walk_logs(&body[skip..], keys, batch)?,
                    View::Pieces(pieces, joined) => {
                        walk_logs_pieces(pieces, skip, joined, keys, batch)?
                    }
                }
                if !wanted() {
                    return Err(gone());
                }
                recorder.record_logs(batch);
                Ok(Accepted::of(batch))
            }),
            (Signal::Logs, Encoding::Json) => json::decode_logs(one_slice(body, skip))
                .map_err(IngestError::from)
                .and_then(|req| {
                    let records = req
                        .resource_logs
                        .iter()
                        .flat_map(|r| &r.scope_logs)
                        .map(|s| s.log_records.len())
                        .sum();
                    too_many(records, max).map(|()| req)
                })
                .and_then(|req| if wanted() { Ok(req) } else { Err(gone()) })
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

/// A JSON body from byte `skip`. [`Ingest::export_received`] joins every body but an
/// uncompressed protobuf one, so a JSON body is never in pieces; were that ever broken,
/// the body would read as empty and be refused as undecodable, not panic.
fn one_slice(body: View<'_>, skip: usize) -> &[u8] {
    match body {
        View::Joined(body) => &body[skip..],
        View::Pieces(..) => {
            debug_assert!(false, "a JSON body in pieces");
            &[]
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `f` on this thread's reusable trace batch.
fn with_trace_batch<'a, R>(f: impl FnOnce(&mut TraceBatch<'a>) -> R) -> R {
    let mut batch: TraceBatch<'a> = TRACE_BATCH.take().unwrap_or_default().recycle();
    let out = f(&mut batch);
    batch.trim(RETAINED_RECORDS);
    TRACE_BATCH.set(Some(batch.recycle()));
    out
}

/// Runs `f` on this thread's reusable log batch.
fn with_log_batch<'a, R>(f: impl FnOnce(&mut LogBatch<'a>) -> R) -> R {
    let mut batch: LogBatch<'a> = LOG_BATCH.take().unwrap_or_default().recycle();
    let out = f(&mut batch);
    batch.trim(RETAINED_RECORDS);
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
        match encoding {
            Encoding::Protobuf => match signal {
                Signal::Traces => ExportTraceServiceResponse {
                    partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: error_message(),
                    }),
                }
                .encode_to_vec(),
                Signal::Logs => ExportLogsServiceResponse {
                    partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                        rejected_log_records: rejected,
                        error_message: error_message(),
                    }),
                }
                .encode_to_vec(),
            },
            // OTLP/JSON as the standard encoders write it: an absent partial success is
            // left out (`{}`), and 64-bit integers are strings.
            Encoding::Json => {
                if rejected == 0 {
                    return b"{}".to_vec();
                }
                let count = match signal {
                    Signal::Traces => "rejectedSpans",
                    Signal::Logs => "rejectedLogRecords",
                };
                serde_json::json!({
                    "partialSuccess": {
                        count: rejected.to_string(),
                        "errorMessage": error_message(),
                    }
                })
                .to_string()
                .into_bytes()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A failed decode thread is sloxide's own failure: 500 and INTERNAL, which OTLP
    /// clients do not retry, counted apart from the client's faults.
    #[test]
    fn a_failed_decode_thread_is_an_internal_refusal() {
        let err = IngestError::Internal("its decode thread failed");
        assert_eq!(err.reason(), RefusalReason::Internal);
        assert_eq!(err.reason().as_str(), "internal");
        assert_eq!(err.http_status(), ::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.grpc_status().code(), tonic::Code::Internal);
        assert!(err.to_string().contains("a bug"), "{err}");
    }

    fn compress(format: Format, body: &[u8]) -> Vec<u8> {
        match format {
            Format::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(body).unwrap();
                enc.finish().unwrap()
            }
            Format::Zlib => {
                let mut enc =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(body).unwrap();
                enc.finish().unwrap()
            }
            Format::Zstd => zstd::bulk::compress(body, 1).unwrap(),
            Format::Snappy => snap::raw::Encoder::new().compress_vec(body).unwrap(),
            Format::SnappyFramed => {
                let mut enc = snap::write::FrameEncoder::new(Vec::new());
                enc.write_all(body).unwrap();
                enc.into_inner().unwrap()
            }
        }
    }

    const FORMATS: [Format; 5] = [
        Format::Gzip,
        Format::Zlib,
        Format::Zstd,
        Format::Snappy,
        Format::SnappyFramed,
    ];

    #[test]
    fn every_format_round_trips_onto_the_end_of_the_buffer() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for format in FORMATS {
            let mut out = b"head".to_vec();
            decompress(format, &compress(format, &body), body.len(), &mut out).unwrap();
            assert_eq!(&out[..4], b"head", "{format:?}");
            assert_eq!(out[4..], body[..], "{format:?}");
        }
        // `snappy` reads the framing format too, as older Collectors sent it.
        let framed = compress(Format::SnappyFramed, &body);
        let mut out = Vec::new();
        decompress(Format::Snappy, &framed, body.len(), &mut out).unwrap();
        assert_eq!(out, body);
        // An empty body of each.
        for format in FORMATS {
            let mut out = Vec::new();
            decompress(format, &compress(format, b""), 10, &mut out).unwrap();
            assert!(out.is_empty(), "{format:?}");
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let limit = 64 << 10;
        for format in FORMATS {
            let bomb = compress(format, &zeros);
            assert!(bomb.len() < zeros.len() / 10, "{format:?}: {}", bomb.len());
            let mut out = Vec::new();
            let err = decompress(format, &bomb, limit, &mut out).unwrap_err();
            assert!(
                matches!(err, IngestError::DecompressedTooLarge { limit: l } if l == limit),
                "{format:?}: {err}"
            );
            assert_eq!(err.reason(), RefusalReason::TooLarge);
            // Streamed formats stop one byte past the limit; a snappy block says its
            // length first and is refused before anything is allocated.
            if format == Format::Snappy {
                assert_eq!(out.capacity(), 0);
            } else {
                assert!(out.len() <= limit + 1, "{format:?}: {}", out.len());
            }
            // Exactly at the limit is accepted.
            let mut out = Vec::new();
            decompress(format, &compress(format, &zeros[..limit]), limit, &mut out).unwrap();
            assert_eq!(out.len(), limit, "{format:?}");
        }
    }

    #[test]
    fn a_large_request_does_not_pin_its_decode_buffers() {
        std::thread::spawn(|| {
            // A request of 4096 records leaves its capacity for the next one...
            with_trace_batch(|b| b.events.reserve(4096));
            let kept = with_trace_batch(|b| b.events.capacity());
            assert!(kept >= 4096, "{kept}");
            // ...one of 200 000 gives it back, down to RETAINED_RECORDS.
            with_trace_batch(|b| {
                b.events.reserve(200_000);
                b.values.reserve(200_000 * 4);
            });
            let (events, values) = with_trace_batch(|b| (b.events.capacity(), b.values.capacity()));
            assert!(events <= RETAINED_RECORDS, "{events}");
            assert!(values <= RETAINED_RECORDS * 2, "{values}");
            with_log_batch(|b| b.events.reserve(200_000));
            let logs = with_log_batch(|b| b.events.capacity());
            assert!(logs <= RETAINED_RECORDS, "{logs}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_snappy_block_cannot_claim_more_than_it_could_hold() {
        // A varint length just under the limit, then one literal: six bytes in all.
        let limit = 1 << 20;
        let mut block = Vec::new();
        let mut len = limit - 1;
        while len >= 0x80 {
            block.push((len as u8) | 0x80);
            len >>= 7;
        }
        block.push(len as u8);
        block.extend_from_slice(&[0x00, b'x']);
        let mut out = Vec::new();
        let err = decompress(Format::Snappy, &block, limit, &mut out).unwrap_err();
        assert!(matches!(err, IngestError::Decompress { .. }), "{err}");
        assert_eq!(err.reason(), RefusalReason::Decode);
        assert_eq!(out.capacity(), 0, "nothing allocated for the claim");
    }

    /// A request is either taken for recording or given up by its handler, never both:
    /// its guard counts it as aborted only when it was not taken.
    #[test]
    fn a_request_is_recorded_or_counted_aborted_never_both() {
        let claim = Claim::default();
        assert!(claim.record() && claim.record(), "taken, and still taken");
        assert!(!claim.abandon());
        let claim = Claim::default();
        assert!(claim.abandon());
        assert!(!claim.record(), "given up: not recorded");

        let clock = Arc::new(crate::clock::ManualClock::new(0));
        let config = crate::config::Config::embedded_default();
        let pipeline = crate::pipeline::Pipeline::new(&config, clock).unwrap();
        let ingest = &pipeline.ingest;
        let aborted = || {
            pipeline.telemetry.refused_requests(
                Transport::Grpc,
                Signal::Traces,
                RefusalReason::Aborted,
            )
        };
        // Dropped after it was taken: it counts as accepted, not aborted.
        let guard = ingest.unanswered(Transport::Grpc, Signal::Traces, None);
        assert!(guard.claim().record());
        drop(guard);
        assert_eq!(aborted(), 0);
        // Dropped before: aborted, and whoever would record it finds it given up.
        let guard = ingest.unanswered(Transport::Grpc, Signal::Traces, None);
        let claim = guard.claim().clone();
        drop(guard);
        assert_eq!(aborted(), 1);
        assert!(!claim.record());
        // Answered: nothing more.
        ingest
            .unanswered(Transport::Grpc, Signal::Traces, None)
            .answered();
        assert_eq!(aborted(), 1);
    }

    /// A body decoded on a decode thread whose client has left meanwhile (its stream
    /// reset, its deadline passed) is not recorded: the client was not answered and
    /// sends it again. It is refused as aborted, on either encoding and signal.
    #[test]
    fn a_body_whose_client_left_is_not_recorded() {
        use crate::fixture::{self, Shape};
        use prost::Message;
        let clock = Arc::new(crate::clock::ManualClock::new(
            Shape::default().end_unix_nanos + 1_000_000_000,
        ));
        let config = crate::config::Config::embedded_default();
        let pipeline = crate::pipeline::Pipeline::new(&config, clock).unwrap();
        let ingest = &pipeline.ingest;
        let traces = fixture::traces(&Shape::default());
        let logs = fixture::logs(&Shape::default());
        let bodies = [
            (Signal::Traces, Encoding::Protobuf, traces.encode_to_vec()),
            (
                Signal::Traces,
                Encoding::Json,
                serde_json::to_vec(&traces).unwrap(),
            ),
            (Signal::Logs, Encoding::Protobuf, logs.encode_to_vec()),
            (
                Signal::Logs,
                Encoding::Json,
                serde_json::to_vec(&logs).unwrap(),
            ),
        ];
        for (signal, encoding, body) in &bodies {
            let view = View::Joined(body);
            let err = ingest
                .export_body(Transport::Http, *signal, *encoding, view, 0, &|| false)
                .unwrap_err();
            assert_eq!(
                err.reason(),
                RefusalReason::Aborted,
                "{signal:?} {encoding:?}"
            );
        }
        let aggregator = pipeline.aggregator();
        assert!(aggregator.spans().is_empty() && aggregator.logs().is_empty());
        for (signal, encoding, body) in &bodies {
            let view = View::Joined(body);
            let accepted = ingest
                .export_body(Transport::Http, *signal, *encoding, view, 0, &|| true)
                .unwrap();
            assert_eq!(accepted.accepted, 1000, "{signal:?} {encoding:?}");
        }
    }

    #[test]
    fn decompression_is_charged_a_step_at_a_time_and_stops_when_refused() {
        let zeros = vec![0u8; 8 << 20];
        for format in FORMATS {
            let bomb = compress(format, &zeros);
            // Every step is told, and they add up to the output.
            let (mut out, mut told) = (Vec::new(), Vec::new());
            decompress_charged(format, &bomb, 64 << 20, &mut out, &mut |n| {
                told.push(n);
                Ok(())
            })
            .unwrap();
            assert_eq!(out.len(), zeros.len(), "{format:?}");
            assert_eq!(told.iter().sum::<usize>(), zeros.len(), "{format:?}");
            // Refused past 2 MiB: it stops within a step of that.
            let (mut out, mut total) = (Vec::new(), 0);
            let err = decompress_charged(format, &bomb, 64 << 20, &mut out, &mut |n| {
                total += n;
                if total > 2 << 20 {
                    return Err(IngestError::Overloaded);
                }
                Ok(())
            })
            .unwrap_err();
            assert!(matches!(err, IngestError::Overloaded), "{format:?}: {err}");
            if format != Format::Snappy {
                assert!(out.len() <= (3 << 20), "{format:?}: {} bytes", out.len());
            } else {
                // A snappy block is told its whole length before it is allocated.
                assert!(out.is_empty(), "{} bytes", out.len());
            }
        }
    }

    /// [`inflated_estimate`] of a whole body.
    fn estimate(format: Format, body: &[u8], limit: usize) -> usize {
        let mut tail = [0; 4];
        let n = body.len().min(4);
        tail[4 - n..].copy_from_slice(&body[body.len() - n..]);
        let head = &body[..body.len().min(STATED_SIZE_HEAD)];
        inflated_estimate(format, head, tail, body.len(), limit)
    }

    #[test]
    fn inflated_sizes_are_read_where_the_format_states_them_and_guessed_elsewhere() {
        // Letters from a xorshift: about 2 to 1 in every format, as text-like as OTLP.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let body: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 16) as u8
            })
            .collect();
        let limit = 64 << 20;
        for format in FORMATS {
            let packed = compress(format, &body);
            match format {
                // gzip's ISIZE, zstd's content size (written by a one-shot compression),
                // a snappy block's length.
                Format::Gzip | Format::Zstd | Format::Snappy => {
                    assert_eq!(estimate(format, &packed, limit), body.len(), "{format:?}");
                }
                Format::Zlib | Format::SnappyFramed => assert_eq!(
                    estimate(format, &packed, limit),
                    packed.len() * INFLATE_GUESS_RATIO,
                    "{format:?}"
                ),
            }
            // Never past the limit.
            assert_eq!(estimate(format, &packed, 1000), 1000, "{format:?}");
        }
        // A zstd stream that does not state its size is guessed at.
        let streamed = zstd::stream::encode_all(&body[..], 1).unwrap();
        assert_eq!(
            estimate(Format::Zstd, &streamed, limit),
            streamed.len() * INFLATE_GUESS_RATIO
        );
        // Sizes past 64 times the body are not believed (nor past what the format
        // could reach: a snappy block, at most 22 times).
        let mut gzip = compress(Format::Gzip, b"tiny");
        let at = gzip.len() - 4;
        gzip[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            estimate(Format::Gzip, &gzip, limit),
            gzip.len() * INFLATE_GUESS_RATIO
        );
        let zeros = compress(Format::Zstd, &vec![0; 11 << 20]);
        assert!(zeros.len() * STATED_RATIO_MAX < 11 << 20);
        assert_eq!(
            estimate(Format::Zstd, &zeros, limit),
            zeros.len() * INFLATE_GUESS_RATIO
        );
        let mut snappy = compress(Format::Snappy, b"tiny");
        snappy.splice(..1, [0x80, 0x80, 0x80, 0x20]);
        assert_eq!(
            estimate(Format::Snappy, &snappy, limit),
            snappy.len() * INFLATE_GUESS_RATIO
        );
        // Bytes too short or corrupt for their format are guessed at too.
        assert_eq!(estimate(Format::Gzip, b"\x1f\x8b", limit), 16);
        assert_eq!(estimate(Format::Zstd, b"nonsense", limit), 64);
    }

    #[test]
    fn zstd_windows_follow_the_limit_within_zstds_bounds() {
        assert_eq!(zstd_window_log_max(1 << 10), 23);
        assert_eq!(zstd_window_log_max(8 << 20), 23);
        assert_eq!(zstd_window_log_max((16 << 20) + 1), 25);
        assert_eq!(zstd_window_log_max(64 << 20), 26);
        assert_eq!(zstd_window_log_max(1 << 30), 27);
        // A frame asking for a 64 MiB window is refused under an 8 MiB limit when it is
        // decoded in steps (here, its bound is past what is decoded in one pass).
        let frame_of = |body: &[u8]| {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
            encoder.window_log(26).unwrap();
            encoder.long_distance_matching(true).unwrap();
            encoder.include_contentsize(false).unwrap();
            std::io::Write::write_all(&mut encoder, body).unwrap();
            encoder.finish().unwrap()
        };
        let body = vec![7u8; 1 << 20];
        let frame = frame_of(&body);
        let bound = zstd::zstd_safe::decompress_bound(&frame).unwrap() as usize;
        assert!(bound > one_pass_bound_max(frame.len()), "{bound}");
        let mut out = Vec::new();
        let err = decompress(Format::Zstd, &frame, 8 << 20, &mut out).unwrap_err();
        assert!(matches!(err, IngestError::Decompress { .. }), "{err}");
        // Within the window it allows, the same body is fine.
        let mut out = Vec::new();
        decompress(Format::Zstd, &frame, 64 << 20, &mut out).unwrap();
        assert_eq!(out, body);
        // Decoded in one pass, a frame needs no window: the same window is no cost.
        let small = frame_of(&body[..1 << 16]);
        let mut out = Vec::new();
        decompress(Format::Zstd, &small, 8 << 20, &mut out).unwrap();
        assert_eq!(out, body[..1 << 16]);
    }

    #[test]
    fn corrupt_bodies_are_decode_errors_naming_their_compression() {
        let body = b"a perfectly ordinary protobuf body, or so it says".repeat(20);
        for format in FORMATS {
            let good = compress(format, &body);
            let truncated = good[..good.len() / 2].to_vec();
            let garbage = b"\x01\x02\x03 not compressed at all".to_vec();
            for case in [truncated, garbage] {
                let mut out = Vec::new();
                match decompress(format, &case, 1 << 20, &mut out) {
                    Err(err @ IngestError::Decompress { compression, .. }) => {
                        assert_eq!(compression, format.compression());
                        assert_eq!(err.reason(), RefusalReason::Decode);
                        assert!(
                            err.to_string()
                                .starts_with(&format!("invalid {compression} body")),
                            "{err}"
                        );
                    }
                    other => panic!("{format:?}: {other:?}"),
                }
            }
        }
    }

    proptest::proptest! {
        /// Damaged bodies never panic, and never put more than the limit (plus the one
        /// byte that shows it was passed) into the buffer, whatever the format.
        #[test]
        fn damaged_bodies_stay_within_the_limit(
            payload in proptest::collection::vec(0u8..4, 0..20_000),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..), 0..4),
            cut in proptest::prelude::any::<usize>(),
            limit in 0usize..30_000,
        ) {
            for format in FORMATS {
                let mut body = compress(format, &payload);
                for (at, mask) in &flips {
                    // (Some formats write nothing for an empty payload.)
                    let len = body.len();
                    if len > 0 {
                        body[at % len] ^= mask;
                    }
                }
                body.truncate(body.len() - cut % (body.len() / 4 + 1));
                let mut out = Vec::new();
                let result = decompress(format, &body, limit, &mut out);
                proptest::prop_assert!(out.len() <= limit + 1, "{format:?}: {}", out.len());
                if result.is_ok() {
                    proptest::prop_assert!(out.len() <= limit);
                }
                if flips.is_empty() && body.len() == compress(format, &payload).len() {
                    proptest::prop_assert_eq!(result.is_ok(), payload.len() <= limit);
                }
            }
        }
    }

    #[test]
    fn content_encodings_name_their_formats() {
        let cases = [
            ("gzip", Some(Format::Gzip)),
            ("GZIP", Some(Format::Gzip)),
            ("zstd", Some(Format::Zstd)),
            ("deflate", Some(Format::Zlib)),
            ("zlib", Some(Format::Zlib)),
            ("snappy", Some(Format::Snappy)),
            ("x-snappy-framed", Some(Format::SnappyFramed)),
            ("identity", None),
            ("br", None),
            ("lz4", None),
            ("gzip, zstd", None),
        ];
        for (value, format) in cases {
            assert_eq!(Format::of_content_encoding(value), format, "{value}");
        }
        for format in FORMATS {
            assert!(Compression::ALL.contains(&format.compression()));
        }
    }
}
