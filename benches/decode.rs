//! Decoding cost: the zero-copy walker against prost decoding into
//! `opentelemetry-proto` structs, on the realistic fixture (10 resources x 100 spans,
//! 8 attributes per span), in the same run; and inflating the production-like trace
//! request (`fixture::mixed_traces`) from each compression sloxide accepts, as
//! `ingest::decompress` does it for every compressed body.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use sloxide::fixture::Mix;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::{Format, decompress};
use sloxide::otlp::AttrKeys;
use sloxide::otlp::logs::{LogBatch, walk_logs};
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use std::hint::black_box;
use std::io::Write;

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

/// The mixed request compressed as a Collector or SDK sends it: gzip and zlib at their
/// default level (6), zstd at level 3 (one frame that states its size, as a one-shot
/// compression writes it; and one streamed as a Collector writes it, with no size and a
/// 4 MiB window), and a raw snappy block.
fn inflate(c: &mut Criterion) {
    let mix = Mix::default();
    let body = fixture::mixed_traces(&mix).encode_to_vec();
    let level = flate2::Compression::default();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), level);
    gzip.write_all(&body).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), level);
    zlib.write_all(&body).unwrap();
    let mut streamed = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    streamed.include_contentsize(false).unwrap();
    streamed.window_log(22).unwrap();
    streamed.write_all(&body).unwrap();
    let cases = [
        (Format::Gzip, "gzip", gzip.finish().unwrap()),
        (Format::Zlib, "zlib", zlib.finish().unwrap()),
        (
            Format::Zstd,
            "zstd",
            zstd::bulk::compress(&body, 3).unwrap(),
        ),
        (Format::Zstd, "zstd_unsized", streamed.finish().unwrap()),
        (
            Format::Snappy,
            "snappy",
            snap::raw::Encoder::new().compress_vec(&body).unwrap(),
        ),
    ];
    let mut g = c.benchmark_group("inflate_mixed_traces");
    g.throughput(Throughput::Elements(mix.records as u64));
    let mut out = Vec::with_capacity(body.len());
    for (format, name, compressed) in &cases {
        eprintln!(
            "inflate {name}: {} bytes to {} ({:.1}:1)",
            compressed.len(),
            body.len(),
            body.len() as f64 / compressed.len() as f64
        );
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                decompress(*format, black_box(compressed), 64 << 20, &mut out).unwrap();
                assert_eq!(out.len(), body.len());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, inflate);
criterion_main!(benches);
