//! The scale-out topology, for real: the Collector's `load_balancing` exporter
//! (`routing_key: service`, static resolver) → sloxide replicas, each with its own data
//! dir → a real Prometheus scraping all of them, with the rules of `sloxide rules`
//! loaded. Beside it, a single-replica reference fed the same events by the same
//! Collector, scraped by a second Prometheus with the same rules.
//!
//! Two replicas first: every service lands on exactly one, and the sums equal what was
//! sent. Then a third replica joins (the static list changes and the Collector
//! restarts), some services move, and the SLO values computed from the sums, and the
//! alert state in Prometheus, match the reference.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::e2e::python_available;
use crate::harness::{Daemon, config};
use crate::peers::{Collector, Sent, otelcol_available, send_mix, spans_by_key};
use crate::prometheus::{Prometheus, prometheus_on_path, value};

/// Services svc-0 .. svc-(SERVICES-1); each has an availability SLO of 99%.
const SERVICES: usize = 40;
/// Error percentages before and after the scale-out, cycled over the services: even
/// services fail about 10% of their spans, then about 30%, so a service that moves has
/// a burn rate near 10 on its old replica, near 30 on its new one, and near 20 in all,
/// and only the sum agrees with the single replica. Odd services never fail.
const ERRORS_BEFORE: &str = "10,0";
const ERRORS_AFTER: &str = "30,0";

/// One availability SLO per service, 99% over 30d, default alert tiers.
fn slo_config() -> String {
    let mut yaml = String::from("slos:\n");
    for i in 0..SERVICES {
        yaml.push_str(&format!(
            "  - {{name: avail-svc-{i}, service: svc-{i}, objective: 99, indicator: {{availability: {{}}}}}}\n"
        ));
    }
    config(&yaml)
}

/// The Collector's exporters: `load_balancing` over `replicas` and `otlp_grpc` to the
/// reference.
fn exporters(replicas: &[&Daemon], reference: &Daemon) -> String {
    let hostnames: Vec<String> = replicas.iter().map(|d| format!("\"{}\"", d.grpc)).collect();
    format!(
        "  load_balancing:\n    routing_key: service\n    protocol:\n      otlp:\n        \
         tls: {{insecure: true}}\n        compression: zstd\n        \
         retry_on_failure: {{enabled: true, initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 120s}}\n    \
         resolver:\n      static: {{hostnames: [{}]}}\n\
         \x20 otlp_grpc:\n    endpoint: \"{}\"\n    tls: {{insecure: true}}\n    \
         retry_on_failure: {{enabled: true, initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 120s}}\n",
        hostnames.join(", "),
        reference.grpc
    )
}

/// Spans each replica counted, per `[service, region, kind, status]`.
async fn per_replica(replicas: &[&Daemon]) -> Vec<BTreeMap<[String; 4], u64>> {
    let mut out = Vec::new();
    for d in replicas {
        out.push(spans_by_key(&d.scrape().await));
    }
    out
}

/// The counts of all replicas added up.
fn summed(parts: &[BTreeMap<[String; 4], u64>]) -> BTreeMap<[String; 4], u64> {
    let mut out = BTreeMap::new();
    for part in parts {
        for (key, n) in part {
            *out.entry(key.clone()).or_default() += n;
        }
    }
    out
}

/// Polls until the replicas together, and the reference, have counted `sent` (at most
/// 60 s); returns the per-replica counts.
async fn wait_delivered(
    replicas: &[&Daemon],
    reference: &Daemon,
    sent: &Sent,
    collector: &Collector,
) -> Vec<BTreeMap<[String; 4], u64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parts = per_replica(replicas).await;
        let total = summed(&parts);
        let reference_counts = spans_by_key(&reference.scrape().await);
        if (total == sent.counts && reference_counts == sent.counts) || Instant::now() > deadline {
            assert_eq!(
                total,
                sent.counts,
                "the replicas' sums differ from what was sent\nCollector log:\n{}",
                collector.log()
            );
            assert_eq!(reference_counts, sent.counts, "the reference's counts");
            return parts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// For each service, the indexes of the replicas that hold any of its spans.
fn homes(parts: &[BTreeMap<[String; 4], u64>]) -> BTreeMap<String, BTreeSet<usize>> {
    let mut out: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (index, part) in parts.iter().enumerate() {
        for key in part.keys() {
            out.entry(key[0].clone()).or_default().insert(index);
        }
    }
    out
}

/// Each service's burn rate against its 99% SLO over everything in `sent`: the SLOs
/// count server and consumer spans (the default `span_kinds`), bad when ERROR.
fn burn_rates(sent: &Sent) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (key, n) in &sent.counts {
        if key[2] == "server" || key[2] == "consumer" {
            let entry = counts.entry(key[0].clone()).or_default();
            entry.0 += n;
            if key[3] == "error" {
                entry.1 += n;
            }
        }
    }
    counts
        .into_iter()
        .map(|(service, (total, bad))| (service, bad as f64 / total as f64 / 0.01))
        .collect()
}

