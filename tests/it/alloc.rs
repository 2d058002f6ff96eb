//! Allocation proof: a counting global allocator, counted per thread so that tests
//! running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use prost::Message;
use sloxide::fixture::{self, Mix, Shape};
use sloxide::otlp::AttrKeys;
use sloxide::otlp::logs::{LogBatch, walk_logs};
use sloxide::otlp::spans::{TraceBatch, walk_traces, walk_traces_pieces};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed on this thread.
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
    /// Set on the threads of an in-process daemon's runtime.
    static DAEMON_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Allocations made on daemon threads (see `DAEMON_THREAD`), across all of them.
static DAEMON_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[inline]
fn bytes(delta: i64) {
    let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + delta));
}

/// Net bytes allocated on this thread while `f` runs (what it leaves allocated).
pub fn bytes_kept<R>(f: impl FnOnce() -> R) -> (i64, R) {
    let before = LIVE_BYTES.with(Cell::get);
    let out = f();
    (LIVE_BYTES.with(Cell::get) - before, out)
}

#[inline]
fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    if DAEMON_THREAD.try_with(Cell::get).unwrap_or(false) {
        // Relaxed: a plain event count, read after the traffic has stopped.
        DAEMON_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to the system allocator unchanged; the thread-local
// counters are const-initialised Cells with no destructor and the global one is an
// atomic, so counting never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        bytes(layout.size() as i64);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bytes(-(layout.size() as i64));
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        bytes(layout.size() as i64);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        bytes(new_size as i64 - layout.size() as i64);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
pub fn allocations_during<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

#[test]
fn the_counter_sees_allocations() {
    let (n, v) = allocations_during(|| vec![1u8; 10]);
    assert_eq!(n, 1);
    drop(v);
}

#[test]
fn walking_a_1000_span_request_allocates_nothing() {
    let body = fixture::traces(&Shape::default()).encode_to_vec();
    let keys = AttrKeys::new(["cloud.region", "http.route"]);
    // The first walk sizes the batch; later walks into the recycled batch reuse it.
    let mut batch = TraceBatch::default();
    walk_traces(&body, &keys, &mut batch).unwrap();
    assert_eq!(batch.events.len(), 1000);
    let mut batch: TraceBatch<'static> = batch.recycle();
    for _ in 0..3 {
        let (n, recycled) = allocations_during(|| {
            let mut b: TraceBatch<'_> = batch.recycle();
            walk_traces(&body, &keys, &mut b).unwrap();
            assert_eq!(b.events.len(), 1000);
            b.recycle::<'static, _>()
        });
        assert_eq!(n, 0, "walking 1000 spans allocated {n} times");
        batch = recycled;
    }
}

#[test]
fn walking_a_request_in_frames_allocates_nothing_after_warm_up() {
    // A gRPC body as hyper hands it over: the 5-byte prefix, then three frames, so that
    // some resources lie across two of them and are copied into the joined buffer.
    let mut whole = vec![0u8; 5];
    whole.extend(fixture::mixed_traces(&Mix::default()).encode_to_vec());
    let third = whole.len() / 3;
    let frames = [
        &whole[..third],
        &whole[third..2 * third],
        &whole[2 * third..],
    ];
    let keys = AttrKeys::new(["cloud.region", "http.route"]);
    let mut joined = Vec::new();
    let mut batch = TraceBatch::default();
    walk_traces_pieces(&frames, 5, &mut joined, &keys, &mut batch).unwrap();
    let spans = batch.events.len();
    assert!(spans > 0);
    let mut batch: TraceBatch<'static> = batch.recycle();
    for _ in 0..3 {
        let (n, recycled) = allocations_during(|| {
            let mut b: TraceBatch<'_> = batch.recycle();
            walk_traces_pieces(&frames, 5, &mut joined, &keys, &mut b).unwrap();
            assert_eq!(b.events.len(), spans);
            b.recycle::<'static, _>()
        });
        assert_eq!(n, 0, "walking a request in frames allocated {n} times");
        batch = recycled;
    }
    assert!(!joined.is_empty(), "no resource lay across frames");
}

#[test]
fn walking_a_1000_record_logs_request_allocates_nothing() {
    let body = fixture::logs(&Shape::default()).encode_to_vec();
    let keys = AttrKeys::new(["cloud.region", "event.name"]);
    let mut batch = LogBatch::default();
    walk_logs(&body, &keys, &mut batch).unwrap();
    let mut batch: LogBatch<'static> = batch.recycle();
    let (n, recycled) = allocations_during(|| {
        let mut b: LogBatch<'_> = batch.recycle();
        walk_logs(&body, &keys, &mut b).unwrap();
        assert_eq!(b.events.len(), 1000);
        b.recycle::<'static, _>()
    });
    assert_eq!(n, 0, "walking 1000 log records allocated {n} times");
    batch = recycled;
    drop(batch);
}

#[test]
fn ingest_export_of_a_known_shape_allocates_nothing_after_warm_up() {
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::ingest::Encoding;
    use sloxide::pipeline::Pipeline;
    use sloxide::telemetry::{Signal, Transport};
    use std::sync::Arc;

    let clock = Arc::new(ManualClock::new(
        Shape::default().end_unix_nanos + 1_000_000_000,
    ));
    let pipeline = Pipeline::new(&Config::embedded_default(), clock).unwrap();
    let ingest = &pipeline.ingest;
    let traces = fixture::traces(&Shape::default()).encode_to_vec();
    let logs = fixture::logs(&Shape::default()).encode_to_vec();
    // Warm up this thread's reusable batches.
    ingest
        .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, &traces)
        .unwrap();
    ingest
        .export(Transport::Grpc, Signal::Logs, Encoding::Protobuf, &logs)
        .unwrap();
    let (n, accepted) = allocations_during(|| {
        let t = ingest
            .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, &traces)
            .unwrap();
        let l = ingest
            .export(Transport::Http, Signal::Logs, Encoding::Protobuf, &logs)
            .unwrap();
        (t.accepted, l.accepted)
    });
    assert_eq!(accepted, (1000, 1000));
    assert_eq!(n, 0, "a warmed-up export allocated {n} times");
}

