//! Every refusal and rejection that `docs/reference.md` lists, over both transports:
//! status, partial success, liveness, and counters that show only the valid records.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::grpc::RawCodec;
use tonic::Code;
use tonic::codec::CompressionEncoding;

use crate::e2e::{JSON_LOGS, JSON_TRACES, gzip, post};
use crate::harness::{Daemon, config};

const LIMITS: &str = "limits:\n  max_request_bytes: 64KiB\n  max_decompressed_bytes: 1MiB\n";

/// 10 valid spans and 3 invalid ones (end before start, zero start, zero end).
fn mixed() -> Vec<u8> {
    let mut req = fixture::traces(&Shape {
        resources: 1,
        per_resource: 10,
        ..Shape::default()
    });
    let bad = |start, end| Span {
        name: "bad".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    };
    req.resource_spans.push(ResourceSpans {
        resource: None,
        scope_spans: vec![ScopeSpans {
            spans: vec![bad(5, 4), bad(0, 4), bad(5, 0)],
            ..Default::default()
        }],
        schema_url: String::new(),
    });
    req.encode_to_vec()
}

fn valid(n: usize) -> Vec<u8> {
    fixture::traces(&Shape {
        resources: 1,
        per_resource: n,
        ..Shape::default()
    })
    .encode_to_vec()
}

fn truncated() -> Vec<u8> {
    let mut b = valid(5);
    b.truncate(b.len() - 7);
    b
}

