//! How the in-process cost grows: spans/s of walk + classify + record against the
//! number of live series, the batch size, the number of SLOs, and the number of
//! recording threads (with the shard locks' contention counted).

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use sloxide::aggregate::Aggregator;
use sloxide::classify::Plan;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::{self, Mix, Shape};
use sloxide::ingest::Recorder;
use sloxide::otlp::SpanKind;
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
        walk_traces(body, plan.trace_keys(), &mut batch).unwrap();
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
            walk_traces(black_box(body), s.plan.trace_keys(), &mut bt).unwrap();
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

/// Distinct mixed requests each recording thread cycles through.
const MIXED_REQUESTS: usize = 16;

/// Walk + classify + record of production-like traffic ([`fixture::mixed_traces`], 16
/// distinct 1000-span requests, `config/example.yaml`) from 1 and 2 threads at once
/// into one aggregation, as two OTLP streams would. Each thread cycles through the 16
/// requests, starting half-way round from the other's, so that the two never walk the
/// same request at the same time. The threads are started once per sample, not per
/// iteration. Criterion's throughput is the total; per thread is that over the
/// threads. After each case, the contended shard-lock acquisitions (a record that
/// found its shard held by another thread and waited) are printed per span, per
/// family, and per lock acquisition (the acquisitions are counted here from the
/// requests, as the aggregator groups them: see [`lock_census`]).
fn threads(c: &mut Criterion) {
    sloxide::memory::configure();
    let mix = Mix::default();
    let requests: Vec<ExportTraceServiceRequest> = (1..=MIXED_REQUESTS as u64)
        .map(|seed| {
            fixture::mixed_traces(&Mix {
                seed,
                ..mix.clone()
            })
        })
        .collect();
    let bodies: Vec<Vec<u8>> = requests.iter().map(Message::encode_to_vec).collect();
    let yaml = include_str!("../config/example.yaml");
    let config = Config::from_yaml(yaml, "example.yaml").expect("config/example.yaml is valid");
    let census = lock_census(&requests, &config);
    let per_request: Vec<f64> = census
        .iter()
        .map(|c| c.values().sum::<u64>() as f64 / requests.len() as f64)
        .collect();
    let (span_locks, duration_locks, slo_locks) = (per_request[0], per_request[1], per_request[2]);
    // The chance that two acquisitions pick the same series: the sum of the squares of
    // each series' share of its family's acquisitions.
    let concentration = |c: &HashMap<String, u64>| {
        let total = c.values().sum::<u64>() as f64;
        c.values().map(|&n| (n as f64 / total).powi(2)).sum::<f64>()
    };
    eprintln!(
        "scaling_threads: shard locks per 1000-span request: {span_locks:.1} span series ({} distinct, same-series chance {:.4}), {duration_locks:.1} quantile series ({} distinct, {:.4}), {slo_locks:.1} (SLO, region) series ({} distinct, {:.4}); {} shards per span family, {} per SLO family",
        census[0].len(),
        concentration(&census[0]),
        census[1].len(),
        concentration(&census[1]),
        census[2].len(),
        concentration(&census[2]),
        sloxide::store::default_shards(),
        sloxide::store::default_shards() * 4,
    );
    let clock = Arc::new(ManualClock::new(mix.end_unix_nanos + 1_000_000_000));
    let pipeline = Pipeline::new(&config, clock).expect("config/example.yaml compiles");
    let (plan, agg) = (pipeline.plan(), pipeline.aggregator());
    // Every series exists before measuring, as in a daemon that has run for a while.
    let mut batch = TraceBatch::default();
    for body in &bodies {
        walk_traces(body, plan.trace_keys(), &mut batch).unwrap();
        agg.record_traces(&batch);
    }
    let mut g = c.benchmark_group("scaling_threads");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(
            (threads * MIXED_REQUESTS * mix.records) as u64,
        ));
        let requests_done = AtomicU64::new(0);
        let contended = |agg: &Aggregator| {
            [
                agg.spans().contended(),
                agg.durations().contended(),
                agg.slos().contended(),
            ]
        };
        let before = contended(&agg);
        g.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Barrier::new(threads + 1);
                std::thread::scope(|s| {
                    let workers: Vec<_> = (0..threads)
                        .map(|t| {
                            let (agg, plan, bodies, start) = (&agg, &plan, &bodies, &start);
                            let done = &requests_done;
                            s.spawn(move || {
                                let mut batch: TraceBatch<'static> = TraceBatch::default();
                                start.wait();
                                let offset = t * MIXED_REQUESTS / threads;
                                for i in 0..iters as usize {
                                    for k in 0..MIXED_REQUESTS {
                                        let body = &bodies[(offset + k) % MIXED_REQUESTS];
                                        let mut bt: TraceBatch<'_> =
                                            std::mem::take(&mut batch).recycle();
                                        walk_traces(black_box(body), plan.trace_keys(), &mut bt)
                                            .unwrap();
                                        agg.record_traces(&bt);
                                        batch = bt.recycle();
                                    }
                                    black_box(i);
                                }
                                done.fetch_add(iters * MIXED_REQUESTS as u64, Ordering::Relaxed);
                            })
                        })
                        .collect();
                    start.wait();
                    let began = Instant::now();
                    for w in workers {
                        w.join().unwrap();
                    }
                    began.elapsed()
                })
            })
        });
        let after = contended(&agg);
        let requests = requests_done.load(Ordering::Relaxed) as f64;
        let spans = requests * mix.records as f64;
        let d: Vec<f64> = (0..3).map(|f| (after[f] - before[f]) as f64).collect();
        let acquisitions = requests * (span_locks + duration_locks + slo_locks);
        eprintln!(
            "scaling_threads/{threads}_threads: {:.0} spans recorded; contended shard locks: {:.0} span, {:.0} quantile, {:.0} SLO; {:.2e} per span; {:.2e} per lock acquisition (span {:.2e}, quantile {:.2e}, SLO {:.2e})",
            spans,
            d[0],
            d[1],
            d[2],
            d.iter().sum::<f64>() / spans.max(1.0),
            d.iter().sum::<f64>() / acquisitions.max(1.0),
            d[0] / (requests * span_locks).max(1.0),
            d[1] / (requests * duration_locks).max(1.0),
            d[2] / (requests * slo_locks).max(1.0),
        );
    }
    g.finish();
}

