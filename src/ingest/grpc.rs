//! OTLP/gRPC: `TraceService/Export` and `LogsService/Export`, unary calls served
//! directly on the HTTP/2 request: the body is read by the same admission and limits as
//! OTLP/HTTP ([`Ingest::read_body`]), its one length-prefixed message is unframed and,
//! when compressed (`grpc-encoding` gzip, zstd, deflate or snappy), decompressed by
//! sloxide, bounded by `max_decompressed_bytes`, and walked without a prost struct.
//!
//! A `grpc-encoding` that `limits.compression` leaves out, or that sloxide does not know,
//! is refused with UNIMPLEMENTED before the body is read. The metrics service, and every
//! other path, answers UNIMPLEMENTED. The client's `grpc-timeout` bounds how long a
//! request waits for room in the in-flight budget.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{Accepted, Encoding, Format, Ingest, IngestError};
use crate::config::{Compression, Compressions};
use crate::telemetry::{Signal, Transport};

/// A codec whose messages are the raw protobuf bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder and decoder of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // Splits the frame off tonic's buffer without copying it.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The trace service's export method.
pub const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The logs service's export method.
pub const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The OTLP/gRPC server: `TraceService/Export` and `LogsService/Export`; every other
/// path (the metrics service included) answers UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    ingest: Arc<Ingest>,
}

impl OtlpGrpc {
    /// The server, feeding `ingest`.
    pub fn new(ingest: Arc<Ingest>) -> Self {
        Self { ingest }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type HttpResponse = http::Response<GrpcBody>;

impl<B> tower::Service<http::Request<B>> for OtlpGrpc
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let signal = match req.uri().path() {
            TRACE_EXPORT => Signal::Traces,
            LOGS_EXPORT => Signal::Logs,
            _ => return Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        };
        // gRPC over HTTP/2: a request that is not `application/grpc` (or `+proto`, ...)
        // is answered 415, as the protocol asks, and counted as unsupported; but as on
        // every path, a request without a valid token is refused as that first.
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| is_grpc(v.as_bytes()));
        if !grpc {
            let err = self
                .ingest
                .authenticate(req.headers())
                .err()
                .unwrap_or_else(|| {
                    IngestError::NotGrpc(
                        req.headers()
                            .get(http::header::CONTENT_TYPE)
                            .map_or("<none>", |v| v.to_str().unwrap_or("<non-ASCII>"))
                            .to_owned(),
                    )
                });
            self.ingest
                .refused(Transport::Grpc, signal, &err, crate::net::Peer::of(&req));
            let mut response = err.grpc_status().into_http::<GrpcBody>();
            if matches!(err, IngestError::NotGrpc(_)) {
                *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            }
            return Box::pin(async { Ok(response) });
        }
        let ingest = self.ingest.clone();
        Box::pin(async move { Ok(export(ingest, signal, req).await) })
    }
}

/// `application/grpc`, alone or with a subtype (`+proto`) or parameters; not
/// `application/grpc-web`, whose framing differs.
fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.len() >= GRPC.len()
        && content_type[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// One unary `Export` call, for either signal.
async fn export<B>(ingest: Arc<Ingest>, signal: Signal, req: http::Request<B>) -> HttpResponse
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = req.into_parts();
    let peer = parts.extensions.get::<crate::net::Peer>().map(|p| p.0);
    let unanswered = ingest.unanswered(Transport::Grpc, signal, peer);
    let conn = crate::net::ConnReceived::of(&parts.extensions);
    let received = receive(
        &ingest,
        signal,
        &parts.headers,
        &mut body,
        conn,
        unanswered.claim(),
    )
    .await;
    unanswered.answered();
    match received {
        Ok(accepted) => success(accepted.response(signal, Encoding::Protobuf)),
        Err(err) => {
            ingest.refused(Transport::Grpc, signal, &err, peer);
            match err {
                IngestError::UnsupportedEncoding { accepted, .. }
                | IngestError::CompressionOff { accepted, .. } => {
                    unsupported(&err, accepted).into_http()
                }
                err => err.grpc_status().into_http(),
            }
        }
    }
}

