//! The SLO tick at 500 SLOs x 10 regions (5 000 (SLO, region) series of a 30d SLO,
//! each with events spread over the whole period).
//!
//! - `status/tick_500x10`: one `SloEngine::tick`: advance every ring, sum every
//!   window (and hand the period window's slots to the burn-down history), roll the
//!   regions up, derive, publish the snapshot.
//! - `status/list_500x10`: one render of `GET /` (5 500 rows: 500 roll-ups, each with
//!   its 10 regions folded under it). Its size is printed, raw and gzipped.
//! - `status/list_500x10_gzip`: gzipping that page at the fastest level, as the
//!   handler does for a client that accepts gzip (every browser).
//! - `status/detail_10_regions`: one render of `GET /slo/slo-0` (burn-down, tiers,
//!   windows, 10 regions, and its service's latency in 10 regions).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::export::status::{self, ListQuery, Page};
use sloxide::fixture::{self, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;

const SLOS: usize = 500;
const REGIONS: usize = 10;
const NOW_SECS: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

/// 500 availability SLOs of 99.9% over 30d, one per service.
fn config() -> Config {
    let mut yaml = String::from("slos:\n");
    for i in 0..SLOS {
        yaml.push_str(&format!(
            "  - name: slo-{i}\n    service: svc-{i}\n    description: SLO number {i}\n    objective: 99.9\n    indicator: {{availability: {{}}}}\n"
        ));
    }
    Config::from_yaml(&yaml, "bench.yaml").unwrap()
}

/// A pipeline whose every (SLO, region) holds events every 6 hours of the last 30 days
/// and every minute of the last hour, about 1 in 500 bad, and whose first service has
/// spans in every region in the last minute; ticked once.
fn loaded() -> Arc<Pipeline> {
    let clock = Arc::new(ManualClock::new((NOW_SECS - 60) * 1_000_000_000));
    let pipeline = Arc::new(Pipeline::new(&config(), clock.clone()).unwrap());
    let agg = pipeline.aggregator();
    let slos = agg.slos();
    let regions: Vec<String> = (0..REGIONS).map(|r| format!("region-{r}")).collect();
    let spans = Shape {
        resources: REGIONS,
        per_resource: 200,
        services: 1,
        service_names: vec!["svc-0".into()],
        regions: regions.clone(),
        end_unix_nanos: (NOW_SECS - 60) * 1_000_000_000,
        ..Shape::default()
    };
    let body = fixture::traces(&spans).encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, pipeline.plan().trace_keys(), &mut batch).unwrap();
    agg.record_traces(&batch);
    clock.set(NOW_SECS * 1_000_000_000);
    for slo in 0..SLOS {
        for (r, region) in regions.iter().enumerate() {
            let mut k = (slo * 31 + r * 7) as u64;
            let mut event = |t: u64, total: u64| {
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let bad = u64::from((k >> 33).is_multiple_of(500)) * (1 + (k >> 40) % 3);
                slos.record(slo, region, t, total, bad, NOW_SECS);
            };
            for h in (0..30 * DAY).step_by(6 * 3_600) {
                event(NOW_SECS - 30 * DAY + h, 1_000);
            }
            for m in 0..60 {
                event(NOW_SECS - 3_600 + m * 60, 100);
            }
        }
    }
    pipeline.tick();
    pipeline
}

fn status(c: &mut Criterion) {
    let pipeline = loaded();
    let agg = pipeline.aggregator();
    let now = NOW_SECS * 1_000_000_000;
    eprintln!(
        "status: {} SLOs, {} (SLO, region) series",
        agg.slos().definitions().len(),
        agg.slos().len()
    );
    let mut g = c.benchmark_group("status");
    g.bench_function("tick_500x10", |b| {
        b.iter(|| {
            agg.slos().tick(black_box(now));
        })
    });
    let config = pipeline.config();
    let mut out = String::new();
    let list = Page::List(ListQuery::default());
    status::render(&config, &agg, &list, &mut out);
    let gzipped = status::compress(out.as_bytes()).len();
    // To load it in a browser: SLOXIDE_STATUS_PAGE=/tmp/list.html.
    if let Some(path) = std::env::var_os("SLOXIDE_STATUS_PAGE") {
        std::fs::write(path, &out).unwrap();
    }
    eprintln!(
        "status: list page {} bytes ({} gzipped), {} rows",
        out.len(),
        gzipped,
        out.matches(" data-slo=\"").count()
    );
    g.bench_function("list_500x10", |b| {
        b.iter(|| {
            status::render(&config, &agg, black_box(&list), &mut out);
            black_box(out.len());
        })
    });
    status::render(&config, &agg, &list, &mut out);
    g.bench_function("list_500x10_gzip", |b| {
        b.iter(|| black_box(status::compress(black_box(out.as_bytes())).len()))
    });
    let detail = Page::Detail("slo-0".into());
    assert!(status::render(&config, &agg, &detail, &mut out));
    eprintln!(
        "status: detail page {} bytes, {} latency rows",
        out.len(),
        out.matches(" data-kind=\"").count()
    );
    g.bench_function("detail_10_regions", |b| {
        b.iter(|| {
            status::render(&config, &agg, black_box(&detail), &mut out);
            black_box(out.len());
        })
    });
    g.finish();
}

criterion_group!(benches, status);
criterion_main!(benches);
