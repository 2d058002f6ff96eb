//! The aggregation against known inputs: exact counters and buckets, quantiles within
//! HDR precision of the true ones, concurrency, overflow and expiry, the golden
//! exposition, and zero allocations for known series.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::{Shape, kv_int, kv_str, traces};
use sloxide::ingest::Recorder;
use sloxide::otlp::logs::{LogBatch, walk_logs};
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;

use crate::harness::sample;

/// 2023-11-14T22:13:00Z, the start of a minute.
const T0: u64 = 1_699_999_980 * 1_000_000_000;
const MS: u64 = 1_000_000;

fn setup(yaml: &str) -> (Arc<Pipeline>, Arc<ManualClock>) {
    let config = Config::from_yaml(yaml, "test.yaml").unwrap();
    let clock = Arc::new(ManualClock::new(T0 + 30_000 * MS));
    let pipeline = Pipeline::new(&config, clock.clone()).unwrap();
    (Arc::new(pipeline), clock)
}

fn feed(agg: &Pipeline, req: &ExportTraceServiceRequest) {
    let body = req.encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, agg.plan().trace_keys(), &mut batch).unwrap();
    agg.aggregator().record_traces(&batch);
}

fn feed_logs(agg: &Pipeline, req: &ExportLogsServiceRequest) {
    let body = req.encode_to_vec();
    let mut batch = LogBatch::default();
    walk_logs(&body, agg.plan().keys(), &mut batch).unwrap();
    agg.aggregator().record_logs(&batch);
}

fn render(agg: &Pipeline) -> String {
    agg.render()
}

fn span(kind: i32, duration: u64, status: i32, end: u64) -> Span {
    Span {
        name: "op".into(),
        kind,
        start_time_unix_nano: end - duration,
        end_time_unix_nano: end,
        status: Some(Status {
            code: status,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn resource_spans(attrs: &[(&str, &str)], spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: attrs.iter().map(|(k, v)| kv_str(k, v)).collect(),
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        schema_url: String::new(),
    }
}

#[test]
fn known_spans_give_exact_counters_buckets_and_sums() {
    let (agg, _) = setup("");
    let end = T0 + 20_000 * MS;
    let mut region_on_span = span(3, 5 * MS, 1, end);
    region_on_span
        .attributes
        .push(kv_str("cloud.region", "us-east-1"));
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans(
                &[("service.name", "checkout"), ("cloud.region", "eu-west-1")],
                vec![
                    span(2, MS, 0, end),
                    span(2, 2 * MS, 1, end), // exactly on the 0.002 bound
                    span(2, 2 * MS + 1, 2, end),
                    span(2, 300 * MS, 2, end),
                    span(2, 20_000 * MS, 0, end), // above the last bound
                ],
            ),
            resource_spans(
                &[("service.name", "checkout")],
                vec![region_on_span.clone(), region_on_span],
            ),
            resource_spans(&[], vec![span(5, 100 * MS, 0, end)]),
        ],
    };
    feed(&agg, &req);
    let text = render(&agg);
    let eu = [
        ("service", "checkout"),
        ("region", "eu-west-1"),
        ("span_kind", "server"),
    ];
    let total = |status| {
        let mut l = eu.to_vec();
        l.push(("status_code", status));
        sample(&text, "sloxide_spans_total", &l)
    };
    assert_eq!(total("unset"), Some(2.0));
    assert_eq!(total("ok"), Some(1.0));
    assert_eq!(total("error"), Some(2.0));
    let bucket = |le| {
        let mut l = eu.to_vec();
        l.push(("le", le));
        sample(&text, "sloxide_span_duration_seconds_bucket", &l)
    };
    assert_eq!(bucket("0.002"), Some(2.0), "1 ms and exactly 2 ms");
    assert_eq!(bucket("0.004"), Some(3.0));
    assert_eq!(bucket("0.256"), Some(3.0));
    assert_eq!(bucket("0.512"), Some(4.0));
    assert_eq!(bucket("16.384"), Some(4.0));
    assert_eq!(bucket("+Inf"), Some(5.0));
    assert_eq!(
        sample(&text, "sloxide_span_duration_seconds_count", &eu),
        Some(5.0)
    );
    let sum = sample(&text, "sloxide_span_duration_seconds_sum", &eu).unwrap();
    assert!((sum - 20.305_000_001).abs() < 1e-9, "{sum}");

    let us = [
        ("service", "checkout"),
        ("region", "us-east-1"),
        ("span_kind", "client"),
    ];
    assert_eq!(
        sample(
            &text,
            "sloxide_spans_total",
            &[us[0], us[1], us[2], ("status_code", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_seconds_bucket",
            &[us[0], us[1], us[2], ("le", "0.008")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_seconds_bucket",
            &[us[0], us[1], us[2], ("le", "0.004")]
        ),
        Some(0.0)
    );
    let unknown = [
        ("service", "unknown_service"),
        ("region", "unknown"),
        ("span_kind", "consumer"),
    ];
    assert_eq!(
        sample(&text, "sloxide_span_duration_seconds_count", &unknown),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "sloxide_span_duration_seconds_sum", &unknown),
        Some(0.1)
    );
}

#[test]
fn dimensions_become_labels_from_the_span_then_the_resource() {
    let (agg, _) = setup("dimensions: [http.route, deployment.environment]");
    let end = T0 + 20_000 * MS;
    let mut s1 = span(2, MS, 0, end);
    s1.attributes.push(kv_str("http.route", "/a"));
    let mut s2 = span(2, MS, 0, end);
    s2.attributes
        .push(kv_str("deployment.environment", "canary"));
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            &[("service.name", "api"), ("deployment.environment", "prod")],
            vec![s1, s2],
        )],
    };
    feed(&agg, &req);
    let text = render(&agg);
    let count = |route, env| {
        sample(
            &text,
            "sloxide_span_duration_seconds_count",
            &[
                ("service", "api"),
                ("http_route", route),
                ("deployment_environment", env),
            ],
        )
    };
    assert_eq!(count("/a", "prod"), Some(1.0));
    assert_eq!(count("", "canary"), Some(1.0));
}

