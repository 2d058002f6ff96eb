//! Exposition cost and scrape stalls, with 10 000 histogram series.
//!
//! - `render/10k_histogram_series`: one full `/metrics` render of the aggregation
//!   (span counters, classic histograms, quantile summaries, SLO families) into reused
//!   buffers; throughput is in sample lines, so criterion's "elem/s" is lines per
//!   second.
//! - After the criterion run, a stall measurement: one thread records 100-span
//!   requests into existing series and times each; first alone, then while a second
//!   thread renders and ticks another aggregation (a control: the same CPU load, no
//!   shared lock), then while it renders and ticks the same one. It prints the latency
//!   percentiles of the three runs,
//!   and the longest time each scrape + tick held one shard lock (the most it could
//!   have made a record call wait), as `sloxide_series_lock_hold_max_seconds` reports.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::export::render::Renderer;
use sloxide::export::text::Format;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;

/// 2500 services x 4 routes (a dimension) = 10 000 span histogram series, 2500
/// quantile series.
fn loaded() -> (Arc<Pipeline>, Config) {
    let config = Config::from_yaml("dimensions: [http.route]", "bench.yaml").unwrap();
    let shape = Shape {
        resources: 2500,
        per_resource: 4,
        services: 2500,
        ..Shape::default()
    };
    let clock = Arc::new(ManualClock::new(shape.end_unix_nanos + 1_000_000_000));
    let pipeline = Arc::new(Pipeline::new(&config, clock.clone()).unwrap());
    let body = fixture::traces(&shape).encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, pipeline.plan().trace_keys(), &mut batch).unwrap();
    pipeline.aggregator().record_traces(&batch);
    // Complete the minute so that every quantile series has quantiles to render.
    clock.advance(Duration::from_secs(60));
    pipeline.tick();
    (pipeline, config)
}

fn render(c: &mut Criterion) {
    let (p, config) = loaded();
    let mut out = String::new();
    let mut renderer = Renderer::new(Arc::new(config.clone()));
    renderer.render(
        &p.aggregator(),
        &p.telemetry,
        &p.state,
        &mut out,
        Format::Text,
    );
    let lines = out.lines().filter(|l| !l.starts_with('#')).count() as u64;
    eprintln!("render: {lines} sample lines, {} bytes", out.len());
    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(lines));
    g.bench_function("10k_histogram_series", |b| {
        b.iter(|| {
            renderer.render(
                &p.aggregator(),
                &p.telemetry,
                &p.state,
                &mut out,
                Format::Text,
            );
            black_box(out.len());
        })
    });
    g.finish();
    stalls();
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let over = v.iter().filter(|d| **d > Duration::from_millis(1)).count();
    format!(
        "n={} p50={:?} p99={:?} p99.9={:?} max={:?} over_1ms={over}",
        v.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        v[v.len() - 1]
    )
}

/// What runs beside the recording thread.
#[derive(Clone, Copy, PartialEq)]
enum Neighbour {
    /// Nothing.
    None,
    /// Scrapes and ticks of another aggregation, sharing no lock with the recorder: the
    /// same CPU and memory load, so whatever it adds to the record calls is scheduling
    /// and cache, not lock waits.
    OtherAggregation,
    /// Scrapes and ticks of the aggregation being recorded into.
    SameAggregation,
}

/// Times 100-span record calls for `secs` beside `neighbour`; returns the latencies and
/// the neighbour's longest lock hold per scrape + tick.
fn record_latencies(neighbour: Neighbour, secs: u64) -> (Vec<Duration>, Vec<Duration>) {
    let (p, config) = loaded();
    let scraped = match neighbour {
        Neighbour::OtherAggregation => loaded().0,
        _ => p.clone(),
    };
    let agg = p.aggregator();
    // 100 spans over 25 of the services: their series exist already.
    let small = Shape {
        resources: 25,
        per_resource: 4,
        services: 2500,
        ..Shape::default()
    };
    let body = fixture::traces(&small).encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, p.plan().trace_keys(), &mut batch).unwrap();
    let stop = AtomicBool::new(false);
    let mut holds = Vec::new();
    let mut latencies = Vec::new();
    std::thread::scope(|s| {
        let scraper = (neighbour != Neighbour::None).then(|| {
            s.spawn(|| {
                let mut out = String::new();
                let mut renderer = Renderer::new(Arc::new(config.clone()));
                let mut holds = Vec::new();
                let state = scraped.state.clone();
                let scraped = scraped.aggregator();
                scraped.take_longest_lock_hold();
                while !stop.load(Ordering::Relaxed) {
                    renderer.render(&scraped, &p.telemetry, &state, &mut out, Format::Text);
                    scraped.tick();
                    holds.push(scraped.take_longest_lock_hold());
                }
                holds
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
            holds = h.join().unwrap();
        }
    });
    (latencies, holds)
}

fn stalls() {
    let (alone, _) = record_latencies(Neighbour::None, 3);
    let (beside, _) = record_latencies(Neighbour::OtherAggregation, 3);
    let (scraped, holds) = record_latencies(Neighbour::SameAggregation, 3);
    let scrapes = holds.len();
    eprintln!(
        "stall: 100-span record calls, alone:                         {}",
        percentiles(alone)
    );
    eprintln!(
        "stall: 100-span record calls, beside another aggregation's scrapes: {}",
        percentiles(beside)
    );
    eprintln!(
        "stall: 100-span record calls, while scraping the same one:   {} ({scrapes} scrapes + ticks)",
        percentiles(scraped)
    );
    eprintln!(
        "stall: longest shard lock hold per scrape + tick: {}",
        percentiles(holds)
    );
}

criterion_group!(benches, render);
criterion_main!(benches);
