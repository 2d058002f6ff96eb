//! Every compression `limits.compression` lists, over both transports: each accepted one
//! counted exactly, bombs refused at `max_decompressed_bytes`, corrupt bodies refused as
//! undecodable, and turned-off ones refused as unsupported.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use sloxide::fixture::{self, Shape};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tower::ServiceExt;

use crate::bad_input::grpc_call;
use crate::e2e::{JSON_TRACES, gzip, post};
use crate::harness::{Daemon, config};

const LIMITS: &str = "limits:\n  max_request_bytes: 64KiB\n  max_decompressed_bytes: 1MiB\n";
const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
const PROTOBUF: &str = "application/x-protobuf";

fn spans(n: usize) -> Vec<u8> {
    fixture::traces(&Shape {
        resources: 1,
        per_resource: n,
        ..Shape::default()
    })
    .encode_to_vec()
}

fn logs(n: usize) -> Vec<u8> {
    fixture::logs(&Shape {
        resources: 1,
        per_resource: n,
        ..Shape::default()
    })
    .encode_to_vec()
}

fn zstd(body: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(body, 3).unwrap()
}

/// What the Collector sends for `compression: deflate` and `compression: zlib`.
fn zlib(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

/// A raw snappy block: what the Collector sends for `compression: snappy` over HTTP.
fn snappy_block(body: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(body).unwrap()
}

/// The snappy framing format: `x-snappy-framed`, older Collectors' `snappy` over HTTP,
/// and the Collector's `snappy` over gRPC.
fn snappy_framed(body: &[u8]) -> Vec<u8> {
    let mut enc = snap::write::FrameEncoder::new(Vec::new());
    enc.write_all(body).unwrap();
    enc.into_inner().unwrap()
}

/// 8 MiB of zeros: gzip, zstd and deflate make it far smaller than `max_request_bytes`,
/// and it is far larger than `max_decompressed_bytes` once decompressed.
fn zeros() -> Vec<u8> {
    vec![0u8; 8 << 20]
}

/// Snappy shrinks zeros only about 21 times, so its bombs are just over the 1 MiB limit
/// (and under the 64 KiB body limit once compressed).
fn snappy_zeros() -> Vec<u8> {
    vec![0u8; 1_200_000]
}

async fn counted(d: &Daemon, family: &str, transport: &str) -> f64 {
    d.metric(family, &[("transport", transport)])
        .await
        .unwrap_or(0.0)
}

async fn refused(d: &Daemon, transport: &str, reason: &str) -> f64 {
    let mut total = 0.0;
    for signal in ["traces", "logs"] {
        let labels = [
            ("transport", transport),
            ("signal", signal),
            ("reason", reason),
        ];
        total += d
            .metric("sloxide_receiver_refused_requests_total", &labels)
            .await
            .unwrap_or(0.0);
    }
    total
}

/// A unary call whose one message is sent as given, with the compressed flag set and
/// `grpc-encoding: encoding`: how a peer sends a compression tonic has no codec for.
/// Returns the status (from the headers or the trailers) and the reply message.
pub(crate) async fn raw_call(
    d: &Daemon,
    path: &'static str,
    encoding: &'static str,
    compressed: &[u8],
) -> (tonic::Status, Bytes) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut frame = vec![1];
    frame.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    frame.extend_from_slice(compressed);
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", encoding)
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(frame),
        )))
        .unwrap();
    let response = channel.oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = tonic::Status::from_header_map(&parts.headers)
        .or_else(|| tonic::Status::from_header_map(&trailers))
        .expect("a grpc-status");
    let mut reply = collected.to_bytes();
    if reply.len() >= 5 {
        reply = reply.slice(5..);
    }
    (status, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_counts_every_accepted_encoding_exactly() {
    let d = Daemon::start(&config(""));
    type Compress = fn(&[u8]) -> Vec<u8>;
    let cases: [(&str, Option<&str>, Compress); 10] = [
        ("no header", None, <[u8]>::to_vec),
        ("identity", Some("identity"), <[u8]>::to_vec),
        ("gzip", Some("gzip"), gzip),
        ("zstd", Some("zstd"), zstd),
        ("ZSTD (case-insensitive)", Some("ZSTD"), zstd),
        ("deflate (zlib-wrapped)", Some("deflate"), zlib),
        ("zlib", Some("zlib"), zlib),
        ("snappy block", Some("snappy"), snappy_block),
        (
            "snappy framed (older Collectors)",
            Some("snappy"),
            snappy_framed,
        ),
        ("x-snappy-framed", Some("x-snappy-framed"), snappy_framed),
    ];
    let mut expected = 0.0;
    for (i, (name, encoding, compress)) in cases.into_iter().enumerate() {
        let n = i + 2;
        let (status, _, body) =
            post(&d, "/v1/traces", PROTOBUF, encoding, compress(&spans(n))).await;
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        let reply = ExportTraceServiceResponse::decode(&body[..]).unwrap();
        assert_eq!(reply.partial_success, None, "{name}");
        expected += n as f64;
        assert_eq!(
            counted(&d, "sloxide_receiver_accepted_spans_total", "http").await,
            expected,
            "{name}"
        );
    }
    // Logs, and OTLP/JSON, go through the same decompression.
    let (status, _, _) = post(&d, "/v1/logs", PROTOBUF, Some("zstd"), zstd(&logs(5))).await;
    assert_eq!(status, 200);
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_log_records_total", "http").await,
        5.0
    );
    let json = snappy_block(JSON_TRACES.as_bytes());
    let (status, ct, _) = post(&d, "/v1/traces", "application/json", Some("snappy"), json).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "http").await,
        expected + 2.0
    );
    for reason in ["decode", "too_large", "unsupported", "overloaded"] {
        assert_eq!(refused(&d, "http", reason).await, 0.0, "{reason}");
    }
}