#[test]
fn production_like_requests_allocate_nothing_once_their_series_exist() {
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::ingest::Encoding;
    use sloxide::pipeline::Pipeline;
    use sloxide::telemetry::{Signal, Transport};
    use std::sync::Arc;

    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
            .unwrap();
    let config = Config::from_yaml(&example, "example.yaml").unwrap();
    let mix = Mix::default();
    let clock = Arc::new(ManualClock::new(mix.end_unix_nanos + 1_000_000_000));
    let pipeline = Pipeline::new(&config, clock).unwrap();
    let ingest = &pipeline.ingest;
    let requests: Vec<(Vec<u8>, Vec<u8>)> = (1..=4)
        .map(|seed| {
            let mix = Mix {
                seed,
                ..mix.clone()
            };
            (
                fixture::mixed_traces(&mix).encode_to_vec(),
                fixture::mixed_logs(&mix).encode_to_vec(),
            )
        })
        .collect();
    let export = |signal, body: &[u8]| {
        ingest
            .export(Transport::Grpc, signal, Encoding::Protobuf, body)
            .unwrap()
            .accepted
    };
    for (traces, logs) in &requests {
        export(Signal::Traces, traces);
        export(Signal::Logs, logs);
    }
    let (n, accepted) = allocations_during(|| {
        requests
            .iter()
            .map(|(traces, logs)| export(Signal::Traces, traces) + export(Signal::Logs, logs))
            .sum::<u64>()
    });
    assert_eq!(accepted, 8000);
    assert_eq!(n, 0, "mixed requests of known series allocated {n} times");
}

