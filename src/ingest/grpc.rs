//! OTLP/gRPC: tonic services for `TraceService/Export` and `LogsService/Export`, with a
//! codec that hands the raw message bytes to the walker instead of prost structs.
//!
//! tonic frames and gunzips the message (bounded by `max_decompressed_bytes`); a body
//! wrapper in front of it enforces `max_request_bytes` on the bytes as received. The
//! metrics service, and every other path, answers UNIMPLEMENTED through tonic's router.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use http_body::{Body, Frame, SizeHint};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};

use super::{Encoding, Ingest, IngestError};
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
        let req = req
            .map(|body| tonic::body::Body::new(LimitedBody::new(body, limits.max_request_bytes)));
        let mut grpc = Grpc::new(RawCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limits.max_decompressed_bytes)
            .max_encoding_message_size(usize::MAX);
        let ingest = self.ingest.clone();
        let signal = self.signal;
        let response = grpc.unary(self, req).await;
        // Refusals come from our service, from the body limit, or from tonic's own
        // framing, gunzip and size limit, which happen before our service sees the
        // message and tell us nothing but the status. So every refusal is counted here,
        // once, from the status it was answered with.
        if let Some(reason) = refusal_of(&response) {
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
/// RESOURCE_EXHAUSTED once they pass the limit. It also reads the length prefix of the
/// first frame, so an oversize message is refused before its bytes arrive.
struct LimitedBody {
    inner: tonic::body::Body,
    limit: usize,
    seen: usize,
    header: [u8; 5],
    failed: bool,
}

impl LimitedBody {
    fn new(inner: tonic::body::Body, limit: usize) -> Self {
        Self {
            inner,
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
