//! OTLP/HTTP: `POST /v1/traces` and `POST /v1/logs`, protobuf or JSON, optionally
//! compressed (`Content-Encoding` gzip, zstd, deflate or zlib, snappy or x-snappy-framed;
//! see [`Format`]).
//!
//! A `Content-Encoding` that `limits.compression` leaves out, or that sloxide does not
//! know, is refused with 415 before the body is read. The body is read frame by frame
//! into a pooled buffer and refused with 413 as soon as it passes `max_request_bytes`; a
//! compressed body is then decompressed into a second pooled buffer, stopping (413) as
//! soon as it passes `max_decompressed_bytes` (a snappy block, which declares its length,
//! is refused before any of it is decompressed). Responses use the request's encoding.
//! A refusal of an HTTP/1 request whose body is still arriving reads the rest first
//! (bounded in time and bytes) and closes the connection after its answer, so the
//! client reads the status rather than a reset.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use prost::Message;

use super::{Accepted, Encoding, Format, Ingest, IngestError};
use crate::config::Compressions;
use crate::telemetry::{Signal, Transport};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP routes. Unknown paths answer 404 and other methods 405.
pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; OTLP/HTTP serves POST /v1/traces and POST /v1/logs\n",
            )
        })
        .with_state(ingest)
}

async fn traces(State(ingest): State<Arc<Ingest>>, req: Request) -> Response {
    export(ingest, Signal::Traces, req).await
}

async fn logs(State(ingest): State<Arc<Ingest>>, req: Request) -> Response {
    export(ingest, Signal::Logs, req).await
}

/// How long a refusal goes on reading (and discarding) a body that is still arriving
/// before it answers, and at most how much of it.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_BYTES_UNAUTHENTICATED: usize = 1 << 20;

