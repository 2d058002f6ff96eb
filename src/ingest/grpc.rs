//! OTLP/gRPC: tonic services for `TraceService/Export` and `LogsService/Export`, with a
//! codec that hands the raw message bytes to the walker instead of prost structs.
//!
//! tonic frames and decompresses the message (gzip, zstd, deflate; bounded by
//! `max_decompressed_bytes`); a body wrapper in front of it enforces `max_request_bytes`
//! on the bytes as received. tonic has no snappy, which the OpenTelemetry Collector's
//! gRPC exporter can send (snappy framing format), so a snappy message is read whole
//! (bounded the same way), decompressed by sloxide and handed to tonic uncompressed. A
//! `grpc-encoding` that `limits.compression` leaves out, or that sloxide does not know,
//! is refused with UNIMPLEMENTED before the body is read. The metrics service, and every
//! other path, answers UNIMPLEMENTED.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};

use super::{Encoding, Format, Ingest, IngestError};
use crate::config::{Compression, Compressions};
use crate::telemetry::{RefusalReason, Signal, Transport};

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
///
/// It dispatches on the path itself rather than through tonic's `Routes`, which sit on
/// an axum router and box the request body, the response body and the future again
/// on every request: about 10 allocations per request saved (the whole-run test in
/// tests/it/alloc.rs counts them).
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    traces: Export,
    logs: Export,
}

