//! The bodies of the fuzz targets in `fuzz/`, one function per target, and the layout
//! of their inputs.
//!
//! The fuzz targets (`fuzz/fuzz_targets/*.rs`) only call these functions, and the
//! regression test (`tests/it/fuzz_regressions.rs`) replays every file under
//! `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/` through the same function,
//! so a crash the fuzzer once found is replayed by `cargo test` through exactly the code
//! that found it (`fuzz/README.md`). Each function panics when an invariant does not
//! hold; any other outcome is a pass.
//!
//! Not part of the daemon's interface.

use std::sync::{Arc, OnceLock};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::clock::ManualClock;
use crate::config::Config;
use crate::ingest::{Accepted, Encoding, Format, IngestError};
use crate::otlp::json::{decode_logs, decode_traces, fill_logs, fill_traces};
use crate::otlp::logs::{LogBatch, walk_logs as walk_log_body, walk_logs_pieces};
use crate::otlp::spans::{TraceBatch, walk_traces as walk_trace_body, walk_traces_pieces};
use crate::otlp::{AttrKeys, Batch};
use crate::pipeline::Pipeline;
use crate::state::file::{self, MAGIC, Unreadable};
use crate::state::proto::Checkpoint;
use crate::state::snapshot::{RestoreReport, Scope};
use crate::state::{FORMAT_VERSION, SloDecision};
use crate::telemetry::{Signal, Transport};

/// A fuzz target's body: panics when an invariant does not hold.
pub type Body = fn(&[u8]);

/// Every fuzz target by name, as `fuzz/Cargo.toml` names its binaries.
pub const TARGETS: [(&str, Body); 6] = [
    ("walk_traces", walk_traces),
    ("walk_logs", walk_logs),
    ("json", json),
    ("config", config),
    ("http_body", |d| {
        let _ = http_body(d);
    }),
    ("checkpoint", |d| {
        let _ = checkpoint(d);
    }),
];

/// The body of the target named `name`.
pub fn target(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// `walk_traces`: the trace walker never panics, an accepted walk is internally
/// consistent, walking the input in pieces gives what walking it whole gives, and bytes
/// that prost decodes are accepted and extracted as from prost's decoding.
pub fn walk_traces(data: &[u8]) {
    let keys = AttrKeys::new(["cloud.region", "http.route"]);
    let mut batch = TraceBatch::default();
    let whole = walk_trace_body(data, &keys, &mut batch);
    if whole.is_ok() {
        for run in &batch.resources {
            for span in batch.events_of(run) {
                assert!(span.start != 0 && span.end >= span.start);
                let _ = batch.row(span.attrs);
            }
        }
    }
    // The walker against the reference decoder, on any bytes, not only on the requests
    // the property tests generate (tests/it/walker.rs): what prost decodes, the walker
    // must take, with the same spans, values and rejections. (The walker also takes
    // some bytes prost refuses: invalid UTF-8, kept for repair, and messages it steps
    // over unread.)
    if let Ok(decoded) = ExportTraceServiceRequest::decode(data) {
        assert_eq!(
            whole,
            Ok(()),
            "the trace walker refused bytes prost decodes"
        );
        let mut reference = TraceBatch::default();
        fill_traces(&decoded, &keys, &mut reference);
        assert_same_batch(&batch, &reference);
    }
    let (pieces, skip) = pieces_of(data);
    let (mut joined, mut in_pieces) = (Vec::new(), TraceBatch::default());
    let split = walk_traces_pieces(&pieces, skip, &mut joined, &keys, &mut in_pieces);
    assert_eq!(whole, split);
    if whole.is_ok() {
        assert_same_batch(&batch, &in_pieces);
    }
}

/// `walk_logs`: the log walker never panics, accepted records have a time, walking the
/// input in pieces gives what walking it whole gives, and bytes that prost decodes are
/// accepted and extracted as from prost's decoding.
pub fn walk_logs(data: &[u8]) {
    let keys = AttrKeys::new(["cloud.region", "event.name"]);
    let mut batch = LogBatch::default();
    let whole = walk_log_body(data, &keys, &mut batch);
    if whole.is_ok() {
        for run in &batch.resources {
            for record in batch.events_of(run) {
                assert!(record.event_time() != 0);
                let _ = batch.row(record.attrs);
            }
        }
    }
    // As in `walk_traces`: the walker against the reference decoder, on any bytes.
    if let Ok(decoded) = ExportLogsServiceRequest::decode(data) {
        assert_eq!(whole, Ok(()), "the log walker refused bytes prost decodes");
        let mut reference = LogBatch::default();
        fill_logs(&decoded, &keys, &mut reference);
        assert_same_batch(&batch, &reference);
    }
    let (pieces, skip) = pieces_of(data);
    let (mut joined, mut in_pieces) = (Vec::new(), LogBatch::default());
    let split = walk_logs_pieces(&pieces, skip, &mut joined, &keys, &mut in_pieces);
    assert_eq!(whole, split);
    if whole.is_ok() {
        assert_same_batch(&batch, &in_pieces);
    }
}

/// Two walks found the same resources, records, values and rejections.
fn assert_same_batch<E: PartialEq + std::fmt::Debug>(a: &Batch<'_, E>, b: &Batch<'_, E>) {
    assert_eq!(a.resources, b.resources);
    assert_eq!(a.events, b.events);
    // By `Value::same`, which compares doubles by their bits: a NaN is the same NaN.
    assert_eq!(a.values.len(), b.values.len());
    for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
        assert!(x.same(y), "value {i}: {x:?} against {y:?}");
    }
    assert_eq!(a.rejected, b.rejected);
    assert_eq!(a.reject_reason, b.reject_reason);
}

