//! Exposition cost and scrape stalls, with 10 000 histogram series.
//!
//! - `render/10k_histogram_series`: one full `/metrics` render of the aggregation
//!   (span counters, classic histograms, quantile summaries, SLO families) into reused
//!   buffers; throughput is in sample lines, so criterion's "elem/s" is lines per
//!   second.
//! - After the criterion run, a stall measurement: one thread records 100-span
//!   requests into existing series and times each; first alone, then while a second
//!   thread renders and ticks in a loop. It prints the latency percentiles of both runs.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use sloxide::aggregate::Aggregator;
use sloxide::aggregate::render::Scratch;
use sloxide::classify::Plan;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::export::text::Encoder;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};

/// 2500 services x 4 routes (a dimension) = 10 000 span histogram series, 2500
/// quantile series.
fn loaded() -> (Arc<Aggregator>, Arc<Plan>, Shape) {
    let config = Config::from_yaml("dimensions: [http.route]", "bench.yaml").unwrap();
    let plan = Arc::new(Plan::compile(&config));
    let shape = Shape {
        resources: 2500,
        per_resource: 4,
        services: 2500,
        ..Shape::default()
    };
    let clock = Arc::new(ManualClock::new(shape.end_unix_nanos + 1_000_000_000));
    let agg = Arc::new(Aggregator::new(&config, plan.clone(), clock.clone()));
    let body = fixture::traces(&shape).encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, plan.keys(), &mut batch).unwrap();
    agg.record_traces(&batch);
    // Complete the minute so that every quantile series has quantiles to render.
    clock.advance(Duration::from_secs(60));
    agg.tick();
    (agg, plan, shape)
}

fn render(c: &mut Criterion) {
    let (agg, _, _) = loaded();
    let mut out = String::new();
    let mut scratch = Scratch::default();
    agg.render(&mut Encoder::new(&mut out), &mut scratch);
    let lines = out.lines().filter(|l| !l.starts_with('#')).count() as u64;
    eprintln!("render: {lines} sample lines, {} bytes", out.len());
    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(lines));
    g.bench_function("10k_histogram_series", |b| {
        b.iter(|| {
            out.clear();
            agg.render(&mut Encoder::new(&mut out), &mut scratch);
            black_box(out.len());
        })
    });
    g.finish();
    stalls();
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    format!(
        "n={} p50={:?} p99={:?} p99.9={:?} max={:?}",
        v.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        v[v.len() - 1]
    )
}

/// Times 100-span record calls for `secs`, with or without a concurrent scraper.
fn record_latencies(scrape: bool, secs: u64) -> (Vec<Duration>, u64) {
    let (agg, plan, _) = loaded();
    // 100 spans over 25 of the services: their series exist already.
    let small = Shape {
        resources: 25,
        per_resource: 4,
        services: 2500,
        ..Shape::default()
    };
    let body = fixture::traces(&small).encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, plan.keys(), &mut batch).unwrap();
    let stop = AtomicBool::new(false);
    let mut scrapes = 0;
    let mut latencies = Vec::new();
    std::thread::scope(|s| {
        let scraper = scrape.then(|| {
            s.spawn(|| {
                let mut out = String::new();
                let mut scratch = Scratch::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    out.clear();
                    agg.render(&mut Encoder::new(&mut out), &mut scratch);
                    agg.tick();
                    n += 1;
                }
                n
            })
        });
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            let t = Instant::now();
            agg.record_traces(black_box(&batch));
            latencies.push(t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = scraper {
            scrapes = h.join().unwrap();
        }
    });
    (latencies, scrapes)
}

fn stalls() {
    let (alone, _) = record_latencies(false, 3);
    let (scraped, scrapes) = record_latencies(true, 3);
    eprintln!(
        "stall: 100-span record calls, alone:          {}",
        percentiles(alone)
    );
    eprintln!(
        "stall: 100-span record calls, while scraping: {} ({scrapes} scrapes + ticks)",
        percentiles(scraped)
    );
}

criterion_group!(benches, render);
criterion_main!(benches);