impl OtlpGrpc {
    /// The server, feeding `ingest`.
    pub fn new(ingest: Arc<Ingest>) -> Self {
        Self {
            traces: Export {
                ingest: ingest.clone(),
                signal: Signal::Traces,
            },
            logs: Export {
                ingest,
                signal: Signal::Logs,
            },
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type HttpResponse = http::Response<tonic::body::Body>;

impl tower::Service<http::Request<tonic::body::Body>> for OtlpGrpc {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let export = match req.uri().path() {
            TRACE_EXPORT => self.traces.clone(),
            LOGS_EXPORT => self.logs.clone(),
            _ => return Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        };
        Box::pin(export.handle(req))
    }
}

/// The one unary `Export` method, for either signal.
#[derive(Debug, Clone)]
struct Export {
    ingest: Arc<Ingest>,
    signal: Signal,
}

impl Export {
    async fn handle(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<HttpResponse, Infallible> {
        let _permit = match self.ingest.admit() {
            Ok(permit) => permit,
            Err(err) => {
                self.ingest.refused(Transport::Grpc, self.signal, &err);
                return Ok(err.grpc_status().into_http());
            }
        };
        let limits = self.ingest.limits();
        let snappy = match message_compression(req.headers(), limits.compression) {
            Ok(compression) => compression == Some(Compression::Snappy),
            Err(err) => {
                self.ingest.refused(Transport::Grpc, self.signal, &err);
                return Ok(unsupported(&err, limits.compression).into_http());
            }
        };
        let aborted = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| LimitedBody::new(body, limits.max_request_bytes, aborted.clone()));
        let req = if snappy {
            match unsnappy(req, limits.max_decompressed_bytes).await {
                Ok(req) => req,
                Err(status) => {
                    let reason = RefusalReason::of_grpc_code(status.code());
                    if let Some(reason) = reason {
                        self.ingest.telemetry().request_refused(
                            Transport::Grpc,
                            self.signal,
                            reason,
                            &status.message(),
                        );
                    }
                    return Ok(status.into_http());
                }
            }
        } else {
            req.map(tonic::body::Body::new)
        };
        let mut grpc = Grpc::new(RawCodec)
            .max_decoding_message_size(limits.max_decompressed_bytes)
            .max_encoding_message_size(usize::MAX);
        for (compression, encoding) in TONIC_DECODES {
            if limits.compression.contains(compression) {
                grpc = grpc.accept_compressed(encoding);
            }
        }
        let ingest = self.ingest.clone();
        let signal = self.signal;
        let mut response = grpc.unary(self, req).await;
        // tonic answers a message it cannot decompress or unframe with INTERNAL; it is
        // the client's body that is wrong, so answer it as every other undecodable body.
        let status = response.headers_mut().get_mut("grpc-status");
        if let Some(status) = status.filter(|code| code.as_bytes() == b"13") {
            *status = HeaderValue::from_static("3");
        }
        // Refusals come from our service, from the body limit, or from tonic's own
        // framing, decompression and size limit, which happen before our service sees
        // the message and tell us nothing but the status. So every refusal is counted
        // here, once, from the status it was answered with.
        let reason = if aborted.load(Ordering::Relaxed) {
            response = IngestError::BodyRead("the request body did not arrive whole".into())
                .grpc_status()
                .into_http();
            Some(RefusalReason::Aborted)
        } else {
            refusal_of(&response)
        };
        if let Some(reason) = reason {
            ingest.telemetry().request_refused(
                Transport::Grpc,
                signal,
                reason,
                &"see grpc-message",
            );
        }
        Ok(response)
    }
}

/// The compressions tonic decompresses itself, and its names for them.
const TONIC_DECODES: [(Compression, CompressionEncoding); 3] = [
    (Compression::Gzip, CompressionEncoding::Gzip),
    (Compression::Zstd, CompressionEncoding::Zstd),
    (Compression::Deflate, CompressionEncoding::Deflate),
];

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

/// Reads a snappy-compressed request whole (the body limit applies as it arrives) and
/// returns it with its message decompressed and framed uncompressed, for tonic.
async fn unsnappy(
    req: http::Request<LimitedBody>,
    limit: usize,
) -> Result<http::Request<tonic::body::Body>, Status> {
    let (mut parts, body) = req.into_parts();
    let raw = body.collect().await?.to_bytes();
    let message = reframe(&raw, Format::Snappy, limit).map_err(|err| err.grpc_status())?;
    parts.headers.remove("grpc-encoding");
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let body = http_body_util::Full::new(Bytes::from(message));
    Ok(http::Request::from_parts(
        parts,
        tonic::body::Body::new(body),
    ))
}

/// The one length-prefixed message of a unary request body, decompressed from `format`
/// (when its compressed flag is set) and framed again uncompressed.
fn reframe(body: &[u8], format: Format, limit: usize) -> Result<Vec<u8>, IngestError> {
    let [flag, a, b, c, d, message @ ..] = body else {
        return Err(IngestError::Frame("shorter than its 5-byte prefix"));
    };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if message.len() < len {
        return Err(IngestError::Frame("shorter than its length prefix"));
    }
    if message.len() > len {
        return Err(IngestError::Frame("more than one message in a unary call"));
    }
    let mut out = Vec::with_capacity(5 + len.min(limit));
    out.extend_from_slice(&[0; 5]);
    match flag {
        0 => out.extend_from_slice(message),
        1 => super::decompress(format, message, limit, &mut out)?,
        _ => return Err(IngestError::Frame("unknown compressed flag")),
    }
    let len =
        u32::try_from(out.len() - 5).map_err(|_| IngestError::DecompressedTooLarge { limit })?;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

type ExportResult = Result<Response<Bytes>, Status>;

/// The response of one export: ready at once, or (only while a reload is under way)
/// after waiting for it to finish.
pub enum ExportFuture {
    /// Exported already.
    Ready(Option<ExportResult>),
    /// Waiting for a reload, then exporting.
    Waiting(BoxFuture<ExportResult>),
}

impl Future for ExportFuture {
    type Output = ExportResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExportResult> {
        match self.get_mut() {
            Self::Ready(out) => Poll::Ready(
                out.take()
                    .unwrap_or_else(|| Err(Status::internal("export polled after completion"))),
            ),
            Self::Waiting(f) => f.as_mut().poll(cx),
        }
    }
}

fn export(ingest: &Ingest, signal: Signal, body: &[u8]) -> ExportResult {
    ingest
        .export(Transport::Grpc, signal, Encoding::Protobuf, body)
        .map(|accepted| {
            let bytes = accepted.response(signal, Encoding::Protobuf);
            Response::new(Bytes::from(bytes))
        })
        .map_err(|err| err.grpc_status())
}

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = ExportFuture;

    fn call(&mut self, request: Request<Bytes>) -> ExportFuture {
        let body = request.into_inner();
        if let Some(_entered) = self.ingest.try_enter() {
            return ExportFuture::Ready(Some(export(&self.ingest, self.signal, &body)));
        }
        let (ingest, signal) = (self.ingest.clone(), self.signal);
        ExportFuture::Waiting(Box::pin(async move {
            let _entered = ingest.enter().await;
            export(&ingest, signal, &body)
        }))
    }
}

/// The refusal reason of an error response, read from its `grpc-status` header (set
/// only on trailers-only error responses; a success carries it in the trailers).
fn refusal_of(response: &HttpResponse) -> Option<RefusalReason> {
    let code = response.headers().get("grpc-status")?.to_str().ok()?;
    RefusalReason::of_grpc_code(tonic::Code::from_bytes(code.as_bytes()))
}

/// Counts the bytes of a gRPC request body as received and fails the stream with
/// RESOURCE_EXHAUSTED once they pass the limit, or with CANCELLED (counted as
/// `aborted`) when the transport fails it. It also reads the length prefix of the
/// first frame, so an oversize message is refused before its bytes arrive.
struct LimitedBody {
    inner: tonic::body::Body,
    /// Set when the transport failed the body. tonic reads a cancelled request body as
    /// a request that ended without a message, so the outcome is taken from here.
    aborted: Arc<AtomicBool>,
    limit: usize,
    seen: usize,
    header: [u8; 5],
    failed: bool,
}

impl LimitedBody {
    fn new(inner: tonic::body::Body, limit: usize, aborted: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            aborted,
            limit,
            seen: 0,
            header: [0; 5],
            failed: false,
        }
    }

    fn over_limit(&mut self) -> Status {
        self.failed = true;
        IngestError::BodyTooLarge { limit: self.limit }.grpc_status()
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            // The transport failed the body (a reset stream, a closed connection): the
            // client went away before its message was complete, which is not an
            // undecodable body.
            Poll::Ready(Some(Err(status))) => {
                self.failed = true;
                self.aborted.store(true, Ordering::Relaxed);
                let aborted = IngestError::BodyRead(status.message().to_owned());
                return Poll::Ready(Some(Err(aborted.grpc_status())));
            }
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let before = self.seen;
            for (i, byte) in data
                .chunk()
                .iter()
                .take(5usize.saturating_sub(before))
                .enumerate()
            {
                self.header[before + i] = *byte;
            }
            self.seen = before + data.len();
            let declared = if self.seen >= 5 {
                u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize
            } else {
                0
            };
            if declared > self.limit || self.seen > self.limit.saturating_add(5) {
                return Poll::Ready(Some(Err(self.over_limit())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut body = vec![flag];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    #[test]
    fn a_snappy_message_is_framed_again_uncompressed() {
        let message: Vec<u8> = (0..50_000u32).map(|i| (i % 7) as u8).collect();
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut framed, &message).unwrap();
        let framed = framed.into_inner().unwrap();
        let block = snap::raw::Encoder::new().compress_vec(&message).unwrap();
        for compressed in [framed, block] {
            let out = reframe(&frame(1, &compressed), Format::Snappy, 1 << 20).unwrap();
            assert_eq!(out, frame(0, &message));
        }
        // The compressed flag may be off even under `grpc-encoding: snappy`.
        let out = reframe(&frame(0, &message), Format::Snappy, 1 << 20).unwrap();
        assert_eq!(out, frame(0, &message));
    }

    #[test]
    fn malformed_frames_and_bombs_are_refused() {
        let block = snap::raw::Encoder::new()
            .compress_vec(&[0u8; 100_000])
            .unwrap();
        let limit = 10_000;
        let too_large = reframe(&frame(1, &block), Format::Snappy, limit).unwrap_err();
        assert!(matches!(
            too_large,
            IngestError::DecompressedTooLarge { limit: 10_000 }
        ));
        assert_eq!(
            too_large.grpc_status().code(),
            tonic::Code::ResourceExhausted
        );
        let mut two = frame(0, b"ab");
        two.extend(frame(0, b"cd"));
        let mut cut = frame(1, &block);
        cut.pop();
        let cases = [
            vec![],
            vec![1, 0, 0],
            cut,
            two,
            frame(2, b"ab"),
            // Declares 10 bytes, then copies from before the start.
            frame(1, b"\x0a\x02\xff\xff"),
        ];
        for body in cases {
            let err = reframe(&body, Format::Snappy, limit).unwrap_err();
            assert_eq!(
                err.grpc_status().code(),
                tonic::Code::InvalidArgument,
                "{body:?}: {err}"
            );
        }
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