/// `data` behind a 3-byte prefix to skip, cut into pieces at points its length and
/// first byte decide (empty pieces included), as a transport's frames might cut it.
fn pieces_of(data: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut whole = vec![0xff; 3];
    whole.extend_from_slice(data);
    let seed = usize::from(data.first().copied().unwrap_or(0));
    let mut cuts = [
        1 + seed % 7,
        whole.len() / 3,
        whole.len() / 2 + seed,
        whole.len() / 2 + seed,
    ]
    .map(|c| c.min(whole.len()));
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts {
        pieces.push(whole[from..cut].to_vec());
        from = cut;
    }
    pieces.push(whole[from..].to_vec());
    (pieces, 3)
}

/// `json`: OTLP/JSON decoding and extraction never panic.
pub fn json(data: &[u8]) {
    let keys = AttrKeys::new(["cloud.region"]);
    if let Ok(req) = decode_traces(data) {
        fill_traces(&req, &keys, &mut TraceBatch::default());
    }
    if let Ok(req) = decode_logs(data) {
        fill_logs(&req, &keys, &mut LogBatch::default());
    }
}

/// `config`: configuration parsing and validation never panic, whatever the text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_yaml(text, "fuzz.yaml");
    }
}

/// The configuration the `http_body` and `checkpoint` targets build their pipelines
/// from: span and log SLOs, a dimension, every compression, a 1 MiB body limit, and
/// series caps low enough that a long run stays small.
pub const CONFIG: &str = r#"
dimensions: [http.route]
limits:
  max_request_bytes: 1MiB
  max_decompressed_bytes: 1MiB
  max_series: 2000
  max_series_per_service: 500
  compression: [gzip, zstd, deflate, snappy]
slos:
  - name: checkout-availability
    service: checkout
    objective: 99.9
    filter: {attributes: {http.route: /api/checkout}}
    indicator: {availability: {}}
  - name: checkout-latency
    service: checkout
    objective: 99
    period: 7d
    indicator: {latency: {threshold: 300ms}}
  - name: deployments
    service: deployer
    source: logs
    objective: 95
    filter: {attributes: {event.name: deployment}}
    indicator: {events: {bad: {severity_at_least: error}}}
"#;

