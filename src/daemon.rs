//! The daemon's life in three steps, as linkerd2-proxy's `main` → `App::spawn` →
//! drain: [`App::build`] makes the pipeline (no I/O), [`App::serve`] binds the three
//! listeners and spawns the servers and the tick, and [`Running::drain`] shuts down
//! gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::classify::PlanError;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::export::{Exporter, Readiness};
use crate::ingest::grpc::OtlpGrpc;
use crate::pipeline::Pipeline;

/// How often the aggregation ticks (quantiles, expiry).
pub const TICK: Duration = Duration::from_secs(1);

/// How long shutdown waits for in-flight requests before it gives up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration could not be compiled.
    #[error("cannot compile the configuration: {0}")]
    Plan(#[from] PlanError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The configuration key (or flag) that gave the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
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

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { key, addr, source })
}

/// Runs the daemon until `shutdown` completes, then drains and returns.
/// `on_bound` is told the bound addresses once all three listeners are up.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), DaemonError> {
    let app = App::build(&config)?;
    let running = app.serve(&config).await?;
    on_bound(running.bound);
    shutdown.await;
    running.drain().await
}

/// The daemon's stages and what serves them, built but not yet listening.
#[derive(Debug)]
pub struct App {
    pipeline: Pipeline,
    readiness: Arc<Readiness>,
    exporter: Arc<Exporter>,
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
}

impl App {
    /// Builds the pipeline and the metrics port for `config`, on the system clock.
    pub fn build(config: &Config) -> Result<Self, DaemonError> {
        let pipeline = Pipeline::new(config, Arc::new(SystemClock))?;
        let readiness = Arc::new(Readiness::default());
        let exporter = Arc::new(Exporter::new(
            config,
            pipeline.telemetry.clone(),
            pipeline.aggregator.clone(),
            readiness.clone(),
        ));
        Ok(Self {
            pipeline,
            readiness,
            exporter,
        })
    }

    /// Binds the three listeners and spawns the receivers, the metrics port and the
    /// tick; ready once it returns.
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

        let (stop_otlp, otlp_stopped) = watch::channel(false);
        let (stop_metrics, metrics_stopped) = watch::channel(false);
        let ingest = &self.pipeline.ingest;
        let grpc = tokio::spawn(serve_grpc(
            OtlpGrpc::new(ingest.clone()),
            grpc_listener,
            until(otlp_stopped.clone()),
        ));
        let http = tokio::spawn(serve_axum(
            "OTLP/HTTP",
            http_listener,
            crate::ingest::http::router(ingest.clone()),
            until(otlp_stopped.clone()),
        ));
        let metrics = tokio::spawn(serve_axum(
            "metrics",
            metrics_listener,
            self.exporter.clone().router(),
            until(metrics_stopped),
        ));
        let tick = tokio::spawn(tick(self.pipeline.aggregator.clone(), until(otlp_stopped)));

        if let Some(dir) = &config.state.data_dir {
            tracing::warn!(
                data_dir = %dir.display(),
                "state.data_dir is set, but checkpoint and restore are not built yet: counters and windows start empty at each start"
            );
        }
        self.readiness.set_ready();
        tracing::info!(
            otlp_grpc = %bound.otlp_grpc,
            otlp_http = %bound.otlp_http,
            metrics = %bound.metrics,
            slos = config.slos.len(),
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
        })
    }
}

impl Running {
    /// Stops taking requests, drains those in flight for up to [`DRAIN_TIMEOUT`], then
    /// stops the tick and the metrics port.
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

async fn serve_grpc(
    grpc: OtlpGrpc,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    // Large frames and windows: a 1000-span request (about 380 KB) arrives in two DATA
    // frames rather than 24, each of which costs h2 an allocation and a wake-up.
    tonic::transport::Server::builder()
        .max_frame_size(Some(256 * 1024))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .serve_with_incoming_shutdown(
            grpc,
            // tonic ignores the builder's tcp_nodelay on this path; without it Nagle's
            // algorithm holds back small writes (responses, window updates) and
            // throughput halves (examples/loadgen.rs).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )
        .await
        .map_err(|e| server_error("OTLP/gRPC", e))
}

async fn serve_axum(
    server: &'static str,
    listener: TcpListener,
    app: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    axum::serve(listener.tap_io(nodelay), app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| server_error(server, e))
}

/// Ticks the aggregation every [`TICK`] until `stop`.
async fn tick(aggregator: Arc<crate::aggregate::Aggregator>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let aggregator = aggregator.clone();
                // The tick walks every series: keep it off the I/O workers.
                let _ = tokio::task::spawn_blocking(move || aggregator.tick()).await;
            }
            () = &mut stop => break,
        }
    }
}

/// Turns Nagle's algorithm off on an accepted connection: responses are small and must
/// not wait for the next write.
fn nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
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

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now, and returns a future that
/// completes on either. Installing them before the listeners are announced means a
/// signal sent as soon as the daemon says it is listening is never missed (it would
/// otherwise kill the process with the default action). Call it inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("received SIGINT"),
                _ = terminate.recv() => tracing::info!("received SIGTERM"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("received Ctrl-C");
        })
    }
}
