//! The daemon's life in three steps, as linkerd2-proxy's `main` → `App::spawn` →
//! drain: [`App::build`] makes the pipeline, opens `state.data_dir` and restores the
//! checkpoint; [`App::serve`] binds the three listeners and spawns the servers, the tick
//! and the checkpoints; [`Running::drain`] shuts down gracefully and writes the final
//! checkpoint. In between, [`run_with`] answers [`Event`]s: signals and config changes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::classify::PlanError;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::export::{Exporter, Readiness};
use crate::ingest::grpc::OtlpGrpc;
use crate::net::{self, Port, TlsListeners, tls::Certificates};
use crate::pipeline::Pipeline;
use crate::state::file::{self, Generation};
use crate::state::snapshot::{RestoreReport, Scope, SloDecision};
use crate::state::{DataDir, Outcome, StateError};

/// How often the aggregation ticks (quantiles, expiry).
pub const TICK: Duration = Duration::from_secs(1);

/// When this many connections have closed since the most were open, the tick gives
/// the allocator's free memory back to the OS.
const RELEASE_AFTER_CONNECTIONS: u64 = 500;

/// How long shutdown waits for in-flight requests before it gives up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration could not be compiled.
    #[error("cannot compile the configuration: {0}")]
    Plan(PlanError),
    /// The data directory cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener could not be bound.
    /// (The errors' causes are part of their messages, not their sources, so that a
    /// caller printing the whole chain does not print them twice.)
    #[error("cannot listen on {addr} ({key}): {error}")]
    Bind {
        /// The configuration key (or flag) that gave the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A TLS certificate, key or CA file cannot be used.
    #[error("{key}.{}: {error}", .error.file.name())]
    Tls {
        /// `tls` or `metrics.tls`.
        key: &'static str,
        /// What is wrong with which file.
        error: net::tls::TlsError,
    },
    /// A server failed while running.
    #[error("{server} server failed: {message}")]
    Server {
        /// Which server.
        server: &'static str,
        /// What happened.
        message: String,
    },
}

impl From<PlanError> for DaemonError {
    fn from(error: PlanError) -> Self {
        Self::Plan(error)
    }
}

/// The addresses the daemon actually listens on (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// Prometheus.
    pub metrics: SocketAddr,
}

/// The most streams (requests) one OTLP/gRPC connection may have open at once, which it
/// is told in its HTTP/2 settings. Admission is by memory, so an open stream that sends
/// nothing holds next to nothing; the limit is generous so that a burst on a fresh
/// connection, sent before the client has read these settings, is not refused
/// (REFUSED_STREAM) past it, and it still bounds one connection's streams (Go's HTTP/2
/// server allows 250).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// How often an idle OTLP/gRPC connection is pinged, and how long an answer may take
/// before the connection is dropped as dead.
pub const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// See [`HTTP2_PING_INTERVAL`].
pub const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The listen backlog of every port: connections the kernel queues before they are
/// accepted (it caps this at `net.core.somaxconn`). The OS default through std is 128,
/// which a burst of new connections overruns.
pub const LISTEN_BACKLOG: u32 = 4096;

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As std's bind does: a restarted daemon can bind while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|error| DaemonError::Bind { key, addr, error })
}

/// Runs the daemon until `shutdown` completes, then drains and returns: no reload, no
/// other signal (the load generator and tests that need nothing else).
/// `on_bound` is told the bound addresses once all three listeners are up.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), DaemonError> {
    let events = ShutdownOnly(Some(Box::pin(shutdown)));
    run_with(config, events, None, on_bound).await
}

