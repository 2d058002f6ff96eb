//! OTLP/JSON decoding and extraction never panic.
//!
//! The body is `sloxide::fuzz::json`, which `tests/it/fuzz_regressions.rs` also runs on
//! every file under `fuzz/regressions/json/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sloxide::fuzz::json(data);
});
