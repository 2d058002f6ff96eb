//! The metrics port: `GET /metrics` in the Prometheus text format, `/healthz` and
//! `/readyz`.

pub mod render;
pub mod serve;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::{Mutex, Semaphore};

use render::Renderer;

/// What the metrics port renders: the pipeline implements it. `renderer` is kept
/// between scrapes; the source replaces it when the configuration it was made for is
/// no longer in force.
pub trait Scrape: Send + Sync + std::fmt::Debug + 'static {
    /// Writes every family into `out` (cleared first).
    fn scrape(&self, renderer: &mut Option<Renderer>, out: &mut String);
}

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
    source: Arc<dyn Scrape>,
    readiness: Arc<Readiness>,
    // Reused between scrapes; concurrent scrapes take turns.
    buffers: Mutex<Buffers>,
    /// Scrapes in progress, until their client has taken the response.
    scrapes: Arc<Semaphore>,
}

/// The render state: the text buffer and renderer, and the last render, shared by
/// every scrape that arrived before it started.
#[derive(Debug, Default)]
struct Buffers {
    text: String,
    renderer: Option<Renderer>,
    last: Option<(Instant, Bytes)>,
}

impl Exporter {
    /// An exporter of what `source` renders, reporting `readiness`.
    pub fn new(source: Arc<dyn Scrape>, readiness: Arc<Readiness>) -> Self {
        Self {
            source,
            readiness,
            buffers: Mutex::new(Buffers::default()),
            scrapes: Arc::new(Semaphore::new(serve::MAX_SCRAPES)),
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

/// One scrape. At most [`serve::MAX_SCRAPES`] are in progress, each until its client
/// has taken the whole response; more get 503. A scrape that finds a render running
/// waits for it and, when that render started after the scrape arrived, shares its
/// response rather than render again: scrapers that arrive together cost one render and
/// one copy of the text.
async fn metrics(State(exporter): State<Arc<Exporter>>) -> Response {
    let Ok(slot) = exporter.scrapes.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many scrapes in progress; retry\n",
        )
            .into_response();
    };
    let arrived = Instant::now();
    let mut buffers = exporter.buffers.lock().await;
    let bytes = match &buffers.last {
        Some((started, bytes)) if *started >= arrived => bytes.clone(),
        _ => {
            let started = Instant::now();
            let Buffers { text, renderer, .. } = &mut *buffers;
            exporter.source.scrape(renderer, text);
            let bytes = Bytes::copy_from_slice(text.as_bytes());
            buffers.last = Some((started, bytes.clone()));
            bytes
        }
    };
    drop(buffers);
    (
        [(header::CONTENT_TYPE, text::CONTENT_TYPE)],
        axum::body::Body::new(serve::ScrapeBody::new(bytes, slot)),
    )
        .into_response()
}

async fn readyz(State(exporter): State<Arc<Exporter>>) -> Response {
    let code = if exporter.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, exporter.readiness.describe()).into_response()
}
