//! What a checkpoint costs at 100k span series and 10k (SLO, region) series: the
//! periodic one (SLO windows), the one written at shutdown (everything), and the
//! restore of each; plus the file size per series and the longest shard-lock hold.
//!
//! ```sh
//! cargo bench --bench checkpoint
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;
use sloxide::state::file;
use sloxide::state::proto::Checkpoint;
use sloxide::state::snapshot::Scope;

const NOW: u64 = 1_700_000_000_000_000_000;

/// 10 availability SLOs on services slo-0 .. slo-9, a route dimension.
fn config() -> Config {
    let mut yaml = String::from("dimensions: [http.route]\nlimits: {max_series: 1000000}\nslos:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  - {{name: slo-{i}, service: slo-{i}, objective: 99.9, indicator: {{availability: {{}}}}}}\n"
        ));
    }
    Config::from_yaml(&yaml, "bench.yaml").unwrap()
}

fn record(pipeline: &Pipeline, shape: &Shape, batch: &mut TraceBatch<'static>) {
    let body = fixture::traces(shape).encode_to_vec();
    let mut bt: TraceBatch<'_> = std::mem::take(batch).recycle();
    walk_traces(&body, pipeline.plan().trace_keys(), &mut bt).unwrap();
    pipeline.aggregator().record_traces(&bt);
    *batch = bt.recycle();
}

/// 100 000 span series (2 500 services x 10 regions x 4 routes) and 10 010 (SLO, region)
/// series (10 SLOs x 1 001 regions), with events spread over the last 30 days so that
/// the rings hold many slots, as a long-running daemon's do.
fn loaded() -> (Pipeline, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NOW - 30 * 86_400 * 1_000_000_000));
    let pipeline = Pipeline::new(&config(), clock.clone()).unwrap();
    let mut batch = TraceBatch::default();
    let regions = |n: usize| (0..n).map(|r| format!("region-{r}")).collect::<Vec<_>>();
    // The SLO series: a day's worth of slots over 30 days, every 6 hours.
    for step in 0..120u64 {
        let at = NOW - (120 - step) * 6 * 3_600 * 1_000_000_000;
        clock.set(at);
        record(
            &pipeline,
            &Shape {
                resources: 10_010,
                per_resource: 1,
                services: 10,
                service_names: (0..10).map(|i| format!("slo-{i}")).collect(),
                regions: regions(1_001),
                error_every: 13,
                end_unix_nanos: at,
            },
            &mut batch,
        );
    }
    clock.set(NOW);
    for region in regions(10) {
        record(
            &pipeline,
            &Shape {
                resources: 2_500,
                per_resource: 4,
                services: 2_500,
                service_names: (0..2_500).map(|i| format!("svc-{i}")).collect(),
                regions: vec![region],
                error_every: 7,
                end_unix_nanos: NOW,
            },
            &mut batch,
        );
    }
    pipeline.tick();
    (pipeline, clock)
}

fn checkpoint(c: &mut Criterion) {
    let (pipeline, clock) = loaded();
    let windows = pipeline.checkpoint(Scope::Windows, false);
    let everything = pipeline.checkpoint(Scope::Everything, true);
    let (spans, slos) = (everything.spans.len(), everything.slos.len());
    eprintln!(
        "checkpoint: {spans} span series, {} quantile series, {slos} (SLO, region) series",
        everything.quantiles.len()
    );
    let windows_bytes = file::encode(&windows).len();
    let everything_bytes = file::encode(&everything).len();
    eprintln!(
        "checkpoint: periodic file {windows_bytes} bytes ({} per (SLO, region)); shutdown file {everything_bytes} bytes ({} per series of any family)",
        windows_bytes / slos.max(1),
        everything_bytes / (spans + everything.quantiles.len() + slos).max(1)
    );
    // The longest shard-lock hold of a periodic checkpoint, against a scrape's.
    let agg = pipeline.aggregator();
    let mut holds = Vec::new();
    for _ in 0..10 {
        agg.take_longest_lock_hold();
        black_box(pipeline.checkpoint(Scope::Windows, false));
        holds.push(agg.take_longest_lock_hold());
    }
    let mut scrape_holds = Vec::new();
    for _ in 0..10 {
        agg.take_longest_lock_hold();
        black_box(pipeline.render());
        scrape_holds.push(agg.take_longest_lock_hold());
    }
    holds.sort();
    scrape_holds.sort();
    eprintln!(
        "checkpoint: longest shard-lock hold per periodic checkpoint: median {:?}, max {:?}; per scrape: median {:?}, max {:?}",
        holds[holds.len() / 2],
        holds[holds.len() - 1],
        scrape_holds[scrape_holds.len() / 2],
        scrape_holds[scrape_holds.len() - 1]
    );
    // CPU of a whole periodic checkpoint, snapshot and encoding, on this thread.
    let cpu = |f: &mut dyn FnMut()| {
        let start = thread_cpu();
        let wall = Instant::now();
        f();
        (thread_cpu() - start, wall.elapsed())
    };
    let (c1, w1) = cpu(&mut || {
        black_box(file::encode(&pipeline.checkpoint(Scope::Windows, false)));
    });
    let (c2, w2) = cpu(&mut || {
        black_box(file::encode(&pipeline.checkpoint(Scope::Everything, true)));
    });
    eprintln!(
        "checkpoint: one periodic checkpoint {c1:?} CPU ({w1:?} wall); one shutdown checkpoint {c2:?} CPU ({w2:?} wall)"
    );

    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    g.bench_function("periodic_snapshot_and_encode", |b| {
        b.iter(|| black_box(file::encode(&pipeline.checkpoint(Scope::Windows, false))))
    });
    g.bench_function("shutdown_snapshot_and_encode", |b| {
        b.iter(|| black_box(file::encode(&pipeline.checkpoint(Scope::Everything, true))))
    });
    let windows_file = file::encode(&windows);
    let everything_file = file::encode(&everything);
    g.bench_function("restore_after_crash_decode_and_restore", |b| {
        b.iter_with_large_drop(|| {
            let fresh = Pipeline::new(&config(), clock.clone()).unwrap();
            let checkpoint: Checkpoint = file::decode(&windows_file).unwrap();
            fresh.restore(
                &checkpoint,
                checkpoint.header.as_ref().is_some_and(|h| h.clean_shutdown),
            );
            fresh
        })
    });
    g.bench_function("restore_after_shutdown_decode_and_restore", |b| {
        b.iter_with_large_drop(|| {
            let fresh = Pipeline::new(&config(), clock.clone()).unwrap();
            let checkpoint: Checkpoint = file::decode(&everything_file).unwrap();
            fresh.restore(
                &checkpoint,
                checkpoint.header.as_ref().is_some_and(|h| h.clean_shutdown),
            );
            fresh
        })
    });
    g.finish();
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
