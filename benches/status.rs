//! The SLO tick at 500 SLOs x 10 regions (5 000 (SLO, region) series of a 30d SLO,
//! each with events spread over the whole period).
//!
//! - `status/tick_500x10`: one [`SloEngine::tick`]: advance every ring, sum every
//!   window, roll the regions up, derive, publish the snapshot.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sloxide::clock::ManualClock;
use sloxide::config::Config;
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
/// and every minute of the last hour, about 1 in 500 bad; ticked once.
fn loaded() -> Arc<Pipeline> {
    let clock = Arc::new(ManualClock::new(NOW_SECS * 1_000_000_000));
    let pipeline = Arc::new(Pipeline::new(&config(), clock).unwrap());
    let agg = pipeline.aggregator();
    let slos = agg.slos();
    let regions: Vec<String> = (0..REGIONS).map(|r| format!("region-{r}")).collect();
    for slo in 0..SLOS {
        for (r, region) in regions.iter().enumerate() {
            let mut k = (slo * 31 + r * 7) as u64;
            let mut event = |t: u64, total: u64| {
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let bad = u64::from((k >> 33) % 500 == 0) * (1 + (k >> 40) % 3);
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
    g.finish();
}

criterion_group!(benches, status);
criterion_main!(benches);