/// Spans whose labels come from their own attributes, interleaving over a few label sets
/// and then over more than the grouping holds (30 sets, 8 groups), more spans than it
/// holds (600, 256), some with the same label written as a string and as an integer,
/// and two routes that differ only in their middle bytes: every series, every quantile
/// series and every SLO tally matches a naive count.
#[test]
fn interleaved_label_sets_give_the_same_counts_as_a_naive_tally() {
    let (agg, _) = setup(
        "region: {attributes: [cloud.region]}\n\
         dimensions: [http.route]\n\
         slos:\n  - {name: avail, service: api, objective: 99, indicator: {availability: {}}}",
    );
    let end = T0 + 20_000 * MS;
    let regions = ["eu", "us", "ap"];
    let mut want = std::collections::BTreeMap::<(String, String, i32), u64>::new();
    let mut want_slo = std::collections::BTreeMap::<String, (u64, u64)>::new();
    let mut want_quantiles = std::collections::BTreeMap::<(String, i32), u64>::new();
    let spans: Vec<Span> = (0..600)
        .map(|i| {
            // The first 300 spans cycle over 6 label sets (so groups are reused), the
            // rest over 30 (so groups run out).
            let (kind, route) = if i < 300 {
                (2, (i / 3 % 2) as i64)
            } else {
                ([2, 3][i % 2], (i % 5) as i64)
            };
            let bad = i % 7 == 0;
            let mut s = span(kind, MS, if bad { 2 } else { 0 }, end);
            let region = regions[i % 3];
            s.attributes.push(kv_str("cloud.region", region));
            // Routes 1 and 4 arrive as integers on some spans, as strings on others;
            // routes 2 and 3 share their length and their first and last 8 bytes.
            let text = match route {
                2 => "/orders/2/lines/item".to_string(),
                3 => "/orders/3/lines/item".to_string(),
                r => r.to_string(),
            };
            s.attributes
                .push(if (route == 4 || route == 1) && i % 4 < 2 {
                    kv_int("http.route", route)
                } else {
                    kv_str("http.route", &text)
                });
            *want.entry((region.into(), text, kind)).or_default() += 1;
            *want_quantiles.entry((region.into(), kind)).or_default() += 1;
            if kind == 2 {
                let e = want_slo.entry(region.into()).or_default();
                e.0 += 1;
                e.1 += u64::from(bad);
            }
            s
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(&[("service.name", "api")], spans)],
    };
    feed(&agg, &req);
    agg.tick();
    let text = render(&agg);
    assert_eq!(want.len(), 30);
    for ((region, route, kind), n) in &want {
        let kind = if *kind == 2 { "server" } else { "client" };
        assert_eq!(
            sample(
                &text,
                "sloxide_span_duration_seconds_count",
                &[
                    ("service", "api"),
                    ("region", region),
                    ("span_kind", kind),
                    ("http_route", route)
                ],
            ),
            Some(*n as f64),
            "{region} {route} {kind}"
        );
    }
    // Each (region, kind) quantile series holds every span of its groups, once.
    let mut quantiles = std::collections::BTreeMap::<(String, i32), u64>::new();
    agg.aggregator().durations().for_each(|e| {
        let kind = if e.labels.get(2) == Some("server") {
            2
        } else {
            3
        };
        let count: u64 = e.value.saved_minutes().map(|(_, n, _)| n).sum();
        *quantiles
            .entry((e.labels.get(1).unwrap().to_string(), kind))
            .or_default() += count;
    });
    assert_eq!(quantiles, want_quantiles);
    for (region, (events, bad)) in &want_slo {
        let labels = [("slo", "avail"), ("region", region.as_str())];
        assert_eq!(
            sample(&text, "sloxide_slo_events_total", &labels),
            Some(*events as f64),
            "{region}"
        );
        assert_eq!(
            sample(&text, "sloxide_slo_bad_events_total", &labels),
            Some(*bad as f64),
            "{region}"
        );
    }
}

