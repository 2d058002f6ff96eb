//! The ingest pipeline in process: walk, classify and record a realistic request,
//! against a baseline that decodes with prost and records into a
//! `Mutex<HashMap<String, _>>`, and against the floor (a walk that only steps over the
//! span messages), all in the same run.
//!
//! The `pipeline` group: one fixture request, always hot in cache. The `mixed` group:
//! production-like traffic (see [`mixed`]), with the whole `Ingest::export` too.
//!
//! Fixture: 10 resources x 100 spans, 8 attributes per span, about 380 bytes per span.
//! Configuration: config/example.yaml (region from cloud.region, http.route as a
//! dimension, five SLOs, two of them on services of the fixture).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::{self, Mix, Shape};
use sloxide::ingest::Encoding;
use sloxide::ingest::Recorder;
use sloxide::otlp::logs::{LogBatch, walk_logs};
use sloxide::otlp::spans::{TraceBatch, walk_traces, walk_traces_pieces};
use sloxide::otlp::wire::Reader;
use sloxide::pipeline::Pipeline;
use sloxide::telemetry::{Signal, Transport};

#[path = "common/mixed.rs"]
mod common;

/// What the baseline keeps per series.
#[derive(Default)]
struct Naive {
    count: u64,
    errors: u64,
    sum_nanos: u128,
    buckets: [u64; 15],
}

const BOUNDS_NANOS: [u64; 14] = [
    2_000_000,
    4_000_000,
    8_000_000,
    16_000_000,
    32_000_000,
    64_000_000,
    128_000_000,
    256_000_000,
    512_000_000,
    1_024_000_000,
    2_048_000_000,
    4_096_000_000,
    8_192_000_000,
    16_384_000_000,
];

fn string_attr<'a>(
    attrs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> &'a str {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// The baseline: prost structs, a string key per span, a global mutex.
fn baseline(body: &[u8], map: &Mutex<HashMap<String, Naive>>) -> usize {
    let req = ExportTraceServiceRequest::decode(body).unwrap();
    let mut n = 0;
    for rs in &req.resource_spans {
        let attrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service = string_attr(attrs, "service.name");
        let region = string_attr(attrs, "cloud.region");
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            let key = format!("{service}|{region}|{}", span.kind);
            let d = span.end_time_unix_nano - span.start_time_unix_nano;
            let mut map = map.lock().unwrap();
            let s = map.entry(key).or_default();
            s.count += 1;
            s.errors += u64::from(span.status.as_ref().is_some_and(|s| s.code == 2));
            s.sum_nanos += u128::from(d);
            s.buckets[BOUNDS_NANOS.partition_point(|b| *b < d)] += 1;
            n += 1;
        }
    }
    n
}

/// The floor: steps over resource, scope and span messages without reading a span.
fn floor(body: &[u8]) -> usize {
    let mut spans = 0;
    let mut top = Reader::new(body);
    while let Some((f, w)) = top.tag().unwrap() {
        if f != 1 {
            top.skip(f, w).unwrap();
            continue;
        }
        let mut rs = Reader::new(top.bytes().unwrap());
        while let Some((f, w)) = rs.tag().unwrap() {
            if f != 2 {
                rs.skip(f, w).unwrap();
                continue;
            }
            let mut ss = Reader::new(rs.bytes().unwrap());
            while let Some((f, w)) = ss.tag().unwrap() {
                if f == 2 {
                    black_box(ss.bytes().unwrap());
                    spans += 1;
                } else {
                    ss.skip(f, w).unwrap();
                }
            }
        }
    }
    spans
}

fn pipeline(c: &mut Criterion) {
    // Ten services, two of which have the SLOs of config/example.yaml (checkout's
    // latency and availability on /api/checkout, api-gateway's on /api/cart).
    let shape = Shape {
        service_names: [
            "checkout",
            "api-gateway",
            "cart",
            "search",
            "catalog",
            "payments",
            "shipping",
            "users",
            "reviews",
            "ads",
        ]
        .map(String::from)
        .to_vec(),
        ..Shape::default()
    };
    let body = fixture::traces(&shape).encode_to_vec();
    let spans = (shape.resources * shape.per_resource) as u64;
    eprintln!(
        "fixture: {} spans, {} bytes, {} bytes per span",
        spans,
        body.len(),
        body.len() as u64 / spans
    );
    let config = Config::from_yaml(include_str!("../config/example.yaml"), "example.yaml")
        .expect("config/example.yaml is valid");
    let clock = Arc::new(ManualClock::new(shape.end_unix_nanos + 1_000_000_000));
    let pipeline = Pipeline::new(&config, clock).expect("config/example.yaml compiles");
    let (plan, aggregator) = (&pipeline.plan(), &pipeline.aggregator());

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(spans));
    let mut batch: TraceBatch<'static> = TraceBatch::default();
    g.bench_function("sloxide_walk_classify_record", |b| {
        b.iter(|| {
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces(black_box(&body), plan.trace_keys(), &mut bt).unwrap();
            aggregator.record_traces(&bt);
            batch = bt.recycle();
        })
    });
    // The two halves of sloxide's path, for the breakdown in docs/benchmarks.md.
    g.bench_function("sloxide_walk_only", |b| {
        b.iter(|| {
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces(black_box(&body), plan.trace_keys(), &mut bt).unwrap();
            black_box(bt.events.len());
            batch = bt.recycle();
        })
    });
    let mut walked = TraceBatch::default();
    walk_traces(&body, plan.trace_keys(), &mut walked).unwrap();
    g.bench_function("sloxide_record_only", |b| {
        b.iter(|| aggregator.record_traces(black_box(&walked)))
    });
    let map = Mutex::new(HashMap::new());
    g.bench_function("prost_decode_mutex_hashmap_baseline", |b| {
        b.iter(|| black_box(baseline(black_box(&body), &map)))
    });
    g.bench_function("floor_step_over_spans", |b| {
        b.iter(|| black_box(floor(black_box(&body))))
    });
    g.finish();
}

