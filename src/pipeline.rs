//! The one place the stages are put together: the plan, the aggregation (with its SLO
//! engine), the receivers' telemetry and the ingest stage, all from one [`Config`] and
//! one [`Clock`]. The daemon, the tests and the benches build it the same way.
//!
//! What depends on the configuration (plan, aggregation) is a [`Generation`]; a reload
//! builds the next one, carries every count across with the same rules as a restore,
//! and swaps it in while ingest waits, so no event is lost or counted twice.

use std::sync::{Arc, Mutex, RwLock};

use crate::aggregate::Aggregator;
use crate::classify::{Plan, PlanError};
use crate::clock::Clock;
use crate::config::Config;
use crate::export::Scrape;
use crate::export::render::Renderer;
use crate::export::text::Format;
use crate::ingest::{BodyLimits, Ingest, Target};
use crate::state::StateMetrics;
use crate::state::proto::Checkpoint;
use crate::state::snapshot::{self, RestoreReport, Scope};
use crate::telemetry::Telemetry;

/// What one configuration builds: its plan and its series.
#[derive(Debug)]
pub struct Generation {
    /// The configuration.
    pub config: Arc<Config>,
    /// The configuration compiled into label and SLO rules.
    pub plan: Arc<Plan>,
    /// The series and the SLO engine: the recorder ingest feeds, and what the tick and
    /// the scrape read.
    pub aggregator: Arc<Aggregator>,
}

impl Generation {
    fn build(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, PlanError> {
        let plan = Arc::new(Plan::compile(config)?);
        let aggregator = Arc::new(Aggregator::new(config, plan.clone(), clock));
        Ok(Self {
            config: Arc::new(config.clone()),
            plan,
            aggregator,
        })
    }

    fn target(&self) -> Target {
        Target {
            keys: self.plan.keys().clone(),
            trace_keys: self.plan.trace_keys().clone(),
            limits: limits(&self.config),
            recorder: self.aggregator.clone(),
            auth: self
                .config
                .auth
                .as_ref()
                .map(|a| Arc::new(crate::auth::BearerTokens::new(a))),
        }
    }
}

fn limits(config: &Config) -> BodyLimits {
    BodyLimits {
        max_request_bytes: config.limits.max_request_bytes,
        max_decompressed_bytes: config.limits.max_decompressed_bytes,
        max_records: config.limits.max_records_per_request,
        compression: config.limits.compression,
        body_read_timeout: config.limits.body_read_timeout,
        admission_wait: config.limits.admission_wait,
    }
}

impl Scrape for Pipeline {
    fn scrape(&self, renderer: &mut Option<Renderer>, out: &mut String, format: Format) {
        let generation = self.current();
        let renderer = match renderer {
            Some(r) if Arc::ptr_eq(r.config(), &generation.config) => r,
            slot => slot.insert(Renderer::new(generation.config.clone())),
        };
        renderer.render(
            &generation.aggregator,
            &self.telemetry,
            &self.state,
            out,
            format,
        );
    }

    fn status(&self, page: &crate::export::status::Page, out: &mut String) -> bool {
        let generation = self.current();
        crate::export::status::render(&generation.config, &generation.aggregator, page, out)
    }
}

/// The stages from decode to render, wired.
#[derive(Debug)]
pub struct Pipeline {
    clock: Arc<dyn Clock>,
    current: RwLock<Arc<Generation>>,
    reloading: Mutex<()>,
    /// The receivers' self-metrics; they outlive reloads.
    pub telemetry: Arc<Telemetry>,
    /// Checkpoint, restore and reload self-metrics.
    pub state: Arc<StateMetrics>,
    /// The entry point of both transports: admission, body limits, decode, record.
    pub ingest: Arc<Ingest>,
}

impl Pipeline {
    /// Builds every stage for `config`, reading time from `clock`.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, PlanError> {
        let generation = Generation::build(config, clock.clone())?;
        let telemetry = Arc::new(Telemetry::default());
        let ingest = Arc::new(Ingest::new(
            generation.target(),
            config.limits.max_in_flight_bytes,
            telemetry.clone(),
        ));
        let state = Arc::new(StateMetrics::default());
        state.reloaded();
        Ok(Self {
            clock,
            current: RwLock::new(Arc::new(generation)),
            reloading: Mutex::new(()),
            telemetry,
            state,
            ingest,
        })
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The aggregation in force.
    pub fn aggregator(&self) -> Arc<Aggregator> {
        self.current().aggregator.clone()
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.current().plan.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.current().config.clone()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs the once-a-second work now: SLO windows, quantiles, idle expiry.
    pub fn tick(&self) {
        self.aggregator().tick();
    }

    /// What `/metrics` would serve now, rendered with a fresh [`Renderer`].
    pub fn render(&self) -> String {
        self.render_as(Format::Text)
    }

    /// What `/metrics` would serve now in `format`, rendered with a fresh [`Renderer`].
    pub fn render_as(&self, format: Format) -> String {
        let mut out = String::new();
        self.scrape(&mut None, &mut out, format);
        out
    }

    /// A checkpoint of the state now: the SLO windows only, or everything.
    pub fn checkpoint(&self, scope: Scope, clean_shutdown: bool) -> Checkpoint {
        let generation = self.current();
        snapshot::snapshot(
            &generation.aggregator,
            &self.telemetry,
            &generation.config,
            scope,
            clean_shutdown,
            self.clock.now_nanos(),
        )
    }

    /// Adds a checkpoint's series into the state (at start, before serving): the SLO
    /// windows always, the cumulative counters only with `counters` (the caller decides:
    /// a clean shutdown's newest checkpoint, used once). Ends with a tick, so the first
    /// scrape shows the restored values.
    pub fn restore(&self, checkpoint: &Checkpoint, counters: bool) -> RestoreReport {
        let generation = self.current();
        let report = snapshot::restore(
            &generation.aggregator,
            &self.telemetry,
            &generation.config,
            checkpoint,
            counters,
            self.clock.now_nanos() / 1_000_000_000,
        );
        self.state.decided(&report);
        self.tick();
        report
    }

    /// Applies a new configuration without a restart: builds the next generation,
    /// then, while ingest waits, carries every count across (SLOs whose identity is
    /// unchanged keep theirs; new ones start empty; removed ones leave) and swaps it in.
    /// On error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<RestoreReport, PlanError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = Generation::build(config, self.clock.clone())?;
        let target = next.target();
        let next = Arc::new(next);
        let mut report = RestoreReport::default();
        self.ingest.retarget(target, || {
            // No request is being recorded now, and none will be until this returns:
            // the old generation's numbers are final.
            let old = self.current();
            let saved = snapshot::snapshot(
                &old.aggregator,
                &self.telemetry,
                &old.config,
                Scope::Everything,
                true,
                self.clock.now_nanos(),
            );
            // The receiver counters stay where they are (they outlive generations).
            let saved = Checkpoint {
                receiver: Vec::new(),
                ..saved
            };
            let now = self.clock.now_nanos() / 1_000_000_000;
            report =
                snapshot::restore(&next.aggregator, &self.telemetry, config, &saved, true, now);
            next.aggregator.tick();
            *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = next.clone();
        });
        self.state.decided(&report);
        self.state.reloaded();
        Ok(report)
    }
}