/// The time of the targets' pipelines, in Unix seconds; the seeds' events are near it.
pub const NOW_SECS: u64 = 1_700_000_000;

/// The largest decompressed body `http_body` accepts ([`CONFIG`]'s limit).
pub const BODY_LIMIT: usize = 1 << 20;

/// [`CONFIG`], parsed once.
pub fn fuzz_config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| Config::from_yaml(CONFIG, "fuzz.yaml").expect("CONFIG is valid"))
}

/// A pipeline of [`CONFIG`] on a clock stopped at [`NOW_SECS`].
pub fn pipeline() -> Pipeline {
    let clock = Arc::new(ManualClock::new(NOW_SECS * 1_000_000_000));
    Pipeline::new(fuzz_config(), clock).expect("CONFIG compiles")
}

/// The compressions of `http_body`'s first byte (its low three bits, modulo 6).
const HTTP_FORMATS: [Option<Format>; 6] = [
    None,
    Some(Format::Gzip),
    Some(Format::Zstd),
    Some(Format::Zlib),
    Some(Format::Snappy),
    Some(Format::SnappyFramed),
];

/// An `http_body` input: one byte naming the compression, signal and encoding, then
/// the body as received.
pub fn http_body_input(
    format: Option<Format>,
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
) -> Vec<u8> {
    let f = HTTP_FORMATS
        .iter()
        .position(|f| *f == format)
        .expect("every format is listed") as u8;
    let s = u8::from(signal == Signal::Logs) << 3;
    let e = u8::from(encoding == Encoding::Json) << 4;
    let mut out = vec![f | s | e];
    out.extend_from_slice(body);
    out
}

/// `http_body`: the OTLP/HTTP body path after the headers, as `ingest::http` runs it.
///
/// The first byte picks the compression (none, gzip, zstd, zlib, snappy block or framed,
/// snappy framed only), the signal and the encoding ([`http_body_input`]); the rest is
/// the body. It is decompressed under [`BODY_LIMIT`], then walked or decoded as JSON,
/// recorded into one pipeline kept for the whole process, and answered. Invariants:
/// the decompressed body is never over the limit (a streamed format may read one byte
/// past it to see that it is over, and must then refuse), every accepted record is
/// counted exactly once, and the response encodes. Returns what was accepted.
pub fn http_body(data: &[u8]) -> Option<Accepted> {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    let pipeline = PIPELINE.get_or_init(pipeline);
    let ingest = &pipeline.ingest;
    let (&head, body) = data.split_first()?;
    let format = HTTP_FORMATS[usize::from(head & 7) % HTTP_FORMATS.len()];
    let signal = if head & 8 == 0 {
        Signal::Traces
    } else {
        Signal::Logs
    };
    let encoding = if head & 16 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    assert_eq!(ingest.limits().max_decompressed_bytes, BODY_LIMIT);

    let mut inflated = Vec::new();
    let body = match format {
        None => body,
        Some(format) => {
            let result = ingest.decompress(format, body, &mut inflated);
            assert!(
                inflated.len() <= BODY_LIMIT + 1,
                "{format:?} wrote {} bytes under a limit of {BODY_LIMIT}",
                inflated.len()
            );
            match result {
                Ok(()) => assert!(inflated.len() <= BODY_LIMIT, "{format:?} passed the limit"),
                Err(IngestError::DecompressedTooLarge { limit }) => {
                    assert_eq!(limit, BODY_LIMIT);
                    return None;
                }
                Err(_) => return None,
            }
            &inflated
        }
    };

    let before = pipeline.telemetry.accepted(Transport::Http, signal);
    let result = ingest.export(Transport::Http, signal, encoding, body);
    let counted = pipeline.telemetry.accepted(Transport::Http, signal) - before;
    let accepted = match result {
        Ok(accepted) => accepted,
        Err(_) => {
            assert_eq!(counted, 0, "a refused body counted records");
            return None;
        }
    };
    assert_eq!(
        counted, accepted.accepted,
        "accepted records counted exactly"
    );
    assert_eq!(accepted.rejected > 0, accepted.reason.is_some());
    let response = accepted.response(signal, encoding);
    if encoding == Encoding::Json {
        serde_json::from_slice::<serde_json::Value>(&response).expect("the response is JSON");
    }
    Some(accepted)
}

