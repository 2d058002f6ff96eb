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

/// Production-like traffic for the benchmarks and the load generator: many resources per
/// request, from a skewed choice of `services` services, each running in three of
/// `regions` regions; server, client, internal and messaging spans with their usual
/// semantic-convention attributes (most of them unknown to sloxide), routes per service,
/// a spread of HTTP status codes, durations from 0.2 ms to 3 s, and ids, parents, flags
/// and exception events as SDKs write them. Deterministic for a given `seed`.
///
/// The first services are the ones `config/example.yaml` has SLOs on (`checkout`,
/// `api-gateway`, `deployer`, `provisioner`), so a mixed request exercises the SLO
/// classification too.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Records per request.
    pub records: usize,
    /// Resources per request.
    pub resources: usize,
    /// Distinct services (at most [`Mix::MAX_SERVICES`]).
    pub services: usize,
    /// Distinct regions (at most [`MIX_REGIONS`]`.len()`).
    pub regions: usize,
    /// Picks the request's resources and records.
    pub seed: u64,
    /// The latest end time of a record, Unix nanoseconds; records end up to 2 s before.
    pub end_unix_nanos: u64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            records: 1000,
            resources: 25,
            services: 60,
            regions: 6,
            seed: 1,
            end_unix_nanos: 1_700_000_000_000_000_000,
        }
    }
}

/// The regions a [`Mix`] draws from.
pub const MIX_REGIONS: [&str; 8] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
    "sa-east-1",
    "ca-central-1",
];

const MIX_SERVICE_WORDS: [&str; 20] = [
    "checkout",
    "api-gateway",
    "deployer",
    "provisioner",
    "cart",
    "search",
    "catalog",
    "payments",
    "shipping",
    "users",
    "reviews",
    "ads",
    "inventory",
    "pricing",
    "recommendations",
    "notifications",
    "auth",
    "orders",
    "fraud",
    "ledger",
];

const MIX_ROUTES: [&str; 24] = [
    "/api/checkout",
    "/api/cart",
    "/api/orders",
    "/api/orders/{id}",
    "/api/items/{id}",
    "/api/search",
    "/api/users/{id}",
    "/healthz",
    "/api/v2/catalog/{category}/items",
    "/api/payments/{id}/capture",
    "/api/shipments/{id}",
    "/api/reviews",
    "/api/ads/slot/{slot}",
    "/api/inventory/{sku}",
    "/api/prices",
    "/api/recommendations/{user}",
    "/api/notifications",
    "/oauth/token",
    "/api/orders/{id}/items",
    "/api/fraud/score",
    "/api/ledger/entries",
    "/internal/cache/warm",
    "/api/v1/session",
    "/readyz",
];