/// Something the daemon is told while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Drain and stop (SIGTERM, SIGINT, SIGQUIT).
    Shutdown(&'static str),
    /// Re-read the configuration (SIGHUP, or the watched file changed).
    Reload(&'static str),
    /// Write a checkpoint now (SIGUSR1).
    Checkpoint(&'static str),
    /// A signal that means nothing to sloxide; logged, not fatal (SIGUSR2).
    Ignored(&'static str),
}

/// Where events come from.
pub trait Events {
    /// The next event.
    fn next(&mut self) -> impl Future<Output = Event>;
}

/// Events of a future that completes once: shutdown, then nothing.
struct ShutdownOnly<F>(Option<std::pin::Pin<Box<F>>>);

impl<F: Future<Output = ()>> Events for ShutdownOnly<F> {
    async fn next(&mut self) -> Event {
        match self.0.take() {
            Some(f) => {
                f.await;
                Event::Shutdown("shutdown")
            }
            None => std::future::pending().await,
        }
    }
}

/// Reads the configuration again for a reload: the file with the command line's
/// overrides. Its error is the message `sloxide check` prints (file:line:column).
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// How the daemon rereads its configuration.
pub struct Reload {
    /// Reads it.
    pub read: Reloader,
    /// Polls this file every so often and reloads when its bytes change (for
    /// Kubernetes ConfigMaps, which change files and send no signal).
    pub watch: Option<(PathBuf, Duration)>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

/// Runs the daemon, answering `events` (and, with `reload`, rereading the configuration
/// on [`Event::Reload`] and when the watched file changes) until a shutdown event; then
/// drains and returns.
pub async fn run_with(
    config: Config,
    mut events: impl Events,
    reload: Option<Reload>,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), DaemonError> {
    let app = App::build(&config)?;
    let running = app.serve(&config).await?;
    on_bound(running.bound);
    let watch = reload.as_ref().and_then(|r| r.watch.clone());
    let mut seen = watch.as_ref().map(|(path, _)| file_digest(path));
    let mut poll = tokio::time::interval(watch.as_ref().map_or(Duration::from_secs(3600), |w| w.1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = poll.tick(), if watch.is_some() => {
                let Some((path, _)) = &watch else { continue };
                let now = file_digest(path);
                if seen.as_ref() == Some(&now) {
                    continue;
                }
                seen = Some(now);
                Event::Reload("a change of the watched configuration file")
            }
        };
        match event {
            Event::Shutdown(why) => {
                tracing::info!("received {why}");
                break;
            }
            Event::Reload(why) => match &reload {
                Some(reload) => {
                    running.reload(why, &reload.read).await;
                    // A reload by signal has read the file too: the watch must not
                    // reload the same bytes again.
                    if let Some((path, _)) = &watch {
                        seen = Some(file_digest(path));
                    }
                }
                None => tracing::warn!(
                    "{why}: this daemon runs on the embedded default configuration, there is no file to reread"
                ),
            },
            Event::Checkpoint(why) => {
                tracing::info!("{why}: writing a checkpoint now");
                running.checkpoint_now().await;
            }
            Event::Ignored(why) => {
                tracing::info!("received {why}; it means nothing to sloxide and is ignored")
            }
        }
    }
    running.drain().await
}

/// The bytes of `path` (or the read error's text), to notice a change.
fn file_digest(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}

/// The daemon's stages and what serves them, built but not yet listening.
#[derive(Debug)]
pub struct App {
    pipeline: Arc<Pipeline>,
    readiness: Arc<Readiness>,
    exporter: Arc<Exporter>,
    checkpoints: Option<Arc<Checkpoints>>,
}

/// A serving daemon: its addresses, and what [`Running::drain`] stops.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub bound: BoundAddrs,
    app: App,
    stop_otlp: watch::Sender<bool>,
    stop_metrics: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), DaemonError>>,
    http: JoinHandle<Result<(), DaemonError>>,
    metrics: JoinHandle<Result<(), DaemonError>>,
    tick: JoinHandle<()>,
    periodic: Option<JoinHandle<()>>,
    certificates: [Option<Arc<Certificates>>; 2],
}

impl App {
    /// Builds the pipeline and the metrics port for `config`, on the system clock; with
    /// a `state.data_dir`, opens (and locks) it and restores the newest readable
    /// checkpoint. Nothing listens yet, so `/readyz` cannot say ready before the
    /// restore is done.
    pub fn build(config: &Config) -> Result<Self, DaemonError> {
        let pipeline = Arc::new(Pipeline::new(config, Arc::new(SystemClock))?);
        let checkpoints = match &config.state.data_dir {
            Some(dir) => {
                let dir = DataDir::open(dir)?;
                restore(&pipeline, &dir)?;
                Some(Arc::new(Checkpoints {
                    dir,
                    pipeline: pipeline.clone(),
                    writing: tokio::sync::Mutex::new(()),
                }))
            }
            None => {
                pipeline.state.set_outcome(Outcome::Disabled);
                None
            }
        };
        let readiness = Arc::new(Readiness::default());
        let exporter = Arc::new(Exporter::new(pipeline.clone(), readiness.clone()));
        exporter.set_auth(metrics_auth(config));
        Ok(Self {
            pipeline,
            readiness,
            exporter,
            checkpoints,
        })
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Binds the three listeners and spawns the receivers, the metrics port, the tick
    /// and the periodic checkpoints; ready once it returns.
    pub async fn serve(self, config: &Config) -> Result<Running, DaemonError> {
        let grpc_listener = bind("listen.otlp_grpc", config.listen.otlp_grpc).await?;
        let http_listener = bind("listen.otlp_http", config.listen.otlp_http).await?;
        let metrics_listener = bind("listen.metrics", config.listen.metrics).await?;
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let bound = BoundAddrs {
            otlp_grpc: local(&grpc_listener, config.listen.otlp_grpc),
            otlp_http: local(&http_listener, config.listen.otlp_http),
            metrics: local(&metrics_listener, config.listen.metrics),
        };

        let telemetry = &self.pipeline.telemetry;
        let certificates = |listeners: TlsListeners, tls: &Option<crate::config::Tls>| {
            tls.as_ref()
                .map(|tls| Certificates::new(listeners, tls, telemetry.clone()))
                .transpose()
                .map_err(|error| DaemonError::Tls {
                    key: listeners.key(),
                    error,
                })
        };
        let otlp_tls = certificates(TlsListeners::Otlp, &config.tls)?;
        let metrics_tls = certificates(TlsListeners::Metrics, &config.metrics.tls)?;
        let otlp_cap = otlp_cap(config.limits.max_connections);
        let timeouts = net::Timeouts {
            header_read: config.limits.header_read_timeout,
            idle: config.limits.idle_timeout,
        };
        let listener = |port, cap, tls: &Option<Arc<Certificates>>| Ports {
            port,
            cap,
            timeouts,
            tls: tls.clone(),
            telemetry: telemetry.clone(),
        };

        let (stop_otlp, otlp_stopped) = watch::channel(false);
        let (stop_metrics, metrics_stopped) = watch::channel(false);
        let ingest = &self.pipeline.ingest;
        let grpc = tokio::spawn(serve_grpc(
            OtlpGrpc::new(ingest.clone()),
            grpc_listener,
            listener(Port::OtlpGrpc, otlp_cap, &otlp_tls),
            otlp_stopped.clone(),
        ));
        let http = tokio::spawn(serve_axum(
            http_listener,
            crate::ingest::http::router(ingest.clone()),
            listener(Port::OtlpHttp, otlp_cap, &otlp_tls),
            otlp_stopped.clone(),
        ));
        let metrics = tokio::spawn(serve_metrics(
            metrics_listener,
            self.exporter.clone().router(),
            listener(Port::Metrics, net::METRICS_MAX_CONNECTIONS, &metrics_tls),
            metrics_stopped.clone(),
        ));
        for certificates in [&otlp_tls, &metrics_tls].into_iter().flatten() {
            tokio::spawn(certificates.clone().watch(metrics_stopped.clone()));
        }
        let tick = tokio::spawn(tick(self.pipeline.clone(), until(otlp_stopped.clone())));
        let periodic = self.checkpoints.clone().map(|c| {
            tokio::spawn(c.periodic(config.state.checkpoint_interval, until(otlp_stopped)))
        });

        self.readiness.set_ready();
        for (port, addr, tls) in [
            (Port::OtlpGrpc, bound.otlp_grpc, &otlp_tls),
            (Port::OtlpHttp, bound.otlp_http, &otlp_tls),
            (Port::Metrics, bound.metrics, &metrics_tls),
        ] {
            let (tls, client_auth) = match tls {
                Some(c) => ("on", c.client_auth()),
                None => ("off", "none"),
            };
            let cap = if port == Port::Metrics {
                net::METRICS_MAX_CONNECTIONS
            } else {
                otlp_cap
            };
            tracing::info!(
                "listener {}={addr} tls={tls} client_auth={client_auth} max_connections={cap}",
                port.as_str()
            );
        }
        tracing::info!(
            otlp_grpc = %bound.otlp_grpc,
            otlp_http = %bound.otlp_http,
            metrics = %bound.metrics,
            slos = config.slos.len(),
            data_dir = %config
                .state
                .data_dir
                .as_deref()
                .map_or("none".into(), |d| d.display().to_string()),
            "sloxide listening"
        );
        Ok(Running {
            bound,
            app: self,
            stop_otlp,
            stop_metrics,
            grpc,
            http,
            metrics,
            tick,
            periodic,
            certificates: [otlp_tls, metrics_tls],
        })
    }
}

/// `limits.max_connections`, clamped to the descriptor budget (after raising the soft
/// descriptor limit to the hard one); warns once when it is lowered.
fn otlp_cap(configured: usize) -> usize {
    let nofile = net::raise_nofile_limit();
    let cap = net::otlp_cap(configured, nofile);
    if cap < configured {
        tracing::warn!(
            "limits.max_connections lowered from {configured} to {cap} per OTLP port: the descriptor limit (RLIMIT_NOFILE) is {}, and the metrics port ({}) and the daemon's own files ({}) keep theirs; raise the limit (e.g. LimitNOFILE) to allow more",
            nofile.unwrap_or_default(),
            net::METRICS_MAX_CONNECTIONS,
            net::RESERVED_DESCRIPTORS
        );
    }
    cap
}

/// The tokens `GET /metrics` requires under `config` (`metrics.auth`).
fn metrics_auth(config: &Config) -> Option<Arc<crate::auth::BearerTokens>> {
    config
        .metrics
        .auth
        .as_ref()
        .map(|a| Arc::new(crate::auth::BearerTokens::new(a)))
}

/// Loads the newest readable checkpoint of `dir` into `pipeline`, logging what it
/// found and did; bad files are moved aside and never stop the start.
fn restore(pipeline: &Pipeline, dir: &DataDir) -> Result<(), DaemonError> {
    let now_secs = pipeline.clock().now_nanos() / 1_000_000_000;
    let loaded = dir.load(now_secs)?;
    for refused in &loaded.refused {
        pipeline.state.rejected(refused.why.reason());
        tracing::error!(
            file = %refused.file.display(),
            moved_to = ?refused.moved_to,
            "checkpoint refused: {}",
            refused.why
        );
    }
    let Some((checkpoint, generation)) = loaded.checkpoint else {
        let outcome = if loaded.refused.is_empty() {
            tracing::info!(data_dir = %dir.path().display(), "no checkpoint: starting empty");
            Outcome::FirstStart
        } else {
            tracing::error!(data_dir = %dir.path().display(), "no readable checkpoint: starting empty");
            Outcome::Discarded
        };
        pipeline.state.set_outcome(outcome);
        return Ok(());
    };
    let header = checkpoint.header.clone().unwrap_or_default();
    // Counters come back only from the newest file of a clean shutdown, and only once:
    // the previous generation, or a clean file already restored by a run that then
    // crashed, is older than what Prometheus has scraped since.
    let counters = header.clean_shutdown && generation == Generation::Current;
    let report = pipeline.restore(&checkpoint, counters);
    if counters {
        // Use up the clean mark before serving: from here on the newest file holds
        // only the windows, so a crash before the first periodic checkpoint does not
        // restore these counters a second time.
        let bytes = file::encode(&pipeline.checkpoint(Scope::Windows, false));
        if let Err(e) = dir.write(&bytes) {
            pipeline.state.write_failed(&e);
            tracing::error!(data_dir = %dir.path().display(), "cannot write the first checkpoint: {e}");
        }
    }
    let written = header.written_unix_nanos / 1_000_000_000;
    let outcome = if report.counters {
        Outcome::Clean(generation)
    } else {
        Outcome::Crash(generation)
    };
    pipeline.state.set_outcome(outcome);
    let age = now_secs.saturating_sub(written);
    tracing::info!(
        file = %dir.path().join(generation.file_name()).display(),
        written_by = %header.sloxide_version,
        age_secs = age,
        clean_shutdown = header.clean_shutdown,
        span_series = report.series[0],
        quantile_series = report.series[1],
        log_series = report.series[2],
        slo_series = report.series[3],
        "restored checkpoint{}",
        if generation == Generation::Previous { " (the previous generation: the newest could not be read)" } else { "" }
    );
    if !report.counters {
        tracing::warn!(
            "SLO windows restored; cumulative counters start from zero (the last run did not shut down cleanly, or its clean checkpoint was not the newest file): a reset Prometheus handles"
        );
    }
    log_decisions("restore", &report);
    Ok(())
}

/// Logs, once per SLO, what a restore or reload did with its saved state.
fn log_decisions(when: &str, report: &RestoreReport) {
    if let Some(why) = &report.spans_skipped {
        tracing::warn!("{when}: span series start empty: {why}");
    }
    for (slo, decision) in &report.slos {
        match decision {
            SloDecision::Kept => tracing::info!(slo, "{when}: SLO keeps its counts"),
            SloDecision::New => tracing::info!(slo, "{when}: new SLO starts empty"),
            SloDecision::Reset => tracing::warn!(
                slo,
                "{when}: SLO's filter or indicator changed: it starts empty, its saved events were judged by another rule"
            ),
            SloDecision::Removed => tracing::info!(
                slo,
                "{when}: SLO no longer configured: its state is dropped"
            ),
        }
    }
}

/// Writes checkpoints of one pipeline into one data directory, one at a time.
#[derive(Debug)]
struct Checkpoints {
    dir: DataDir,
    pipeline: Arc<Pipeline>,
    writing: tokio::sync::Mutex<()>,
}

impl Checkpoints {
    /// Takes a checkpoint and writes it, off the async workers; logs and counts a
    /// failure. The snapshot copies each shard under its lock; encoding and I/O happen
    /// after, so a slow disk delays checkpoints, never requests.
    async fn write(self: &Arc<Self>, scope: Scope, clean: bool) {
        let _one_at_a_time = self.writing.lock().await;
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let checkpoint = this.pipeline.checkpoint(scope, clean);
            let bytes = file::encode(&checkpoint);
            this.dir
                .write(&bytes)
                .map(|()| (start.elapsed(), bytes.len() as u64))
        })
        .await;
        let state = &self.pipeline.state;
        match written {
            Ok(Ok((took, size))) => {
                state.written(self.pipeline.clock().now_nanos(), took, size);
                tracing::debug!(
                    bytes = size,
                    took_ms = took.as_millis() as u64,
                    clean,
                    "checkpoint written"
                );
            }
            Ok(Err(e)) => {
                state.write_failed(&e);
                tracing::error!(data_dir = %self.dir.path().display(), "checkpoint not written (retried at the next interval): {e}");
            }
            Err(e) => {
                state.write_failed(&std::io::Error::other(e.to_string()));
                tracing::error!("checkpoint task failed: {e}");
            }
        }
    }

    /// Writes a windows-only checkpoint every `interval` until `stop`.
    async fn periodic(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        every.tick().await; // the first tick is immediate; the state was just restored
        loop {
            tokio::select! {
                _ = every.tick() => self.write(Scope::Windows, false).await,
                () = &mut stop => break,
            }
        }
    }
}

impl Running {
    /// The pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.app.pipeline
    }

    /// Writes a windows-only checkpoint now, if there is a data directory.
    pub async fn checkpoint_now(&self) {
        match &self.app.checkpoints {
            Some(c) => c.write(Scope::Windows, false).await,
            None => tracing::warn!("no state.data_dir: there is nowhere to write a checkpoint"),
        }
    }

    /// Rereads the configuration and applies it; a configuration that fails validation
    /// is logged with the same message as `sloxide check`, and the old one stays.
    pub async fn reload(&self, why: &str, read: &Reloader) {
        tracing::info!("{why}: rereading the configuration");
        let pipeline = &self.app.pipeline;
        let mut next = match read() {
            Ok(config) => config,
            Err(message) => {
                pipeline.state.reload_failed();
                tracing::error!("configuration not reloaded, the old one stays: {message}");
                return;
            }
        };
        let old = pipeline.config();
        let mut kept = Vec::new();
        if next.listen != old.listen {
            kept.push("listen");
            next.listen = old.listen.clone();
        }
        if next.state != old.state {
            kept.push("state");
            next.state = old.state.clone();
        }
        if next.limits.max_in_flight_bytes != old.limits.max_in_flight_bytes {
            kept.push("limits.max_in_flight_bytes");
            next.limits.max_in_flight_bytes = old.limits.max_in_flight_bytes;
        }
        if next.tls.is_some() != old.tls.is_some() {
            kept.push("tls (on or off)");
            next.tls = old.tls.clone();
        }
        if next.metrics.tls.is_some() != old.metrics.tls.is_some() {
            kept.push("metrics.tls (on or off)");
            next.metrics.tls = old.metrics.tls.clone();
        }
        if next.limits.max_connections != old.limits.max_connections
            || next.limits.header_read_timeout != old.limits.header_read_timeout
            || next.limits.idle_timeout != old.limits.idle_timeout
        {
            kept.push("the connection limits");
            next.limits.max_connections = old.limits.max_connections;
            next.limits.header_read_timeout = old.limits.header_read_timeout;
            next.limits.idle_timeout = old.limits.idle_timeout;
        }
        // The certificate files are read again (new paths taken) on every reload.
        for (certificates, tls) in self.certificates.iter().zip([&next.tls, &next.metrics.tls]) {
            if let (Some(certificates), Some(tls)) = (certificates, tls) {
                let (certificates, tls) = (certificates.clone(), tls.clone());
                let _ = tokio::task::spawn_blocking(move || certificates.set(&tls)).await;
            }
        }
        if !kept.is_empty() {
            tracing::warn!(
                "reload: {} cannot change while running; the old values stay until a restart",
                kept.join(" and ")
            );
        }
        let pipeline = pipeline.clone();
        let auth = metrics_auth(&next);
        let applied = tokio::task::spawn_blocking(move || pipeline.reload(&next)).await;
        match applied {
            Ok(Ok(report)) => {
                self.app.exporter.set_auth(auth);
                log_decisions("reload", &report);
                tracing::info!("configuration reloaded");
            }
            Ok(Err(e)) => {
                self.app.pipeline.state.reload_failed();
                tracing::error!("configuration not reloaded, the old one stays: {e}");
            }
            Err(e) => {
                self.app.pipeline.state.reload_failed();
                tracing::error!("reload task failed: {e}");
            }
        }
    }

    /// Stops taking requests, drains those in flight for up to [`DRAIN_TIMEOUT`], stops
    /// the tick and the periodic checkpoints, writes the final (clean) checkpoint, then
    /// stops the metrics port.
    pub async fn drain(self) -> Result<(), DaemonError> {
        tracing::info!("shutting down: draining in-flight requests");
        self.app.readiness.set_stopping();
        self.app.pipeline.ingest.close();
        let _ = self.stop_otlp.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let (grpc, http) = tokio::join!(self.grpc, self.http);
            (flatten(grpc), flatten(http))
        })
        .await;
        let _ = self.tick.await;
        if let Some(periodic) = self.periodic {
            let _ = periodic.await;
        }
        let clean = drained.is_ok();
        if let Some(c) = &self.app.checkpoints {
            // After a drain that timed out, requests may still be recording: such a
            // checkpoint is not clean, and its counters will not be restored.
            c.write(Scope::Everything, clean).await;
        }
        let _ = self.stop_metrics.send(true);
        let metrics = tokio::time::timeout(Duration::from_secs(1), self.metrics).await;
        match drained {
            Ok((grpc, http)) => {
                grpc?;
                http?;
            }
            Err(_) => tracing::warn!(
                "in-flight requests did not finish within {DRAIN_TIMEOUT:?}; exiting anyway"
            ),
        }
        if let Ok(joined) = metrics {
            flatten(joined)?;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A future that completes once `rx` turns true.
async fn until(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// What the three ports share in how they serve: see [`net::Listener`].
struct Ports {
    port: Port,
    cap: usize,
    timeouts: net::Timeouts,
    tls: Option<Arc<Certificates>>,
    telemetry: Arc<crate::telemetry::Telemetry>,
}

impl Ports {
    fn listener<S, B>(
        self,
        http: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
        service: S,
        request: fn(http::Request<hyper::body::Incoming>) -> http::Request<B>,
    ) -> net::Listener<S, B> {
        net::Listener {
            port: self.port,
            cap: self.cap,
            timeouts: self.timeouts,
            tls: self.tls,
            stall_guard: self.port == Port::Metrics,
            http,
            service,
            request,
            telemetry: self.telemetry,
        }
    }
}

/// HTTP/2 settings of both OTLP ports: the per-connection stream limit and the pings.
fn otlp_http2(http: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    http.http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
}

async fn serve_grpc(
    grpc: OtlpGrpc,
    listener: TcpListener,
    ports: Ports,
    stop: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    // HTTP/2 only, as gRPC is. Large frames and windows: a 1000-span request (about
    // 400 KB) arrives in about three DATA frames rather than 24, each of which costs h2
    // an allocation and a wake-up, and is walked in them without a copy
    // (`ingest::buffers::Received`). Each connection may open only a share of the requests
    // in flight, and a peer that stops answering pings is dropped. The connection's
    // window is 8 MiB, as before the hardening work: with 4 MiB, gRPC throughput on the
    // load generator was 0.85 of the pre-hardening daemon's, with 8 MiB 0.93
    // (docs/benchmarks.md).
    let mut http = net::http_builder().http2_only();
    otlp_http2(&mut http);
    http.http2()
        .max_frame_size(256 * 1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20);
    ports
        .listener(http, grpc, |req| req)
        .serve(listener, stop)
        .await;
    Ok(())
}

async fn serve_axum(
    listener: TcpListener,
    app: axum::Router,
    ports: Ports,
    stop: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    // HTTP/1, and HTTP/2 (h2c, or by ALPN under TLS).
    let mut http = net::http_builder();
    otlp_http2(&mut http);
    ports
        .listener(http, app, |req| req.map(axum::body::Body::new))
        .serve(listener, stop)
        .await;
    Ok(())
}

/// The metrics port: as [`serve_axum`] without the OTLP HTTP/2 settings, on connections
/// that close when a write to the client stalls (`export::serve::WRITE_STALL`).
async fn serve_metrics(
    listener: TcpListener,
    app: axum::Router,
    ports: Ports,
    stop: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    ports
        .listener(net::http_builder(), app, |req| {
            req.map(axum::body::Body::new)
        })
        .serve(listener, stop)
        .await;
    Ok(())
}

/// Ticks the aggregation in force every [`TICK`] until `stop`.
async fn tick(pipeline: Arc<Pipeline>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The most connections open since memory was last given back: when many have
    // closed since (a flood of idle connections, timed out), their buffers are free
    // but still held by the allocator.
    let mut peak_connections = 0;
    loop {
        tokio::select! {
            _ = every.tick() => {
                let open: u64 = crate::net::metrics::Port::ALL
                    .iter()
                    .map(|&port| pipeline.telemetry.connections.open(port))
                    .sum();
                peak_connections = peak_connections.max(open);
                let closed_many = peak_connections >= open + RELEASE_AFTER_CONNECTIONS;
                if closed_many {
                    peak_connections = open;
                }
                // Scrapes and status pages of many series free megabytes of text.
                let rendered_much = crate::memory::take_rendered_much();
                let pipeline = pipeline.clone();
                // The tick walks every series: keep it off the I/O workers.
                let _ = tokio::task::spawn_blocking(move || {
                    pipeline.tick();
                    // Before free memory is given back: only resident regions are
                    // collapsed, and what is given back after stays given back.
                    crate::memory::use_huge_pages();
                    pipeline.ingest.release_memory();
                    if closed_many || rendered_much {
                        crate::memory::release_free_memory();
                    }
                })
                .await;
            }
            () = &mut stop => break,
        }
    }
}

fn server_error(server: &'static str, e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Server {
        server,
        message: e.to_string(),
    }
}

fn flatten(
    joined: Result<Result<(), DaemonError>, tokio::task::JoinError>,
) -> Result<(), DaemonError> {
    joined.unwrap_or_else(|e| Err(server_error("task", e)))
}

/// The signals the daemon answers, installed before the listeners are announced, so
/// that a signal sent as soon as the daemon says it is listening is never missed (it
/// would otherwise take its default action, which for most is to end the process).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    streams: Vec<(tokio::signal::unix::Signal, Event)>,
}

