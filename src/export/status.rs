//! The status pages on the metrics port: `GET /` lists every SLO (roll-up and regions),
//! `GET /slo/{name}` details one. Plain HTML with inline CSS and SVG: no script, no
//! outside asset, so they work offline and under a strict Content-Security-Policy.
//!
//! Like `/metrics`, a page renders from the tick's latest [`Snapshot`] (and, for the
//! detail page's latency table, from the quantiles the tick computed), never from the
//! rings; it sits behind `metrics.auth` when that is set; at most [`MAX_PAGES`] pages
//! are in progress at once (their own slots, so that pages never take a Prometheus
//! scrape's), each until its client has taken the last byte; and its connection is
//! closed when a write stalls, as every connection of the metrics port is.

mod detail;
pub mod html;
mod list;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::Exporter;
use super::serve::ScrapeBody;
use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::config::slo::{AlertSeverity, Slo};
use crate::slo::{Row, SloRuntime, Snapshot};

/// Status pages in progress at once, from the render until the client has taken the
/// last byte; more get 503. Their own slots: a page never takes a scrape's.
pub const MAX_PAGES: usize = 2;

/// The page slots of one metrics port.
#[derive(Debug)]
pub struct Pages {
    slots: Arc<Semaphore>,
}

impl Default for Pages {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_PAGES)),
        }
    }
}

/// Which page a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    /// `/`: every SLO.
    List(ListQuery),
    /// `/slo/{name}`: one SLO.
    Detail(String),
}

/// How the list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Sort {
    /// Worst first: paging, then ticket, then the least budget left (the default).
    #[default]
    Status,
    /// By name.
    Name,
    /// By the SLI over the period.
    Sli,
    /// By the budget remaining.
    Budget,
    /// By the events over the period.
    Events,
    /// By the burn rate over the window of this label (`1h`).
    Burn(String),
}

impl Sort {
    /// The `sort` query value.
    pub fn key(&self) -> String {
        match self {
            Sort::Status => "status".into(),
            Sort::Name => "name".into(),
            Sort::Sli => "sli".into(),
            Sort::Budget => "budget".into(),
            Sort::Events => "events".into(),
            Sort::Burn(w) => format!("burn-{w}"),
        }
    }

    /// Whether the sort runs high to low unless `dir` says otherwise.
    pub fn descending_by_default(&self) -> bool {
        matches!(self, Sort::Events | Sort::Burn(_))
    }
}

/// The query of `/`: `sort` (`status`, `name`, `sli`, `budget`, `events`,
/// `burn-<window>`), `dir` (`asc`, `desc`), `q` (a substring of the name, service or
/// description), `show=firing` (only SLOs with an alert firing somewhere) and
/// `regions=open` (every SLO's regions shown).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// The sort key.
    pub sort: Sort,
    /// `Some(true)` for high to low; `None` for the key's default.
    pub descending: Option<bool>,
    /// The text filter, at most [`ListQuery::MAX_FILTER`] characters.
    pub filter: String,
    /// Only SLOs with an alert firing in the roll-up or a region.
    pub firing_only: bool,
    /// Regions expanded.
    pub open: bool,
}

impl ListQuery {
    /// The longest text filter kept.
    pub const MAX_FILTER: usize = 200;

    /// Reads a query string; unknown keys and values are ignored.
    pub fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = html::url_decode(value);
            match key {
                "sort" => {
                    q.sort = match value.as_str() {
                        "name" => Sort::Name,
                        "sli" => Sort::Sli,
                        "budget" => Sort::Budget,
                        "events" => Sort::Events,
                        v => match v.strip_prefix("burn-") {
                            Some(w) if !w.is_empty() && w.len() <= 16 => Sort::Burn(w.to_owned()),
                            _ => Sort::Status,
                        },
                    }
                }
                "dir" => {
                    q.descending = match value.as_str() {
                        "asc" => Some(false),
                        "desc" => Some(true),
                        _ => None,
                    }
                }
                "q" => q.filter = value.trim().chars().take(Self::MAX_FILTER).collect(),
                "show" => q.firing_only = value == "firing",
                "regions" => q.open = value == "open",
                _ => {}
            }
        }
        q
    }

    /// Whether the list runs high to low.
    pub fn is_descending(&self) -> bool {
        self.descending
            .unwrap_or_else(|| self.sort.descending_by_default())
    }

    /// This query with another sort, as a relative link (`?sort=...`): the same
    /// filters; the direction flips when the sort stays.
    fn link(&self, sort: &Sort) -> String {
        let descending = if *sort == self.sort {
            !self.is_descending()
        } else {
            sort.descending_by_default()
        };
        let mut out = format!("?sort={}", sort.key());
        if descending != sort.descending_by_default() {
            out.push_str(if descending { "&dir=desc" } else { "&dir=asc" });
        }
        self.append_filters(&mut out);
        out
    }

    /// `&q=...&show=...&regions=...` as far as set.
    fn append_filters(&self, out: &mut String) {
        if !self.filter.is_empty() {
            out.push_str("&q=");
            html::url_encode(&self.filter, out);
        }
        if self.firing_only {
            out.push_str("&show=firing");
        }
        if self.open {
            out.push_str("&regions=open");
        }
    }
}