/// SplitMix64: a small, fast, deterministic generator for fixtures.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Mix {
    /// The most distinct service names a mix has.
    pub const MAX_SERVICES: usize = MIX_SERVICE_WORDS.len() * 3;

    fn service_name(&self, s: usize) -> String {
        let word = MIX_SERVICE_WORDS[s % MIX_SERVICE_WORDS.len()];
        match s / MIX_SERVICE_WORDS.len() {
            0 => word.to_owned(),
            1 => format!("{word}-api"),
            _ => format!("{word}-worker"),
        }
    }

    /// A skewed service choice: a few services send most of the traffic.
    fn pick_service(&self, rng: &mut Rng) -> usize {
        let n = self.services.clamp(1, Self::MAX_SERVICES);
        let u = rng.unit();
        ((u * u * n as f64) as usize).min(n - 1)
    }

    /// One of the three regions service `s` runs in; `None` for the few resources whose
    /// SDK sets no region.
    fn pick_region(&self, s: usize, rng: &mut Rng) -> Option<&'static str> {
        if rng.below(20) == 0 {
            return None;
        }
        let n = self.regions.clamp(1, MIX_REGIONS.len());
        Some(MIX_REGIONS[(s + 2 * rng.below(3)) % n])
    }

    /// The records of each resource: uneven, summing to `records`.
    fn split(&self, rng: &mut Rng) -> Vec<usize> {
        let resources = self.resources.clamp(1, self.records.max(1));
        let weights: Vec<usize> = (0..resources).map(|_| 1 + rng.below(9)).collect();
        let total: usize = weights.iter().sum();
        let mut counts: Vec<usize> = weights.iter().map(|w| self.records * w / total).collect();
        let given: usize = counts.iter().sum();
        counts[0] += self.records - given;
        counts
    }

    /// The next resource of a request: a service, one of its regions, its attributes.
    fn next_resource(&self, rng: &mut Rng) -> (usize, Resource) {
        let s = self.pick_service(rng);
        let region = self.pick_region(s, rng);
        (s, self.resource(s, region, rng))
    }

    fn resource(&self, s: usize, region: Option<&str>, rng: &mut Rng) -> Resource {
        let service = self.service_name(s);
        let pod = rng.next() % 100_000;
        let mut attributes = vec![
            kv_str("service.name", &service),
            kv_str("service.version", &format!("1.{}.{}", s % 7, pod % 13)),
            kv_str("service.instance.id", &format!("{service}-{pod:05}")),
            kv_str("deployment.environment.name", "production"),
            kv_str(
                "host.name",
                &format!("ip-10-0-{}-{}", pod % 256, pod / 256 % 256),
            ),
            kv_str("k8s.namespace.name", "shop"),
            kv_str("k8s.pod.name", &format!("{service}-7d9f8b6c5-{pod:05}")),
            kv_str(
                "telemetry.sdk.language",
                ["go", "java", "python", "rust"][s % 4],
            ),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("telemetry.sdk.version", "1.38.0"),
        ];
        if let Some(region) = region {
            attributes.insert(1, kv_str("cloud.region", region));
            attributes.push(kv_str("cloud.provider", "aws"));
        }
        Resource {
            attributes,
            ..Default::default()
        }
    }

    /// A duration from 0.2 ms to 3 s, most of them short.
    fn duration(rng: &mut Rng) -> u64 {
        let (lo, hi) = ((200_000f64).ln(), (3_000_000_000f64).ln());
        (lo + rng.unit().powf(1.6) * (hi - lo)).exp() as u64
    }

    fn http_status(rng: &mut Rng) -> i64 {
        match rng.below(1000) {
            0..780 => 200,
            780..830 => 201,
            830..860 => 204,
            860..880 => 304,
            880..910 => 400,
            910..920 => 401,
            920..960 => 404,
            960..970 => 429,
            970..985 => 500,
            _ => 503,
        }
    }

    fn span(&self, s: usize, n: usize, rng: &mut Rng) -> (usize, Span) {
        let duration = Self::duration(rng);
        let end = self.end_unix_nanos - rng.next() % 2_000_000_000;
        let mut span = Span {
            trace_id: rng.next().to_be_bytes().repeat(2),
            span_id: rng.next().to_be_bytes().to_vec(),
            parent_span_id: if rng.below(5) == 0 {
                Vec::new()
            } else {
                rng.next().to_be_bytes().to_vec()
            },
            flags: 0x101,
            start_time_unix_nano: end - duration,
            end_time_unix_nano: end,
            ..Default::default()
        };
        let mut error = false;
        let scope = match rng.below(100) {
            // Server spans: the route templates of this service.
            0..55 => {
                // api-gateway serves the routes of its SLO in config/example.yaml.
                let offset = if s == 1 { 1 } else { s * 5 };
                let route = MIX_ROUTES[(offset + rng.below(8)) % MIX_ROUTES.len()];
                let method =
                    ["GET", "GET", "GET", "POST", "GET", "PUT", "GET", "DELETE"][rng.below(8)];
                let code = Self::http_status(rng);
                error = code >= 500;
                span.kind = span::SpanKind::Server as i32;
                span.name = format!("{method} {route}");
                span.attributes = vec![
                    kv_str("http.request.method", method),
                    kv_str("url.scheme", "https"),
                    kv_str("http.route", route),
                    kv_str("url.path", &route.replace("{id}", &format!("{}", n * 7919))),
                    kv_int("http.response.status_code", code),
                    kv_str("server.address", "shop.example.com"),
                    kv_int("server.port", 443),
                    kv_str("network.protocol.version", "1.1"),
                    kv_str("client.address", &format!("10.1.{}.{}", n % 256, s)),
                    kv_str(
                        "user_agent.original",
                        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
                    ),
                ];
                if rng.below(5) == 0 {
                    span.attributes
                        .push(kv_str("app.user.tier", ["free", "pro"][n % 2]));
                    span.attributes
                        .push(kv_int("app.cart.items", (n % 17) as i64));
                }
                0
            }
            // Outgoing HTTP calls.
            55..70 => {
                let code = Self::http_status(rng);
                error = code >= 500;
                let peer = self.service_name(rng.below(self.services.max(1)));
                span.kind = span::SpanKind::Client as i32;
                span.name = "GET".into();
                span.attributes = vec![
                    kv_str("http.request.method", "GET"),
                    kv_str("server.address", &format!("{peer}.shop.svc")),
                    kv_int("server.port", 8080),
                    kv_str("url.full", &format!("http://{peer}.shop.svc:8080/v1/{n}")),
                    kv_int("http.response.status_code", code),
                    kv_str("network.protocol.version", "1.1"),
                ];
                1
            }
            // Database calls.
            70..85 => {
                let table = ["orders", "items", "users", "payments"][rng.below(4)];
                error = rng.below(200) == 0;
                span.kind = span::SpanKind::Client as i32;
                span.name = format!("SELECT {table}");
                span.attributes = vec![
                    kv_str("db.system.name", "postgresql"),
                    kv_str("db.namespace", "shop"),
                    kv_str("db.operation.name", "SELECT"),
                    kv_str("db.collection.name", table),
                    kv_str(
                        "db.query.text",
                        &format!("SELECT * FROM {table} WHERE id = $1 AND tenant_id = $2"),
                    ),
                    kv_str("server.address", "db.shop.svc"),
                    kv_int("server.port", 5432),
                ];
                2
            }
            // In-process work.
            85..95 => {
                span.kind = span::SpanKind::Internal as i32;
                span.name = ["render", "validate", "serialize"][rng.below(3)].into();
                span.attributes = vec![kv_str("code.function.name", &span.name.clone())];
                3
            }
            // Messaging.
            _ => {
                let consumer = rng.below(2) == 0;
                error = rng.below(100) == 0;
                span.kind = if consumer {
                    span::SpanKind::Consumer
                } else {
                    span::SpanKind::Producer
                } as i32;
                span.name = format!("{} orders", if consumer { "process" } else { "send" });
                span.attributes = vec![
                    kv_str("messaging.system", "kafka"),
                    kv_str("messaging.destination.name", "orders"),
                    kv_str(
                        "messaging.operation.type",
                        if consumer { "process" } else { "send" },
                    ),
                    kv_int("messaging.kafka.message.offset", (n * 31) as i64),
                ];
                4
            }
        };
        if error {
            span.status = Some(Status {
                code: 2,
                message: "upstream failed".into(),
            });
            if rng.below(2) == 0 {
                span.events.push(span::Event {
                    time_unix_nano: end,
                    name: "exception".into(),
                    attributes: vec![
                        kv_str("exception.type", "UpstreamError"),
                        kv_str("exception.message", "connection reset by peer"),
                    ],
                    dropped_attributes_count: 0,
                });
            }
        } else if rng.below(10) == 0 {
            span.status = Some(Status {
                code: 1,
                message: String::new(),
            });
        }
        (scope, span)
    }
}