fn garbage() -> Vec<u8> {
    (0..400u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn bomb() -> Vec<u8> {
    // 8 MiB of zeros gzip to about 8 KiB: far under max_request_bytes, far over
    // max_decompressed_bytes once inflated.
    gzip(&vec![0u8; 8 << 20])
}

fn zstd_bomb() -> Vec<u8> {
    // The same zeros in zstd: a few hundred bytes.
    zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap()
}

/// [`refused`] once it reads `want`, or what it reads after about 5 s.
async fn wait_refused(d: &Daemon, transport: &str, reason: &str, want: f64) -> Option<f64> {
    let labels = [
        ("transport", transport),
        ("signal", "traces"),
        ("reason", reason),
    ];
    d.wait_metric("sloxide_receiver_refused_requests_total", &labels, want)
        .await
}

/// `sloxide_receiver_refused_requests_total` for traces on `transport` for `reason`.
pub async fn refused(d: &Daemon, transport: &str, reason: &str) -> Option<f64> {
    let labels = [
        ("transport", transport),
        ("signal", "traces"),
        ("reason", reason),
    ];
    d.metric("sloxide_receiver_refused_requests_total", &labels)
        .await
}

struct HttpCase {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    rejected: Option<i64>,
    counted_spans: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_cases() {
    let d = Daemon::start(&config(LIMITS));
    let pb = "application/x-protobuf";
    let cases = vec![
        HttpCase {
            name: "garbage bytes",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: garbage(),
            status: 400,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "truncated message",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: truncated(),
            status: 400,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "invalid json",
            method: "POST",
            path: "/v1/traces",
            content_type: "application/json",
            encoding: None,
            body: b"{\"resourceSpans\": [".to_vec(),
            status: 400,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "json of the wrong shape",
            method: "POST",
            path: "/v1/logs",
            content_type: "application/json",
            encoding: None,
            body: b"{\"resourceLogs\": 7}".to_vec(),
            status: 400,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "invalid gzip",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("gzip"),
            body: garbage(),
            status: 400,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "invalid zstd",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("zstd"),
            body: garbage(),
            status: 400,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "wrong content type",
            method: "POST",
            path: "/v1/traces",
            content_type: "text/plain",
            encoding: None,
            body: valid(3),
            status: 415,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "unsupported encoding",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("br"),
            body: valid(3),
            status: 415,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "oversize body",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: valid(400),
            status: 413,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "gzip bomb",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("gzip"),
            body: bomb(),
            status: 413,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "zstd bomb",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("zstd"),
            body: zstd_bomb(),
            status: 413,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "wrong method",
            method: "GET",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: vec![],
            status: 405,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "unknown path",
            method: "POST",
            path: "/v1/metrics",
            content_type: pb,
            encoding: None,
            body: valid(2),
            status: 404,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "unknown path elsewhere",
            method: "POST",
            path: "/nope",
            content_type: pb,
            encoding: None,
            body: valid(2),
            status: 404,
            rejected: None,
            counted_spans: 0,
        },
        HttpCase {
            name: "mixed valid and invalid spans",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: mixed(),
            status: 200,
            rejected: Some(3),
            counted_spans: 10,
        },
        HttpCase {
            name: "valid request",
            method: "POST",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: valid(7),
            status: 200,
            rejected: None,
            counted_spans: 7,
        },
    ];
    let mut expected_spans = 0;
    let mut expected_rejected = 0;
    let client = reqwest::Client::new();
    for case in cases {
        let (status, ct, body) = if case.method == "POST" {
            post(&d, case.path, case.content_type, case.encoding, case.body).await
        } else {
            let r = client
                .get(format!("http://{}{}", d.http, case.path))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                String::new(),
                r.bytes().await.unwrap().to_vec(),
            )
        };
        assert_eq!(
            status,
            case.status,
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&body)
        );
        if status == 200 {
            assert_eq!(ct, "application/x-protobuf", "{}", case.name);
            let reply = ExportTraceServiceResponse::decode(&body[..]).unwrap();
            let rejected = reply.partial_success.as_ref().map(|p| p.rejected_spans);
            assert_eq!(rejected, case.rejected, "{}", case.name);
            if let Some(p) = reply.partial_success {
                assert!(
                    p.error_message.contains("end time before start time"),
                    "{}",
                    p.error_message
                );
            }
        }
        expected_spans += case.counted_spans;
        expected_rejected += case.rejected.unwrap_or(0);
        assert_eq!(d.get("/healthz").await.0, 200, "alive after {}", case.name);
        assert_eq!(
            d.metric(
                "sloxide_receiver_accepted_spans_total",
                &[("transport", "http")]
            )
            .await,
            Some(expected_spans as f64),
            "only valid spans counted after {}",
            case.name
        );
    }
    assert_eq!(
        d.metric(
            "sloxide_receiver_refused_spans_total",
            &[("transport", "http"), ("reason", "invalid_time")]
        )
        .await,
        Some(expected_rejected as f64)
    );
    assert_eq!(refused(&d, "http", "decode").await, Some(5.0));
    assert_eq!(refused(&d, "http", "unsupported").await, Some(2.0));
    assert_eq!(refused(&d, "http", "too_large").await, Some(3.0));

    // Error bodies are google.rpc.Status in the request's encoding.
    let (status, ct, body) =
        post(&d, "/v1/traces", "application/json", None, b"nope".to_vec()).await;
    assert_eq!((status, ct.as_str()), (400, "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], 3);
    assert!(v["message"].as_str().unwrap().contains("OTLP/JSON"));

    // A mixed JSON request answers with a JSON partial success.
    let json = JSON_TRACES.replace(
        "\"endTimeUnixNano\": \"1700000000250000000\"",
        "\"endTimeUnixNano\": \"1\"",
    );
    let (status, ct, body) = post(
        &d,
        "/v1/traces",
        "application/json",
        None,
        json.into_bytes(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // OTLP/JSON writes 64-bit integers as strings.
    assert_eq!(v["partialSuccess"]["rejectedSpans"], "1", "{v}");

    // Logs: a record with neither time is rejected, the rest kept.
    let logs = JSON_LOGS.replace("\"observedTimeUnixNano\": \"1700000000000000001\", ", "");
    let (status, _, body) = post(&d, "/v1/logs", "application/json", None, logs.into_bytes()).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedLogRecords"], "1", "{v}");
    assert_eq!(
        d.metric(
            "sloxide_receiver_accepted_log_records_total",
            &[("transport", "http")]
        )
        .await,
        Some(1.0)
    );
}

/// A unary call through tonic's client, compressed by tonic when `compression` is given.
pub async fn grpc_call(
    d: &Daemon,
    path: &'static str,
    body: Vec<u8>,
    compression: Option<CompressionEncoding>,
) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    if let Some(compression) = compression {
        client = client.send_compressed(compression);
    }
    client.ready().await.unwrap();
    client
        .unary(
            tonic::Request::new(Bytes::from(body)),
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
}

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_cases() {
    let d = Daemon::start(&config(LIMITS));
    let oversize = valid(400);
    assert!(oversize.len() > 64 * 1024);
    // (name, path, body, gzip, expected code, expected rejected spans, spans counted)
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        bool,
        Code,
        Option<i64>,
        u64,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage bytes",
            TRACE_EXPORT,
            garbage(),
            false,
            Code::InvalidArgument,
            None,
            0,
        ),
        (
            "truncated message",
            TRACE_EXPORT,
            truncated(),
            false,
            Code::InvalidArgument,
            None,
            0,
        ),
        (
            "oversize message",
            TRACE_EXPORT,
            oversize.clone(),
            false,
            Code::ResourceExhausted,
            None,
            0,
        ),
        (
            "oversize, gzip",
            TRACE_EXPORT,
            oversize,
            true,
            Code::Ok,
            None,
            400,
        ),
        (
            "gzip bomb",
            TRACE_EXPORT,
            vec![0u8; 8 << 20],
            true,
            Code::ResourceExhausted,
            None,
            0,
        ),
        (
            "metrics service",
            METRICS_EXPORT,
            valid(2),
            false,
            Code::Unimplemented,
            None,
            0,
        ),
        (
            "unknown method",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Nope",
            valid(2),
            false,
            Code::Unimplemented,
            None,
            0,
        ),
        (
            "mixed valid and invalid spans",
            TRACE_EXPORT,
            mixed(),
            false,
            Code::Ok,
            Some(3),
            10,
        ),
        (
            "mixed, gzip",
            TRACE_EXPORT,
            mixed(),
            true,
            Code::Ok,
            Some(3),
            10,
        ),
        (
            "valid request",
            TRACE_EXPORT,
            valid(9),
            false,
            Code::Ok,
            None,
            9,
        ),
    ];
    let mut expected = 0;
    for (name, path, body, compress, code, rejected, counted) in cases {
        let result = grpc_call(
            &d,
            path,
            body,
            compress.then_some(CompressionEncoding::Gzip),
        )
        .await;
        match (&result, code) {
            (Ok(reply), Code::Ok) => {
                let reply = ExportTraceServiceResponse::decode(&reply[..]).unwrap();
                assert_eq!(
                    reply.partial_success.map(|p| p.rejected_spans),
                    rejected,
                    "{name}"
                );
            }
            (Err(status), code) => assert_eq!(status.code(), code, "{name}: {status:?}"),
            (Ok(_), code) => panic!("{name}: expected {code:?}, got OK"),
        }
        expected += counted;
        assert_eq!(d.get("/healthz").await.0, 200, "alive after {name}");
        assert_eq!(
            d.metric(
                "sloxide_receiver_accepted_spans_total",
                &[("transport", "grpc")]
            )
            .await,
            Some(expected as f64),
            "only valid spans counted after {name}"
        );
    }
    assert_eq!(refused(&d, "grpc", "decode").await, Some(2.0));
    assert_eq!(refused(&d, "grpc", "too_large").await, Some(2.0));

    // Logs over gRPC: the partial success names log records.
    let mut req = fixture::logs(&Shape {
        resources: 1,
        per_resource: 4,
        ..Shape::default()
    });
    req.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = 0;
    req.resource_logs[0].scope_logs[0].log_records[0].observed_time_unix_nano = 0;
    let reply = grpc_call(&d, LOGS_EXPORT, req.encode_to_vec(), None)
        .await
        .unwrap();
    let reply = ExportLogsServiceResponse::decode(&reply[..]).unwrap();
    assert_eq!(
        reply.partial_success.map(|p| p.rejected_log_records),
        Some(1)
    );
    assert_eq!(
        d.metric(
            "sloxide_receiver_accepted_log_records_total",
            &[("transport", "grpc")]
        )
        .await,
        Some(3.0)
    );
    let _ = ExportTraceServiceRequest::default();
}

/// A request body that sends `0` and then fails, as a client that gives up mid-body.
struct GivesUp(Option<Bytes>);

impl http_body::Body for GivesUp {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(data) => Ok(http_body::Frame::data(data)),
            None => Err(std::io::Error::other("the client gave up")),
        }))
    }
}

