//! The mixed traffic and the warmed pipeline that the pipeline bench's `mixed` group and
//! the instructions bench share, so that the two measure the same thing.

use std::sync::Arc;

use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::Mix;
use sloxide::ingest::Encoding;
use sloxide::pipeline::Pipeline;
use sloxide::telemetry::{Signal, Transport};

/// How many distinct mixed requests are made (seeds 1 to this).
pub const REQUESTS: u64 = 16;

/// The [`REQUESTS`] distinct requests `make` builds from the default [`Mix`] (its
/// traces or its logs), encoded.
pub fn bodies<M: Message>(make: impl Fn(&Mix) -> M) -> Vec<Vec<u8>> {
    let mix = Mix::default();
    (1..=REQUESTS)
        .map(|seed| {
            make(&Mix {
                seed,
                ..mix.clone()
            })
            .encode_to_vec()
        })
        .collect()
}

/// A pipeline on config/example.yaml whose clock stands a second after the mix's last
/// end time, with every series of `traces` created (each request exported once, as in
/// a daemon that has run for a while) and then the heap on huge pages, as the daemon's
/// tick leaves it. Also returns how many bytes were collapsed into huge pages.
pub fn warmed(traces: &[Vec<u8>]) -> (Pipeline, usize) {
    let config = Config::from_yaml(include_str!("../../config/example.yaml"), "example.yaml")
        .expect("config/example.yaml is valid");
    let clock = Arc::new(ManualClock::new(
        Mix::default().end_unix_nanos + 1_000_000_000,
    ));
    let pipeline = Pipeline::new(&config, clock).expect("config/example.yaml compiles");
    for body in traces {
        pipeline
            .ingest
            .export(Transport::Grpc, Signal::Traces, Encoding::Protobuf, body)
            .expect("the mixed requests are valid");
    }
    let huge = sloxide::memory::use_huge_pages();
    (pipeline, huge)
}
