//! Exemplars: a scraper that asks for OpenMetrics gets, on each latency bucket, the
//! trace and span id of a recent span that fell in it; the classic text format stays as
//! it was; and a real Prometheus with exemplar storage returns the trace ids that were
//! sent.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::e2e::post;
use crate::harness::{Daemon, config, require};
use crate::prometheus::{Prometheus, prometheus_on_path};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One span of `service` with these ids (hex) and duration, ending now.
struct Span {
    trace_id: String,
    span_id: String,
    millis: u64,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An OTLP/JSON trace request of `spans`, all of `service`.
fn request(service: &str, spans: &[Span]) -> Vec<u8> {
    let end = now_nanos();
    let spans: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                r#"{{"traceId":"{}","spanId":"{}","name":"GET /cart","kind":2,"startTimeUnixNano":"{}","endTimeUnixNano":"{end}","status":{{}}}}"#,
                s.trace_id,
                s.span_id,
                end - s.millis * 1_000_000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
    .into_bytes()
}

async fn scrape_as(d: &Daemon, accept: Option<&str>) -> (String, String) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://{}/metrics", d.metrics));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, resp.text().await.unwrap())
}

/// The bucket lines of `service`'s duration histogram.
fn bucket_lines<'t>(text: &'t str, service: &str) -> Vec<&'t str> {
    let needle = format!("service=\"{service}\"");
    text.lines()
        .filter(|l| l.starts_with("sloxide_span_duration_seconds_bucket{") && l.contains(&needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_scrapes_carry_the_exemplars_of_sent_spans() {
    let d = Daemon::start(&config(""));
    // Three spans in three different buckets of the default bounds, and one whose
    // trace id is all zeros (invalid in OTLP): it is counted, but leads nowhere.
    let spans = [
        Span {
            trace_id: "5b8efff798038103d269b633813fc60c".into(),
            span_id: "eee19b7ec3c1b174".into(),
            millis: 3,
        },
        Span {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            millis: 180,
        },
        Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            millis: 2_400,
        },
        Span {
            trace_id: "00000000000000000000000000000000".into(),
            span_id: "1111111111111111".into(),
            millis: 40,
        },
    ];
    let (status, _, _) = post(
        &d,
        "/v1/traces",
        "application/json",
        None,
        request("checkout", &spans),
    )
    .await;
    assert_eq!(status, 200);

    let (content_type, om) = scrape_as(&d, Some(OPENMETRICS)).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert_eq!(om.matches("# EOF").count(), 1);
    // OpenMetrics names a counter's family without `_total`; its samples keep it.
    assert!(om.contains("# TYPE sloxide_spans counter\n"), "{om}");
    assert!(om.contains("\nsloxide_spans_total{"), "{om}");
    assert!(om.contains("# TYPE sloxide_span_duration_seconds histogram\n"));

    let buckets = bucket_lines(&om, "checkout");
    assert!(!buckets.is_empty(), "{om}");
    for span in &spans[..3] {
        let exemplar = format!(
            "# {{trace_id=\"{}\",span_id=\"{}\"}} {}",
            span.trace_id,
            span.span_id,
            span.millis as f64 / 1000.0
        );
        let lines: Vec<&&str> = buckets.iter().filter(|l| l.contains(&exemplar)).collect();
        assert_eq!(
            lines.len(),
            1,
            "one bucket carries {exemplar}:\n{buckets:#?}"
        );
        // It is the first bucket whose bound holds the span's duration.
        let le: f64 = lines[0]
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|le| {
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                }
            })
            .unwrap();
        let seconds = span.millis as f64 / 1000.0;
        assert!(seconds <= le, "{}", lines[0]);
        let lower = buckets
            .iter()
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .filter_map(|le| le.parse::<f64>().ok())
            .filter(|b| *b < le)
            .fold(0.0, f64::max);
        assert!(seconds > lower, "{} (next lower bound {lower})", lines[0]);
        // The exemplar's timestamp is the span's end, in seconds.
        let ts: f64 = lines[0].rsplit(' ').next().unwrap().parse().unwrap();
        let now = now_nanos() as f64 / 1e9;
        assert!((now - ts).abs() < 60.0, "{}", lines[0]);
    }
    assert!(
        !om.contains("00000000000000000000000000000000"),
        "an all-zero trace id is no exemplar"
    );
    assert_eq!(
        buckets.iter().filter(|l| l.contains(" # {")).count(),
        3,
        "{buckets:#?}"
    );

    // The classic format is unchanged: no exemplars, no EOF, `_total` family names.
    for accept in [
        None,
        Some("text/plain;version=0.0.4"),
        Some("application/openmetrics-text;q=0"),
    ] {
        let (content_type, text) = scrape_as(&d, accept).await;
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains(" # {"), "{accept:?}");
        assert!(!text.contains("# EOF"), "{accept:?}");
        assert!(text.contains("# TYPE sloxide_spans_total counter\n"));
        assert_eq!(bucket_lines(&text, "checkout").len(), buckets.len());
    }
}

/// A real Prometheus with exemplar storage scrapes the daemon (it asks for OpenMetrics
/// by default) and returns, for the latency buckets, exactly trace ids that were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stores_exemplars_of_sent_spans() {
    if !require(prometheus_on_path(), "prometheus") {
        return;
    }
    let d = Daemon::start(&config(""));
    let prometheus = Prometheus::start_args(
        &[d.metrics],
        None,
        "",
        &["--enable-feature=exemplar-storage"],
    )
    .await;
    let mut sent = BTreeSet::new();
    let mut n = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let query = r#"sloxide_span_duration_seconds_bucket{service="payments"}"#;
    let mut stored: Vec<String> = Vec::new();
    while std::time::Instant::now() < deadline {
        // A few spans per round, each with a fresh trace id, over several buckets.
        let spans: Vec<Span> = (0..4)
            .map(|i| {
                n += 1;
                Span {
                    trace_id: format!("{:032x}", 0xfeed_0000_0000_0000u128 + u128::from(n)),
                    span_id: format!("{:016x}", 0xbeef_0000u64 + n),
                    millis: [2, 30, 300, 3000][i],
                }
            })
            .collect();
        sent.extend(spans.iter().map(|s| s.trace_id.clone()));
        let (status, _, _) = post(
            &d,
            "/v1/traces",
            "application/json",
            None,
            request("payments", &spans),
        )
        .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let data = prometheus.exemplars(query).await.unwrap();
        stored = data
            .iter()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                e["labels"]["trace_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let buckets: BTreeSet<String> = data
            .iter()
            .map(|series| {
                series["seriesLabels"]["le"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        if buckets.len() >= 4 && stored.len() >= 8 {
            break;
        }
    }
    assert!(
        stored.len() >= 8,
        "Prometheus stored {} exemplars for {query}: {stored:?}",
        stored.len()
    );
    for trace_id in &stored {
        assert!(sent.contains(trace_id), "{trace_id} was never sent");
    }
    eprintln!(
        "Prometheus stored {} exemplars, each a sent trace id ({} sent)",
        stored.len(),
        sent.len()
    );
}