/// `labels -> value` of an instant query, labels as `k=v` pairs.
async fn query_map(prometheus: &Prometheus, promql: &str) -> BTreeMap<String, f64> {
    let result: Vec<Value> = prometheus
        .query(promql)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    result
        .iter()
        .map(|sample| {
            let labels: Vec<String> = sample["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            (labels.join(","), value(sample))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balanced_replicas_sum_to_a_single_replica_across_a_scale_out() {
    if !otelcol_available() || !python_available() || !prometheus_on_path() {
        // Each check records its own skip; this one names what the others did not.
        crate::harness::require(prometheus_on_path(), "prometheus (the server binary)");
        return;
    }
    let config_text = slo_config();
    let config = sloxide::config::Config::from_yaml(&config_text, "scaleout.yaml").unwrap();
    let rules = sloxide::generate::rules(&config);

    let replicas: Vec<Daemon> = (0..3).map(|_| Daemon::start(&config_text)).collect();
    let reference = Daemon::start(&config_text);
    let all: Vec<&Daemon> = replicas.iter().collect();
    let targets: Vec<SocketAddr> = replicas.iter().map(|d| d.metrics).collect();
    let cluster = Prometheus::start_with(&targets, Some(&rules)).await;
    let single = Prometheus::start_with(&[reference.metrics], Some(&rules)).await;

    // Two replicas.
    let mut collector = Collector::start(
        &exporters(&all[..2], &reference),
        &["load_balancing", "otlp_grpc"],
    );
    let mix = |errors: &str| -> Vec<String> {
        [
            "--services",
            &SERVICES.to_string(),
            "--regions",
            "eu-west-1,us-east-1",
            "--rounds",
            "20",
            "--error-rates",
            errors,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let send = |endpoint: SocketAddr, mix: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = mix.iter().map(String::as_str).collect();
            send_mix(endpoint, &args)
        })
    };
    let first = send(collector.grpc, mix(ERRORS_BEFORE)).await.unwrap();
    let parts = wait_delivered(&all, &reference, &first, &collector).await;
    let before = homes(&parts);
    assert_eq!(before.len(), SERVICES, "{before:?}");
    for (service, home) in &before {
        assert_eq!(home.len(), 1, "{service} is on replicas {home:?}");
        assert!(
            !home.contains(&2),
            "{service} reached the third replica early"
        );
    }
    let used: BTreeSet<usize> = before.values().flatten().copied().collect();
    assert_eq!(used, BTreeSet::from([0, 1]), "both replicas take services");
    collector.stop();

    // Three replicas: the static list changes and the Collector restarts.
    let collector = Collector::start(
        &exporters(&all, &reference),
        &["load_balancing", "otlp_grpc"],
    );
    let second = send(collector.grpc, mix(ERRORS_AFTER)).await.unwrap();
    let mut sent = first.clone();
    sent.add(&second);
    let parts = wait_delivered(&all, &reference, &sent, &collector).await;
    let after = homes(&parts);
    let moved: Vec<&String> = after
        .iter()
        .filter(|(_, home)| home.len() > 1)
        .map(|(service, _)| service)
        .collect();
    assert!(
        !moved.is_empty() && after.values().any(|home| home.contains(&2)),
        "no service moved to the third replica: {after:?}"
    );
    for (service, home) in &after {
        assert!(home.len() <= 2, "{service} is on replicas {home:?}");
    }

    let burns = burn_rates(&sent);
    // A service that moved and fails: its replicas' own burn rates differ from what
    // the sums give, so only summed rules can agree with the single replica.
    let moved_burning: Vec<&String> = moved
        .iter()
        .copied()
        .filter(|service| burns.get(*service).is_some_and(|b| *b > 0.0))
        .collect();
    assert!(
        !moved_burning.is_empty(),
        "no failing service moved (moved: {moved:?}); the comparison below would not need sums"
    );
    let service = moved_burning[0];
    let mut own = Vec::new();
    for (index, d) in all.iter().enumerate() {
        if after[service].contains(&index) {
            let slo = format!("avail-{service}");
            let burn = d
                .metric(
                    "sloxide_slo_burn_rate",
                    &[("slo", slo.as_str()), ("region", ""), ("window", "1h")],
                )
                .await
                .unwrap();
            own.push(burn);
        }
    }
    let whole = burns[service];
    assert!(
        own.len() == 2 && own.iter().all(|b| (b - whole).abs() > 1.0),
        "{service}: replicas' own 1h burn rates {own:?}, all events {whole}"
    );

    // The SLO values from the sums match the reference, for every SLO and window,
    // moved services included: once both Prometheus servers have scraped the last
    // counts and evaluated the rules.
    let queries = [
        r#"sloxide:slo_window_events{region="",window=~"5m|1h|30d"}"#,
        r#"sloxide:slo_window_bad_events{region="",window=~"5m|1h|30d"}"#,
        r#"sloxide:slo_burn_rate{region="",window=~"5m|1h|6h"}"#,
        r#"sloxide:slo_burn_rate{region="eu-west-1",window="1h"}"#,
        r#"sloxide:slo_error_budget_remaining_ratio{region=""}"#,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let want_events: f64 = sent
        .counts
        .iter()
        .filter(|(key, _)| key[2] == "server" || key[2] == "consumer")
        .map(|(_, n)| *n as f64)
        .sum();
    loop {
        let mut same = true;
        let mut report = String::new();
        for promql in queries {
            let ours = query_map(&cluster, promql).await;
            let theirs = query_map(&single, promql).await;
            let close = ours.len() == theirs.len()
                && ours.iter().all(|(labels, v)| {
                    theirs
                        .get(labels)
                        .is_some_and(|w| (v - w).abs() <= 1e-9 * v.abs().max(1.0))
                });
            if !close {
                same = false;
                report.push_str(&format!(
                    "{promql}:\n  replicas: {ours:?}\n  single: {theirs:?}\n"
                ));
            }
        }
        let events = query_map(
            &cluster,
            r#"sum(sloxide:slo_window_events{region="",window="1h"})"#,
        )
        .await;
        let complete = events.values().next().copied() == Some(want_events);
        if same && complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sums over replicas do not match the single replica (events {events:?}, want {want_events}):\n{report}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every SLO panel of the generated dashboard shows data from the recorded sums,
    // with its variables at "All".
    let dashboard: Value = serde_json::from_str(&sloxide::generate::dashboard(&config)).unwrap();
    let mut slo_panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            if !expr.contains("sloxide:") {
                continue;
            }
            slo_panels += 1;
            let query = expr
                .replace("$__rate_interval", "1m")
                .replace("$slo", ".*")
                .replace("$service", ".*")
                .replace("$region", ".*");
            let result = cluster
                .query(&query)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !result.is_empty(),
                "dashboard panel {} shows nothing: {query}",
                panel["title"]
            );
        }
    }
    assert!(slo_panels >= 6, "{slo_panels} SLO panel queries");

    // The alert state: what the SLOs' burn rates over everything sent call for, in
    // both. Every event is within the last few minutes, so each tier's two windows hold
    // the same events: a tier holds when the burn rate is over its threshold (page: 14.4
    // or 6; ticket: 3 or 1). Alerts hold for 1m before they fire.
    let firing = r#"ALERTS{alertname="SloxideBurnRate",alertstate="firing"}"#;
    let mut want = BTreeSet::new();
    for (service, burn) in &burns {
        for threshold in [1.0, 3.0, 6.0, 14.4] {
            assert!(
                (burn / threshold - 1.0).abs() > 0.05,
                "{service}'s burn rate {burn} is too close to {threshold} to tell"
            );
        }
        if *burn > 6.0 {
            want.insert(format!("avail-{service} page"));
        }
        if *burn > 1.0 {
            want.insert(format!("avail-{service} ticket"));
        }
    }
    assert!(
        want.len() >= 4 && want.len() < 2 * SERVICES,
        "the load should page some SLOs and not others: {want:?}"
    );
    let alert_set = |result: BTreeMap<String, f64>| -> BTreeSet<String> {
        result
            .keys()
            .map(|labels| {
                let get = |name: &str| {
                    labels
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .unwrap_or("")
                        .to_owned()
                };
                format!("{} {}", get("slo"), get("severity"))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let ours = alert_set(query_map(&cluster, firing).await);
        let theirs = alert_set(query_map(&single, firing).await);
        if ours == want && theirs == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "firing alerts: replicas {ours:?}, single {theirs:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Nothing else is pending or firing on either side.
    let any = r#"ALERTS{alertname="SloxideBurnRate"}"#;
    assert_eq!(
        alert_set(query_map(&cluster, any).await),
        alert_set(query_map(&single, any).await)
    );
    drop(collector);
}