#[test]
fn walking_classifying_and_recording_known_series_allocates_nothing() {
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::ingest::Encoding;
    use sloxide::pipeline::Pipeline;
    use sloxide::telemetry::{Signal, Transport};
    use std::sync::Arc;

    // Dimensions read a string and an integer attribute, and the SLOs of
    // config/example.yaml classify every span (the fixture's services are renamed to
    // theirs below): all of it must stay allocation-free.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
            .unwrap();
    let yaml = example.replace(
        "dimensions: [http.route]",
        "dimensions: [http.route, http.response.status_code]",
    );
    let config = Config::from_yaml(&yaml, "example.yaml").unwrap();
    assert!(!config.slos.is_empty());
    let shape = Shape::default();
    let clock = Arc::new(ManualClock::new(shape.end_unix_nanos + 1_000_000_000));
    let pipeline = Pipeline::new(&config, clock).unwrap();
    let ingest = &pipeline.ingest;
    let shape = Shape {
        service_names: ["checkout", "api-gateway", "deployer", "provisioner"]
            .map(String::from)
            .to_vec(),
        ..shape
    };
    let traces = fixture::traces(&shape).encode_to_vec();
    let logs = fixture::logs(&shape).encode_to_vec();
    // The first request creates the series (and their histograms); the rest only count.
    ingest
        .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, &traces)
        .unwrap();
    ingest
        .export(Transport::Grpc, Signal::Logs, Encoding::Protobuf, &logs)
        .unwrap();
    let (n, accepted) = allocations_during(|| {
        let mut spans = 0;
        for _ in 0..5 {
            spans += ingest
                .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, &traces)
                .unwrap()
                .accepted;
        }
        let logs = ingest
            .export(Transport::Grpc, Signal::Logs, Encoding::Protobuf, &logs)
            .unwrap()
            .accepted;
        (spans, logs)
    });
    assert_eq!(accepted, (5000, 1000));
    assert_eq!(
        n, 0,
        "walk + classify + record of known series allocated {n} times"
    );
}

