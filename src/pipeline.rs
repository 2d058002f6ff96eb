//! The one place the stages are put together: the plan, the aggregation (with its SLO
//! engine), the receivers' telemetry and the ingest stage, all from one [`Config`] and
//! one [`Clock`]. The daemon, the tests and the benches build it the same way.

use std::sync::Arc;

use crate::aggregate::Aggregator;
use crate::classify::{Plan, PlanError};
use crate::clock::Clock;
use crate::config::Config;
use crate::export::render::Renderer;
use crate::ingest::{BodyLimits, DEFAULT_MAX_IN_FLIGHT, Ingest};
use crate::telemetry::Telemetry;

/// The stages from decode to render, wired.
#[derive(Debug)]
pub struct Pipeline {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// The configuration compiled into label and SLO rules.
    pub plan: Arc<Plan>,
    /// The series and the SLO engine: the recorder ingest feeds, and what the tick and
    /// the scrape read.
    pub aggregator: Arc<Aggregator>,
    /// The receivers' self-metrics.
    pub telemetry: Arc<Telemetry>,
    /// The entry point of both transports: admission, body limits, decode, record.
    pub ingest: Arc<Ingest>,
}

impl Pipeline {
    /// Builds every stage for `config`, reading time from `clock`.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, PlanError> {
        let plan = Arc::new(Plan::compile(config)?);
        let aggregator = Arc::new(Aggregator::new(config, plan.clone(), clock));
        let telemetry = Arc::new(Telemetry::default());
        let limits = BodyLimits {
            max_request_bytes: config.limits.max_request_bytes,
            max_decompressed_bytes: config.limits.max_decompressed_bytes,
        };
        let ingest = Arc::new(Ingest::new(
            plan.keys().clone(),
            limits,
            DEFAULT_MAX_IN_FLIGHT,
            telemetry.clone(),
            aggregator.clone(),
        ));
        Ok(Self {
            config: Arc::new(config.clone()),
            plan,
            aggregator,
            telemetry,
            ingest,
        })
    }

    /// Runs the once-a-second work now: SLO windows, quantiles, idle expiry.
    pub fn tick(&self) {
        self.aggregator.tick();
    }

    /// What `/metrics` would serve now, rendered with a fresh [`Renderer`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        Renderer::new(&self.config).render(&self.aggregator, &self.telemetry, &mut out);
        out
    }
}