/// A client that goes away mid-body is counted as `aborted`, not as an undecodable
/// body, on both transports; nothing of it is counted and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_counted_as_aborted() {
    use tokio::io::AsyncWriteExt;

    let d = Daemon::start(&config(""));
    let refused = |transport: &'static str, reason: &'static str| {
        let d = &d;
        async move {
            d.metric(
                "sloxide_receiver_refused_requests_total",
                &[
                    ("transport", transport),
                    ("signal", "traces"),
                    ("reason", reason),
                ],
            )
            .await
        }
    };

    // OTLP/HTTP: a declared length, part of the body, then the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(d.http).await.unwrap();
    tcp.write_all(
        format!(
            "POST /v1/traces HTTP/1.1\r\nhost: sloxide\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100000\r\n\r\n{}",
            "x".repeat(1000)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    drop(tcp);
    let aborted = wait_refused(&d, "http", "aborted", 1.0).await;
    assert_eq!(aborted, Some(1.0));
    assert_eq!(refused("http", "decode").await, Some(0.0));

    // OTLP/gRPC: a message header promising 100000 bytes, 1000 of them, then the
    // client's body fails and its stream is reset.
    let tcp = tokio::net::TcpStream::connect(d.grpc).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, GivesUp>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut first = vec![0u8];
    first.extend_from_slice(&100_000u32.to_be_bytes());
    first.extend_from_slice(&[0u8; 1000]);
    let request = http::Request::post(format!("http://{}{TRACE_EXPORT}", d.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(GivesUp(Some(Bytes::from(first))))
        .unwrap();
    send.ready().await.unwrap();
    let _ = send.send_request(request).await;
    let aborted = wait_refused(&d, "grpc", "aborted", 1.0).await;
    let page = d.scrape().await;
    let grpc_refusals: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("sloxide_receiver_refused_requests_total{transport=\"grpc\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert_eq!(aborted, Some(1.0), "{grpc_refusals:?}");
    assert_eq!(refused("grpc", "decode").await, Some(0.0));

    // Nothing was counted, and the daemon still serves.
    assert_eq!(
        d.metric(
            "sloxide_receiver_accepted_spans_total",
            &[("transport", "grpc")]
        )
        .await,
        Some(0.0)
    );
    assert_eq!(d.get("/healthz").await.0, 200);
}

/// A request whose client leaves while it waits for room in the in-flight budget (its
/// stream reset) is counted as refused, `aborted`, as one that leaves mid-body is; it
/// used to be counted nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_leaves_while_it_waits_is_counted_as_aborted() {
    let d = Daemon::start(&config(
        "limits: {max_in_flight_bytes: 1MiB, admission_wait: 10s}\n",
    ));
    let tcp = tokio::net::TcpStream::connect(d.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = || crate::harness::grpc_export_head(d.grpc);
    // The first stream sends only its headers: it holds what a stream without a
    // length reserves (1 MiB), the whole budget, while it waits for its body.
    let (_held, _holder) = client.send_request(request(), false).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second waits for room; then its client gives up on it.
    let mut client = client.ready().await.unwrap();
    let (waiting, mut stream) = client.send_request(request(), false).unwrap();
    assert_eq!(
        d.wait_metric("sloxide_receiver_admission_waits_total", &[], 1.0)
            .await,
        Some(1.0),
        "the second request waits for room"
    );
    stream.send_reset(h2::Reason::CANCEL);
    drop(waiting);
    let aborted = wait_refused(&d, "grpc", "aborted", 1.0).await;
    assert_eq!(aborted, Some(1.0));
}

/// The daemon's resident memory, from `/proc/<pid>/status`, in bytes.
pub fn rss_bytes(d: &Daemon) -> u64 {
    status_bytes(d, "VmRSS")
}

/// A size in kB from the daemon's `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(d: &Daemon, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect(field);
    kb * 1024
}

/// A trace request of `n` spans that carry nothing but their start and end times, about
/// as small as a counted span can be: a small gzip body that decodes into a very large batch.
fn minimal_spans(n: usize) -> Vec<u8> {
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Span { start_time_unix_nano (field 7), end_time_unix_nano (field 8) }, fixed64
    let mut span = vec![0x39];
    span.extend_from_slice(&(end - 1_000_000).to_le_bytes());
    span.push(0x41);
    span.extend_from_slice(&end.to_le_bytes());
    let mut spans = Vec::with_capacity(n * 20);
    for _ in 0..n {
        spans.push(0x12); // ScopeSpans.spans (field 2)
        spans.push(span.len() as u8);
        spans.extend_from_slice(&span);
    }
    let mut scope = vec![0x12]; // ResourceSpans.scope_spans (field 2)
    prost::encoding::encode_varint(spans.len() as u64, &mut scope);
    scope.extend_from_slice(&spans);
    let mut request = vec![0x0a]; // ExportTraceServiceRequest.resource_spans (field 1)
    prost::encoding::encode_varint(scope.len() as u64, &mut request);
    request.extend_from_slice(&scope);
    request
}

use std::time::Duration;

/// One huge request after another (a few hundred kB of gzip that decode into a million
/// spans each) must not leave their memory pinned in the worker threads: RSS comes back
/// to within 64 MiB of where it was within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_requests_do_not_pin_memory() {
    // Past the default max_records_per_request, which would refuse them unbuilt.
    let d = Daemon::start(&config("limits:\n  max_records_per_request: 2000000\n"));
    // Warm up with ordinary requests, so the baseline holds the steady-state buffers.
    for _ in 0..4 {
        let body = gzip(
            &fixture::traces(&Shape {
                resources: 1,
                per_resource: 1000,
                ..Shape::default()
            })
            .encode_to_vec(),
        );
        let (status, _, _) = post(
            &d,
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            body,
        )
        .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(&d);
    let n = 1_000_000;
    let body = gzip(&minimal_spans(n));
    assert!(body.len() < 1 << 20, "{} bytes of gzip", body.len());
    let mut peak = before;
    for _ in 0..3 {
        let (status, _, reply) = post(
            &d,
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        peak = peak.max(rss_bytes(&d));
    }
    assert_eq!(
        d.metric(
            "sloxide_receiver_accepted_spans_total",
            &[("transport", "http")]
        )
        .await,
        Some((4 * 1000 + 3 * n) as f64)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = rss_bytes(&d);
    while after > before + (64 << 20) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_bytes(&d);
    }
    assert!(
        after <= before + (64 << 20),
        "RSS {} MiB before, {} MiB at the peak, {} MiB 10 s after",
        before >> 20,
        peak >> 20,
        after >> 20
    );
}

/// The daemon's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss_bytes(d: &Daemon) -> u64 {
    status_bytes(d, "VmHWM")
}

/// Bodies that decode into far more than their size, and that no record limit counts:
/// a protobuf body of empty resources (two bytes each) and a JSON body of empty spans
/// (three bytes each, each a whole span once parsed). Each once took the daemon past a
/// GiB from a few dozen kB of gzip. Now the first is walked without keeping anything
/// (200, nothing counted) and the second is charged for what it would become and
/// refused as too large before it is parsed; the daemon's peak memory barely moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_decode_far_past_their_size_do_not_take_memory() {
    let d = Daemon::start(&config(""));
    // The baseline: an ordinary request of each encoding, so that their buffers exist.
    let ordinary = fixture::traces(&Shape::default());
    let json = serde_json::to_vec(&ordinary).unwrap();
    for (content_type, body) in [
        ("application/x-protobuf", ordinary.encode_to_vec()),
        ("application/json", json),
    ] {
        let (status, _, reply) =
            post(&d, "/v1/traces", content_type, Some("gzip"), gzip(&body)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    }
    let before = peak_rss_bytes(&d);

    let empty_resources = gzip(&[0x0a, 0x00].repeat(8 << 20));
    let mut spans = b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{}".to_vec();
    spans.extend(b",{}".repeat(4 << 20));
    spans.extend(b"]}]}]}");
    let empty_spans = gzip(&spans);
    assert!(empty_resources.len() + empty_spans.len() < 1 << 20);
    for _ in 0..2 {
        let (status, _, reply) = post(
            &d,
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            empty_resources.clone(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let (status, _, reply) = post(
            &d,
            "/v1/traces",
            "application/json",
            Some("gzip"),
            empty_spans.clone(),
        )
        .await;
        let text = String::from_utf8_lossy(&reply);
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("in-flight budget"), "{text}");
    }
    let grown = peak_rss_bytes(&d).saturating_sub(before);
    assert!(grown < 128 << 20, "the peak grew by {} MiB", grown >> 20);
    assert_eq!(d.get("/healthz").await.0, 200);
}

/// `limits.max_records_per_request`: a request with one record too many is refused
/// whole with 413 / RESOURCE_EXHAUSTED (`too_large`) on every transport and encoding,
/// before its batch is built; exactly the limit is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_records_in_one_request_are_refused_before_the_batch_is_built() {
    let d = Daemon::start(&config("limits:\n  max_records_per_request: 100\n"));
    let traces = |n: usize| {
        fixture::traces(&Shape {
            resources: 2,
            per_resource: n / 2,
            ..Shape::default()
        })
    };
    let logs = |n: usize| {
        fixture::logs(&Shape {
            resources: 2,
            per_resource: n / 2,
            ..Shape::default()
        })
    };
    let json = |n: usize| serde_json::to_vec(&traces(n)).unwrap();

    // HTTP: protobuf traces and logs, gzipped protobuf, JSON.
    let cases = [
        (
            "/v1/traces",
            "application/x-protobuf",
            None,
            traces(100).encode_to_vec(),
            traces(102).encode_to_vec(),
        ),
        (
            "/v1/logs",
            "application/x-protobuf",
            None,
            logs(100).encode_to_vec(),
            logs(102).encode_to_vec(),
        ),
        (
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            gzip(&traces(100).encode_to_vec()),
            gzip(&traces(102).encode_to_vec()),
        ),
        ("/v1/traces", "application/json", None, json(100), json(102)),
    ];
    for (path, content_type, encoding, fits, over) in cases {
        let (status, _, body) = post(&d, path, content_type, encoding, fits).await;
        assert_eq!(
            status,
            200,
            "{path} {content_type}: {}",
            String::from_utf8_lossy(&body)
        );
        let (status, _, body) = post(&d, path, content_type, encoding, over).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 413, "{path} {content_type}: {text}");
        // Said as what it is, in either encoding: not an undecodable body.
        assert!(
            text.contains("more than limits.max_records_per_request (100) records")
                && !text.contains("undecodable"),
            "{path} {content_type}: {text}"
        );
    }
    // gRPC.
    grpc_call(&d, TRACE_EXPORT, traces(100).encode_to_vec(), None)
        .await
        .unwrap();
    let refused = grpc_call(&d, TRACE_EXPORT, traces(102).encode_to_vec(), None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_records_per_request"),
        "{refused:?}"
    );

    // Counted as too_large; only the requests that fit were counted.
    assert_eq!(
        d.metric(
            "sloxide_receiver_refused_requests_total",
            &[
                ("transport", "http"),
                ("signal", "traces"),
                ("reason", "too_large")
            ]
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        d.metric(
            "sloxide_receiver_refused_requests_total",
            &[
                ("transport", "grpc"),
                ("signal", "traces"),
                ("reason", "too_large")
            ]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        d.metric(
            "sloxide_receiver_accepted_spans_total",
            &[("transport", "http")]
        )
        .await,
        Some(300.0)
    );
    assert_eq!(
        d.metric(
            "sloxide_receiver_accepted_spans_total",
            &[("transport", "grpc")]
        )
        .await,
        Some(100.0)
    );
}

/// Python's urllib sends the whole body before it reads the answer. It must read every
/// 413 (a body over `max_request_bytes`) and every 503 (the in-flight budget is held by
/// stalled bodies, and `admission_wait: 0s` refuses at once), not a broken pipe or a
/// reset: the daemon reads the rest of the body before it answers, and closes the
/// connection after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urllib_reads_every_413_and_503() {
    use tokio::io::AsyncWriteExt;

    let python = std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::harness::require(python, "python3") {
        return;
    }
    let d = Daemon::start(&config(
        "limits:\n  max_request_bytes: 64KiB\n  max_in_flight_bytes: 1MiB\n  admission_wait: 0s\n",
    ));
    let script = r#"
import sys, urllib.request, urllib.error
url, size, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = []
for _ in range(20):
    req = urllib.request.Request(url, data=b"\0" * size, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        urllib.request.urlopen(req, timeout=10)
        seen.append("200")
    except urllib.error.HTTPError as e:
        seen.append(str(e.code))
    except Exception as e:
        seen.append(type(e).__name__)
print(" ".join(seen))
sys.exit(0 if all(s == str(want) for s in seen) else 1)
"#;
    let run = |size: usize, want: u16| {
        let url = format!("http://{}/v1/traces", d.http);
        let script = script.to_owned();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .args(["-c", &script, &url, &size.to_string(), &want.to_string()])
                .output()
                .unwrap()
        })
    };

    // 1 MiB against a 64 KiB limit: 413, twenty times out of twenty.
    let out = run(1 << 20, 413).await.unwrap();
    assert!(
        out.status.success(),
        "urllib saw: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Requests that stall after 60 KB of their body hold the 1 MiB budget (each has
    // reserved its Content-Length and its decode; those that found no room were
    // refused); then urllib's get 503.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(d.http).await.unwrap();
        tcp.write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: sloxide\r\ncontent-type: application/x-protobuf\r\ncontent-length: 65000\r\n\r\n",
        )
        .await
        .unwrap();
        tcp.write_all(&[0u8; 60_000]).await.unwrap();
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 60 000 bytes and their decode do not fit in what the stalled ones left.
    let out = run(60_000, 503).await.unwrap();
    assert!(
        out.status.success(),
        "urllib saw: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(stalled);
    assert_eq!(d.get("/healthz").await.0, 200);
}

/// A recorder with a bug: it panics on every batch.
struct Panics;

impl sloxide::ingest::Recorder for Panics {
    fn record_traces(&self, _: &sloxide::otlp::spans::TraceBatch<'_>) {
        panic!("a recorder bug");
    }
    fn record_logs(&self, _: &sloxide::otlp::logs::LogBatch<'_>) {
        panic!("a recorder bug");
    }
}

/// A panic while a request is decoded and recorded, whether on the async worker (a
/// small body) or on a decode thread (a body over 1 MiB), refuses that request with 500
/// (`internal`, which OTLP clients do not retry), and the next requests are served the
/// same way: no connection is taken down, no thread lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_decode_refuses_the_request_as_internal_on_either_path() {
    use std::sync::Arc;
    use tower::ServiceExt;

    let pipeline = sloxide::pipeline::Pipeline::new(
        &sloxide::config::Config::default(),
        Arc::new(sloxide::clock::SystemClock),
    )
    .unwrap();
    let plan = pipeline.plan();
    let target = sloxide::ingest::Target {
        keys: plan.keys().clone(),
        trace_keys: plan.trace_keys().clone(),
        limits: pipeline.ingest.limits(),
        recorder: Arc::new(Panics),
        auth: None,
    };
    let telemetry = Arc::new(sloxide::telemetry::Telemetry::default());
    let ingest = Arc::new(sloxide::ingest::Ingest::new(
        target,
        64 << 20,
        telemetry.clone(),
    ));
    let router = sloxide::ingest::http::router(ingest);
    let small = mixed();
    let large = fixture::mixed_traces(&fixture::Mix {
        records: 4000,
        ..fixture::Mix::default()
    })
    .encode_to_vec();
    assert!(
        small.len() < 1 << 20 && large.len() > 1 << 20,
        "{}",
        large.len()
    );
    for body in [&small, &large, &small, &large] {
        let request = http::Request::post("/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(axum::body::Body::from(body.clone()))
            .unwrap();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            router.clone().oneshot(request),
        )
        .await
        .expect("an answer")
        .unwrap();
        assert_eq!(
            response.status(),
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "{} bytes",
            body.len()
        );
    }
    let internal = telemetry.refused_requests(
        sloxide::telemetry::Transport::Http,
        sloxide::telemetry::Signal::Traces,
        sloxide::telemetry::RefusalReason::Internal,
    );
    assert_eq!(internal, 4);
}

/// An HTTP/2 body cut short by the client's RST_STREAM (NO_ERROR, which HTTP/2 ends a
/// body with as if it were complete) is refused as `aborted` when it is shorter than
/// its `Content-Length`, even when what arrived is a valid request on its own; nothing
/// in it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_reset_before_its_declared_length_is_aborted_not_counted() {
    let d = Daemon::start(&config(""));
    let first = fixture::traces(&Shape {
        resources: 1,
        per_resource: 1,
        ..Shape::default()
    });
    let mut both = first.clone();
    both.resource_spans
        .extend(first.resource_spans.iter().cloned());
    let (cut, whole) = (first.encode_to_vec(), both.encode_to_vec());
    assert!(whole.starts_with(&cut) && cut.len() < whole.len());
    let accepted = || {
        d.metric(
            "sloxide_receiver_accepted_spans_total",
            &[("transport", "http")],
        )
    };
    let before = accepted().await.unwrap_or(0.0);
    let tcp = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}/v1/traces", d.http))
        .header("content-type", "application/x-protobuf")
        .header("content-length", whole.len())
        .body(())
        .unwrap();
    let (_response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from(cut), false).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    send.send_reset(h2::Reason::NO_ERROR);
    let aborted = wait_refused(&d, "http", "aborted", 1.0).await;
    assert_eq!(aborted, Some(1.0));
    assert_eq!(accepted().await.unwrap_or(0.0), before);
}

/// A compressed body that inflates past what the in-flight budget lets any one request
/// hold (its ceiling, 1.5 MiB here), while `max_decompressed_bytes` (64 MiB) would allow
/// it, can never be taken: it is refused as too large (413, not retried), not as
/// overloaded (503, which clients retry for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_budgets_ceiling_on_its_own_is_too_large_not_overloaded() {
    let d = Daemon::start(&config("limits:\n  max_in_flight_bytes: 1MiB\n"));
    let bomb = gzip(&vec![0u8; 4 << 20]);
    assert!(bomb.len() < 128 << 10);
    for _ in 0..3 {
        let (status, _, body) = post(
            &d,
            "/v1/traces",
            "application/x-protobuf",
            Some("gzip"),
            bomb.clone(),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("in-flight budget"), "{text}");
    }
    let too_large = d
        .metric(
            "sloxide_receiver_refused_requests_total",
            &[
                ("transport", "http"),
                ("signal", "traces"),
                ("reason", "too_large"),
            ],
        )
        .await;
    assert_eq!(too_large, Some(3.0));
}
