//! Synthetic OTLP requests, shared by the tests, the benchmarks and the load generator.
//!
//! The shapes are realistic: several resources per request, each with a service name,
//! a region and SDK attributes, and spans carrying about eight HTTP attributes.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

/// What a generated request holds.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Resources per request.
    pub resources: usize,
    /// Records per resource.
    pub per_resource: usize,
    /// Distinct service names, cycled over the resources.
    pub services: usize,
    /// The service names to use instead of `service-0`, `service-1`, ...
    pub service_names: Vec<String>,
    /// Region values, cycled over the resources.
    pub regions: Vec<String>,
    /// Every n-th record is an error (0: none).
    pub error_every: usize,
    /// The event time, in Unix nanoseconds, of every record.
    pub end_unix_nanos: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            resources: 10,
            per_resource: 100,
            services: 10,
            service_names: Vec::new(),
            regions: vec!["eu-west-1".into(), "us-east-1".into()],
            error_every: 10,
            end_unix_nanos: 1_700_000_000_000_000_000,
        }
    }
}

/// A string attribute.
pub fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource(shape: &Shape, r: usize) -> Resource {
    let n = r % shape.services.max(1);
    let service = match shape
        .service_names
        .get(n % shape.service_names.len().max(1))
    {
        Some(name) => name.clone(),
        None => format!("service-{n}"),
    };
    let region = &shape.regions[r % shape.regions.len().max(1)];
    Resource {
        attributes: vec![
            kv_str("service.name", &service),
            kv_str("cloud.region", region),
            kv_str("telemetry.sdk.language", "rust"),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("host.name", &format!("host-{r}")),
        ],
        ..Default::default()
    }
}

/// A trace request of the given shape. Durations vary from 1 ms to about 1 s.
pub fn traces(shape: &Shape) -> ExportTraceServiceRequest {
    let resource_spans = (0..shape.resources)
        .map(|r| {
            let spans = (0..shape.per_resource)
                .map(|i| {
                    let n = r * shape.per_resource + i;
                    let error = shape.error_every != 0 && n.is_multiple_of(shape.error_every);
                    let duration = 1_000_000 + (n as u64 * 7_919_000) % 1_000_000_000;
                    let route =
                        ["/api/checkout", "/api/cart", "/api/items/{id}", "/healthz"][n % 4];
                    Span {
                        trace_id: (n as u128 + 1).to_be_bytes().to_vec(),
                        span_id: (n as u64 + 1).to_be_bytes().to_vec(),
                        name: format!("GET {route}"),
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: shape.end_unix_nanos - duration,
                        end_time_unix_nano: shape.end_unix_nanos,
                        attributes: vec![
                            kv_str("http.request.method", "GET"),
                            kv_str("http.route", route),
                            kv_int("http.response.status_code", if error { 503 } else { 200 }),
                            kv_str("url.scheme", "https"),
                            kv_str("server.address", "shop.example.com"),
                            kv_int("server.port", 443),
                            kv_str("network.protocol.version", "1.1"),
                            kv_str(
                                "user_agent.original",
                                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
                            ),
                        ],
                        status: Some(Status {
                            code: if error { 2 } else { 0 },
                            message: String::new(),
                        }),
                        ..Default::default()
                    }
                })
                .collect();
            ResourceSpans {
                resource: Some(resource(shape, r)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "opentelemetry-http".into(),
                        version: "0.1.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// A logs request of the given shape; every `error_every`-th record has severity ERROR.
pub fn logs(shape: &Shape) -> ExportLogsServiceRequest {
    let resource_logs = (0..shape.resources)
        .map(|r| {
            let log_records = (0..shape.per_resource)
                .map(|i| {
                    let n = r * shape.per_resource + i;
                    let error = shape.error_every != 0 && n.is_multiple_of(shape.error_every);
                    LogRecord {
                        time_unix_nano: shape.end_unix_nanos,
                        observed_time_unix_nano: shape.end_unix_nanos,
                        severity_number: if error { 17 } else { 9 },
                        severity_text: if error { "ERROR" } else { "INFO" }.into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(
                                "deployment finished".into(),
                            )),
                        }),
                        attributes: vec![
                            kv_str("event.name", "deployment"),
                            kv_str(
                                "deployment.outcome",
                                if error { "failure" } else { "success" },
                            ),
                            kv_int("provisioning.duration_ms", (n as i64 * 37) % 5000),
                        ],
                        ..Default::default()
                    }
                })
                .collect();
            ResourceLogs {
                resource: Some(resource(shape, r)),
                scope_logs: vec![ScopeLogs {
                    scope: None,
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}
