//! The integration test binary: one binary, one module per concern.

mod admission;
mod aggregate;
mod alloc;
mod auth;
mod bad_input;
mod compression;
mod connections;
mod deploy;
mod e2e;
mod exemplars;
mod fuzz_regressions;
mod gateway;
mod generate;
mod harness;
mod memory;
mod operator;
mod peers;
mod prometheus;
mod scaleout;
mod scrape;
mod slo;
mod state;
mod status_page;
mod tls;
mod walker;
