//! The OTLP/HTTP body path: decompression under a 1 MiB limit, then protobuf walking
//! or OTLP/JSON decoding, recording and the response.
//!
//! The body is `sloxide::fuzz::http_body`, which `tests/it/fuzz_regressions.rs` also runs on
//! every file under `fuzz/regressions/http_body/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sloxide::fuzz::http_body(data);
});