/// A production-like trace request: see [`Mix`].
pub fn mixed_traces(mix: &Mix) -> ExportTraceServiceRequest {
    const SCOPES: [&str; 5] = [
        "io.opentelemetry.http-server",
        "io.opentelemetry.http-client",
        "io.opentelemetry.jdbc",
        "app",
        "io.opentelemetry.kafka",
    ];
    let mut rng = Rng(mix.seed);
    let mut n = 0;
    let resource_spans = mix
        .split(&mut rng)
        .into_iter()
        .map(|count| {
            let (s, resource) = mix.next_resource(&mut rng);
            let mut by_scope: Vec<Vec<Span>> = vec![Vec::new(); SCOPES.len()];
            for _ in 0..count {
                let (scope, span) = mix.span(s, n, &mut rng);
                by_scope[scope].push(span);
                n += 1;
            }
            ResourceSpans {
                resource: Some(resource),
                scope_spans: by_scope
                    .into_iter()
                    .zip(SCOPES)
                    .filter(|(spans, _)| !spans.is_empty())
                    .map(|(spans, name)| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: name.into(),
                            version: "2.10.0".into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: "https://opentelemetry.io/schemas/1.27.0".into(),
                    })
                    .collect(),
                schema_url: "https://opentelemetry.io/schemas/1.27.0".into(),
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// A production-like logs request, with the resources of [`mixed_traces`]: access logs,
/// application messages at every severity, and the deployment and provisioning events
/// `config/example.yaml` has SLOs on.
pub fn mixed_logs(mix: &Mix) -> ExportLogsServiceRequest {
    let mut rng = Rng(mix.seed);
    let mut n = 0;
    let resource_logs = mix
        .split(&mut rng)
        .into_iter()
        .map(|count| {
            let (_, resource) = mix.next_resource(&mut rng);
            let log_records = (0..count)
                .map(|_| {
                    n += 1;
                    let time = mix.end_unix_nanos - rng.next() % 2_000_000_000;
                    let severity = [9, 9, 9, 9, 5, 13, 17, 9][rng.below(8)];
                    let mut attributes = Vec::new();
                    let body = match rng.below(10) {
                        0 => {
                            let failed = rng.below(10) == 0;
                            attributes.push(kv_str("event.name", "deployment"));
                            attributes.push(kv_str(
                                "deployment.outcome",
                                if failed { "failure" } else { "success" },
                            ));
                            "deployment finished"
                        }
                        1 => {
                            attributes.push(kv_str("event.name", "provisioned"));
                            attributes.push(kv_int(
                                "provisioning.duration_ms",
                                rng.below(200_000) as i64,
                            ));
                            "environment ready"
                        }
                        2..6 => {
                            attributes.push(kv_str("http.request.method", "GET"));
                            attributes.push(kv_str("url.path", &format!("/api/items/{n}")));
                            attributes.push(kv_int(
                                "http.response.status_code",
                                Mix::http_status(&mut rng),
                            ));
                            "request served"
                        }
                        _ => {
                            attributes.push(kv_str("code.function.name", "handle"));
                            "cache refreshed"
                        }
                    };
                    LogRecord {
                        time_unix_nano: time,
                        observed_time_unix_nano: time + 1_000_000,
                        severity_number: severity,
                        severity_text: match severity {
                            5 => "DEBUG",
                            13 => "WARN",
                            17 => "ERROR",
                            _ => "INFO",
                        }
                        .into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(body.into())),
                        }),
                        attributes,
                        trace_id: rng.next().to_be_bytes().repeat(2),
                        span_id: rng.next().to_be_bytes().to_vec(),
                        flags: 1,
                        ..Default::default()
                    }
                })
                .collect();
            ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app".into(),
                        ..Default::default()
                    }),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_request_has_what_it_says() {
        let mix = Mix::default();
        let req = mixed_traces(&mix);
        assert_eq!(req.resource_spans.len(), mix.resources);
        let spans: Vec<&Span> = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), mix.records);
        assert!(
            spans
                .iter()
                .all(|s| s.end_time_unix_nano > s.start_time_unix_nano)
        );
        let kinds: std::collections::HashSet<i32> = spans.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds.len(),
            5,
            "server, client, internal, producer, consumer"
        );
        let errors = spans
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|s| s.code == 2))
            .count();
        assert!((5..100).contains(&errors), "{errors} errors");
        // Other seeds give other requests; the same seed the same one.
        assert_eq!(mixed_traces(&mix), req);
        assert_ne!(
            mixed_traces(&Mix {
                seed: 2,
                ..mix.clone()
            }),
            req
        );
        let logs = mixed_logs(&mix);
        let records: usize = logs
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        assert_eq!(records, mix.records);
    }
}
