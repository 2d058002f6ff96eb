//! sloxide turns OpenTelemetry spans and logs into service level indicators.
//!
//! ```text
//! transport ──> body ──> decode ──> classify ──> record ──────────> shards
//! (tonic gRPC,  (limits,  (wire walk  (compiled    (span and log            │ tick, once a second:
//!  axum HTTP)    gunzip)   or JSON,    plan: labels, series; SLO rings)     │ quantiles, SLO windows,
//!                          a Batch)    SLO checks)                          │ burn, budget, alerts
//!                                                                           v
//!                                      /metrics <── render <── snapshot and shards
//! ```
//!
//! - [`ingest`]: the transports and the body stage, shared by gRPC and HTTP.
//! - [`classify`]: the configuration compiled into label rules.
//! - [`aggregate`]: the sharded series, the tick, and their exposition.
//! - [`clock`]: time, behind a trait that tests drive.
//! - [`slo`]: window rings and the precomputed SLI, burn-rate, budget and alert values.
//! - [`otlp`]: the zero-copy protobuf walkers and the JSON slow path.
//! - [`export`]: the Prometheus text encoder and the metrics port.
//! - [`telemetry`]: the daemon's own metrics.
//! - [`config`]: the configuration, parsed then validated into checked types.
//! - [`daemon`]: wiring the stages together, startup and graceful shutdown.
//! - [`generate`]: what `sloxide rules` and `sloxide dashboard` print: Prometheus
//!   alerting rules and a Grafana dashboard for the configured SLOs.
#![deny(missing_docs)]

pub mod aggregate;
pub mod classify;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod export;
pub mod fixture;
pub mod generate;
pub mod ingest;
pub mod otlp;
pub mod slo;
pub mod telemetry;
