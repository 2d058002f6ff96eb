//! The metrics port: `GET /metrics` in the Prometheus text format, `/healthz` and
//! `/readyz`.

pub mod render;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Mutex;

use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::telemetry::Telemetry;
use render::Renderer;

/// Where the daemon is in its life, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Readiness {
    /// Listening, restored and accepting.
    pub fn set_ready(&self) {
        // Relaxed: readiness is advisory and publishes no other data.
        self.0.store(READY, Ordering::Relaxed);
    }

    /// Shutting down: `/readyz` answers 503 from now on.
    pub fn set_stopping(&self) {
        self.0.store(STOPPING, Ordering::Relaxed);
    }

    /// True while ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed) == READY
    }

    fn describe(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            STARTING => "starting\n",
            READY => "ready\n",
            _ => "shutting down\n",
        }
    }
}

/// What the metrics port serves.
#[derive(Debug)]
pub struct Exporter {
    telemetry: Arc<Telemetry>,
    aggregator: Arc<Aggregator>,
    readiness: Arc<Readiness>,
    // Reused between scrapes; concurrent scrapes take turns.
    buffers: Mutex<(String, Renderer)>,
}

impl Exporter {
    /// An exporter of `aggregator`'s series and `telemetry` (configured by `config`),
    /// reporting `readiness`.
    pub fn new(
        config: &Config,
        telemetry: Arc<Telemetry>,
        aggregator: Arc<Aggregator>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            telemetry,
            aggregator,
            readiness,
            buffers: Mutex::new((String::new(), Renderer::new(config))),
        }
    }

    /// The routes of the metrics port.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

async fn metrics(State(exporter): State<Arc<Exporter>>) -> Response {
    let mut buffers = exporter.buffers.lock().await;
    let (text, renderer) = &mut *buffers;
    renderer.render(&exporter.aggregator, &exporter.telemetry, text);
    let body = text.as_bytes().to_vec();
    drop(buffers);
    ([(header::CONTENT_TYPE, text::CONTENT_TYPE)], body).into_response()
}

async fn readyz(State(exporter): State<Arc<Exporter>>) -> Response {
    let code = if exporter.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, exporter.readiness.describe()).into_response()
}
