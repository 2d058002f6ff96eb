//! `sloxide rules` and `sloxide dashboard`, run as the real binary: the rules pass
//! `promtool check rules` and the committed unit tests of `tests/rules/`, and every
//! PromQL expression of the dashboard is accepted by a real Prometheus.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::require;
use crate::prometheus::{Prometheus, free_port, prometheus_on_path};

/// `config/example.yaml`.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml")
}

/// Runs `sloxide <subcommand> --config <config>`.
fn sloxide(subcommand: &str, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sloxide"))
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .env_remove("SLOXIDE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("the sloxide binary runs")
}

/// The standard output of a successful `sloxide <subcommand> --config <config>`.
fn generated(subcommand: &str, config: &Path) -> String {
    let output = sloxide(subcommand, config);
    assert!(
        output.status.success(),
        "sloxide {subcommand} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the output is UTF-8")
}

/// True when `promtool` is on PATH and runs.
fn promtool_on_path() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs promtool with `args` in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `config` (YAML) to a file in `dir` and returns its path.
fn write_config(dir: &Path, config: &str) -> PathBuf {
    let path = dir.join("sloxide.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn rules_pass_promtool_check() {
    if !require(promtool_on_path(), "promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("example.yaml"),
        generated("rules", &example()),
    )
    .unwrap();

    // min_events, one tier per severity, a short period, and a service name that
    // needs quoting in YAML, PromQL and Go templates alike.
    let config = write_config(
        dir.path(),
        r#"
slos:
  - name: odd
    service: 'we"ird\ {{ .Value }} `svc`'
    description: 'has {{ braces }} and "quotes"'
    objective: 99.95
    period: 1h
    indicator: {availability: {}}
  - name: odd-no-backtick
    service: 'we"ird\ {{ .Value }} }} svc'
    objective: 90
    indicator: {availability: {}}
alerting:
  page: [{long: 5m, short: 1m, budget_percent: 3}]
  ticket: [{long: 30m, short: 5m, budget_percent: 7}]
  min_events: 100
"#,
    );
    let odd = generated("rules", &config);
    assert!(odd.contains(">= 100"), "{odd}");
    std::fs::write(dir.path().join("odd.yaml"), odd).unwrap();

    let empty = write_config(dir.path(), "slos: []\n");
    std::fs::write(dir.path().join("empty.yaml"), generated("rules", &empty)).unwrap();

    promtool(
        dir.path(),
        &["check", "rules", "example.yaml", "odd.yaml", "empty.yaml"],
    );
}

#[test]
fn rules_pass_the_promtool_unit_tests() {
    if !require(promtool_on_path(), "promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The test file names the rules `sloxide-rules.yaml`, next to itself.
    std::fs::write(
        dir.path().join("sloxide-rules.yaml"),
        generated("rules", &example()),
    )
    .unwrap();
    // burn_rate_test.yaml: the SLO groups; self_alerts_test.yaml: sloxide-self-alerts.
    let files = ["burn_rate_test.yaml", "self_alerts_test.yaml"];
    for file in files {
        let tests = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/rules")
            .join(file);
        std::fs::copy(&tests, dir.path().join(file)).unwrap();
    }
    promtool(dir.path(), &["test", "rules", files[0], files[1]]);
}

#[test]
fn a_bad_config_exits_1_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "slos:\n  - name: Not Valid\n");
    for subcommand in ["rules", "dashboard"] {
        let output = sloxide(subcommand, &config);
        assert_eq!(output.status.code(), Some(1), "{subcommand}");
        assert!(output.stdout.is_empty(), "{subcommand}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with("sloxide: error:") && stderr.contains("sloxide.yaml"),
            "{subcommand}: {stderr}"
        );
    }
}

#[test]
fn the_config_may_come_from_sloxide_config() {
    let output = Command::new(env!("CARGO_BIN_EXE_sloxide"))
        .arg("rules")
        .env("SLOXIDE_CONFIG", example())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        generated("rules", &example())
    );
}

/// Every target expression of every panel, with its panel's title.
fn panel_exprs(model: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in model["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("each target has an expr");
            exprs.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
        }
    }
    exprs
}