#[test]
fn quantiles_follow_the_last_complete_minute_within_hdr_precision() {
    let (agg, clock) = setup("");
    let end = T0 + 40_000 * MS; // inside minute T0
    let durations: Vec<u64> = (1..=1000).map(|i| i * 997 * 1_000).collect(); // 0.997 ms .. 997 ms
    let spans = durations.iter().map(|d| span(2, *d, 0, end)).collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            &[("service.name", "q"), ("cloud.region", "r")],
            spans,
        )],
    };
    clock.set(T0 + 41_000 * MS);
    feed(&agg, &req);
    agg.tick();
    let labels = |q| {
        [
            ("service", "q"),
            ("region", "r"),
            ("span_kind", "server"),
            ("quantile", q),
        ]
    };
    let text = render(&agg);
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_quantile_seconds",
            &labels("0.5")
        ),
        None,
        "the minute is not complete yet"
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_quantile_seconds_count",
            &labels("0.5")[..3]
        ),
        Some(1000.0)
    );

    clock.advance(Duration::from_secs(30)); // now in minute T0 + 1
    agg.tick();
    let text = render(&agg);
    let mut sorted = durations.clone();
    sorted.sort_unstable();
    for (q, name) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")] {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1) - 1;
        let truth = sorted[rank] as f64 / 1e9;
        let got = sample(
            &text,
            "sloxide_span_duration_quantile_seconds",
            &labels(name),
        )
        .unwrap();
        assert!(
            (got - truth).abs() <= truth * 0.01,
            "q{name}: got {got}, true {truth}"
        );
    }

    // One more minute with no span: the quantile samples disappear, sum and count stay.
    clock.advance(Duration::from_secs(60));
    agg.tick();
    let text = render(&agg);
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_quantile_seconds",
            &labels("0.5")
        ),
        None
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_quantile_seconds_count",
            &labels("0.5")[..3]
        ),
        Some(1000.0)
    );
}

#[test]
fn events_outside_the_slack_are_placed_at_arrival() {
    let (agg, clock) = setup("timing: {late_slack: 5m, max_skew: 1m}");
    clock.set(T0 + 59_000 * MS); // last second of minute T0
    // Ended 10 minutes ago: beyond late_slack, so it counts in the arrival minute.
    let late = span(2, 7 * MS, 0, T0 - 600_000 * MS);
    // Ended 2 minutes ahead: beyond max_skew, also at arrival.
    let future = span(2, 7 * MS, 0, T0 + 180_000 * MS);
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(&[("service.name", "t")], vec![late, future])],
    };
    feed(&agg, &req);
    clock.advance(Duration::from_secs(2));
    agg.tick();
    let text = render(&agg);
    let got = sample(
        &text,
        "sloxide_span_duration_quantile_seconds",
        &[("service", "t"), ("quantile", "0.5")],
    )
    .unwrap();
    assert!((got - 0.007).abs() <= 0.007 * 0.01, "{got}");
}