/// Renders `page` of `agg`'s latest snapshot into `out` (cleared first). False when the
/// page names no SLO: `out` then holds the not-found page.
pub fn render(config: &Config, agg: &Aggregator, page: &Page, out: &mut String) -> bool {
    out.clear();
    let snapshot = agg.slos().snapshot();
    let model = Model::new(config, agg.slos().definitions(), &snapshot);
    match page {
        Page::List(query) => {
            list::write(&model, query, out);
            true
        }
        Page::Detail(name) => match model.find(name) {
            Some(slo) => {
                let latency = detail::latency_of(agg, &model.config.slos[slo]);
                detail::write(&model, slo, &latency, out);
                true
            }
            None => {
                detail::not_found(name, out);
                false
            }
        },
    }
}

/// A page when the source has none (a metrics port without a pipeline).
pub fn unavailable(out: &mut String) {
    out.clear();
    let mut o = html::Out { s: out };
    head(&mut o, "sloxide: no status");
    o.raw("<main><h1>No status pages here</h1></main>");
    tail(&mut o);
}

/// `GET /`.
pub(super) async fn list(
    State(exporter): State<Arc<Exporter>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let query = ListQuery::parse(uri.query().unwrap_or(""));
    serve(exporter, &headers, Page::List(query)).await
}

/// `GET /slo/{name}`.
pub(super) async fn detail(
    State(exporter): State<Arc<Exporter>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    serve(exporter, &headers, Page::Detail(name)).await
}

/// What every page's response carries besides its type: nothing cached, no script,
/// no outside load, no framing.
const SECURITY_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
];

/// The content type of the pages.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

async fn serve(exporter: Arc<Exporter>, headers: &HeaderMap, page: Page) -> Response {
    if let Some(refused) = exporter.page_refusal(headers) {
        return refused;
    }
    let Ok(slot) = exporter.pages.slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many status pages in progress; retry\n",
        )
            .into_response();
    };
    let gzip = accepts_gzip(headers);
    // The list of many SLOs takes milliseconds: off the runtime's workers, as a render.
    let source = exporter.source.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let found = source.status(&page, &mut out);
        let body = if gzip {
            let body = compress(out.as_bytes());
            // The page itself is freed here; its gzipped body when the client has it.
            crate::memory::note_rendered(out.len());
            body
        } else {
            Bytes::from(out)
        };
        (found, body)
    })
    .await;
    let Ok((found, body)) = rendered else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the render failed\n").into_response();
    };
    let code = if found {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let mut response = (
        code,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        axum::body::Body::new(ScrapeBody::new(body, slot)),
    )
        .into_response();
    if gzip {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    for (name, value) in SECURITY_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not at `q=0`): every
/// browser does, and the list of many SLOs shrinks about fifty times.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// `html` gzipped at the fastest level: a few ms for the list of 500 SLOs x 10 regions.
pub fn compress(html: &[u8]) -> Bytes {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(html.len() / 16 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(html);
    Bytes::from(gz.finish().unwrap_or_default())
}

/// Where an SLO stands, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Health {
    /// A page tier holds.
    Page,
    /// A ticket tier holds (and no page tier).
    Ticket,
    /// Events, no alert.
    Ok,
    /// No event over the period.
    NoData,
}

impl Health {
    fn of(row: &Row, period: usize) -> Self {
        if row.alert[AlertSeverity::Page as usize] {
            Health::Page
        } else if row.alert[AlertSeverity::Ticket as usize] {
            Health::Ticket
        } else if row.windows.get(period).is_none_or(|w| w.0 == 0) {
            Health::NoData
        } else {
            Health::Ok
        }
    }

    /// The CSS class.
    fn class(self) -> &'static str {
        match self {
            Health::Page => "pg",
            Health::Ticket => "tk",
            Health::Ok => "ok",
            Health::NoData => "nd",
        }
    }

    /// The word shown.
    fn label(self) -> &'static str {
        match self {
            Health::Page => "page",
            Health::Ticket => "ticket",
            Health::Ok => "ok",
            Health::NoData => "no data",
        }
    }
}

