//! How the in-process cost grows: spans/s of walk + classify + record against the
//! number of live series, the batch size, and the number of SLOs.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use sloxide::aggregate::Aggregator;
use sloxide::classify::Plan;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;

/// Sets every span's `http.route` to `route(i)` for the i-th span of the request.
fn with_routes(
    mut req: ExportTraceServiceRequest,
    route: impl Fn(usize) -> String,
) -> ExportTraceServiceRequest {
    let spans = req
        .resource_spans
        .iter_mut()
        .flat_map(|rs| rs.scope_spans.iter_mut())
        .flat_map(|ss| ss.spans.iter_mut());
    for (i, span) in spans.enumerate() {
        for kv in &mut span.attributes {
            if kv.key == "http.route" {
                kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(any_value::Value::StringValue(route(i))),
                });
            }
        }
    }
    req
}

struct Setup {
    agg: Arc<Aggregator>,
    plan: Arc<Plan>,
    bodies: Vec<Vec<u8>>,
}

fn setup(yaml: &str, bodies: Vec<Vec<u8>>) -> Setup {
    let config = Config::from_yaml(yaml, "bench.yaml").unwrap();
    let clock = Arc::new(ManualClock::new(
        Shape::default().end_unix_nanos + 1_000_000_000,
    ));
    let pipeline = Pipeline::new(&config, clock).unwrap();
    let (plan, agg) = (pipeline.plan(), pipeline.aggregator());
    // Create every series before timing.
    let mut batch = TraceBatch::default();
    for body in &bodies {
        walk_traces(body, plan.keys(), &mut batch).unwrap();
        agg.record_traces(&batch);
    }
    Setup { agg, plan, bodies }
}

fn run(c: &mut Criterion, group: &str, name: &str, spans: u64, s: &Setup) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(spans));
    let mut batch: TraceBatch<'static> = TraceBatch::default();
    let mut next = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            let body = &s.bodies[next % s.bodies.len()];
            next += 1;
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces(black_box(body), s.plan.keys(), &mut bt).unwrap();
            s.agg.record_traces(&bt);
            batch = bt.recycle();
        })
    });
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let limits = "limits: {max_series: 1000000, max_series_per_service: 1000000}\n";
    // Live series: 10 services x routes; each 1000-span request spreads over all of
    // them (10 and 1k) or touches 1000 of the 100k (requests cycle through them).
    for (label, routes_per_service, requests) in [
        ("10", 1usize, 1usize),
        ("1k", 100, 1),
        ("100k", 10_000, 100),
    ] {
        let bodies = (0..requests)
            .map(|r| {
                let req = fixture::traces(&Shape::default());
                with_routes(req, |i| {
                    format!("/r/{}", (r * 1000 + i) % routes_per_service)
                })
                .encode_to_vec()
            })
            .collect();
        let s = setup(&format!("dimensions: [http.route]\n{limits}"), bodies);
        run(c, "scaling_series", label, 1000, &s);
    }
    // Batch size: spans per request.
    for (label, resources, per_resource) in [
        ("10", 1usize, 10usize),
        ("100", 10, 10),
        ("1000", 10, 100),
        ("5000", 10, 500),
    ] {
        let shape = Shape {
            resources,
            per_resource,
            ..Shape::default()
        };
        let s = setup("", vec![fixture::traces(&shape).encode_to_vec()]);
        run(
            c,
            "scaling_batch",
            label,
            (resources * per_resource) as u64,
            &s,
        );
    }
    // SLOs: latency SLOs on the fixture's services (service-0 .. service-9), all of
    // which select the fixture's server spans.
    for count in [0usize, 10, 100] {
        let mut yaml = String::from("slos:\n");
        for i in 0..count {
            yaml.push_str(&format!(
                "  - {{name: s{i}, service: service-{}, objective: 99.9, indicator: {{latency: {{threshold: {}ms}}}}}}\n",
                i % 10,
                100 + i
            ));
        }
        if count == 0 {
            yaml = String::from("slos: []\n");
        }
        let s = setup(
            &yaml,
            vec![fixture::traces(&Shape::default()).encode_to_vec()],
        );
        run(c, "scaling_slos", &count.to_string(), 1000, &s);
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