/// The shard-lock acquisitions the aggregator makes for `requests`, per family (span
/// series, quantile series, (SLO, region) series) and per series, counted the way it
/// groups the spans: per resource, spans are held in at most 8 groups of (kind, region,
/// dimensions) and 256 spans, each group costing one lookup in each span family when
/// it is flushed; SLO events are held in at most 16 tallies of (SLO, region, second),
/// each one lookup. The SLOs' filters are those of the configuration (span kinds, names
/// and string attributes); the dimension is `http.route`, as in `config/example.yaml`.
fn lock_census(
    requests: &[ExportTraceServiceRequest],
    config: &Config,
) -> [HashMap<String, u64>; 3] {
    const GROUPS: usize = 8;
    const GROUPED_SPANS: usize = 256;
    const TALLIES: usize = 16;
    let str_attr = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str| {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .and_then(|v| match v {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    };
    let mut census: [HashMap<String, u64>; 3] = Default::default();
    for rs in requests.iter().flat_map(|r| &r.resource_spans) {
        let attrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service = str_attr(attrs, "service.name").unwrap_or_default();
        let region = str_attr(attrs, "cloud.region").unwrap_or_else(|| "unknown".into());
        let slos: Vec<_> = config
            .slos
            .iter()
            .filter(|s| s.service == service && s.source == sloxide::config::slo::Source::Spans)
            .collect();
        let mut groups: HashSet<(i32, Option<String>)> = HashSet::new();
        let mut held = 0;
        let mut tallies: HashSet<(usize, u64)> = HashSet::new();
        let flush_groups = |groups: &mut HashSet<(i32, Option<String>)>,
                            census: &mut [HashMap<String, u64>; 3]| {
            for (kind, route) in groups.drain() {
                let kind = SpanKind::from_otlp(kind).as_str();
                let route = route.unwrap_or_default();
                *census[0]
                    .entry(format!("{service}/{region}/{kind}/{route}"))
                    .or_default() += 1;
                *census[1]
                    .entry(format!("{service}/{region}/{kind}"))
                    .or_default() += 1;
            }
        };
        let flush_tallies = |tallies: &mut HashSet<(usize, u64)>,
                             census: &mut [HashMap<String, u64>; 3]| {
            for (slo, _) in tallies.drain() {
                *census[2]
                    .entry(format!("{}/{region}", slos[slo].name))
                    .or_default() += 1;
            }
        };
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            let route = str_attr(&span.attributes, "http.route");
            let key = (span.kind, route.clone());
            if held == GROUPED_SPANS || (!groups.contains(&key) && groups.len() == GROUPS) {
                flush_groups(&mut groups, &mut census);
                held = 0;
            }
            groups.insert(key);
            held += 1;
            for (i, slo) in slos.iter().enumerate() {
                let f = &slo.filter;
                let selected = f.span_kinds.contains(&SpanKind::from_otlp(span.kind))
                    && (f.span_names.is_empty() || f.span_names.contains(&span.name))
                    && f.attributes.iter().all(|(key, values)| {
                        str_attr(&span.attributes, key)
                            .or_else(|| str_attr(attrs, key))
                            .is_some_and(|v| values.contains(&v))
                    });
                if selected {
                    let key = (i, span.end_time_unix_nano / 1_000_000_000);
                    if !tallies.contains(&key) && tallies.len() == TALLIES {
                        flush_tallies(&mut tallies, &mut census);
                    }
                    tallies.insert(key);
                }
            }
        }
        flush_groups(&mut groups, &mut census);
        flush_tallies(&mut tallies, &mut census);
    }
    census
}

criterion_group!(benches, scaling, threads);
criterion_main!(benches);