/// A `checkpoint` input: a flags byte, then bytes read both as a whole checkpoint file
/// and as the message inside a well-formed frame. `counters` restores the cumulative
/// counters too (a clean shutdown's checkpoint); `newer` frames the message in a
/// format newer than this build reads.
pub fn checkpoint_input(counters: bool, newer: bool, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(counters) | u8::from(newer) << 1];
    out.extend_from_slice(bytes);
    out
}

/// `bytes` framed as a checkpoint file of format `version`, with a valid checksum.
fn framed(bytes: &[u8], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// `checkpoint`: a checkpoint from a hostile disk gives an error, never a panic or an
/// unbounded allocation.
///
/// After the flags byte ([`checkpoint_input`]) the bytes go through the frame parser as
/// a file found on disk, and then, since a fuzzer cannot forge the CRC-32 that guards
/// the frame, as the message of a frame made valid around them, so the protobuf decode
/// and the restore are reached too. Whatever decodes is restored into a fresh pipeline,
/// which is then rendered, and checkpointed again to check that the round trip holds.
/// Returns the report of the last restore.
pub fn checkpoint(data: &[u8]) -> Option<RestoreReport> {
    let (&flags, bytes) = data.split_first()?;
    let counters = flags & 1 != 0;
    let newer = flags & 2 != 0;
    let mut report = None;
    // As found on disk: the frame parser first.
    if let Ok(found) = file::decode(bytes) {
        report = Some(restore_fresh(&found, counters));
    }
    // The same bytes as the message of a valid frame.
    let version = if newer {
        FORMAT_VERSION + 1
    } else {
        FORMAT_VERSION
    };
    let message = Checkpoint::decode(bytes);
    match file::decode(&framed(bytes, version)) {
        Ok(found) => {
            assert!(!newer, "a newer format was read");
            // Compared encoded: a NaN among the bucket bounds is not equal to itself.
            let message = message.expect("the frame refused nothing it read");
            assert_eq!(found.encode_to_vec(), message.encode_to_vec());
            report = Some(restore_fresh(&found, counters));
        }
        Err(Unreadable::Version { version: v, .. }) => assert!(newer && v == version),
        Err(Unreadable::Decode(_)) => assert!(message.is_err(), "the frame refused it"),
        Err(other) => panic!("a valid frame was refused: {other}"),
    }
    report
}

/// Restores `found` into a fresh pipeline and checks what the restore reports.
fn restore_fresh(found: &Checkpoint, counters: bool) -> RestoreReport {
    let p = pipeline();
    let report = p.restore(found, counters);
    let config = fuzz_config();
    assert_eq!(report.counters, counters);
    assert!(report.slos.len() >= config.slos.len());
    for ((name, _), slo) in report.slos.iter().zip(&config.slos) {
        assert_eq!(*name, slo.name, "configured SLOs come first, in order");
    }
    for (_, decision) in &report.slos[config.slos.len()..] {
        assert_eq!(*decision, SloDecision::Removed);
    }
    let saved = [
        found.spans.len(),
        found.quantiles.len(),
        found.logs.len(),
        found.slos.len(),
    ];
    for (restored, saved) in report.series.iter().zip(saved) {
        assert!(*restored <= saved, "{:?} from {saved:?}", report.series);
    }
    if !counters {
        assert_eq!(
            report.series[..3],
            [0, 0, 0],
            "counters without a clean shutdown"
        );
    }
    let _ = p.render();
    // What was restored checkpoints and reads back.
    let again = p.checkpoint(Scope::Everything, true);
    assert_eq!(file::decode(&file::encode(&again)).as_ref(), Ok(&again));
    report
}
