//! The status pages in a real browser: headless Chromium loads `/` and `/slo/{name}`
//! from a daemon fed known spans in two regions (one of them, the service and the
//! description hostile), and every value the DOM shows after load equals what
//! `/metrics` serves for the same snapshot. Screenshots of both pages are kept under
//! `target/test-artifacts/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use sloxide::fixture::kv_str;

use crate::harness::{Daemon, require, sample};

/// The service of both SLOs: quotes and a script tag.
const SERVICE: &str = "shop\"<script>document.title='pwned-service'</script>";
/// The second region: the same.
const HOSTILE_REGION: &str = "us\"><script>document.title='pwned-region'</script>";
const REGION: &str = "eu-west-1";

const CONFIG: &str = r#"
histogram:
  quantiles: [0.5, 0.9, 0.99]
slos:
  - name: checkout-availability
    service: 'shop"<script>document.title=''pwned-service''</script>'
    description: "<script>document.title='pwned-description'</script> 99% of \"checkout\" requests succeed & more"
    objective: 99
    indicator: {availability: {}}
  - name: checkout-latency
    service: 'shop"<script>document.title=''pwned-service''</script>'
    objective: 99.5
    filter: {span_kinds: [server]}
    indicator: {latency: {threshold: 100ms}}
  - name: idle
    service: nobody
    objective: 99.9
    indicator: {availability: {}}
"#;

/// The Chromium binary, when installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs headless Chromium on `url` with `args`, in a fresh profile; its stdout.
fn run_chromium(chromium: &Path, args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took over 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "chromium {args:?} {url}: {status}\n{err}");
    out
}

