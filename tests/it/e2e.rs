//! End to end: the real binary, real OTLP clients, exact counts on `/metrics`.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use prost::Message;
use sloxide::fixture::{self, Shape};

use crate::harness::{Daemon, config, require};

const ACCEPTED_SPANS: &str = "sloxide_receiver_accepted_spans_total";
const ACCEPTED_LOGS: &str = "sloxide_receiver_accepted_log_records_total";

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "checkout"),
            KeyValue::new("cloud.region", "eu-west-1"),
        ])
        .build()
}

/// Emits `n` spans and `n` logs through the Rust SDK's exporters, from a thread inside
/// the runtime (the simple processors block on the export).
async fn send_with_rust_sdk(grpc: bool, endpoint: String, n: usize) {
    tokio::task::spawn_blocking(move || {
        let span_exporter = if grpc {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
        } else {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .build()
        }
        .expect("span exporter");
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(resource())
            .with_simple_exporter(span_exporter)
            .build();
        let tracer = provider.tracer("e2e");
        for i in 0..n {
            let mut span = tracer.start(format!("GET /item/{}", i % 3));
            span.set_attribute(KeyValue::new("http.route", "/item/{id}"));
            span.end();
        }
        provider.force_flush().expect("span flush");
        provider.shutdown().expect("span shutdown");

        let log_exporter = if grpc {
            opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
        } else {
            opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/logs"))
                .build()
        }
        .expect("log exporter");
        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .with_resource(resource())
            .with_simple_exporter(log_exporter)
            .build();
        let logger = provider.logger("e2e");
        for _ in 0..n {
            let mut record = logger.create_log_record();
            record.set_severity_number(Severity::Info);
            record.set_body("hello".into());
            record.set_timestamp(std::time::SystemTime::now());
            logger.emit(record);
        }
        provider.force_flush().expect("log flush");
        provider.shutdown().expect("log shutdown");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_grpc_and_http_is_counted_exactly() {
    let d = Daemon::start(&config(""));
    send_with_rust_sdk(true, format!("http://{}", d.grpc), 25).await;
    send_with_rust_sdk(false, format!("http://{}", d.http), 17).await;
    assert_eq!(
        d.wait_metric(ACCEPTED_SPANS, &[("transport", "grpc")], 25.0)
            .await,
        Some(25.0)
    );
    assert_eq!(
        d.wait_metric(ACCEPTED_SPANS, &[("transport", "http")], 17.0)
            .await,
        Some(17.0)
    );
    assert_eq!(
        d.wait_metric(ACCEPTED_LOGS, &[("transport", "grpc")], 25.0)
            .await,
        Some(25.0)
    );
    assert_eq!(
        d.wait_metric(ACCEPTED_LOGS, &[("transport", "http")], 17.0)
            .await,
        Some(17.0)
    );
}

fn python_with_otel() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tests/e2e/send_otlp.py` with `args`; panics unless it reports success.
pub fn python_send(args: &[&str]) {
    let out = python_try_send(args);
    assert!(
        out.status.success(),
        "send_otlp.py {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tests/e2e/send_otlp.py` with `args`, whatever it reports.
pub fn python_try_send(args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/send_otlp.py");
    Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs")
}

/// True when the Python OTel SDK and exporters are importable (else SKIPPED, or a
/// failure under SLOXIDE_REQUIRE_E2E=1).
pub fn python_available() -> bool {
    require(
        python_with_otel(),
        "python3 with opentelemetry-sdk and the OTLP exporters",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_grpc_and_http_is_counted_exactly() {
    if !python_available() {
        return;
    }
    let d = Daemon::start(&config(""));
    let grpc = d.grpc.to_string();
    let http = d.http.to_string();
    tokio::task::spawn_blocking(move || {
        python_send(&[
            "--protocol",
            "grpc",
            "--endpoint",
            &grpc,
            "--spans",
            "1000",
            "--logs",
            "30",
        ]);
        python_send(&[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--spans",
            "700",
            "--logs",
            "12",
        ]);
    })
    .await
    .unwrap();
    assert_eq!(
        d.wait_metric(ACCEPTED_SPANS, &[("transport", "grpc")], 1000.0)
            .await,
        Some(1000.0)
    );
    assert_eq!(
        d.wait_metric(ACCEPTED_SPANS, &[("transport", "http")], 700.0)
            .await,
        Some(700.0)
    );
    assert_eq!(
        d.wait_metric(ACCEPTED_LOGS, &[("transport", "grpc")], 30.0)
            .await,
        Some(30.0)
    );
    assert_eq!(
        d.wait_metric(ACCEPTED_LOGS, &[("transport", "http")], 12.0)
            .await,
        Some(12.0)
    );
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Hand-written OTLP/JSON: hex ids, 64-bit integers as strings and as numbers, integer
/// enums, and a camelCase body, exactly as the OTLP/JSON mapping allows.
pub const JSON_TRACES: &str = r#"{
  "resourceSpans": [{
    "resource": {"attributes": [
      {"key": "service.name", "value": {"stringValue": "checkout"}},
      {"key": "cloud.region", "value": {"stringValue": "us-east-1"}}
    ]},
    "scopeSpans": [{
      "scope": {"name": "manual"},
      "spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
         "name": "POST /api/checkout", "kind": 2,
         "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000250000000",
         "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}],
         "status": {"code": 0}},
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175",
         "name": "POST /api/checkout", "kind": 2,
         "startTimeUnixNano": 1700000000000000000, "endTimeUnixNano": 1700000000900000000,
         "attributes": [{"key": "http.response.status_code", "value": {"intValue": 503}}],
         "status": {"code": 2, "message": "upstream failed"}}
      ]
    }]
  }]
}"#;

/// Two log records, one with only an observed time.
pub const JSON_LOGS: &str = r#"{
  "resourceLogs": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "deployer"}}]},
    "scopeLogs": [{
      "logRecords": [
        {"timeUnixNano": "1700000000000000000", "severityNumber": 17, "severityText": "ERROR",
         "body": {"stringValue": "deploy failed"},
         "attributes": [{"key": "event.name", "value": {"stringValue": "deployment"}}],
         "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"},
        {"observedTimeUnixNano": "1700000000000000001", "severityNumber": 9}
      ]
    }]
  }]
}"#;