#[test]
fn logs_are_counted_by_severity() {
    let (agg, _) = setup("");
    let rec = |sev| LogRecord {
        time_unix_nano: T0,
        severity_number: sev,
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "deployer")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![rec(9), rec(17), rec(18), rec(0), rec(24)],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    feed_logs(&agg, &req);
    let text = render(&agg);
    let n = |sev| {
        sample(
            &text,
            "sloxide_log_records_total",
            &[
                ("service", "deployer"),
                ("region", "unknown"),
                ("severity", sev),
            ],
        )
    };
    assert_eq!(
        (n("info"), n("error"), n("unspecified"), n("fatal")),
        (Some(1.0), Some(2.0), Some(1.0), Some(1.0))
    );
}

#[test]
fn concurrent_recording_keeps_exact_totals() {
    let (agg, _) = setup("");
    let shape = Shape {
        resources: 2,
        per_resource: 50,
        services: 2,
        end_unix_nanos: T0 + 20_000 * MS,
        ..Shape::default()
    };
    let body = traces(&shape).encode_to_vec();
    let threads = 4;
    let rounds = 250;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut batch = TraceBatch::default();
                walk_traces(&body, agg.plan().trace_keys(), &mut batch).unwrap();
                for _ in 0..rounds {
                    agg.aggregator().record_traces(&batch);
                }
            });
        }
    });
    let text = render(&agg);
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("sloxide_spans_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, (threads * rounds * 100) as f64);
    let counts: f64 = text
        .lines()
        .filter(|l| l.starts_with("sloxide_span_duration_quantile_seconds_count{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(counts, (threads * rounds * 100) as f64);
}

fn total_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

#[test]
fn cardinality_limits_fold_into_overflow_series_and_keep_totals() {
    let (agg, clock) = setup(
        "dimensions: [http.route]\nlimits: {max_series: 20, max_series_per_service: 5, series_idle_expiry: 10m}",
    );
    let end = T0 + 20_000 * MS;
    let routed = |route: String| {
        let mut s = span(2, MS, 0, end);
        s.attributes.push(kv_str("http.route", &route));
        s
    };
    // One service, 12 routes: 5 get series, 7 fold into the service's overflow series.
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            &[("service.name", "busy")],
            (0..12).map(|i| routed(format!("/r{i}"))).collect(),
        )],
    };
    feed(&agg, &req);
    // 100 more services, one route each: 15 fit under max_series, 85 fold into the
    // family's overflow series, where the service is __overflow__ too.
    let many = (0..100)
        .map(|i| {
            resource_spans(
                &[("service.name", &format!("svc-{i}"))],
                vec![routed("/x".into())],
            )
        })
        .collect();
    feed(
        &agg,
        &ExportTraceServiceRequest {
            resource_spans: many,
        },
    );

    let text = render(&agg);
    assert_eq!(
        total_of(&text, "sloxide_spans_total{"),
        112.0,
        "totals stay exact"
    );
    let busy = [
        ("service", "busy"),
        ("region", "__overflow__"),
        ("span_kind", "__overflow__"),
        ("http_route", "__overflow__"),
    ];
    assert_eq!(
        sample(&text, "sloxide_span_duration_seconds_count", &busy),
        Some(7.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_spans_total",
            &[busy[0], busy[1], ("status_code", "__overflow__")]
        ),
        Some(7.0)
    );
    let all = [
        ("service", "__overflow__"),
        ("region", "__overflow__"),
        ("span_kind", "__overflow__"),
    ];
    assert_eq!(
        sample(&text, "sloxide_span_duration_seconds_count", &all),
        Some(85.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_series_overflow_total",
            &[("family", "sloxide_span_duration_seconds")]
        ),
        Some(92.0)
    );
    // 20 own series plus the two overflow series: bounded, whatever the flood.
    assert_eq!(
        sample(
            &text,
            "sloxide_series_active",
            &[("family", "sloxide_span_duration_seconds")]
        ),
        Some(22.0)
    );
    let exposed = text
        .lines()
        .filter(|l| l.starts_with("sloxide_spans_total{"))
        .count();
    assert_eq!(
        exposed,
        20 * 3 + 2,
        "three status codes per own series, one per overflow series"
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_series_active",
            &[("family", "sloxide_spans_total")]
        ),
        Some(exposed as f64)
    );

    // Everything idles past series_idle_expiry: the series leave /metrics, and a label
    // set that comes back starts again from zero with room under the limits.
    clock.advance(Duration::from_secs(11 * 60));
    agg.tick();
    let text = render(&agg);
    assert_eq!(
        sample(
            &text,
            "sloxide_series_active",
            &[("family", "sloxide_span_duration_seconds")]
        ),
        Some(0.0)
    );
    assert!(!text.contains("service=\"busy\""));
    let later = T0 + 700_000 * MS;
    let mut again = span(2, MS, 0, later);
    again.attributes.push(kv_str("http.route", "/new"));
    feed(
        &agg,
        &ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(&[("service.name", "busy")], vec![again])],
        },
    );
    let text = render(&agg);
    assert_eq!(
        sample(
            &text,
            "sloxide_span_duration_seconds_count",
            &[("service", "busy"), ("http_route", "/new")]
        ),
        Some(1.0)
    );
}

