//! What `sloxide rules` and `sloxide dashboard` print: Prometheus alerting rules and a
//! Grafana dashboard for the configured SLOs.
//!
//! Both read only the series that the daemon serves already computed (docs/reference.md):
//! burn rates, budgets and SLIs per window, on the roll-up across regions and per
//! region, so neither needs a recording rule. `docs/alerting.md` describes the output.

mod dashboard;
mod promql;
mod rules;
#[cfg(test)]
mod tests;

pub use dashboard::dashboard;
pub use rules::rules;