/// One SLO as the pages need it: its configuration, the engine's view, its windows.
pub(super) struct SloView<'a> {
    pub slo: &'a Slo,
    pub rt: &'a SloRuntime,
    /// Its windows, in the engine's window order.
    pub windows: Vec<Duration>,
    /// The index of the period's window.
    pub period: usize,
    /// Its rows: the roll-up first, then the regions by name.
    pub rows: &'a [Row],
}

impl<'a> SloView<'a> {
    /// The roll-up row, when the snapshot has one.
    pub fn rollup(&self) -> Option<&'a Row> {
        self.rows.first().filter(|r| r.region.is_none())
    }

    /// The region rows.
    pub fn regions(&self) -> &'a [Row] {
        match self.rows.first() {
            Some(r) if r.region.is_none() => &self.rows[1..],
            _ => self.rows,
        }
    }

    /// The state of `row`.
    pub fn state(&self, row: &Row) -> Health {
        Health::of(row, self.period)
    }

    /// The worst state of the roll-up and every region.
    pub fn worst(&self) -> Health {
        self.rows
            .iter()
            .map(|r| self.state(r))
            .min()
            .unwrap_or(Health::NoData)
    }

    /// The index of window `w`, when the SLO reports it.
    pub fn window(&self, w: Duration) -> Option<usize> {
        self.windows.iter().position(|x| *x == w)
    }

    /// The lowest burn-rate threshold of the page tiers and of the ticket tiers whose
    /// long or short window is `w`.
    pub fn thresholds(&self, config: &Config, w: Duration) -> [Option<f64>; 2] {
        let mut out = [None, None];
        for (severity, tier) in config.alerting.tiers() {
            if tier.long == w || tier.short == w {
                let t = tier.threshold(self.slo.period);
                let slot: &mut Option<f64> = &mut out[severity as usize];
                *slot = Some(slot.map_or(t, |x: f64| x.min(t)));
            }
        }
        out
    }

    /// The error budget of the whole period, as seconds of the period that may be bad.
    pub fn budget_secs(&self) -> f64 {
        self.rt.budget.ratio() * self.rt.period_secs
    }
}

/// The snapshot and the configuration it was computed for.
pub(super) struct Model<'a> {
    pub config: &'a Config,
    pub slos: &'a [SloRuntime],
    pub snapshot: &'a Snapshot,
}

impl<'a> Model<'a> {
    fn new(config: &'a Config, slos: &'a [SloRuntime], snapshot: &'a Snapshot) -> Self {
        Self {
            config,
            slos,
            snapshot,
        }
    }

    /// The index of the SLO named `name`.
    fn find(&self, name: &str) -> Option<usize> {
        self.slos.iter().position(|s| &*s.name == name)
    }

    /// SLO `i` with its rows.
    pub fn view(&self, i: usize) -> SloView<'a> {
        let slo = &self.config.slos[i];
        let windows = slo.windows(&self.config.alerting);
        let period = windows.iter().position(|w| *w == slo.period).unwrap_or(0);
        let rows = &self.snapshot.rows;
        let start = rows.partition_point(|r| r.slo < i);
        let end = start + rows[start..].partition_point(|r| r.slo == i);
        SloView {
            slo,
            rt: &self.slos[i],
            windows,
            period,
            rows: &rows[start..end],
        }
    }

    /// How many SLOs.
    pub fn len(&self) -> usize {
        self.slos.len().min(self.config.slos.len())
    }
}

/// The page's head, the style sheet, and the opening of the body.
pub(super) fn head(o: &mut html::Out<'_>, title: &str) {
    o.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>")
        .text(title)
        .raw("</title><style>")
        .raw(STYLE)
        .raw("</style></head><body>");
}

