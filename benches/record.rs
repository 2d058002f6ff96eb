//! Contention in the record stage: 1, 2 and 4 threads recording pre-walked 1000-span
//! batches, into the same series or into distinct ones, with the shared sharded state
//! against per-thread state (one `Aggregator` per thread, never merged: the most a
//! per-worker design could gain, since its merge at tick is not counted).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use sloxide::aggregate::Aggregator;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;

const BATCHES_PER_THREAD: usize = 40;

fn aggregator(config: &Config, now: u64) -> Arc<Aggregator> {
    Pipeline::new(config, Arc::new(ManualClock::new(now)))
        .unwrap()
        .aggregator()
}

fn record(c: &mut Criterion) {
    let config = Config::embedded_default();
    let plan = aggregator(&config, 0).plan().clone();
    let shape = Shape::default();
    let now = shape.end_unix_nanos + 1_000_000_000;
    // One body per thread: the same services for "same", thread-specific ones for
    // "distinct" (service-0..9 are renamed t<i>-service-0..9).
    let bodies: Vec<(Vec<u8>, Vec<u8>)> = (0..4)
        .map(|t| {
            let same = fixture::traces(&shape).encode_to_vec();
            let mut req = fixture::traces(&shape);
            for rs in &mut req.resource_spans {
                if let Some(r) = rs.resource.as_mut() {
                    for kv in &mut r.attributes {
                        if kv.key == "service.name"
                            && let Some(v) = kv.value.as_mut().and_then(|v| v.value.as_mut())
                        {
                            *v = any_value::Value::StringValue(format!("t{t}-svc"));
                        }
                    }
                }
            }
            (same, req.encode_to_vec())
        })
        .collect();

    let mut g = c.benchmark_group("record");
    for threads in [1usize, 2, 4] {
        g.throughput(Throughput::Elements(
            (threads * BATCHES_PER_THREAD * 1000) as u64,
        ));
        for (series, distinct) in [("same_series", false), ("distinct_series", true)] {
            for (state, shared) in [("sharded", true), ("per_thread", false)] {
                let id = format!("{state}/{series}/{threads}_threads");
                g.bench_function(id, |b| {
                    let shared_agg = aggregator(&config, now);
                    let own: Vec<Arc<Aggregator>> =
                        (0..threads).map(|_| aggregator(&config, now)).collect();
                    b.iter(|| {
                        std::thread::scope(|s| {
                            for t in 0..threads {
                                let body = if distinct { &bodies[t].1 } else { &bodies[t].0 };
                                let agg = if shared { &shared_agg } else { &own[t] };
                                let plan = &plan;
                                s.spawn(move || {
                                    let mut batch = TraceBatch::default();
                                    walk_traces(body, plan.trace_keys(), &mut batch).unwrap();
                                    for _ in 0..BATCHES_PER_THREAD {
                                        agg.record_traces(black_box(&batch));
                                    }
                                });
                            }
                        });
                    });
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
