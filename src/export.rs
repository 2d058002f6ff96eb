//! The metrics port: `GET /metrics` in the Prometheus text format (behind bearer tokens
//! when `metrics.auth` is set), `/healthz` and `/readyz` (never behind tokens: probes
//! carry none), and the status pages `/` and `/slo/{name}` ([`status`]).

pub mod render;
pub mod serve;
pub mod status;
pub mod text;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::{Mutex, Semaphore};

use crate::auth::BearerTokens;
use render::Renderer;
use text::Format;

/// What the metrics port renders: the pipeline implements it. `renderer` is kept
/// between scrapes; the source replaces it when the configuration it was made for is
/// no longer in force.
pub trait Scrape: Send + Sync + std::fmt::Debug + 'static {
    /// Writes every family into `out` (cleared first), in `format`.
    fn scrape(&self, renderer: &mut Option<Renderer>, out: &mut String, format: Format);

    /// Writes the status page `page` into `out` (cleared first); false, with a
    /// not-found page, when there is no such page.
    fn status(&self, page: &status::Page, out: &mut String) -> bool {
        let _ = page;
        status::unavailable(out);
        false
    }
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
    buffers: Arc<Mutex<Buffers>>,
    /// Scrapes waiting for `buffers`: a render is kept for sharing only while some are.
    waiting: AtomicUsize,
    /// Scrapes in progress, until their client has taken the response.
    scrapes: Arc<Semaphore>,
    /// The tokens `/metrics` requires (`metrics.auth`).
    auth: RwLock<Option<Arc<BearerTokens>>>,
    /// Status pages in progress (`status::MAX_PAGES`).
    pages: status::Pages,
}

/// The render state: the renderer, the size of the next render's buffer, and the last
/// render with its format, kept while scrapes that arrived before it started are still
/// waiting to share it.
#[derive(Debug, Default)]
struct Buffers {
    /// Bytes to reserve for the next render: the last one's length and an eighth, so
    /// that a render rarely grows its buffer (each growth copies what it holds).
    reserve: usize,
    renderer: Option<Renderer>,
    last: Option<(Instant, Format, Bytes)>,
}

impl Exporter {
    /// An exporter of what `source` renders, reporting `readiness`.
    pub fn new(source: Arc<dyn Scrape>, readiness: Arc<Readiness>) -> Self {
        Self {
            source,
            readiness,
            buffers: Arc::new(Mutex::new(Buffers::default())),
            scrapes: Arc::new(Semaphore::new(serve::MAX_SCRAPES)),
            waiting: AtomicUsize::new(0),
            auth: RwLock::new(None),
            pages: status::Pages::default(),
        }
    }

    /// Requires one of these tokens on `/metrics` from now on (`None`: none).
    pub fn set_auth(&self, auth: Option<Arc<BearerTokens>>) {
        *self
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = auth;
    }

    /// `None` when `headers` may scrape `/metrics`; otherwise the 401 to answer, with
    /// the `WWW-Authenticate` challenge when there is one.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        self.refused(headers, false)
    }

    /// [`Exporter::refusal`] for a status page, which a browser asks for: a token as
    /// the password of HTTP Basic authentication is let in too, and the 401 challenges
    /// for Basic first, so that the browser prompts for it.
    fn page_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        self.refused(headers, true)
    }

    fn refused(&self, headers: &HeaderMap, browser: bool) -> Option<Response> {
        let auth = self
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let challenge = match auth.as_ref() {
            Some(tokens) if browser && !tokens.allows_browser(headers) => tokens.challenge(),
            Some(tokens) if !browser && !tokens.allows(headers) => tokens.challenge(),
            _ => return None,
        };
        let mut response = (
            StatusCode::UNAUTHORIZED,
            if browser {
                "missing or invalid bearer token (metrics.auth); a browser may give a token as the password\n"
            } else {
                "missing or invalid bearer token (metrics.auth)\n"
            },
        )
            .into_response();
        let challenges = response.headers_mut();
        if browser && auth.as_ref().is_some_and(|t| t.takes_basic()) {
            challenges.append(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"sloxide\", charset=\"UTF-8\""),
            );
        }
        if let Some(challenge) = challenge {
            challenges.append(header::WWW_AUTHENTICATE, challenge);
        }
        Some(response)
    }

    /// The routes of the metrics port.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/", get(status::list))
            .route("/slo/{name}", get(status::detail))
            .with_state(self)
    }
}

