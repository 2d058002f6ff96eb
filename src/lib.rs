//! sloxide turns OpenTelemetry spans and logs into service level indicators.
//!
//! Data flows one way, and each stage imports only from the stages before it:
//!
//! ```text
//! transport ──> body ──> decode ──> classify ──> record ──> tick ──> render
//! (ingest::grpc, (ingest:  (otlp:     (classify:   (aggregate,  (aggregate,  (export:
//!  ingest::http)  limits,   wire walk  labels,      slo, into    slo: windows, text,
//!                 inflate)  or JSON)   SLO checks)  the store)   quantiles)   render)
//! ```
//!
//! - [`net`]: the connection layer of all three ports: accept loop, connection caps,
//!   descriptor budget, timeouts, TLS.
//! - [`ingest`]: the transports and the body stage, shared by gRPC and HTTP.
//! - [`otlp`]: the zero-copy protobuf walkers, the JSON slow path, the OTLP enums.
//! - [`classify`]: the configuration compiled into label rules and SLO checks.
//! - [`store`]: the family store under every series: sharded label sets, admission,
//!   overflow, idle expiry, timed visits.
//! - [`aggregate`]: the span and log families, recording and the tick.
//! - [`slo`]: the SLO family: window rings and the precomputed SLI, burn-rate, budget
//!   and alert values.
//! - [`export`]: the metrics port, the text encoder and one renderer per family.
//! - [`families`]: every metric family's name, type and help, declared once.
//! - [`telemetry`]: the receivers' own counters and the refusal table.
//! - [`state`]: checkpoints in `state.data_dir`: the file, what goes in, what comes
//!   back at start and at reload.
//! - [`pipeline`]: the stages wired from one configuration; [`daemon`]: build, serve,
//!   drain.
//! - [`config`]: the configuration, parsed then validated into checked types.
//! - [`clock`]: time, behind a trait that tests drive.
//! - [`generate`]: what `sloxide rules` and `sloxide dashboard` print.
//! - `fuzz` (hidden): the bodies of the fuzz targets in `fuzz/`, shared with the
//!   regression test that replays what they once found.

// The library logs through `tracing`; only the binary writes to stdout or stderr.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]
#![deny(missing_docs)]

pub mod aggregate;
pub mod auth;
pub mod classify;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod export;
pub mod families;
pub mod fixture;
#[doc(hidden)]
pub mod fuzz;
pub mod generate;
pub mod ingest;
pub mod logging;
pub mod memory;
pub mod net;
pub mod otlp;
pub mod pipeline;
pub mod slo;
pub mod state;
pub mod store;
pub mod telemetry;
