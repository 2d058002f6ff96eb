//! OTLP/JSON decoding and extraction never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sloxide::otlp::AttrKeys;
use sloxide::otlp::json::{decode_logs, decode_traces, fill_logs, fill_traces};
use sloxide::otlp::logs::LogBatch;
use sloxide::otlp::spans::TraceBatch;

fuzz_target!(|data: &[u8]| {
    let keys = AttrKeys::new(["cloud.region"]);
    if let Ok(req) = decode_traces(data) {
        fill_traces(&req, &keys, &mut TraceBatch::default());
    }
    if let Ok(req) = decode_logs(data) {
        fill_logs(&req, &keys, &mut LogBatch::default());
    }
});
