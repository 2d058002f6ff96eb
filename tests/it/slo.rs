//! The SLO engine: alert tiers under a driven clock, and exact `sloxide_slo_*` values
//! end to end from the Python SDK, per region and in the roll-up.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use sloxide::clock::ManualClock;
use sloxide::config::Config;
use sloxide::fixture::kv_str;
use sloxide::ingest::Recorder;
use sloxide::otlp::spans::{TraceBatch, walk_traces};
use sloxide::pipeline::Pipeline;

use crate::e2e::{python_available, python_send};
use crate::harness::{Daemon, sample};

const T0: u64 = 1_700_000_000 * 1_000_000_000;
const MINUTE: u64 = 60 * 1_000_000_000;

const TIERS: &str = r#"
slos:
  - name: pay
    service: payments
    objective: 99.9
    indicator: {availability: {}}
alerting:
  page: [{long: 1h, short: 5m, budget_percent: 2}]
  ticket: [{long: 6h, short: 30m, budget_percent: 5}]
"#;

fn setup(yaml: &str) -> (Pipeline, Arc<ManualClock>) {
    let config = Config::from_yaml(yaml, "test.yaml").unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    (Pipeline::new(&config, clock.clone()).unwrap(), clock)
}

/// One minute of traffic at `at`: `n` server spans of `payments`, `bad` of them errors.
fn minute(agg: &Pipeline, clock: &ManualClock, at: u64, n: usize, bad: usize) {
    clock.set(at);
    let spans = (0..n)
        .map(|i| Span {
            name: "charge".into(),
            kind: 2,
            start_time_unix_nano: at - 1_000_000,
            end_time_unix_nano: at,
            status: Some(Status {
                code: if i < bad { 2 } else { 0 },
                message: String::new(),
            }),
            ..Default::default()
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv_str("service.name", "payments"),
                    kv_str("cloud.region", "eu"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    let body = req.encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&body, agg.plan().trace_keys(), &mut batch).unwrap();
    agg.aggregator().record_traces(&batch);
}

fn metrics(agg: &Pipeline) -> String {
    agg.tick();
    agg.render()
}

fn alert(text: &str, severity: &str) -> Option<f64> {
    // The roll-up: the series without a region label.
    text.lines()
        .filter(|l| l.starts_with("sloxide_slo_alert{") && !l.contains("region="))
        .find(|l| l.contains(&format!("severity=\"{severity}\"")))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn burn(text: &str, window: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("sloxide_slo_burn_rate{") && !l.contains("region="))
        .find(|l| l.contains(&format!("window=\"{window}\"")))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap()
}

#[test]
fn tiers_fire_when_both_windows_burn_and_stop_when_the_short_one_recovers() {
    let (agg, clock) = setup(TIERS);
    let text = metrics(&agg);
    assert_eq!(
        (alert(&text, "page"), alert(&text, "ticket")),
        (Some(0.0), Some(0.0)),
        "no traffic, no alert"
    );

    // An hour at 2% errors: a burn of 20, over 14.4 (page) and 6 (ticket) on every window.
    for m in 0..60 {
        minute(&agg, &clock, T0 + m * MINUTE, 1_000, 20);
    }
    let text = metrics(&agg);
    assert!((burn(&text, "1h") - 20.0).abs() < 1e-9 && (burn(&text, "5m") - 20.0).abs() < 1e-9);
    assert_eq!(
        (alert(&text, "page"), alert(&text, "ticket")),
        (Some(1.0), Some(1.0))
    );

    // Six clean minutes: the 5m window recovers, so the page tier stops although the 1h
    // window still burns at 18; the ticket tier's 30m window still burns at 16.
    for m in 60..66 {
        minute(&agg, &clock, T0 + m * MINUTE, 1_000, 0);
    }
    let text = metrics(&agg);
    assert!(burn(&text, "1h") > 14.4, "{}", burn(&text, "1h"));
    assert_eq!(burn(&text, "5m"), 0.0);
    assert_eq!(
        (alert(&text, "page"), alert(&text, "ticket")),
        (Some(0.0), Some(1.0))
    );

    // A burn just under the page threshold (1.4% errors: 14) never pages.
    let (agg, clock) = setup(TIERS);
    for m in 0..60 {
        minute(&agg, &clock, T0 + m * MINUTE, 1_000, 14);
    }
    let text = metrics(&agg);
    assert_eq!(
        (alert(&text, "page"), alert(&text, "ticket")),
        (Some(0.0), Some(1.0))
    );
}

#[test]
fn min_events_keeps_low_traffic_tiers_quiet() {
    let quiet = TIERS.replace("alerting:", "alerting:\n  min_events: 1000");
    let (agg, clock) = setup(&quiet);
    // Ten events an hour, half of them bad: a burn of 500, but only 600 events in 1h.
    for m in 0..60 {
        minute(&agg, &clock, T0 + m * MINUTE, 10, 5);
    }
    let text = metrics(&agg);
    assert!(burn(&text, "1h") > 400.0);
    assert_eq!(
        (alert(&text, "page"), alert(&text, "ticket")),
        (Some(0.0), Some(0.0))
    );
    // The same burn with enough traffic pages.
    for m in 60..62 {
        minute(&agg, &clock, T0 + m * MINUTE, 500, 250);
    }
    let text = metrics(&agg);
    assert_eq!(alert(&text, "page"), Some(1.0));
}

#[test]
fn windows_forget_old_events_and_the_budget_spans_the_period() {
    let (agg, clock) = setup(TIERS);
    minute(&agg, &clock, T0, 1_000, 10);
    let text = metrics(&agg);
    let budget = |t: &str| {
        sample(
            t,
            "sloxide_slo_error_budget_remaining_ratio",
            &[("slo", "pay"), ("region", "eu")],
        )
    };
    assert_eq!(budget(&text), Some(-9.0));
    let exhaustion = sample(
        &text,
        "sloxide_slo_budget_exhaustion_seconds",
        &[("slo", "pay"), ("region", "eu")],
    );
    assert_eq!(exhaustion, Some(0.0), "spent");
    // Two hours later the short windows are empty (SLI absent, burn 0) but the 30d
    // budget still holds the event.
    clock.set(T0 + 120 * MINUTE);
    let text = metrics(&agg);
    let sli = |w| {
        sample(
            &text,
            "sloxide_slo_sli_ratio",
            &[("slo", "pay"), ("region", "eu"), ("window", w)],
        )
    };
    assert_eq!(sli("5m"), None);
    assert_eq!(sli("1h"), None);
    assert_eq!(sli("30d"), Some(0.99));
    assert_eq!(
        sample(
            &text,
            "sloxide_slo_burn_rate",
            &[("slo", "pay"), ("region", "eu"), ("window", "1h")]
        ),
        Some(0.0)
    );
    assert_eq!(budget(&text), Some(-9.0));
    assert_eq!(
        sample(
            &text,
            "sloxide_slo_budget_exhaustion_seconds",
            &[("slo", "pay"), ("region", "eu")]
        ),
        None,
        "absent while the 1h burn rate is 0"
    );
}

#[test]
fn an_slo_without_events_reports_a_full_budget() {
    let (agg, _) = setup(TIERS);
    let text = metrics(&agg);
    assert_eq!(
        sample(
            &text,
            "sloxide_slo_objective_ratio",
            &[("slo", "pay"), ("service", "payments")]
        ),
        Some(0.999)
    );
    assert_eq!(
        sample(&text, "sloxide_slo_period_seconds", &[("slo", "pay")]),
        Some(2_592_000.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_slo_error_budget_remaining_ratio",
            &[("slo", "pay")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "sloxide_slo_burn_rate",
            &[("slo", "pay"), ("window", "5m")]
        ),
        Some(0.0)
    );
    assert!(
        !text.contains("sloxide_slo_sli_ratio{"),
        "no SLI while the windows are empty"
    );
    assert!(!text.contains("sloxide_slo_budget_exhaustion_seconds{"));
}

fn close(got: Option<f64>, want: f64) -> bool {
    got.is_some_and(|g| (g - want).abs() <= 1e-9 * want.abs().max(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_traffic_gives_exact_slo_values_per_region_and_rolled_up() {
    if !python_available() {
        return;
    }
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
            .unwrap();
    let d = Daemon::start(&example);
    let (grpc, http) = (d.grpc.to_string(), d.http.to_string());
    tokio::task::spawn_blocking(move || {
        // checkout, eu-west-1: 200 fast spans, 4 errors. us-east-1: 100 slow spans, 10 errors.
        python_send(&[
            "--protocol",
            "grpc",
            "--endpoint",
            &grpc,
            "--service",
            "checkout",
            "--region",
            "eu-west-1",
            "--spans",
            "200",
            "--errors",
            "4",
            "--duration-ms",
            "50",
        ]);
        python_send(&[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--service",
            "checkout",
            "--region",
            "us-east-1",
            "--spans",
            "100",
            "--errors",
            "10",
            "--duration-ms",
            "400",
        ]);
        // 40 deployments, 4 failed with severity ERROR.
        python_send(&[
            "--protocol",
            "grpc",
            "--endpoint",
            &grpc,
            "--service",
            "deployer",
            "--logs",
            "40",
            "--error-logs",
            "4",
        ]);
        // 20 provisionings in eu-west-1: 18 took 90 s, 2 took 150 s (over the 2m threshold).
        python_send(&[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--service",
            "provisioner",
            "--region",
            "eu-west-1",
            "--logs",
            "20",
            "--error-logs",
            "2",
            "--event-name",
            "provisioned",
            "--log-int-attr",
            "provisioning.duration_ms=90000",
            "--error-log-int-attr",
            "provisioning.duration_ms=150000",
        ]);
    })
    .await
    .unwrap();

    let labels = |slo, region: Option<&'static str>| {
        let mut l = vec![("slo", slo)];
        if let Some(r) = region {
            l.push(("region", r));
        }
        l
    };
    // Wait for a tick to publish every SLO's events.
    for (slo, region, events) in [
        ("checkout-availability", "eu-west-1", 200.0),
        ("checkout-availability", "us-east-1", 100.0),
        ("deployments", "unknown", 40.0),
        ("provisioning-latency", "eu-west-1", 20.0),
    ] {
        assert_eq!(
            d.wait_metric(
                "sloxide_slo_events_total",
                &labels(slo, Some(region)),
                events
            )
            .await,
            Some(events),
            "{slo} {region}"
        );
    }
    let text = d.scrape().await;
    // The roll-up is the series without a region label.
    let rollup = |name: &str, slo: &str, extra: Option<(&str, &str)>| -> Option<f64> {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&format!("slo=\"{slo}\""))
                    && !l.contains("region=")
            })
            .find(|l| extra.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
    };
    let per = |name: &str,
               slo: &'static str,
               region: &'static str,
               extra: Option<(&'static str, &'static str)>| {
        let mut l = labels(slo, Some(region));
        l.extend(extra);
        sample(&text, name, &l)
    };
    let w5 = Some(("window", "5m"));
    let w30 = Some(("window", "30d"));

    // checkout-availability at 99.9%: eu 4/200 bad, us 10/100 bad, together 14/300.
    let a = "checkout-availability";
    assert_eq!(
        per("sloxide_slo_bad_events_total", a, "eu-west-1", None),
        Some(4.0)
    );
    assert_eq!(
        per("sloxide_slo_bad_events_total", a, "us-east-1", None),
        Some(10.0)
    );
    assert!(close(
        per("sloxide_slo_sli_ratio", a, "eu-west-1", w5),
        0.98
    ));
    assert!(close(
        per("sloxide_slo_burn_rate", a, "eu-west-1", w5),
        20.0
    ));
    assert!(close(
        per(
            "sloxide_slo_error_budget_remaining_ratio",
            a,
            "eu-west-1",
            None
        ),
        -19.0
    ));
    assert!(close(
        per("sloxide_slo_sli_ratio", a, "us-east-1", w30),
        0.9
    ));
    assert!(close(
        per("sloxide_slo_burn_rate", a, "us-east-1", w5),
        100.0
    ));
    assert!(close(rollup("sloxide_slo_sli_ratio", a, w5), 286.0 / 300.0));
    assert!(close(
        rollup("sloxide_slo_burn_rate", a, Some(("window", "1h"))),
        14.0 / 300.0 / 0.001
    ));
    assert!(close(
        rollup("sloxide_slo_error_budget_remaining_ratio", a, None),
        1.0 - 14.0 / 300.0 / 0.001
    ));
    assert_eq!(
        rollup("sloxide_slo_alert", a, Some(("severity", "page"))),
        Some(1.0)
    );

    // checkout-latency (300ms): every eu span is good, every us span bad.
    let l = "checkout-latency";
    assert!(close(per("sloxide_slo_sli_ratio", l, "eu-west-1", w5), 1.0));
    assert_eq!(per("sloxide_slo_burn_rate", l, "eu-west-1", w5), Some(0.0));
    assert_eq!(
        per(
            "sloxide_slo_error_budget_remaining_ratio",
            l,
            "eu-west-1",
            None
        ),
        Some(1.0)
    );
    assert_eq!(
        per(
            "sloxide_slo_budget_exhaustion_seconds",
            l,
            "eu-west-1",
            None
        ),
        None
    );
    assert_eq!(
        per(
            "sloxide_slo_alert",
            l,
            "eu-west-1",
            Some(("severity", "page"))
        ),
        Some(0.0)
    );
    assert!(close(per("sloxide_slo_sli_ratio", l, "us-east-1", w5), 0.0));
    assert!(close(rollup("sloxide_slo_sli_ratio", l, w5), 200.0 / 300.0));
    assert!(close(
        rollup("sloxide_slo_burn_rate", l, w5),
        100.0 / 300.0 / 0.001
    ));

    // deployments at 95% from logs: 4/40 failed with ERROR -> burn 2, budget -1.
    let dep = "deployments";
    assert_eq!(
        per("sloxide_slo_bad_events_total", dep, "unknown", None),
        Some(4.0)
    );
    assert!(close(per("sloxide_slo_burn_rate", dep, "unknown", w5), 2.0));
    assert!(close(
        rollup("sloxide_slo_error_budget_remaining_ratio", dep, None),
        -1.0
    ));
    assert_eq!(
        rollup("sloxide_slo_alert", dep, Some(("severity", "page"))),
        Some(0.0)
    );

    // provisioning-latency at 99% from a duration attribute: 2/20 over 2m -> burn 10.
    let prov = "provisioning-latency";
    assert_eq!(
        per("sloxide_slo_bad_events_total", prov, "eu-west-1", None),
        Some(2.0)
    );
    assert!(close(
        per("sloxide_slo_sli_ratio", prov, "eu-west-1", w30),
        0.9
    ));
    assert!(close(rollup("sloxide_slo_burn_rate", prov, w5), 10.0));

    // api-availability saw nothing: full budget, no SLI.
    assert_eq!(
        rollup(
            "sloxide_slo_error_budget_remaining_ratio",
            "api-availability",
            None
        ),
        Some(1.0)
    );
    assert_eq!(
        rollup("sloxide_slo_sli_ratio", "api-availability", w5),
        None
    );
    let _ = Duration::from_secs(0);
}

/// (SLO, region) series are bounded like every other family: a label set over
/// `max_series_per_service` folds into that SLO's own overflow series, and the fold
/// shows in the cardinality self-metrics.
#[test]
fn slo_series_over_the_limit_fold_into_a_per_slo_overflow_series_that_is_counted() {
    let (agg, clock) = setup(
        "limits: {max_series_per_service: 1}
slos:
  - {name: pay, service: payments, objective: 99.9, indicator: {availability: {}}}
  - {name: pay2, service: payments, objective: 99, indicator: {availability: {}}}
",
    );
    minute(&agg, &clock, T0, 10, 1);
    let text = metrics(&agg);
    let events = |slo, region| {
        sample(
            &text,
            "sloxide_slo_events_total",
            &[("slo", slo), ("region", region)],
        )
    };
    assert_eq!(events("pay", "eu"), Some(10.0));
    assert_eq!(events("pay2", "eu"), None);
    assert_eq!(events("pay2", "__overflow__"), Some(10.0));
    let family = [("family", "sloxide_slo_events_total")];
    let overflowed = sample(&text, "sloxide_series_overflow_total", &family);
    assert_eq!(overflowed, Some(10.0));
    let active = sample(&text, "sloxide_series_active", &family);
    assert_eq!(active, Some(2.0));
}