/// The same stages on production-like traffic ([`fixture::Mix`]): 16 distinct requests
/// of 1000 records from 25 resources each, 60 services in 6 regions, five span kinds,
/// varied routes and status codes, most attributes unknown to sloxide. Each iteration
/// takes the next request, so the series and the bodies are not all hot in cache.
fn mixed(c: &mut Criterion) {
    sloxide::memory::configure();
    sloxide::memory::one_heap();
    let mix = Mix::default();
    let traces = common::bodies(fixture::mixed_traces);
    let logs = common::bodies(fixture::mixed_logs);
    let bytes: usize = traces.iter().map(Vec::len).sum();
    eprintln!(
        "mixed: {} trace requests of {} spans, {} bytes per span; {} bytes per log record",
        traces.len(),
        mix.records,
        bytes / traces.len() / mix.records,
        logs.iter().map(Vec::len).sum::<usize>() / logs.len() / mix.records,
    );
    // Every series exists before measuring, and the heap is on huge pages.
    let (pipeline, huge) = common::warmed(&traces);
    let (plan, aggregator, ingest) = (&pipeline.plan(), &pipeline.aggregator(), &pipeline.ingest);
    eprintln!(
        "mixed: {} MiB of the heap collapsed into huge pages",
        huge >> 20
    );
    let next = |i: &mut usize| {
        *i = (*i + 1) % traces.len();
        *i
    };

    let mut g = c.benchmark_group("mixed");
    g.throughput(Throughput::Elements(mix.records as u64));
    let mut i = 0;
    g.bench_function("ingest_export_traces", |b| {
        b.iter(|| {
            let body = &traces[next(&mut i)];
            black_box(
                ingest
                    .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, body)
                    .unwrap(),
            )
        })
    });
    let mut batch: TraceBatch<'static> = TraceBatch::default();
    g.bench_function("walk_record_traces", |b| {
        b.iter(|| {
            let body = &traces[next(&mut i)];
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces(black_box(body), plan.trace_keys(), &mut bt).unwrap();
            aggregator.record_traces(&bt);
            batch = bt.recycle();
        })
    });
    g.bench_function("walk_traces", |b| {
        b.iter(|| {
            let body = &traces[next(&mut i)];
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces(black_box(body), plan.trace_keys(), &mut bt).unwrap();
            black_box(bt.events.len());
            batch = bt.recycle();
        })
    });
    // The same bodies as a gRPC transport hands them over: behind the 5-byte message
    // prefix, in three frames (tonic's client sends a 400 KB message in about three).
    let framed: Vec<Vec<bytes::Bytes>> = traces
        .iter()
        .map(|body| {
            let mut whole = vec![0u8; 5];
            whole.extend_from_slice(body);
            let third = whole.len() / 3;
            vec![
                bytes::Bytes::copy_from_slice(&whole[..third]),
                bytes::Bytes::copy_from_slice(&whole[third..2 * third]),
                bytes::Bytes::copy_from_slice(&whole[2 * third..]),
            ]
        })
        .collect();
    let mut joined = Vec::new();
    g.bench_function("walk_traces_in_3_frames", |b| {
        b.iter(|| {
            let frames = &framed[next(&mut i)];
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces_pieces(
                black_box(frames),
                5,
                &mut joined,
                plan.trace_keys(),
                &mut bt,
            )
            .unwrap();
            black_box(bt.events.len());
            batch = bt.recycle();
        })
    });
    let walked: Vec<TraceBatch<'_>> = traces
        .iter()
        .map(|body| {
            let mut bt = TraceBatch::default();
            walk_traces(body, plan.trace_keys(), &mut bt).unwrap();
            bt
        })
        .collect();
    g.bench_function("record_traces", |b| {
        b.iter(|| aggregator.record_traces(black_box(&walked[next(&mut i)])))
    });
    g.bench_function("floor_step_over_spans", |b| {
        b.iter(|| black_box(floor(black_box(&traces[next(&mut i)]))))
    });
    let map = Mutex::new(HashMap::new());
    g.bench_function("prost_decode_mutex_hashmap_baseline", |b| {
        b.iter(|| black_box(baseline(black_box(&traces[next(&mut i)]), &map)))
    });
    let mut log_batch: LogBatch<'static> = LogBatch::default();
    g.bench_function("walk_logs", |b| {
        b.iter(|| {
            let body = &logs[next(&mut i)];
            let mut bt: LogBatch<'_> = std::mem::take(&mut log_batch).recycle();
            walk_logs(black_box(body), plan.keys(), &mut bt).unwrap();
            black_box(bt.events.len());
            log_batch = bt.recycle();
        })
    });
    g.bench_function("ingest_export_logs", |b| {
        b.iter(|| {
            let body = &logs[next(&mut i)];
            black_box(
                ingest
                    .export(Transport::Grpc, Signal::Logs, Encoding::Protobuf, body)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline, mixed);
criterion_main!(benches);