/// Where the test keeps its screenshots: `target/test-artifacts/` of this build.
fn artifacts() -> PathBuf {
    // target/<profile>/deps/it-<hash>
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Undoes the escapes a serialized DOM uses in attribute values and text.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the start tag `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[at..].find('"')?;
    Some(unescape(&tag[at..at + end]))
}

/// One row of a page: the start tag's attributes named in `keys`, and every
/// `data-k="…" data-v="…"` pair up to the next row.
#[derive(Debug)]
struct DomRow {
    keys: HashMap<String, String>,
    values: HashMap<String, String>,
}

/// The rows of `dom`: every start tag holding `marker`, with what follows it up to the
/// next.
fn rows(dom: &str, marker: &str, keys: &[&str]) -> Vec<DomRow> {
    let starts: Vec<usize> = dom
        .match_indices(marker)
        .map(|(at, _)| {
            if marker.starts_with('<') {
                at
            } else {
                dom[..at].rfind('<').unwrap()
            }
        })
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(dom.len());
            let chunk = &dom[start..end];
            let tag = &chunk[..chunk.find('>').unwrap()];
            DomRow {
                keys: keys
                    .iter()
                    .filter_map(|k| Some((k.to_string(), attr(tag, k)?)))
                    .collect(),
                values: pairs(chunk),
            }
        })
        .collect()
}

/// Every `data-k="K" data-v="V"` in `html`.
fn pairs(html: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (at, _) in html.match_indices(" data-k=\"") {
        let tag_end = html[at..].find('>').map_or(html.len(), |e| at + e);
        let tag = &html[at..tag_end];
        if let (Some(k), Some(v)) = (attr(tag, "data-k"), attr(tag, "data-v")) {
            out.entry(k).or_insert(v);
        }
    }
    out
}

/// A sample of `/metrics` text, label values escaped as the exposition writes them.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let escaped: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let refs: Vec<(&str, &str)> = escaped
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sample(text, name, &refs)
}

/// Asserts that the page's text value `got` (absent or empty: no value) is the
/// sample `want`.
fn same(what: &str, got: Option<&String>, want: Option<f64>) {
    let got = got.filter(|g| !g.is_empty()).map(|g| {
        g.parse::<f64>()
            .unwrap_or_else(|_| panic!("{what}: {g:?} is not a number"))
    });
    assert_eq!(
        got, want,
        "{what}: the page shows {got:?}, /metrics {want:?}"
    );
}

/// `n` server spans of `region`, `errors` of them with status ERROR and `slow` of them
/// taking 250 ms (the others 20 ms), all ending at `end` (Unix nanoseconds).
fn spans(region: &str, n: usize, errors: usize, slow: usize, end: u64) -> ResourceSpans {
    let spans = (0..n)
        .map(|i| {
            let duration = if i < slow { 250_000_000 } else { 20_000_000 };
            Span {
                trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: "POST /checkout".into(),
                kind: 2,
                start_time_unix_nano: end - duration,
                end_time_unix_nano: end,
                status: Some(Status {
                    code: if i >= n - errors { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv_str("service.name", SERVICE),
                kv_str("cloud.region", region),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        schema_url: String::new(),
    }
}

/// The window labels of a 30d SLO under the default tiers.
const WINDOWS: [&str; 8] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"];

/// Checks one row of the list or the detail's regions table against `/metrics`.
fn check_row(text: &str, slo: &str, region: Option<&str>, row: &DomRow, detail: bool) {
    let base = [("slo", slo), ("region", region.unwrap_or(""))];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = base.to_vec();
        l.push(extra);
        l
    };
    let what = |k: &str| format!("{slo}/{}: {k}", region.unwrap_or("roll-up"));
    let v = &row.values;
    same(
        &what("sli"),
        v.get("sli"),
        metric(text, "sloxide_slo_sli_ratio", &with(("window", "30d"))),
    );
    same(
        &what("budget"),
        v.get("budget"),
        metric(text, "sloxide_slo_error_budget_remaining_ratio", &base),
    );
    for w in WINDOWS {
        let key = format!("burn-{w}");
        let listed = detail || w != "30d";
        if listed {
            let labels = [base[0], base[1], ("window", w)];
            same(
                &what(&key),
                v.get(&key),
                metric(text, "sloxide_slo_burn_rate", &labels),
            );
        }
    }
    same(
        &what("events"),
        v.get("events"),
        metric(text, "sloxide_slo_window_events", &with(("window", "30d"))),
    );
    same(
        &what("bad"),
        v.get("bad"),
        metric(
            text,
            "sloxide_slo_window_bad_events",
            &with(("window", "30d")),
        ),
    );
    let page = metric(text, "sloxide_slo_alert", &with(("severity", "page")));
    let ticket = metric(text, "sloxide_slo_alert", &with(("severity", "ticket")));
    let state = v.get("state").map(String::as_str);
    match (page, ticket) {
        (Some(1.0), _) => assert_eq!(state, Some("page"), "{}", what("state")),
        (_, Some(1.0)) => assert_eq!(state, Some("ticket"), "{}", what("state")),
        _ => assert!(matches!(state, Some("ok" | "no data")), "{}", what("state")),
    }
    if detail {
        same(
            &what("events-total"),
            v.get("events-total"),
            metric(text, "sloxide_slo_events_total", &base),
        );
        same(
            &what("bad-total"),
            v.get("bad-total"),
            metric(text, "sloxide_slo_bad_events_total", &base),
        );
    }
}

/// The values of `/` and `/slo/checkout-availability` against `/metrics`, scraped
/// before and after the page loads (the same text both times, so one snapshot).
fn check_pages(text: &str, list: &str, detail: &str) {
    // Nothing the clients sent became markup: the DOM after load has no script and the
    // title no script wrote.
    for (dom, title) in [
        (list, "<title>SLO status · sloxide</title>"),
        (
            detail,
            "<title>checkout-availability · SLO · sloxide</title>",
        ),
    ] {
        assert!(!dom.to_lowercase().contains("<script"), "{dom}");
        assert!(dom.contains(title), "{dom}");
    }

    // The list: each SLO's roll-up and regions.
    let list_rows = rows(list, " data-slo=\"", &["data-slo", "data-region"]);
    let slos = ["checkout-availability", "checkout-latency", "idle"];
    let rollups: Vec<&DomRow> = list_rows
        .iter()
        .filter(|r| r.keys.get("data-region").is_some_and(String::is_empty))
        .collect();
    assert_eq!(rollups.len(), 3, "{list_rows:?}");
    for slo in slos {
        let rollup = rollups
            .iter()
            .find(|r| r.keys["data-slo"] == slo)
            .unwrap_or_else(|| panic!("{slo} not listed"));
        check_row(text, slo, None, rollup, false);
        same(
            &format!("{slo}: objective"),
            rollup.values.get("objective"),
            metric(text, "sloxide_slo_objective_ratio", &[("slo", slo)]),
        );
    }
    let mut regions = 0;
    for row in list_rows
        .iter()
        .filter(|r| r.keys.get("data-region").is_some_and(|g| !g.is_empty()))
    {
        check_row(
            text,
            &row.keys["data-slo"],
            Some(&row.keys["data-region"]),
            row,
            false,
        );
        regions += 1;
    }
    // Two SLOs of the shop in two regions; `idle` saw nothing.
    assert_eq!(regions, 4);
    let availability_regions: Vec<&str> = list_rows
        .iter()
        .filter(|r| r.keys["data-slo"] == "checkout-availability")
        .map(|r| r.keys["data-region"].as_str())
        .collect();
    assert!(
        availability_regions.contains(&HOSTILE_REGION),
        "{availability_regions:?}"
    );
    // Known counts, besides agreeing with /metrics.
    let events = |region: &str| {
        list_rows
            .iter()
            .find(|r| {
                r.keys["data-slo"] == "checkout-availability" && r.keys["data-region"] == region
            })
            .map(|r| (r.values["events"].clone(), r.values["bad"].clone()))
    };
    assert_eq!(events(REGION), Some(("1000".into(), "10".into())));
    assert_eq!(events(HOSTILE_REGION), Some(("500".into(), "40".into())));
    assert_eq!(events(""), Some(("1500".into(), "50".into())));

    // The detail page of checkout-availability: its cards (the roll-up)...
    let slo = "checkout-availability";
    let rollup = [("slo", slo), ("region", "")];
    let cards = pairs(&detail[..detail.find("<h2>").unwrap()]);
    same(
        "detail sli",
        cards.get("sli"),
        metric(
            text,
            "sloxide_slo_sli_ratio",
            &[rollup[0], rollup[1], ("window", "30d")],
        ),
    );
    same(
        "detail budget",
        cards.get("budget"),
        metric(text, "sloxide_slo_error_budget_remaining_ratio", &rollup),
    );
    same(
        "detail events",
        cards.get("events"),
        metric(
            text,
            "sloxide_slo_window_events",
            &[rollup[0], rollup[1], ("window", "30d")],
        ),
    );
    same(
        "detail bad",
        cards.get("bad"),
        metric(
            text,
            "sloxide_slo_window_bad_events",
            &[rollup[0], rollup[1], ("window", "30d")],
        ),
    );
    same(
        "detail exhaustion",
        cards.get("exhaustion"),
        metric(text, "sloxide_slo_budget_exhaustion_seconds", &rollup),
    );
    for severity in ["page", "ticket"] {
        same(
            &format!("detail alert {severity}"),
            cards.get(&format!("alert-{severity}")),
            metric(
                text,
                "sloxide_slo_alert",
                &[rollup[0], rollup[1], ("severity", severity)],
            ),
        );
    }
    // ... the burn-down, ending at the roll-up's budget...
    let svg = &detail[detail.find("data-k=\"burndown\"").unwrap()..];
    let svg = &svg[..svg.find('>').unwrap()];
    same(
        "burn-down end",
        attr(svg, "data-last").as_ref(),
        metric(text, "sloxide_slo_error_budget_remaining_ratio", &rollup),
    );
    assert_eq!(attr(svg, "data-points").as_deref(), Some("61"));
    // ... the tiers' bars...
    let tiers = rows(
        detail,
        " data-k=\"tier\"",
        &["data-severity", "data-long", "data-short"],
    );
    assert_eq!(tiers.len(), 4);
    // ... every window of the roll-up...
    let windows = rows(detail, " data-window=\"", &["data-window"]);
    assert_eq!(windows.len(), WINDOWS.len());
    for row in &windows {
        let w = row.keys["data-window"].as_str();
        let labels = [rollup[0], rollup[1], ("window", w)];
        same(
            &format!("window {w} events"),
            row.values.get("events"),
            metric(text, "sloxide_slo_window_events", &labels),
        );
        same(
            &format!("window {w} bad"),
            row.values.get("bad"),
            metric(text, "sloxide_slo_window_bad_events", &labels),
        );
        same(
            &format!("window {w} sli"),
            row.values.get("sli"),
            metric(text, "sloxide_slo_sli_ratio", &labels),
        );
        same(
            &format!("window {w} burn"),
            row.values.get("burn"),
            metric(text, "sloxide_slo_burn_rate", &labels),
        );
    }
    // ... every region...
    let region_rows: Vec<DomRow> =
        rows(detail, "<tr data-region=\"", &["data-region", "data-kind"])
            .into_iter()
            .filter(|r| !r.keys.contains_key("data-kind"))
            .collect();
    assert_eq!(region_rows.len(), 2);
    for row in &region_rows {
        check_row(text, slo, Some(&row.keys["data-region"]), row, true);
    }
    // ... and the service's latency per region, from the quantile series.
    let latency: Vec<DomRow> = rows(detail, " data-kind=\"", &["data-region", "data-kind"]);
    assert_eq!(latency.len(), 2, "{latency:?}");
    for row in &latency {
        let (region, kind) = (&row.keys["data-region"], &row.keys["data-kind"]);
        assert_eq!(kind, "server");
        let labels = |q: &'static str| {
            vec![
                ("service", SERVICE),
                ("region", region.as_str()),
                ("span_kind", "server"),
                ("quantile", q),
            ]
        };
        for q in ["0.5", "0.9", "0.99"] {
            same(
                &format!("{region} p{q}"),
                row.values.get(&format!("q{q}")),
                metric(text, "sloxide_span_duration_quantile_seconds", &labels(q)),
            );
        }
        same(
            &format!("{region} count"),
            row.values.get("count"),
            metric(
                text,
                "sloxide_span_duration_quantile_seconds_count",
                &[
                    ("service", SERVICE),
                    ("region", region.as_str()),
                    ("span_kind", "server"),
                ],
            ),
        );
        assert!(
            row.values.get("q0.5").is_some_and(|v| !v.is_empty()),
            "no p50 for {region}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_in_a_browser_match_metrics() {
    let chromium = chromium();
    if !require(
        chromium.is_some(),
        "chromium (headless, for the status pages)",
    ) {
        return;
    }
    let chromium = chromium.unwrap();
    // The quantiles describe the last complete minute: send spans that ended in the
    // previous minute, early enough in this one that the checks finish within it.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    if now.as_secs() % 60 > 20 {
        tokio::time::sleep(Duration::from_secs(61 - now.as_secs() % 60)).await;
    }
    let d = Daemon::start(CONFIG);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let end = (now / 60 * 60 - 3) * 1_000_000_000;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            spans(REGION, 1_000, 10, 30, end),
            spans(HOSTILE_REGION, 500, 40, 100, end),
        ],
    };
    let (status, _, body) = crate::e2e::post(
        &d,
        "/v1/traces",
        "application/x-protobuf",
        None,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // A tick has counted them and computed the minute's quantiles.
    let labels = [("slo", "checkout-availability"), ("region", REGION)];
    assert_eq!(
        d.wait_metric("sloxide_slo_events_total", &labels, 1_000.0)
            .await,
        Some(1_000.0)
    );
    let quantile = [
        ("service", SERVICE),
        ("region", REGION),
        ("quantile", "0.5"),
    ];
    for _ in 0..100 {
        if metric(
            &d.scrape().await,
            "sloxide_span_duration_quantile_seconds",
            &quantile,
        )
        .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unknown SLOs are a 404 page, names escaped.
    let (code, page) = d.get("/slo/no-such%3Cb%3E").await;
    assert_eq!(code, 404);
    assert!(
        page.contains("No SLO named \u{201C}no-such&lt;b&gt;\u{201D}"),
        "{page}"
    );

    let base = format!("http://{}", d.metrics);
    let list_url = format!("{base}/");
    let detail_url = format!("{base}/slo/checkout-availability");
    let dump = |url: String| {
        let chromium = chromium.clone();
        tokio::task::spawn_blocking(move || run_chromium(&chromium, &["--dump-dom"], &url))
    };
    let mut last = String::new();
    let mut checked = false;
    for _ in 0..3 {
        let before = d.scrape().await;
        let list = dump(list_url.clone()).await.unwrap();
        let detail = dump(detail_url.clone()).await.unwrap();
        let after = d.scrape().await;
        let values = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| {
                    l.starts_with("sloxide_slo_") || l.starts_with("sloxide_span_duration_quantile")
                })
                .map(str::to_owned)
                .collect()
        };
        if values(&before) != values(&after) {
            // A minute ended (or a window moved) meanwhile: load both again.
            last = format!("{before}\n---\n{after}");
            continue;
        }
        check_pages(&after, &list, &detail);
        checked = true;
        break;
    }
    assert!(
        checked,
        "/metrics never stayed the same across a page load:\n{last}"
    );

    // Screenshots, as a person would see the pages.
    let dir = artifacts();
    for (name, url, height) in [
        (
            "status-list.png",
            format!("{list_url}?regions=open"),
            "1100",
        ),
        ("status-detail.png", detail_url, "2200"),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let chromium = chromium.clone();
        let shot = path.clone();
        tokio::task::spawn_blocking(move || {
            run_chromium(
                &chromium,
                &[
                    &format!("--screenshot={}", shot.display()),
                    &format!("--window-size=1280,{height}"),
                ],
                &url,
            )
        })
        .await
        .unwrap();
        let png = std::fs::read(&path).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            path.display()
        );
        eprintln!("status page screenshot: {}", path.display());
    }
}