/// What Grafana would send with every variable at "All" and a 5m rate interval.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$slo", ".*")
        .replace("$service", ".*")
        .replace("$region", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_grafana_json_with_valid_promql() {
    let text = generated("dashboard", &example());
    let model: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(model["schemaVersion"].as_u64().unwrap() >= 39);
    assert_eq!(model["uid"], "sloxide-slo");
    let variables = model["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(
        variable("slo")["definition"],
        "label_values(sloxide_slo_objective_ratio, slo)"
    );
    let exprs = panel_exprs(&model);
    assert!(exprs.len() >= 10, "{exprs:?}");
    assert!(
        exprs
            .iter()
            .any(|(_, e)| e.starts_with("histogram_quantile(0.99, "))
    );
    assert!(
        exprs
            .iter()
            .any(|(_, e)| e.contains("sloxide_span_duration_quantile_seconds"))
    );

    if !require(prometheus_on_path(), "prometheus (the server binary)") {
        return;
    }
    // Nothing listens on the scrape target; only the query API is used.
    let target: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prometheus = Prometheus::start(target).await;
    for (title, expr) in &exprs {
        let query = substituted(expr);
        assert!(
            !query.contains('$'),
            "{title}: unsubstituted variable in {query}"
        );
        if let Err(e) = prometheus.query(&query).await {
            panic!("{title}: not valid PromQL: {e}");
        }
    }
}

#[test]
fn min_events_holds_a_tier_back_until_its_long_window_has_enough_events() {
    if !require(promtool_on_path(), "promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "slos:\n  - {name: quiet, service: svc, objective: 99, indicator: {availability: {}}}\n\
         alerting:\n  page: [{long: 1h, short: 5m, budget_percent: 2}]\n  ticket: []\n  min_events: 100\n",
    );
    let rules = generated("rules", &config);
    std::fs::write(dir.path().join("sloxide-rules.yaml"), &rules).unwrap();
    let parsed: Value = serde_saphyr::from_str(&rules).unwrap();
    let alerts = &parsed["groups"][1];
    assert_eq!(alerts["name"], "sloxide-slo-alerts");
    let page = &alerts["rules"][0];
    assert_eq!(page["labels"]["severity"], "page");
    let expr = page["expr"].as_str().unwrap();

    // A burn of 20 (threshold 14.4) on both windows throughout, on two replicas. Each
    // holds 20 events in the hour up to 40m (40 in all: silent), then 60 (120 in all:
    // fires, valued at the burn rate); neither replica alone ever reaches 100.
    let window = |instance: &str, window: &str, total: &str, bad: &str| {
        let labels =
            format!("instance=\"{instance}\",slo=\"quiet\",service=\"svc\",window=\"{window}\"");
        format!(
            "      - series: 'sloxide_slo_window_events{{{labels}}}'\n        values: '{total}'\n\
             \x20     - series: 'sloxide_slo_window_bad_events{{{labels}}}'\n        values: '{bad}'\n"
        )
    };
    let replica = |instance: &str| {
        window(instance, "1h", "20x40 60x60", "4x40 12x60")
            + &window(instance, "5m", "10x100", "2x100")
    };
    let sample = |at: &str, samples: &str| {
        format!(
            "      - expr: {expr}\n        eval_time: {at}\n        exp_samples: {samples}\n",
            expr = serde_json::to_string(expr).unwrap()
        )
    };
    let test = format!(
        "rule_files: [sloxide-rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{}{}    promql_expr_test:\n{}{}",
        replica("a:9464"),
        replica("b:9464"),
        sample("40m", "[]"),
        sample(
            "100m",
            "[{labels: '{slo=\"quiet\",service=\"svc\"}', value: 20}]"
        ),
    );
    std::fs::write(dir.path().join("min_events_test.yaml"), test).unwrap();
    promtool(dir.path(), &["test", "rules", "min_events_test.yaml"]);
}

/// The sample names `/metrics` serves, read off a rendered page's `# TYPE` lines: a
/// histogram serves `_bucket`, `_sum` and `_count`, a summary itself, `_sum` and
/// `_count`, any other family itself.
fn served_sample_names(page: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// Every `sloxide_*` name that the generated rules and dashboard query is a series
/// that `/metrics` serves, for a configuration with SLOs of both sources. Needs no
/// outside program, so a renamed family breaks it on every machine.
#[test]
fn generated_rules_and_dashboard_name_only_served_families() {
    use sloxide::clock::ManualClock;
    use sloxide::config::Config;
    use sloxide::pipeline::Pipeline;
    use std::sync::Arc;

    let config = Config::load(&example()).unwrap();
    assert!(!config.slos.is_empty());
    let pipeline = Pipeline::new(&config, Arc::new(ManualClock::new(0))).unwrap();
    pipeline.tick();
    let served = served_sample_names(&pipeline.render());
    assert!(
        served.contains("sloxide_slo_burn_rate") && served.contains("sloxide_spans_total"),
        "{served:?}"
    );
    let generated = sloxide::generate::rules(&config) + &sloxide::generate::dashboard(&config);
    let mut named = std::collections::BTreeSet::new();
    let mut rest = generated.as_str();
    while let Some(at) = rest.find("sloxide_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        named.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    // Rule names and the like are CamelCase (`SloxideBurnRate`) and never match.
    assert!(
        named.len() >= 16
            && named.contains("sloxide_slo_window_events")
            && named.contains("sloxide_slo_window_bad_events")
            && named.contains("sloxide_build_info")
            && named.contains("sloxide_checkpoint_last_success_timestamp_seconds")
            && named.contains("sloxide_restore_outcome"),
        "the generators name too few series: {named:?}"
    );
    let unserved: Vec<_> = named.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "generated rules or dashboard query series /metrics does not serve: {unserved:?}"
    );

    // Every recorded series (`sloxide:...`) that the alerts and the dashboard read is
    // one the rules record.
    let rules = sloxide::generate::rules(&config);
    let recorded: std::collections::BTreeSet<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record: "))
        .map(|name| name.trim_matches('"').to_owned())
        .collect();
    assert!(recorded.len() >= 6, "{recorded:?}");
    let mut read = std::collections::BTreeSet::new();
    let mut rest = generated.as_str();
    while let Some(at) = rest.find("sloxide:") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        read.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    assert!(read.len() >= 5, "{read:?}");
    let unrecorded: Vec<_> = read.difference(&recorded).collect();
    assert!(
        unrecorded.is_empty(),
        "generated alerts or dashboard read series no rule records: {unrecorded:?}"
    );
}