/// A small zstd body whose frame asks for a large window (`--long`, 64 MiB here), which
/// the default `max_decompressed_bytes` allows: accepted, though the small bodies that
/// are inflated where they arrive do so under a 1 MiB cap, and so an 8 MiB window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_zstd_body_with_a_long_window_is_accepted() {
    let d = Daemon::start(&config(""));
    let body = spans(100);
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.window_log(26).unwrap();
    encoder.long_distance_matching(true).unwrap();
    encoder.include_contentsize(false).unwrap();
    encoder.write_all(&body).unwrap();
    let frame = encoder.finish().unwrap();
    assert!(frame.len() < 128 << 10);
    let (status, _, reply) = post(&d, "/v1/traces", PROTOBUF, Some("zstd"), frame).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "http").await,
        100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_counts_every_accepted_encoding_exactly() {
    let d = Daemon::start(&config(""));
    let tonic_cases = [
        ("none", None),
        ("gzip", Some(CompressionEncoding::Gzip)),
        ("zstd", Some(CompressionEncoding::Zstd)),
        ("deflate", Some(CompressionEncoding::Deflate)),
    ];
    let mut expected = 0.0;
    for (i, (name, compression)) in tonic_cases.into_iter().enumerate() {
        let n = i + 3;
        let reply = grpc_call(&d, TRACE_EXPORT, spans(n), compression)
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"));
        let reply = ExportTraceServiceResponse::decode(&reply[..]).unwrap();
        assert_eq!(reply.partial_success, None, "{name}");
        expected += n as f64;
        assert_eq!(
            counted(&d, "sloxide_receiver_accepted_spans_total", "grpc").await,
            expected,
            "{name}"
        );
    }
    // Snappy, as the Collector's gRPC exporter sends it (framing format), and as one
    // raw block.
    type Compress = fn(&[u8]) -> Vec<u8>;
    let snappy_cases: [(&str, Compress); 2] = [
        ("snappy framed", snappy_framed),
        ("snappy block", snappy_block),
    ];
    for (i, (name, compress)) in snappy_cases.into_iter().enumerate() {
        let n = i + 7;
        let (status, reply) = raw_call(&d, TRACE_EXPORT, "snappy", &compress(&spans(n))).await;
        assert_eq!(status.code(), Code::Ok, "{name}: {status:?}");
        let reply = ExportTraceServiceResponse::decode(&reply[..]).unwrap();
        assert_eq!(reply.partial_success, None, "{name}");
        expected += n as f64;
        assert_eq!(
            counted(&d, "sloxide_receiver_accepted_spans_total", "grpc").await,
            expected,
            "{name}"
        );
    }
    let reply = grpc_call(&d, LOGS_EXPORT, logs(4), Some(CompressionEncoding::Zstd))
        .await
        .unwrap();
    ExportLogsServiceResponse::decode(&reply[..]).unwrap();
    let (status, _) = raw_call(&d, LOGS_EXPORT, "snappy", &snappy_framed(&logs(6))).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_log_records_total", "grpc").await,
        10.0
    );
    for reason in ["decode", "too_large", "unsupported", "overloaded"] {
        assert_eq!(refused(&d, "grpc", reason).await, 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_and_corrupt_bodies_are_refused_and_the_daemon_keeps_serving() {
    let d = Daemon::start(&config(LIMITS));
    let zeros = zeros();
    let garbage: Vec<u8> = (0..400u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut cut_zstd = zstd(&spans(50));
    cut_zstd.truncate(cut_zstd.len() / 2);

    // HTTP: (name, encoding, body, status).
    let http_cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("zstd bomb", "zstd", zstd(&zeros), 413),
        ("deflate bomb", "deflate", zlib(&zeros), 413),
        (
            "snappy block bomb",
            "snappy",
            snappy_block(&snappy_zeros()),
            413,
        ),
        (
            "snappy block declaring 8 MiB",
            "snappy",
            b"\x80\x80\x80\x04\x00a".to_vec(),
            413,
        ),
        (
            "snappy framed bomb",
            "x-snappy-framed",
            snappy_framed(&snappy_zeros()),
            413,
        ),
        ("corrupt zstd", "zstd", garbage.clone(), 400),
        ("truncated zstd", "zstd", cut_zstd.clone(), 400),
        ("corrupt deflate", "deflate", garbage.clone(), 400),
        ("corrupt snappy", "snappy", garbage.clone(), 400),
        (
            "corrupt x-snappy-framed",
            "x-snappy-framed",
            garbage.clone(),
            400,
        ),
    ];
    for (name, encoding, body, want) in http_cases {
        assert!(body.len() < 64 * 1024, "{name}: {} bytes", body.len());
        let (status, _, reply) = post(&d, "/v1/traces", PROTOBUF, Some(encoding), body).await;
        assert_eq!(status, want, "{name}: {}", String::from_utf8_lossy(&reply));
        assert_eq!(d.get("/healthz").await.0, 200, "alive after {name}");
    }
    assert_eq!(refused(&d, "http", "too_large").await, 5.0);
    assert_eq!(refused(&d, "http", "decode").await, 5.0);
    let (status, _, _) = post(&d, "/v1/traces", PROTOBUF, Some("zstd"), zstd(&spans(3))).await;
    assert_eq!(status, 200, "still serving");
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "http").await,
        3.0
    );

    // gRPC through tonic's own decompression: bombs stop at the limit.
    for (name, compression) in [
        ("zstd bomb", CompressionEncoding::Zstd),
        ("deflate bomb", CompressionEncoding::Deflate),
    ] {
        let err = grpc_call(&d, TRACE_EXPORT, zeros.clone(), Some(compression))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{name}: {err:?}");
    }
    // gRPC with bodies a well-behaved client would not send.
    let raw_cases: Vec<(&str, &'static str, Vec<u8>, Code)> = vec![
        (
            "snappy framed bomb",
            "snappy",
            snappy_framed(&snappy_zeros()),
            Code::ResourceExhausted,
        ),
        (
            "snappy block bomb",
            "snappy",
            snappy_block(&snappy_zeros()),
            Code::ResourceExhausted,
        ),
        (
            "corrupt zstd",
            "zstd",
            garbage.clone(),
            Code::InvalidArgument,
        ),
        ("truncated zstd", "zstd", cut_zstd, Code::InvalidArgument),
        (
            "corrupt gzip",
            "gzip",
            garbage.clone(),
            Code::InvalidArgument,
        ),
        (
            "corrupt snappy",
            "snappy",
            garbage.clone(),
            Code::InvalidArgument,
        ),
    ];
    for (name, encoding, body, want) in raw_cases {
        assert!(body.len() < 64 * 1024, "{name}: {} bytes", body.len());
        let (status, _) = raw_call(&d, TRACE_EXPORT, encoding, &body).await;
        assert_eq!(status.code(), want, "{name}: {status:?}");
        assert_eq!(d.get("/healthz").await.0, 200, "alive after {name}");
    }
    assert_eq!(refused(&d, "grpc", "too_large").await, 4.0);
    assert_eq!(refused(&d, "grpc", "decode").await, 4.0);
    let reply = grpc_call(&d, TRACE_EXPORT, spans(4), Some(CompressionEncoding::Zstd)).await;
    assert!(reply.is_ok(), "still serving: {reply:?}");
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "grpc").await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_compressions_are_refused_as_unsupported_until_a_reload_turns_them_on() {
    let d = Daemon::start(&config("limits:\n  compression: [gzip]\n"));
    // HTTP: 415, with a message that names what is accepted.
    let http_cases: [(&str, Vec<u8>); 5] = [
        ("zstd", zstd(&spans(2))),
        ("deflate", zlib(&spans(2))),
        ("zlib", zlib(&spans(2))),
        ("snappy", snappy_block(&spans(2))),
        ("x-snappy-framed", snappy_framed(&spans(2))),
    ];
    for (encoding, body) in http_cases {
        let (status, ct, reply) =
            post(&d, "/v1/traces", "application/json", Some(encoding), body).await;
        assert_eq!(
            (status, ct.as_str()),
            (415, "application/json"),
            "{encoding}"
        );
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["code"], 12, "{encoding}: UNIMPLEMENTED");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains("turned off by limits.compression; send gzip or identity"),
            "{encoding}: {message}"
        );
    }
    let (status, _, _) = post(&d, "/v1/traces", PROTOBUF, Some("gzip"), gzip(&spans(3))).await;
    assert_eq!(status, 200);
    assert_eq!(refused(&d, "http", "unsupported").await, 5.0);
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "http").await,
        3.0
    );

    // gRPC: UNIMPLEMENTED, naming the accepted ones in the message and in
    // grpc-accept-encoding.
    for compression in [CompressionEncoding::Zstd, CompressionEncoding::Deflate] {
        let err = grpc_call(&d, TRACE_EXPORT, spans(2), Some(compression))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{compression}: {err:?}");
        assert!(
            err.message()
                .contains("turned off by limits.compression; send gzip or identity"),
            "{compression}: {err:?}"
        );
        assert_eq!(
            err.metadata().get("grpc-accept-encoding").unwrap(),
            "gzip,identity"
        );
    }
    let (status, _) = raw_call(&d, TRACE_EXPORT, "snappy", &snappy_framed(&spans(2))).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let (status, _) = raw_call(&d, TRACE_EXPORT, "br", b"whatever").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(
        status.message().contains("send gzip or identity"),
        "{status:?}"
    );
    let reply = grpc_call(&d, TRACE_EXPORT, spans(4), Some(CompressionEncoding::Gzip)).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(refused(&d, "grpc", "unsupported").await, 4.0);
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "grpc").await,
        4.0
    );

    // A reload changes the list like any other limit.
    let applied = "sloxide_config_last_reload_success_timestamp_seconds";
    let before = d.metric(applied, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(
        d.config_path(),
        config("limits:\n  compression: [gzip, zstd]\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.metric(applied, &[]).await.unwrap() <= before {
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = post(&d, "/v1/traces", PROTOBUF, Some("zstd"), zstd(&spans(5))).await;
    assert_eq!(status, 200);
    let reply = grpc_call(&d, TRACE_EXPORT, spans(6), Some(CompressionEncoding::Zstd)).await;
    assert!(reply.is_ok(), "{reply:?}");
    let (status, _, _) = post(
        &d,
        "/v1/traces",
        PROTOBUF,
        Some("snappy"),
        snappy_block(&spans(1)),
    )
    .await;
    assert_eq!(status, 415, "snappy is still off");
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "http").await,
        8.0
    );
    assert_eq!(
        counted(&d, "sloxide_receiver_accepted_spans_total", "grpc").await,
        10.0
    );
}