async fn export(ingest: Arc<Ingest>, signal: Signal, req: Request) -> Response {
    let (parts, mut body) = req.into_parts();
    // Answer errors in JSON only when the client clearly sent JSON.
    let encoding = content_type(&parts.headers);
    let reply_in = encoding.as_ref().copied().unwrap_or(Encoding::Protobuf);
    let peer = parts.extensions.get::<crate::net::Peer>().map(|p| p.0);
    let unanswered = ingest.unanswered(Transport::Http, signal, peer);
    let claim = unanswered.claim();
    let conn = crate::net::ConnReceived::of(&parts.extensions);
    let received = receive(
        &ingest,
        signal,
        &parts.headers,
        encoding,
        &mut body,
        conn,
        claim,
    )
    .await;
    unanswered.answered();
    match received {
        Ok(accepted) => reply(
            StatusCode::OK,
            reply_in,
            accepted.response(signal, reply_in),
        ),
        Err(err) => {
            ingest.refused(Transport::Http, signal, &err, peer);
            let mut response = failure(reply_in, &err);
            if let (IngestError::Unauthenticated, Some(challenge)) = (&err, ingest.challenge()) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge);
            }
            let http1 = parts.version < http::Version::HTTP_2;
            if http1 && matches!(err, IngestError::Timeout(_) | IngestError::Reclaimed) {
                // Reading on would wait for the same slow client again.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            } else if http1 && !http_body::Body::is_end_stream(&body) {
                // An HTTP/1 client still sending would meet a closed connection (a reset,
                // or a broken pipe) instead of the answer: read on, within bounds and with
                // no permit held, then answer and close.
                // A client without a token gets less: it has not shown it is one of ours.
                let bound = match err {
                    IngestError::Unauthenticated => DRAIN_BYTES_UNAUTHENTICATED,
                    _ => DRAIN_BYTES,
                };
                drain(&mut body, bound).await;
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// Reads and discards what is left of `body`, for at most [`DRAIN_TIME`] and `bound`
/// bytes.
async fn drain(body: &mut Body, bound: usize) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > bound {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

async fn receive(
    ingest: &Arc<Ingest>,
    signal: Signal,
    headers: &HeaderMap,
    encoding: Result<Encoding, IngestError>,
    body: &mut Body,
    conn: Option<Arc<std::sync::atomic::AtomicU64>>,
    claim: &super::Claim,
) -> Result<Accepted, IngestError> {
    let limits = ingest.limits();
    let deadline = Instant::now() + limits.body_read_timeout;
    // The checks that cost nothing come first, so a request that can never succeed is
    // told so (and not told to retry) even when the daemon is busy.
    ingest.authenticate(headers)?;
    let encoding = encoding?;
    let compressed = content_encoding(headers, limits.compression)?;
    let limit = limits.max_request_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    // What the body will hold: its declared length (and, uncompressed, its decode), or
    // a guess for a chunked body, charged beyond as it arrives.
    let expected = match declared {
        Some(len) if compressed.is_none() => {
            (len as usize).saturating_add(super::decode_estimate(encoding, len as usize))
        }
        Some(len) => len as usize,
        None => super::admission::UNKNOWN_LENGTH,
    };
    let mut reservation = ingest.admit(expected, None).await?;
    let mut raw = super::buffers::Received::new(ingest.buffers().get());
    let body_len = declared.map_or(super::admission::UNKNOWN_LENGTH, |len| len as usize);
    ingest
        .read_body(
            body,
            &mut raw,
            limit,
            &mut reservation,
            deadline,
            body_len,
            conn,
            0,
            |_| Ok((0, 0)),
        )
        .await?;
    // HTTP/2 ends a body early without an error when the client resets its stream
    // with NO_ERROR: a body shorter than it said is cut, not complete. (One without a
    // Content-Length cannot be told from a whole one.)
    if let Some(len) = declared
        && raw.len() as u64 != len
    {
        return Err(IngestError::BodyRead(format!(
            "the body ended after {} of its {len} declared bytes",
            raw.len()
        )));
    }
    ingest
        .process(
            Transport::Http,
            signal,
            encoding,
            compressed,
            raw,
            0,
            reservation,
            None,
            claim,
        )
        .await
}

/// The body's compression: `None` when it has none (no header, or `identity`); an error
/// when the coding is unknown or turned off by `limits.compression`.
fn content_encoding(
    headers: &HeaderMap,
    accepted: Compressions,
) -> Result<Option<Format>, IngestError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let Ok(value) = value.to_str() else {
        return Err(IngestError::UnsupportedEncoding {
            encoding: "<non-ASCII>".to_owned(),
            accepted,
        });
    };
    match Format::of_content_encoding(value) {
        Some(format) if accepted.contains(format.compression()) => Ok(Some(format)),
        Some(format) => Err(IngestError::CompressionOff {
            compression: format.compression(),
            accepted,
        }),
        None if value.eq_ignore_ascii_case("identity") => Ok(None),
        None => Err(IngestError::UnsupportedEncoding {
            encoding: value.to_owned(),
            accepted,
        }),
    }
}

fn content_type(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<non-ASCII>"))
        .unwrap_or("");
    let media = raw.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Encoding::Protobuf)
    } else if media.eq_ignore_ascii_case(JSON) {
        Ok(Encoding::Json)
    } else {
        Err(IngestError::UnsupportedContentType(raw.to_owned()))
    }
}

/// An error body is a `google.rpc.Status` (code, message), as OTLP/HTTP specifies.
fn failure(encoding: Encoding, err: &IngestError) -> Response {
    let status = err.http_status();
    let grpc_code = err.reason().refusal().grpc as i32;
    let message = err.to_string();
    let body = match encoding {
        Encoding::Protobuf => RpcStatus {
            code: grpc_code,
            message,
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&serde_json::json!({
            "code": grpc_code,
            "message": message,
        }))
        .unwrap_or_default(),
    };
    let mut response = reply(status, encoding, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn reply(status: StatusCode, encoding: Encoding, body: Vec<u8>) -> Response {
    let content_type = match encoding {
        Encoding::Protobuf => PROTOBUF,
        Encoding::Json => JSON,
    };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `google.rpc.Status` without details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}