/// The end of the page.
pub(super) fn tail(o: &mut html::Out<'_>) {
    o.raw("<footer>sloxide ")
        .raw(env!("CARGO_PKG_VERSION"))
        .raw(" · values from the last tick · <a href=\"metrics\">/metrics</a></footer></body></html>");
}

/// The style sheet of both pages.
const STYLE: &str = r#":root{--bg:#fff;--fg:#1f2328;--mut:#59636e;--line:#d8dee4;--head:#f6f8fa;--reg:#fbfcfd;--ok:#1a7f37;--tk:#bc4c00;--pg:#cf222e;--nd:#818b98;--bar:#e6e9ed;--link:#0969da;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--mut:#9198a1;--line:#30363d;--head:#161b22;--reg:#10151c;--ok:#3fb950;--tk:#e3813d;--pg:#f85149;--nd:#6e7681;--bar:#262c36;--link:#4493f8}}
*{box-sizing:border-box}
body{margin:0;padding:16px 24px 32px;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:22px;margin:0 0 2px}h2{font-size:16px;margin:28px 0 8px}
small,.mut{color:var(--mut)}small{font-size:12px}
.meta{color:var(--mut);margin:0 0 12px}
.num{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
.chip{display:inline-block;min-width:4.2rem;text-align:center;padding:1px 7px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:var(--ok)}
.chip.pg{background:var(--pg)}.chip.tk{background:var(--tk)}.chip.nd{background:var(--nd)}
.chip.sm{min-width:0;font-weight:500;margin-left:4px}
.sum{display:flex;gap:10px;flex-wrap:wrap;margin:6px 0 14px}
.sum span{padding:4px 10px;border:1px solid var(--line);border-radius:6px}
.sum b{font-size:16px;margin-right:4px}
form.f{display:flex;gap:8px;align-items:center;margin:0 0 12px;flex-wrap:wrap}
form.f input[type=search]{width:18em;padding:4px 8px;border:1px solid var(--line);border-radius:6px;background:var(--bg);color:var(--fg)}
form.f select,form.f button{padding:4px 8px;border:1px solid var(--line);border-radius:6px;background:var(--head);color:var(--fg)}
.t{border:1px solid var(--line);border-radius:8px;overflow:hidden;min-width:calc(var(--n)*3.1rem + 44rem + (var(--n) + 5)*8px + 22px)}
.r{display:grid;grid-template-columns:5rem minmax(13rem,1fr) 4.4rem 5.2rem 10.4rem repeat(var(--n),3.1rem) 6rem;gap:0 8px;align-items:center;padding:6px 10px;border-top:1px solid var(--line)}
.r.h{background:var(--head);border-top:0;font-size:12px;font-weight:600;color:var(--mut)}
.r.h a{color:var(--mut)}.r.h a.on{color:var(--fg)}
summary.r{cursor:pointer;list-style:none}summary.r::-webkit-details-marker{display:none}
summary.r:hover{background:var(--head)}
.tw::before{content:"\25B8";display:inline-block;width:1em;color:var(--mut)}
details[open] .tw::before{content:"\25BE"}
.r.reg{background:var(--reg);font-size:13px;padding-top:3px;padding-bottom:3px}
.r.reg .nm{padding-left:1.2em}
.nm{overflow:hidden}.nm a{font-weight:600}
.sub{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;color:var(--mut);font-size:12px}
.bud{display:grid;grid-template-columns:4.4rem 1fr;gap:0 6px;align-items:center}
.bud small{grid-column:1/3}.bud b{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
.bar{display:block;height:8px;border-radius:4px;background:var(--bar);overflow:hidden}
.bar i{display:block;height:100%;background:var(--ok)}
.bar i.lo{background:var(--tk)}.bar i.out{background:var(--pg)}
.b.pg{color:var(--pg);font-weight:700}.b.tk{color:var(--tk);font-weight:600}
.r>i{font-style:normal;font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
.r>i.pg{color:var(--pg);font-weight:700}.r>i.tk{color:var(--tk);font-weight:600}.r>i.z{color:var(--nd)}
.legend{margin:10px 0;color:var(--mut);font-size:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(11em,1fr));gap:10px;margin:14px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums;text-align:left}
.card .v small{font-weight:400}.card .bud{grid-template-columns:auto 1fr}
.card .bar{margin-top:6px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}
dl.facts dt{color:var(--mut)}dl.facts dd{margin:0}
table.d{border-collapse:collapse;font-size:13px}
table.d th,table.d td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left}
table.d th{background:var(--head);font-weight:600;color:var(--mut)}
table.d td.num,table.d th.num{text-align:right}table.d td.bc{min-width:10rem}
.wrap{overflow-x:auto}
svg{display:block;max-width:100%;height:auto}
svg text{fill:var(--mut);font-size:11px}
svg .grid{stroke:var(--line);stroke-width:1}
svg .zero{stroke:var(--mut);stroke-width:1}
svg .line{fill:none;stroke:var(--link);stroke-width:2}
svg .area{fill:var(--link);opacity:.12}
svg .even{fill:none;stroke:var(--mut);stroke-width:1;stroke-dasharray:4 4}
svg .under{fill:var(--pg);opacity:.08}
svg .badbar{fill:var(--pg);opacity:.7}
svg .track{fill:var(--bar)}
svg .fill{fill:var(--ok)}svg .fill.tk{fill:var(--tk)}svg .fill.pg{fill:var(--pg)}
svg .thr{stroke:var(--fg);stroke-width:2}
svg .p50{fill:var(--link)}svg .p99{fill:var(--link);opacity:.35}
svg .obj{stroke:var(--pg);stroke-width:2;stroke-dasharray:3 2}
svg circle{fill:var(--link)}
footer{margin-top:28px;color:var(--mut);font-size:12px}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::fixture::{self, Shape};
    use crate::ingest::Recorder;
    use crate::otlp::spans::{TraceBatch, walk_traces};
    use crate::pipeline::Pipeline;
    use prost::Message;

    const NOW: u64 = 1_700_000_000;

    /// A pipeline of `yaml`'s SLOs (after `edit`), with `spans` of `shape` recorded a
    /// minute ago and ticked, so that the quantiles of that minute are computed.
    fn pipeline(yaml: &str, edit: impl FnOnce(&mut Config), shapes: &[Shape]) -> Pipeline {
        let mut config = Config::from_yaml(yaml, "test.yaml").unwrap();
        edit(&mut config);
        let clock = Arc::new(ManualClock::new((NOW - 60) * 1_000_000_000));
        let p = Pipeline::new(&config, clock.clone()).unwrap();
        for shape in shapes {
            let body = fixture::traces(shape).encode_to_vec();
            let mut batch = TraceBatch::default();
            walk_traces(&body, p.plan().trace_keys(), &mut batch).unwrap();
            p.aggregator().record_traces(&batch);
        }
        clock.set(NOW * 1_000_000_000);
        p.tick();
        p
    }

    fn page(p: &Pipeline, page: Page) -> (bool, String) {
        let mut out = String::new();
        let found = crate::export::Scrape::status(p, &page, &mut out);
        (found, out)
    }

    const HOSTILE: &str = "x\"><script>alert(1)</script><img src=x onerror=alert(2)>'";

    #[test]
    fn hostile_names_services_descriptions_and_regions_are_escaped() {
        let yaml = "slos:\n  - name: placeholder\n    service: svc\n    objective: 99\n    indicator: {latency: {threshold: 100ms}}\n";
        let hostile_service = format!("svc{HOSTILE}");
        let shape = Shape {
            resources: 2,
            per_resource: 50,
            services: 1,
            service_names: vec![hostile_service.clone()],
            regions: vec![format!("eu{HOSTILE}"), "us".into()],
            end_unix_nanos: (NOW - 60) * 1_000_000_000,
            ..Shape::default()
        };
        let p = pipeline(
            yaml,
            |c| {
                // Names are checked to be [a-z0-9_-]+ when read; the page escapes them
                // all the same.
                c.slos[0].name = format!("n{HOSTILE}");
                c.slos[0].service = hostile_service.clone();
                c.slos[0].description = Some(format!("d{HOSTILE} & more"));
            },
            &[shape],
        );
        let (found, list) = page(&p, Page::List(ListQuery::default()));
        assert!(found);
        let (found, detail) = page(&p, Page::Detail(format!("n{HOSTILE}")));
        assert!(found, "{detail}");
        let (found, missing) = page(&p, Page::Detail(format!("m{HOSTILE}")));
        assert!(!found);
        for (what, html) in [
            ("list", &list),
            ("detail", &detail),
            ("not found", &missing),
        ] {
            let lower = html.to_lowercase();
            assert!(!lower.contains("<script"), "{what}: {html}");
            assert!(!lower.contains("<img"), "{what}");
            assert!(
                !html.contains("x\">"),
                "{what}: a quote closed an attribute"
            );
            assert!(
                html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{what}"
            );
        }
        // Names in links are percent-encoded.
        assert!(
            list.contains("href=\"slo/nx%22%3E%3Cscript%3Ealert%281%29"),
            "{list}"
        );
        // Both regions show, the hostile one escaped, in the list and the detail's
        // regions and latency tables.
        let region = "data-region=\"eux&quot;&gt;&lt;script&gt;";
        assert_eq!(list.matches(region).count(), 1, "{list}");
        assert_eq!(detail.matches(region).count(), 2, "{detail}");
        assert!(detail.contains("data-kind=\"server\""), "{detail}");
    }

    /// Three SLOs of 99%: `a` spends half its budget, `b` none, `c` four times its
    /// budget (a burn of 8 in `eu`, which pages; 4 in the roll-up, a ticket).
    fn three() -> Pipeline {
        let yaml = "slos:\n  - {name: a, service: sa, objective: 99, indicator: {availability: {}}}\n  - {name: b, service: sb, objective: 99, description: Quiet one, indicator: {availability: {}}}\n  - {name: c, service: sc, objective: 99, indicator: {availability: {}}}\n";
        let p = pipeline(yaml, |_| {}, &[]);
        let slos = p.aggregator();
        let slos = slos.slos();
        let t = NOW - 30;
        slos.record(0, "eu", t, 1_000, 5, NOW);
        slos.record(1, "eu", t, 1_000, 0, NOW);
        slos.record(1, "us", t, 1_000, 0, NOW);
        slos.record(2, "eu", t, 1_000, 80, NOW);
        slos.record(2, "us", t, 1_000, 0, NOW);
        p.tick();
        p
    }

    /// The `data-slo` of each roll-up row, in page order.
    fn order(html: &str) -> Vec<String> {
        html.split("<summary class=\"r\" data-slo=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_list_sorts_and_filters_on_the_server() {
        let p = three();
        let list = |q: &str| page(&p, Page::List(ListQuery::parse(q))).1;
        assert_eq!(order(&list("")), ["c", "a", "b"], "worst first");
        assert_eq!(order(&list("sort=budget")), ["c", "a", "b"]);
        assert_eq!(order(&list("sort=budget&dir=desc")), ["b", "a", "c"]);
        assert_eq!(order(&list("sort=name")), ["a", "b", "c"]);
        assert_eq!(order(&list("sort=name&dir=desc")), ["c", "b", "a"]);
        assert_eq!(order(&list("sort=events")), ["b", "c", "a"]);
        assert_eq!(order(&list("sort=burn-5m")), ["c", "a", "b"]);
        assert_eq!(order(&list("sort=sli")), ["c", "a", "b"]);
        assert_eq!(order(&list("q=quiet")), ["b"]);
        assert_eq!(order(&list("q=SC")), ["c"]);
        assert_eq!(order(&list("show=firing")), ["c"]);
        let all = list("");
        assert!(all.contains("data-k=\"page\" data-v=\"1\""), "{all}");
        // c's roll-up is a ticket; one of its regions pages.
        assert!(all.contains("data-k=\"regions-page\" data-v=\"1\">1 region page</span>"));
        // c's regions, worst first: eu pages, us is fine.
        let c = all.split("data-slo=\"c\"").skip(1).collect::<String>();
        let eu = c.find("data-region=\"eu\"").unwrap();
        let us = c.find("data-region=\"us\"").unwrap();
        assert!(eu < us);
        assert!(!all.contains("<details class=\"s\" open>"));
        assert!(list("regions=open").contains("<details class=\"s\" open>"));
    }

    #[test]
    fn the_burn_down_ends_at_the_roll_up_budget() {
        let p = three();
        let snapshot = p.aggregator().slos().snapshot();
        assert_eq!(snapshot.at, NOW);
        for (slo, b) in snapshot.burndown.iter().enumerate() {
            let rollup = snapshot
                .rows
                .iter()
                .find(|r| r.slo == slo && r.region.is_none())
                .unwrap();
            // 30d period: 60 slots of 12 h, the last holding now.
            assert_eq!((b.step, b.bad.len()), (43_200, 60));
            assert!(b.start <= NOW - 59 * 43_200 && NOW < b.start + 60 * 43_200);
            let bad: u64 = b.bad.iter().sum();
            assert_eq!(bad, rollup.windows[rollup.windows.len() - 1].1);
            let name = ["a", "b", "c"][slo];
            let (_, detail) = page(&p, Page::Detail(name.into()));
            let want = format!(
                "data-k=\"burndown\" data-points=\"61\" data-last=\"{}\"",
                rollup.budget_remaining
            );
            assert!(detail.contains(&want), "{name}: {want}");
        }
        let (_, detail) = page(&p, Page::Detail("a".into()));
        assert!(detail.contains("data-last=\"0.5\""), "{detail}");
        let (_, detail) = page(&p, Page::Detail("c".into()));
        assert!(detail.contains("data-k=\"alert-page\" data-v=\"0\""));
        assert!(detail.contains("data-k=\"alert-ticket\" data-v=\"1\""));
    }

    #[tokio::test]
    async fn pages_need_the_metrics_token_and_a_free_slot() {
        let p = Arc::new(three());
        let exporter = Arc::new(Exporter::new(p, Arc::default()));
        let get = |exporter: Arc<Exporter>, headers: HeaderMap| async move {
            list(State(exporter), headers, Uri::from_static("/?sort=name")).await
        };
        let response = get(exporter.clone(), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(
            response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'")
        );
        drop(response);
        let response = detail(
            State(exporter.clone()),
            HeaderMap::new(),
            Path("nope".to_owned()),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        drop(response);

        // Every slot taken: 503 until one is given back.
        let held: Vec<_> = (0..MAX_PAGES)
            .map(|_| exporter.pages.slots.clone().try_acquire_owned().unwrap())
            .collect();
        let response = get(exporter.clone(), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        // The body holds its slot until it is read or dropped.
        let response = get(exporter.clone(), HeaderMap::new()).await;
        assert_eq!(exporter.pages.slots.available_permits(), MAX_PAGES - 1);
        drop(response);
        assert_eq!(exporter.pages.slots.available_permits(), MAX_PAGES);

        // Browsers get it gzipped.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br;q=1, gzip;q=0.8"),
        );
        let response = get(exporter.clone(), headers).await;
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut html = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut html)
            .unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        let response = get(exporter.clone(), headers).await;
        assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
        drop(response);

        // With metrics.auth, the token.
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "s3cret\n").unwrap();
        let auth = crate::config::Auth {
            bearer_tokens_file: tokens,
            header: "Authorization".into(),
            scheme: "Bearer".into(),
        };
        exporter.set_auth(Some(Arc::new(crate::auth::BearerTokens::new(&auth))));
        let response = get(exporter.clone(), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert_eq!(
            get(exporter.clone(), headers).await.status(),
            StatusCode::OK
        );
    }

    #[test]
    fn list_queries_read_back_as_links() {
        let q = ListQuery::parse(
            "sort=burn-1h&dir=asc&q=check%20out+%3Cx%3E&show=firing&regions=open&x=1",
        );
        assert_eq!(q.sort, Sort::Burn("1h".into()));
        assert_eq!(q.descending, Some(false));
        assert_eq!(q.filter, "check out <x>");
        assert!(q.firing_only && q.open);
        // The same sort flips; another takes its own default direction.
        assert_eq!(
            q.link(&Sort::Burn("1h".into())),
            "?sort=burn-1h&q=check%20out%20%3Cx%3E&show=firing&regions=open"
        );
        assert_eq!(
            q.link(&Sort::Budget),
            "?sort=budget&q=check%20out%20%3Cx%3E&show=firing&regions=open"
        );
        let plain = ListQuery::parse("sort=nonsense&dir=up");
        assert_eq!(plain, ListQuery::default());
        assert_eq!(plain.link(&Sort::Status), "?sort=status&dir=desc");
        let long = ListQuery::parse(&format!("q={}", "a".repeat(500)));
        assert_eq!(long.filter.len(), ListQuery::MAX_FILTER);
    }
}