async fn receive<B>(
    ingest: &Arc<Ingest>,
    signal: Signal,
    headers: &HeaderMap,
    body: &mut B,
    conn: Option<Arc<std::sync::atomic::AtomicU64>>,
    claim: &super::Claim,
) -> Result<Accepted, IngestError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let limits = ingest.limits();
    let client_deadline = grpc_timeout(headers).map(|t| Instant::now() + t);
    let deadline = Instant::now() + limits.body_read_timeout;
    // The checks that cost nothing come first, so a request that can never succeed is
    // told so (and not told to retry) even when the daemon is busy.
    ingest.authenticate(headers)?;
    let format = message_compression(headers, limits.compression)?.map(format_of);
    // A guess until the length prefix arrives; then the message's declared length (and,
    // uncompressed, its decode) is reserved, waiting for room as admission does.
    let mut reservation = ingest
        .admit(super::admission::UNKNOWN_LENGTH, client_deadline)
        .await?;
    let mut raw = super::buffers::Received::new(ingest.buffers().get());
    let on_prefix = |seen: &[u8]| {
        let declared = check_prefix(
            seen,
            format.is_some(),
            limits.max_request_bytes,
            limits.max_decompressed_bytes,
        )?;
        let message = PREFIX + declared;
        let hold = match seen[0] {
            0 => message.saturating_add(super::decode_estimate(Encoding::Protobuf, declared)),
            _ => message,
        };
        Ok((hold, message))
    };
    ingest
        .read_body(
            body,
            &mut raw,
            limits.max_request_bytes.saturating_add(PREFIX),
            &mut reservation,
            deadline,
            super::admission::UNKNOWN_LENGTH,
            conn,
            PREFIX,
            on_prefix,
        )
        .await?;
    let mut head = [0; PREFIX];
    let n = raw.head(&mut head);
    let compressed = unframe(&head[..n], raw.len(), format.is_some())?;
    ingest
        .process(
            Transport::Grpc,
            signal,
            Encoding::Protobuf,
            format.filter(|_| compressed),
            raw,
            PREFIX,
            reservation,
            client_deadline,
            claim,
        )
        .await
}

/// The length prefix of a gRPC message: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// Refuses a message as soon as its prefix is in: an unknown flag, a compressed flag
/// without a `grpc-encoding`, or a declared length over the limit that applies to it
/// (the body as received when compressed, the decompressed body when not).
/// Returns the declared length.
fn check_prefix(
    seen: &[u8],
    encoded: bool,
    max_request: usize,
    max_decompressed: usize,
) -> Result<usize, IngestError> {
    let [flag, a, b, c, d, ..] = *seen else {
        return Err(IngestError::Frame("shorter than its 5-byte prefix"));
    };
    let declared = u32::from_be_bytes([a, b, c, d]) as usize;
    match flag {
        0 if declared > max_decompressed.min(max_request) => Err(IngestError::BodyTooLarge {
            limit: max_decompressed.min(max_request),
        }),
        1 if !encoded => Err(IngestError::Frame(
            "compressed flag set without a grpc-encoding",
        )),
        1 if declared > max_request => Err(IngestError::BodyTooLarge { limit: max_request }),
        0 | 1 => Ok(declared),
        _ => Err(IngestError::Frame("unknown compressed flag")),
    }
}