/// The whole daemon in process (gRPC transport, ingest, aggregation with the SLOs of
/// config/example.yaml, the background tick), counting every allocation on its threads
/// while it takes 1000-span requests: per-request costs included, at most 0.05
/// allocations per span.
#[test]
fn a_whole_run_allocates_at_most_five_hundredths_per_span() {
    use bytes::Bytes;
    use sloxide::config::Config;
    use sloxide::ingest::grpc::RawCodec;
    use std::sync::atomic::Ordering;

    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
            .unwrap();
    let mut config = Config::from_yaml(&example, "example.yaml").unwrap();
    config.listen.otlp_grpc = "127.0.0.1:0".parse().unwrap();
    config.listen.otlp_http = "127.0.0.1:0".parse().unwrap();
    config.listen.metrics = "127.0.0.1:0".parse().unwrap();

    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| DAEMON_THREAD.with(|d| d.set(true)))
        .build()
        .unwrap();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = daemon_rt.spawn(sloxide::daemon::run(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |addrs| {
            let _ = bound_tx.send(addrs);
        },
    ));
    let addrs = bound_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();

    // Production-like requests: 25 resources each, of 60 services in 6 regions.
    let bodies: Vec<Bytes> = (0..4u64)
        .map(|i| {
            let mix = Mix {
                seed: i + 1,
                end_unix_nanos: now_nanos() - i * 1_000_000,
                ..Mix::default()
            };
            Bytes::from(fixture::mixed_traces(&mix).encode_to_vec())
        })
        .collect();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (requests, spans) = client_rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", addrs.otlp_grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let send = |n: usize| {
            let channel = channel.clone();
            let bodies = bodies.clone();
            async move {
                let mut tasks = Vec::new();
                for stream in 0..4 {
                    let mut client = tonic::client::Grpc::new(channel.clone());
                    let bodies = bodies.clone();
                    tasks.push(tokio::spawn(async move {
                        for i in 0..n / 4 {
                            client.ready().await.unwrap();
                            let path = http::uri::PathAndQuery::from_static(
                                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                            );
                            let body = bodies[(i + stream) % bodies.len()].clone();
                            client
                                .unary(tonic::Request::new(body), path, RawCodec)
                                .await
                                .unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        // Warm up: series, histograms, buffers, connection state.
        send(40).await;
        let before = DAEMON_ALLOCATIONS.load(Ordering::Relaxed);
        let requests = 400;
        send(requests).await;
        let allocations = DAEMON_ALLOCATIONS.load(Ordering::Relaxed) - before;
        (requests as u64, allocations)
    });
    let per_span = spans as f64 / (requests * 1000) as f64;
    eprintln!(
        "whole run: {spans} allocations on daemon threads for {requests} requests of 1000 spans: {per_span:.4} per span, {:.1} per request",
        spans as f64 / requests as f64
    );
    let _ = stop_tx.send(());
    daemon_rt.block_on(daemon).unwrap().unwrap();
    assert!(per_span <= 0.05, "{per_span} allocations per span");
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Memory per active histogram series, quantile rotation included (both minute
/// histograms allocated), and per (SLO, region) series: what creating them leaves
/// allocated, table growth included.
#[test]
fn series_memory_stays_within_its_budget() {
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::ingest::Recorder;
    use sloxide::pipeline::Pipeline;
    use sloxide::slo::SloEngine;
    use std::sync::Arc;

    let config = Config::embedded_default();
    let n = 2000usize;
    // One span per service: n span series and n quantile series.
    let shape = Shape {
        resources: n,
        per_resource: 1,
        services: n,
        ..Shape::default()
    };
    let clock = Arc::new(ManualClock::new(shape.end_unix_nanos));
    let later = Shape {
        end_unix_nanos: shape.end_unix_nanos + 60_000_000_000,
        ..shape.clone()
    };
    let first = fixture::traces(&shape).encode_to_vec();
    let second = fixture::traces(&later).encode_to_vec();
    let mut batch = TraceBatch::default();
    let (kept, agg) = bytes_kept(|| {
        let pipeline = Pipeline::new(&config, clock.clone()).unwrap();
        let (plan, agg) = (&pipeline.plan(), &pipeline.aggregator());
        walk_traces(&first, plan.trace_keys(), &mut batch).unwrap();
        agg.record_traces(&batch);
        // The next minute: every quantile series now holds both minute histograms.
        clock.advance(std::time::Duration::from_secs(60));
        walk_traces(&second, plan.trace_keys(), &mut batch).unwrap();
        agg.record_traces(&batch);
        pipeline
    });
    let per_series = kept as f64 / n as f64;
    eprintln!(
        "memory: {per_series:.0} bytes per histogram series with its quantile series (two minute histograms)"
    );
    assert!(
        per_series <= 32.0 * 1024.0,
        "{per_series} bytes per histogram series"
    );
    drop(agg);

    let slo_config = Config::from_yaml(
        "slos:\n  - {name: a, service: s, objective: 99.9, indicator: {availability: {}}}\n",
        "slo.yaml",
    )
    .unwrap();
    let regions: Vec<String> = (0..n).map(|i| format!("region-{i}")).collect();
    let (kept, engine) = bytes_kept(|| {
        let engine = SloEngine::new(&slo_config);
        for r in &regions {
            engine.record(0, r, 1_700_000_000, 10, 1, 1_700_000_000);
        }
        engine
    });
    let per_slo = kept as f64 / n as f64;
    eprintln!(
        "memory: {per_slo:.0} bytes per (SLO, region) series; ring slots {:?}",
        engine.ring_bytes()
    );
    assert!(
        per_slo <= 16.0 * 1024.0,
        "{per_slo} bytes per (SLO, region)"
    );
}
