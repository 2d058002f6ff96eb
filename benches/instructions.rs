//! The mixed traffic's export, a fixed number of times, for counting instructions: the
//! same 16 requests, configuration, warmed series and huge pages as the pipeline bench's
//! `mixed` group (both take them from `benches/common/mixed.rs`), each exported by
//! [`measured`] as many times as the first number on the command line says (8 without
//! one).
//!
//! Run natively (`cargo bench --bench instructions`) it prints the time per export,
//! which is as noisy as the machine. Under callgrind it gives the instructions each
//! stage executes (divide by the exports and their 1000 spans for a span's share),
//! which do not depend on what else the machine is doing, so two builds can be compared
//! on a noisy day (docs/benchmarks.md, "Instructions per span"):
//!
//! ```sh
//! cargo bench --bench instructions --no-run     # prints the binary's path
//! valgrind --tool=callgrind --toggle-collect='*instructions::measured*' \
//!     --callgrind-out-file=/tmp/cg.out target/release/deps/instructions-<hash> 4
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'measured|walk_top|record_traces|flush'
//! ```
//!
//! Only [`measured`] is counted: the requests are made and the series created first.

use std::hint::black_box;
use std::time::Instant;

use sloxide::fixture::{self, Mix};
use sloxide::ingest::{Encoding, Ingest};
use sloxide::telemetry::{Signal, Transport};

#[path = "common/mixed.rs"]
mod common;

/// Exports every request `rounds` times: the only code a `--toggle-collect` on this
/// function counts.
#[inline(never)]
fn measured(ingest: &Ingest, traces: &[Vec<u8>], rounds: usize) {
    for _ in 0..rounds {
        for body in traces {
            black_box(
                ingest
                    .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, body)
                    .expect("the mixed requests are valid"),
            );
        }
    }
}

fn main() {
    sloxide::memory::configure();
    sloxide::memory::one_heap();
    // `cargo bench` passes `--bench`; a number is the rounds.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(8)
        .max(1);
    let mix = Mix::default();
    let traces = common::bodies(fixture::mixed_traces);
    // Every series exists before counting, and the heap is on huge pages.
    let (pipeline, _) = common::warmed(&traces);
    let start = Instant::now();
    measured(&pipeline.ingest, &traces, rounds);
    let exports = rounds * traces.len();
    let per = start.elapsed().div_f64(exports as f64);
    println!(
        "instructions: {exports} exports of {} spans, {per:?} per export ({:.1} ns per span)",
        mix.records,
        per.as_nanos() as f64 / mix.records as f64
    );
}