/// The whole `/metrics` page for a fixed input, as the exporter renders it.
fn golden_page() -> String {
    let (agg, clock) = setup(
        "dimensions: [http.route]\nhistogram: {buckets: [0.005, 0.05, 0.5], quantiles: [0.5, 0.99]}",
    );
    let shape = Shape {
        resources: 3,
        per_resource: 8,
        services: 2,
        error_every: 3,
        end_unix_nanos: T0 + 20_000 * MS,
        ..Shape::default()
    };
    feed(&agg, &traces(&shape));
    let mut weird = span(1, 3 * MS, 0, T0 + 20_000 * MS);
    weird
        .attributes
        .push(kv_str("http.route", "/q\"uo\\te\nnl"));
    feed(
        &agg,
        &ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(&[("service.name", "esc")], vec![weird])],
        },
    );
    feed_logs(
        &agg,
        &sloxide::fixture::logs(&Shape {
            resources: 2,
            per_resource: 3,
            end_unix_nanos: T0,
            ..Shape::default()
        }),
    );
    clock.advance(Duration::from_secs(60));
    agg.tick();
    // The tick's lock holds take unpredictable time; reset them so the page shows 0.
    agg.aggregator().take_longest_lock_hold();
    agg.render()
}

/// Scrapes and ticks report how long they held a shard lock, once: the gauge shows
/// the holds since the previous scrape.
#[test]
fn lock_holds_of_scrapes_and_ticks_are_measured_and_reset() {
    let (agg, _) = setup("");
    agg.aggregator().take_longest_lock_hold(); // the SLO engine publishes once when it starts
    feed(&agg, &traces(&Shape::default()));
    assert_eq!(
        agg.aggregator().take_longest_lock_hold(),
        Duration::ZERO,
        "ingest is not timed"
    );
    agg.tick();
    assert!(
        agg.aggregator().take_longest_lock_hold() > Duration::ZERO,
        "the tick held locks"
    );
    assert_eq!(
        agg.aggregator().take_longest_lock_hold(),
        Duration::ZERO,
        "read once"
    );
    let gauge = |page: &str| sample(page, "sloxide_series_lock_hold_max_seconds", &[]);
    assert_eq!(gauge(&render(&agg)), Some(0.0));
    let second = gauge(&render(&agg)).unwrap();
    assert!(
        second > 0.0 && second < 1.0,
        "the first scrape's holds: {second}"
    );
}

#[test]
fn exposition_matches_the_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.txt");
    let page = golden_page();
    if std::env::var("SLOXIDE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(path, &page).unwrap();
    }
    let golden = std::fs::read_to_string(path)
        .expect("tests/golden/metrics.txt (SLOXIDE_BLESS=1 writes it)");
    assert_eq!(
        page, golden,
        "rendered /metrics differs from tests/golden/metrics.txt"
    );
    assert!(
        page.contains(r#"http_route="/q\"uo\\te\nnl""#),
        "label values are escaped"
    );
}

#[test]
fn promtool_finds_no_problem_in_the_exposition() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !crate::harness::require(found, "promtool (Debian package prometheus)") {
        return;
    }
    let page = golden_page();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}