impl Signals {
    /// Installs the handlers: SIGTERM, SIGINT and SIGQUIT shut down gracefully, SIGHUP
    /// reloads the configuration, SIGUSR1 writes a checkpoint, SIGUSR2 is logged and
    /// ignored. Call it inside the runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let table = [
                (SignalKind::terminate(), Event::Shutdown("SIGTERM")),
                (SignalKind::interrupt(), Event::Shutdown("SIGINT")),
                (SignalKind::quit(), Event::Shutdown("SIGQUIT")),
                (SignalKind::hangup(), Event::Reload("SIGHUP")),
                (SignalKind::user_defined1(), Event::Checkpoint("SIGUSR1")),
                (SignalKind::user_defined2(), Event::Ignored("SIGUSR2")),
            ];
            let mut streams = Vec::with_capacity(table.len());
            for (kind, event) in table {
                streams.push((signal(kind)?, event));
            }
            Ok(Self { streams })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }
}

impl Events for Signals {
    async fn next(&mut self) -> Event {
        #[cfg(unix)]
        {
            std::future::poll_fn(|cx| {
                for (stream, event) in &mut self.streams {
                    if stream.poll_recv(cx).is_ready() {
                        return std::task::Poll::Ready(*event);
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Event::Shutdown("Ctrl-C")
        }
    }
}
