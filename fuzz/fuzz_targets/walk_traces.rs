//! The trace walker never panics, and an accepted walk is internally consistent.
//!
//! The body is `sloxide::fuzz::walk_traces`, which `tests/it/fuzz_regressions.rs` also runs on
//! every file under `fuzz/regressions/walk_traces/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sloxide::fuzz::walk_traces(data);
});
