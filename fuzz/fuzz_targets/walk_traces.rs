//! The trace walker never panics, and an accepted walk is internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sloxide::otlp::AttrKeys;
use sloxide::otlp::spans::{TraceBatch, walk_traces};

fuzz_target!(|data: &[u8]| {
    let keys = AttrKeys::new(["cloud.region", "http.route"]);
    let mut batch = TraceBatch::default();
    if walk_traces(data, &keys, &mut batch).is_ok() {
        for run in &batch.resources {
            for span in batch.events_of(run) {
                assert!(span.start != 0 && span.end >= span.start);
                let _ = batch.row(span.attrs);
            }
        }
    }
});
