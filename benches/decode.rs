//! Decoding cost: the zero-copy walker against prost decoding into
//! `opentelemetry-proto` structs, on the realistic fixture (10 resources x 100 spans,
//! 8 attributes per span), in the same run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use sloxide::fixture::{self, Shape};
use sloxide::otlp::AttrKeys;
use sloxide::otlp::logs::{LogBatch, walk_logs};
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use std::hint::black_box;

fn decode(c: &mut Criterion) {
    let shape = Shape::default();
    let traces = fixture::traces(&shape).encode_to_vec();
    let logs = fixture::logs(&shape).encode_to_vec();
    let records = (shape.resources * shape.per_resource) as u64;
    let keys = AttrKeys::new(["cloud.region", "http.route", "http.response.status_code"]);

    let mut g = c.benchmark_group("decode_traces");
    g.throughput(Throughput::Elements(records));
    let mut batch: TraceBatch<'static> = TraceBatch::default();
    g.bench_function("walker", |b| {
        b.iter(|| {
            let mut bt: TraceBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_traces(black_box(&traces), &keys, &mut bt).unwrap();
            black_box(bt.events.len());
            batch = bt.recycle();
        })
    });
    g.bench_function("prost_baseline", |b| {
        b.iter(|| black_box(ExportTraceServiceRequest::decode(black_box(&traces[..])).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("decode_logs");
    g.throughput(Throughput::Elements(records));
    let mut batch: LogBatch<'static> = LogBatch::default();
    g.bench_function("walker", |b| {
        b.iter(|| {
            let mut bt: LogBatch<'_> = std::mem::take(&mut batch).recycle();
            walk_logs(black_box(&logs), &keys, &mut bt).unwrap();
            black_box(bt.events.len());
            batch = bt.recycle();
        })
    });
    g.bench_function("prost_baseline", |b| {
        b.iter(|| black_box(ExportLogsServiceRequest::decode(black_box(&logs[..])).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