pub async fn post(
    d: &Daemon,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("http://{}{path}", d.http))
        .header("content-type", content_type)
        .body(body);
    if let Some(enc) = encoding {
        req = req.header("content-encoding", enc);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_json_and_gzip_bodies_are_counted_exactly() {
    let d = Daemon::start(&config(""));
    let (status, ct, body) = post(
        &d,
        "/v1/traces",
        "application/json",
        None,
        JSON_TRACES.into(),
    )
    .await;
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/json"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // As standard OTLP/JSON encoders write it: no partial success, no field.
    assert_eq!(body, b"{}".as_slice(), "{}", String::from_utf8_lossy(&body));

    let (status, _, _) = post(
        &d,
        "/v1/traces",
        "application/json",
        Some("gzip"),
        gzip(JSON_TRACES.as_bytes()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &d,
        "/v1/logs",
        "application/json; charset=utf-8",
        None,
        JSON_LOGS.into(),
    )
    .await;
    assert_eq!(status, 200);

    let shape = Shape {
        resources: 3,
        per_resource: 50,
        ..Shape::default()
    };
    let proto = fixture::traces(&shape).encode_to_vec();
    let (status, ct, _) = post(
        &d,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        gzip(&proto),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/x-protobuf"));
    let logs = fixture::logs(&shape).encode_to_vec();
    let (status, _, _) = post(
        &d,
        "/v1/logs",
        "application/x-protobuf",
        Some("gzip"),
        gzip(&logs),
    )
    .await;
    assert_eq!(status, 200);

    assert_eq!(
        d.metric(ACCEPTED_SPANS, &[("transport", "http")]).await,
        Some(2.0 + 2.0 + 150.0)
    );
    assert_eq!(
        d.metric(ACCEPTED_LOGS, &[("transport", "http")]).await,
        Some(2.0 + 150.0)
    );
    assert_eq!(
        d.metric(ACCEPTED_SPANS, &[("transport", "grpc")]).await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_self_metrics_are_served() {
    let d = Daemon::start(&config(""));
    assert_eq!(d.get("/healthz").await.0, 200);
    assert_eq!(d.get("/readyz").await.0, 200);
    let text = d.scrape().await;
    for family in [
        "sloxide_receiver_accepted_spans_total",
        "sloxide_receiver_accepted_log_records_total",
        "sloxide_receiver_refused_spans_total",
        "sloxide_receiver_refused_log_records_total",
        "sloxide_receiver_refused_requests_total",
        "sloxide_spans_total",
        "sloxide_span_duration_seconds",
        "sloxide_span_duration_quantile_seconds",
        "sloxide_log_records_total",
        "sloxide_series_active",
        "sloxide_series_overflow_total",
        "sloxide_build_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has HELP"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} has TYPE"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        crate::harness::sample(&text, "sloxide_build_info", &[("version", version)]),
        Some(1.0)
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut d = Daemon::start(&config(""));
    let status = Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = d
        .wait_exit(Duration::from_secs(15))
        .expect("the daemon exits after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let logged = d.logged().join("\n");
    assert!(logged.contains("shutting down"), "{logged}");
}

/// Every port listens with a backlog of at least 1024 (the kernel's queue of
/// connections not yet accepted), read back with `ss`, which shows a listening
/// socket's backlog as its Send-Q.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_listens_with_a_large_backlog() {
    let ss = Command::new("ss")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::harness::require(ss, "ss (iproute2)") {
        return;
    }
    let d = Daemon::start(&config(""));
    for addr in [d.grpc, d.http, d.metrics] {
        let out = Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no listening socket on {addr}: {text:?}"));
        assert!(backlog >= 1024, "{addr}: backlog {backlog}");
    }
}

/// The OTLP/gRPC port tells each HTTP/2 connection how many streams it may open at
/// once, so one connection cannot take every request slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_told_their_stream_limit() {
    let d = Daemon::start(&config(""));
    let tcp = tokio::net::TcpStream::connect(d.grpc).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection, noting the stream limit the server's settings give.
    let limit = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = limit.clone();
    tokio::spawn(async move {
        let mut connection = connection;
        std::future::poll_fn(|cx| {
            let polled = std::pin::Pin::new(&mut connection).poll(cx);
            seen.store(
                connection.max_concurrent_send_streams(),
                std::sync::atomic::Ordering::Relaxed,
            );
            polled
        })
        .await
    });
    // The server's SETTINGS arrive with the first exchange: send one request.
    client = client.ready().await.unwrap();
    let (response, mut body) = client
        .send_request(crate::harness::grpc_export_head(d.grpc), false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // The connection task notes the limit after it has processed the settings, which
    // may be just after the response reached this task.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = limit.load(std::sync::atomic::Ordering::Relaxed);
    while seen != sloxide::daemon::MAX_STREAMS_PER_CONNECTION as usize
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = limit.load(std::sync::atomic::Ordering::Relaxed);
    }
    assert_eq!(seen, sloxide::daemon::MAX_STREAMS_PER_CONNECTION as usize);
}
