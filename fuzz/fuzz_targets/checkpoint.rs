//! Checkpoint files from a hostile disk: the frame, the message, and the restore into a
//! fresh pipeline give errors, never panics.
//!
//! The body is `sloxide::fuzz::checkpoint`, which `tests/it/fuzz_regressions.rs` also runs on
//! every file under `fuzz/regressions/checkpoint/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sloxide::fuzz::checkpoint(data);
});
