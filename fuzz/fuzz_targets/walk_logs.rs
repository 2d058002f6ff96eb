//! The log walker never panics, and accepted records have a time.
//!
//! The body is `sloxide::fuzz::walk_logs`, which `tests/it/fuzz_regressions.rs` also runs on
//! every file under `fuzz/regressions/walk_logs/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sloxide::fuzz::walk_logs(data);
});
