//! Allocation proof: a counting global allocator, counted per thread so that tests
//! running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use prost::Message;
use sloxide::fixture::{self, Shape};
use sloxide::otlp::AttrKeys;
use sloxide::otlp::logs::{LogBatch, walk_logs};
use sloxide::otlp::spans::{TraceBatch, walk_traces};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call forwards to the system allocator unchanged; the thread-local
// counter is a const-initialised Cell with no destructor, so touching it never
// allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
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
    use sloxide::ingest::{BodyLimits, Discard, Encoding, Ingest};
    use sloxide::telemetry::{Signal, Telemetry, Transport};
    use std::sync::Arc;

    let ingest = Ingest::new(
        AttrKeys::new(["cloud.region"]),
        BodyLimits {
            max_request_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
        },
        4,
        Arc::new(Telemetry::default()),
        Arc::new(Discard),
    );
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
fn walking_classifying_and_recording_known_series_allocates_nothing() {
    use sloxide::aggregate::Aggregator;
    use sloxide::classify::Plan;
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::ingest::{BodyLimits, Encoding, Ingest};
    use sloxide::telemetry::{Signal, Telemetry, Transport};
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
    let plan = Arc::new(Plan::compile(&config));
    let shape = Shape::default();
    let clock = Arc::new(ManualClock::new(shape.end_unix_nanos + 1_000_000_000));
    let aggregator = Arc::new(Aggregator::new(&config, plan.clone(), clock));
    let ingest = Ingest::new(
        plan.keys().clone(),
        BodyLimits {
            max_request_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
        },
        4,
        Arc::new(Telemetry::default()),
        aggregator.clone(),
    );
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
