//! Configuration parsing and validation never panic, whatever the text.
//!
//! The body is `sloxide::fuzz::config`, which `tests/it/fuzz_regressions.rs` also runs on
//! every file under `fuzz/regressions/config/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sloxide::fuzz::config(data);
});