/// Checks that a body of `total` bytes, which begins with `head` (its first bytes, at
/// most [`PREFIX`]), is exactly one length-prefixed message (what [`check_prefix`]
/// already let through); true when it is compressed.
fn unframe(head: &[u8], total: usize, encoded: bool) -> Result<bool, IngestError> {
    let [flag, a, b, c, d, ..] = *head else {
        return Err(IngestError::Frame(if total == 0 {
            "the request carried no message"
        } else {
            "shorter than its 5-byte prefix"
        }));
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let message = total - PREFIX;
    if message < len {
        return Err(IngestError::Frame("shorter than its length prefix"));
    }
    if message > len {
        return Err(IngestError::Frame("more than one message in a unary call"));
    }
    match flag {
        0 => Ok(false),
        1 if encoded => Ok(true),
        1 => Err(IngestError::Frame(
            "compressed flag set without a grpc-encoding",
        )),
        _ => Err(IngestError::Frame("unknown compressed flag")),
    }
}

/// How a `grpc-encoding` lays out its messages.
fn format_of(compression: Compression) -> Format {
    match compression {
        Compression::Gzip => Format::Gzip,
        Compression::Zstd => Format::Zstd,
        // gRPC's `deflate` is zlib-wrapped, as HTTP's is.
        Compression::Deflate => Format::Zlib,
        // The Collector sends the snappy framing format; a raw block is read too.
        Compression::Snappy => Format::Snappy,
    }
}

/// The client's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit); `None`
/// without one or when it does not parse.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The answer to an accepted call: the response message, then `grpc-status: 0` in the
/// trailers.
fn success(message: Vec<u8>) -> HttpResponse {
    let mut framed = Vec::with_capacity(PREFIX + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(GrpcBody {
        message: Some(Bytes::from(framed)),
        trailers: Some(trailers),
    });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A unary gRPC response body: one message, then the trailers; empty for a
/// trailers-only (error) response, whose status is in the headers.
#[derive(Debug, Default)]
pub struct GrpcBody {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.message {
            Some(m) => SizeHint::with_exact(m.len() as u64),
            None => SizeHint::with_exact(0),
        }
    }
}

/// The compression named by `grpc-encoding`: `None` without one (no header, or
/// `identity`); an error when it is unknown or turned off by `limits.compression`.
/// Names are matched exactly, as tonic does.
fn message_compression(
    headers: &http::HeaderMap,
    accepted: Compressions,
) -> Result<Option<Compression>, IngestError> {
    let Some(value) = headers.get("grpc-encoding") else {
        return Ok(None);
    };
    let compression = match value.as_bytes() {
        b"identity" => return Ok(None),
        b"gzip" => Compression::Gzip,
        b"zstd" => Compression::Zstd,
        b"deflate" => Compression::Deflate,
        b"snappy" => Compression::Snappy,
        other => {
            return Err(IngestError::UnsupportedEncoding {
                encoding: String::from_utf8_lossy(other).into_owned(),
                accepted,
            });
        }
    };
    if !accepted.contains(compression) {
        return Err(IngestError::CompressionOff {
            compression,
            accepted,
        });
    }
    Ok(Some(compression))
}

/// The UNIMPLEMENTED answer to a `grpc-encoding` refused by [`message_compression`],
/// with the `grpc-accept-encoding` that the gRPC compression spec asks for.
fn unsupported(err: &IngestError, accepted: Compressions) -> Status {
    let mut status = err.grpc_status();
    let names: Vec<&str> = accepted
        .iter()
        .map(Compression::as_str)
        .chain(["identity"])
        .collect();
    if let Ok(value) = names.join(",").parse() {
        status.metadata_mut().insert("grpc-accept-encoding", value);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::RefusalReason;

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut body = vec![flag];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    /// [`unframe`] of a whole body.
    fn unframe_body(body: &[u8], encoded: bool) -> Result<bool, IngestError> {
        unframe(&body[..body.len().min(PREFIX)], body.len(), encoded)
    }

    #[test]
    fn one_message_is_unframed_and_anything_else_refused() {
        assert!(!unframe_body(&frame(0, b"abc"), false).unwrap());
        assert!(!unframe_body(&frame(0, b""), true).unwrap());
        assert!(unframe_body(&frame(1, b"abc"), true).unwrap());
        let mut two = frame(0, b"ab");
        two.extend(frame(0, b"cd"));
        let mut cut = frame(0, b"abc");
        cut.pop();
        let cases = [
            (vec![], "the request carried no message"),
            (vec![0, 0, 0], "shorter than its 5-byte prefix"),
            (cut, "shorter than its length prefix"),
            (two, "more than one message in a unary call"),
            (frame(2, b"ab"), "unknown compressed flag"),
            (
                frame(1, b"ab"),
                "compressed flag set without a grpc-encoding",
            ),
        ];
        for (body, why) in cases {
            let err = unframe_body(&body, false).unwrap_err();
            assert!(
                matches!(err, IngestError::Frame(w) if w == why),
                "{body:?}: {err}"
            );
            assert_eq!(err.grpc_status().code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn an_oversize_message_is_refused_from_its_prefix() {
        let (request, decompressed) = (1000, 4000);
        let prefix = |flag: u8, len: u32| {
            let mut p = vec![flag];
            p.extend_from_slice(&len.to_be_bytes());
            p
        };
        assert!(check_prefix(&[0, 0], false, request, decompressed).is_err());
        assert_eq!(
            check_prefix(&prefix(0, 1000), false, request, decompressed).unwrap(),
            1000
        );
        assert_eq!(
            check_prefix(&prefix(1, 1000), true, request, decompressed).unwrap(),
            1000
        );
        for (flag, encoded) in [(0, false), (1, true)] {
            let err =
                check_prefix(&prefix(flag, 1001), encoded, request, decompressed).unwrap_err();
            assert!(
                matches!(err, IngestError::BodyTooLarge { limit: 1000 }),
                "{err}"
            );
            assert_eq!(err.grpc_status().code(), tonic::Code::ResourceExhausted);
        }
        assert!(check_prefix(&prefix(1, 10), false, request, decompressed).is_err());
        assert!(check_prefix(&prefix(7, 10), true, request, decompressed).is_err());
    }

    #[test]
    fn grpc_content_types_are_told_from_grpc_web() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC; x=y",
        ] {
            assert!(is_grpc(yes.as_bytes()), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let headers = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            headers
        };
        let cases = [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("10S", Some(Duration::from_secs(10))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("5n", Some(Duration::from_nanos(5))),
            ("123456789S", None),
            ("S", None),
            ("10s", None),
            ("-1S", None),
            ("+1S", None),
        ];
        for (value, want) in cases {
            assert_eq!(grpc_timeout(&headers(value)), want, "{value}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn grpc_encodings_are_checked_against_the_accepted_ones() {
        let headers = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-encoding", HeaderValue::from_static(value));
            headers
        };
        let all = Compressions::ALL;
        assert_eq!(
            message_compression(&http::HeaderMap::new(), all).unwrap(),
            None
        );
        assert_eq!(
            message_compression(&headers("identity"), all).unwrap(),
            None
        );
        for c in Compression::ALL {
            assert_eq!(
                message_compression(&headers(c.as_str()), all).unwrap(),
                Some(c)
            );
        }
        let gzip_only = Compressions::of(&[Compression::Gzip]);
        let off = message_compression(&headers("zstd"), gzip_only).unwrap_err();
        assert_eq!(
            off.to_string(),
            "zstd is turned off by limits.compression; send gzip or identity"
        );
        let status = unsupported(&off, gzip_only);
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.metadata().get("grpc-accept-encoding").unwrap(),
            "gzip,identity"
        );
        let unknown = message_compression(&headers("br"), all).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unsupported content encoding \"br\"; send gzip, zstd, deflate, snappy or identity"
        );
        assert_eq!(unknown.reason(), RefusalReason::Unsupported);
    }
}
