//! What `sloxide rules` and `sloxide dashboard` print: Prometheus recording and alerting
//! rules and a Grafana dashboard for the configured SLOs.
//!
//! Both are built on sums of the window counts every daemon serves
//! (`sloxide_slo_window_events`, `sloxide_slo_window_bad_events`), which add up across
//! replicas exactly: the recording rules turn the sums into burn rates, SLIs and budgets,
//! and the alerts and panels read those. The per-replica gauges the daemon precomputes
//! stay for single-instance users and readers of `/metrics`. `docs/alerting.md`
//! describes the output.

mod dashboard;
mod promql;
mod rules;
#[cfg(test)]
mod tests;

pub use dashboard::dashboard;
pub use rules::rules;