/// One scrape. At most [`serve::MAX_SCRAPES`] are in progress, each until its client
/// has taken the whole response; more get 503. A scrape that finds a render running
/// waits for it and, when that render started after the scrape arrived, shares its
/// response rather than render again: scrapers that arrive together cost one render.
/// The rendered text is the response body itself, never copied: its buffer is freed
/// once the last scrape sharing it is answered, so a scrape's text is in memory once,
/// and only while a scrape is in progress. A scraper that accepts OpenMetrics gets it,
/// with exemplars ([`Format::negotiate`]); renders are shared only between scrapes of
/// one format.
async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    if let Some(refused) = exporter.refusal(&headers) {
        return refused;
    }
    let Ok(slot) = exporter.scrapes.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many scrapes in progress; retry\n",
        )
            .into_response();
    };
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let arrived = Instant::now();
    exporter.waiting.fetch_add(1, Ordering::SeqCst);
    let mut buffers = exporter.buffers.clone().lock_owned().await;
    let others_waiting = exporter.waiting.fetch_sub(1, Ordering::SeqCst) > 1;
    let shared = match &buffers.last {
        Some((started, rendered, bytes)) if *started >= arrived && *rendered == format => {
            Some(bytes.clone())
        }
        _ => None,
    };
    let bytes = match shared {
        Some(bytes) => bytes,
        None => {
            // Rendering takes a while at many series: off the runtime's workers, so
            // health checks and ingest go on meanwhile.
            let source = exporter.source.clone();
            let rendered = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let Buffers {
                    reserve, renderer, ..
                } = &mut *buffers;
                let mut text = String::with_capacity(*reserve);
                source.scrape(renderer, &mut text, format);
                *reserve = text.len() + text.len() / 8;
                let bytes = Bytes::from(text);
                buffers.last = Some((started, format, bytes.clone()));
                (buffers, bytes)
            })
            .await;
            let Ok((returned, bytes)) = rendered else {
                return (StatusCode::INTERNAL_SERVER_ERROR, "the render failed\n").into_response();
            };
            buffers = returned;
            bytes
        }
    };
    // Keep the render only for scrapes still waiting: one that arrives later renders
    // anew, and an idle daemon holds no rendered text.
    if !others_waiting {
        buffers.last = None;
    }
    drop(buffers);
    (
        [(header::CONTENT_TYPE, format.content_type())],
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A source whose every render takes 200 ms and is counted.
    #[derive(Debug, Default)]
    struct Slow(AtomicUsize);

    impl Scrape for Slow {
        fn scrape(&self, _: &mut Option<Renderer>, out: &mut String, _: Format) {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(200));
            out.clear();
            out.push_str(&format!("render {n}\n"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn scrapes_waiting_for_one_render_share_the_next_and_nothing_is_kept() {
        let source = Arc::new(Slow::default());
        let exporter = Arc::new(Exporter::new(source.clone(), Arc::default()));
        let scrape = |exporter: Arc<Exporter>| {
            tokio::spawn(async move {
                let response = metrics(State(exporter), HeaderMap::new()).await;
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                String::from_utf8(body.to_vec()).unwrap()
            })
        };
        // The first renders; two arrive during that render and wait: the first of them
        // to get the lock renders again (the running render started before they
        // arrived), and the other shares that render.
        let first = scrape(exporter.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = scrape(exporter.clone());
        let third = scrape(exporter.clone());
        let bodies = [
            first.await.unwrap(),
            second.await.unwrap(),
            third.await.unwrap(),
        ];
        assert_eq!(source.0.load(Ordering::SeqCst), 2, "{bodies:?}");
        assert_eq!(bodies[0], "render 1\n");
        assert_eq!(bodies[1], "render 2\n");
        assert_eq!(bodies[2], "render 2\n");
        // No one is waiting: the shared render is not kept.
        assert!(exporter.buffers.lock().await.last.is_none());
        // A later scrape renders anew.
        assert_eq!(scrape(exporter.clone()).await.unwrap(), "render 3\n");
    }
}
