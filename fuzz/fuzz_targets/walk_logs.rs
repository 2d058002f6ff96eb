//! The log walker never panics, and accepted records have a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sloxide::otlp::AttrKeys;
use sloxide::otlp::logs::{LogBatch, walk_logs};

fuzz_target!(|data: &[u8]| {
    let keys = AttrKeys::new(["cloud.region", "event.name"]);
    let mut batch = LogBatch::default();
    if walk_logs(data, &keys, &mut batch).is_ok() {
        for run in &batch.resources {
            for record in batch.events_of(run) {
                assert!(record.event_time() != 0);
                let _ = batch.row(record.attrs);
            }
        }
    }
});
