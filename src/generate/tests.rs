//! The generators against known configurations: thresholds, expressions, quoting and
//! the shape of the YAML and JSON they write. `tests/it/generate.rs` runs the output
//! through promtool and a real Prometheus.

use serde_json::Value;

use super::promql::number;
use super::{dashboard, rules};
use crate::config::Config;
use crate::families;

const EXAMPLE: &str = include_str!("../../config/example.yaml");

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// The generated rules, read back by a YAML parser.
fn parsed_rules(config: &Config) -> Value {
    let text = rules(config);
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The rules of the alerting group.
fn rule_list(config: &Config) -> Vec<Value> {
    group(config, 1, "sloxide-slo-alerts")
}

/// The rules of the recording group.
fn record_list(config: &Config) -> Vec<Value> {
    group(config, 0, "sloxide-slo-recording")
}

/// The rules of the group of alerts on sloxide itself.
fn self_alert_list(config: &Config) -> Vec<Value> {
    group(config, 2, "sloxide-self-alerts")
}

fn group(config: &Config, index: usize, name: &str) -> Vec<Value> {
    let parsed = parsed_rules(config);
    let groups = parsed["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[index]["name"], name);
    groups[index]["rules"].as_array().unwrap().clone()
}

fn find<'a>(rules: &'a [Value], alert: &str, slo: &str, severity: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| {
            r["alert"] == alert && r["labels"]["slo"] == slo && r["labels"]["severity"] == severity
        })
        .unwrap_or_else(|| panic!("no {alert} for {slo} {severity}"))
}

#[test]
fn numbers_have_six_significant_digits_without_noise() {
    let cases = [
        (0.02 * 2_592_000.0 / 3_600.0, "14.4"),
        (6.0, "6"),
        (1.0, "1"),
        (0.1 * 604_800.0 / 259_200.0, "0.233333"),
        (3.36, "3.36"),
        (129_600.0, "129600"),
        (0.000_001_234_567, "0.00000123457"),
    ];
    for (value, want) in cases {
        assert_eq!(number(value), want, "{value}");
    }
}

#[test]
fn example_has_page_ticket_and_no_data_alerts_per_slo() {
    let config = config(EXAMPLE);
    let rules = rule_list(&config);
    assert_eq!(rules.len(), config.slos.len() * 3);
    for slo in &config.slos {
        for (alert, severity) in [
            ("SloxideBurnRate", "page"),
            ("SloxideBurnRate", "ticket"),
            ("SloxideSloNoData", "ticket"),
        ] {
            let rule = find(&rules, alert, &slo.name, severity);
            assert_eq!(rule["labels"]["service"], slo.service.as_str());
            let hold = rule["for"].as_str().unwrap();
            if alert == "SloxideBurnRate" {
                assert_eq!(hold, "1m");
            }
            let annotations = rule["annotations"].as_object().unwrap();
            assert!(annotations.contains_key("summary") && annotations.contains_key("description"));
        }
    }
}

#[test]
fn burn_rate_expression_uses_the_rollup_and_the_period_thresholds() {
    let rules = rule_list(&config(EXAMPLE));
    let page = find(&rules, "SloxideBurnRate", "checkout-availability", "page");
    let expr = page["expr"].as_str().unwrap();
    let burn = |window: &str| {
        format!(
            r#"sloxide:slo_burn_rate{{slo="checkout-availability",service="checkout",region="",window="{window}"}}"#
        )
    };
    let want = format!(
        "max by (slo, service) ( ({} > 14.4 and ignoring (window) {} > 14.4) or ({} > 6 and ignoring (window) {} > 6) )",
        burn("1h"),
        burn("5m"),
        burn("6h"),
        burn("30m")
    );
    assert_eq!(expr, want);
    assert!(!expr.contains("window_events"), "min_events is 0: {expr}");

    // A 7d period scales the thresholds: 3.36, 1.4, 0.7 and 0.233333.
    let page = find(&rules, "SloxideBurnRate", "api-availability", "page");
    let expr = page["expr"].as_str().unwrap();
    assert!(expr.contains(r#"window="1h"} > 3.36 "#), "{expr}");
    assert!(expr.contains(r#"window="30m"} > 1.4)"#), "{expr}");
    let ticket = find(&rules, "SloxideBurnRate", "api-availability", "ticket");
    let expr = ticket["expr"].as_str().unwrap();
    assert!(expr.contains(r#"window="1d"} > 0.7 "#), "{expr}");
    assert!(expr.contains(r#"window="6h"} > 0.233333)"#), "{expr}");
}

#[test]
fn records_sum_the_window_counts_over_replicas() {
    let config = config(EXAMPLE);
    let records = record_list(&config);
    assert_eq!(records.len(), config.slos.len() * 6);
    let record = |name: &str, slo: &str| {
        records
            .iter()
            .find(|r| r["record"] == name && r["labels"]["slo"] == slo)
            .unwrap_or_else(|| panic!("no {name} for {slo}"))["expr"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let sum = |family: &str, by: &str, extra: &str| {
        format!(
            r#"sum by ({by}) ({family}{{slo="api-availability",service="api-gateway"{extra}}})"#
        )
    };
    let by = "slo, service, region, window";
    let events = sum(families::SLO_WINDOW_EVENTS.name, by, "");
    let bad = sum(families::SLO_WINDOW_BAD_EVENTS.name, by, "");
    assert_eq!(
        record("sloxide:slo_window_events", "api-availability"),
        events
    );
    // 99.5% leaves 0.005 of the events to fail.
    assert_eq!(
        record("sloxide:slo_burn_rate", "api-availability"),
        format!("{bad} / clamp_min({events}, 1) / 0.005")
    );
    assert_eq!(
        record("sloxide:slo_sli_ratio", "api-availability"),
        format!("1 - {bad} / ({events} > 0)")
    );
    // The budget is over the SLO's own period, 7d.
    let period = r#",window="7d""#;
    assert_eq!(
        record(
            "sloxide:slo_error_budget_remaining_ratio",
            "api-availability"
        ),
        format!(
            "1 - {} / clamp_min({}, 1) / 0.005",
            sum(
                families::SLO_WINDOW_BAD_EVENTS.name,
                "slo, service, region",
                period
            ),
            sum(
                families::SLO_WINDOW_EVENTS.name,
                "slo, service, region",
                period
            )
        )
    );
    assert!(
        record("sloxide:slo_budget_exhaustion_seconds", "api-availability")
            .contains("* 604800 / ignoring (window)"),
    );
    // An objective with more digits than six keeps them all.
    let odd = EXAMPLE.replace("objective: 99.5", "objective: 99.987654");
    let records = record_list(&self::config(&odd));
    let burn = records
        .iter()
        .find(|r| {
            r["record"] == "sloxide:slo_burn_rate" && r["labels"]["slo"] == "api-availability"
        })
        .unwrap();
    assert!(
        burn["expr"].as_str().unwrap().ends_with("/ 0.00012346"),
        "{}",
        burn["expr"]
    );
}

#[test]
fn annotations_state_burn_rate_budget_objective_and_period() {
    let rules = rule_list(&config(EXAMPLE));
    let page = find(&rules, "SloxideBurnRate", "checkout-availability", "page");
    let description = page["annotations"]["description"].as_str().unwrap();
    for part in [
        r#"{{ printf "%.4g" $value }}"#,
        r#"{{ with query `sloxide:slo_error_budget_remaining_ratio{slo="checkout-availability",service="checkout",region=""}` }}{{ . | first | value | humanizePercentage }}{{ else }}an unknown share{{ end }}"#,
        "objective 99.9% over 30d",
        "1h and 5m above 14.4, or 6h and 30m above 6",
        "\"99.9% of checkout requests succeed\"",
    ] {
        assert!(description.contains(part), "{part} not in {description}");
    }
}

#[test]
fn min_events_adds_an_event_count_to_every_tier() {
    let rules = rule_list(&config(
        &EXAMPLE.replace("min_events: 0 ", "min_events: 500 "),
    ));
    let ticket = find(&rules, "SloxideBurnRate", "deployments", "ticket");
    let expr = ticket["expr"].as_str().unwrap();
    for long in ["1d", "3d"] {
        let clause = format!(
            r#"and ignoring (window) sloxide:slo_window_events{{slo="deployments",service="deployer",region="",window="{long}"}} >= 500)"#
        );
        assert!(expr.contains(&clause), "{clause} not in {expr}");
    }
}

#[test]
fn no_data_reads_the_shortest_page_window_or_a_missing_slo() {
    let rules = rule_list(&config(EXAMPLE));
    let rule = find(&rules, "SloxideSloNoData", "deployments", "ticket");
    // The page tiers are 1h/5m and 6h/30m: the shortest short window is 5m.
    assert_eq!(
        rule["expr"],
        r#"sum by (slo, service) (sloxide_slo_window_events{slo="deployments",service="deployer",region="",window="5m"}) == 0 or absent(sloxide_slo_window_events{slo="deployments",service="deployer"})"#
    );
    assert_eq!(rule["for"], "1m");
    assert_eq!(
        rule["annotations"]["summary"],
        "SLO deployments (deployer) has counted no event for 6m"
    );
    let description = rule["annotations"]["description"].as_str().unwrap();
    assert!(description.contains("log records"), "{description}");
    assert!(
        description.contains("none in its 5m window (the short window of the page tier 1h/5m"),
        "{description}"
    );

    // The shortest short window wins, whatever the order of the tiers.
    let tiers = "alerting:\n  page:\n    - {long: 6h, short: 30m, budget_percent: 5}\n    - {long: 2h, short: 10m, budget_percent: 3}\n";
    let yaml = format!(
        "slos:\n  - {{name: a, service: s, objective: 99, indicator: {{availability: {{}}}}}}\n{tiers}"
    );
    let rules = rule_list(&config(&yaml));
    let rule = find(&rules, "SloxideSloNoData", "a", "ticket");
    let expr = rule["expr"].as_str().unwrap();
    assert!(expr.contains(r#"region="",window="10m"}) == 0"#), "{expr}");
    assert_eq!(rule["for"], "1m");
    assert_eq!(
        rule["annotations"]["summary"],
        "SLO a (s) has counted no event for 11m"
    );

    // Without a page tier: the 5m window, held 10m, 15 minutes in all.
    let yaml = "slos:\n  - {name: a, service: s, objective: 99, indicator: {availability: {}}}\nalerting:\n  page: []\n";
    let rules = rule_list(&config(yaml));
    let rule = find(&rules, "SloxideSloNoData", "a", "ticket");
    let expr = rule["expr"].as_str().unwrap();
    assert!(expr.contains(r#"region="",window="5m"}) == 0"#), "{expr}");
    assert_eq!(rule["for"], "10m");
    assert_eq!(
        rule["annotations"]["summary"],
        "SLO a (s) has counted no event for 15m"
    );
    let description = rule["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("none in its 5m window, held 10m."),
        "{description}"
    );
}

#[test]
fn a_severity_without_tiers_has_no_alert_and_no_slos_mean_no_rules() {
    let yaml = "slos:\n  - {name: a, service: s, objective: 99, indicator: {availability: {}}}\nalerting:\n  ticket: []\n";
    let rules = rule_list(&config(yaml));
    let alerts: Vec<(&str, &str)> = rules
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap(),
                r["labels"]["severity"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        alerts,
        [("SloxideBurnRate", "page"), ("SloxideSloNoData", "ticket")]
    );

    assert!(rule_list(&Config::embedded_default()).is_empty());
    assert!(record_list(&Config::embedded_default()).is_empty());
    // The alerts on sloxide itself do not depend on SLOs.
    assert_eq!(
        self_alert_list(&Config::embedded_default()).len(),
        self_alert_list(&config(EXAMPLE)).len()
    );
}

/// One self-alert by name (and `signal`, for the refused records).
fn self_alert<'a>(rules: &'a [Value], alert: &str, signal: Option<&str>) -> &'a Value {
    rules
        .iter()
        .find(|r| {
            r["alert"] == alert && signal.is_none_or(|signal| r["labels"]["signal"] == signal)
        })
        .unwrap_or_else(|| panic!("no {alert} {signal:?}"))
}

#[test]
fn self_alerts_have_a_severity_a_hold_and_say_what_to_check() {
    let rules = self_alert_list(&config(EXAMPLE));
    let alerts: Vec<(&str, &str, &str)> = rules
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap(),
                r["labels"]["severity"].as_str().unwrap(),
                r["for"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        alerts,
        [
            ("SloxideDown", "page", "5m"),
            ("SloxideAbsent", "page", "10m"),
            ("SloxideSeriesOverflow", "ticket", "5m"),
            ("SloxideRecordsRefused", "ticket", "5m"),
            ("SloxideRecordsRefused", "ticket", "5m"),
            ("SloxideCheckpointFailing", "ticket", "5m"),
            ("SloxideCheckpointStale", "ticket", "5m"),
            ("SloxideConfigReloadFailed", "ticket", "5m"),
        ]
    );
    for rule in &rules {
        let summary = rule["annotations"]["summary"].as_str().unwrap();
        let description = rule["annotations"]["description"].as_str().unwrap();
        assert!(summary.starts_with("sloxide ") || summary.starts_with("No sloxide "));
        let expr = rule["expr"].as_str().unwrap();
        // No job is named: the job's name is the user's choice.
        assert!(!expr.contains("job="), "{expr}");
        // The description names every sloxide family that the expression reads.
        for (at, _) in expr.match_indices("sloxide_") {
            let family: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                description.contains(&family),
                "{family} not in {description}"
            );
        }
    }

    assert_eq!(
        self_alert(&rules, "SloxideDown", None)["expr"],
        "up == 0 and ignoring (version) last_over_time(sloxide_build_info[1d])"
    );
    assert_eq!(
        self_alert(&rules, "SloxideAbsent", None)["expr"],
        "absent(sloxide_build_info)"
    );
    assert_eq!(
        self_alert(&rules, "SloxideSeriesOverflow", None)["expr"],
        "increase(sloxide_series_overflow_total[10m]) > 0"
    );
    assert_eq!(
        self_alert(&rules, "SloxideRecordsRefused", Some("logs"))["expr"],
        "sum without (transport, reason) (rate(sloxide_receiver_refused_log_records_total[10m])) / ( sum without (transport) (rate(sloxide_receiver_accepted_log_records_total[10m])) + sum without (transport, reason) (rate(sloxide_receiver_refused_log_records_total[10m])) ) > 0.01"
    );
    let spans = self_alert(&rules, "SloxideRecordsRefused", Some("traces"));
    assert!(spans["expr"].as_str().unwrap().starts_with(
        "sum without (transport, reason) (rate(sloxide_receiver_refused_spans_total[10m]))"
    ));
    assert!(
        spans["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("above the 1% threshold")
    );
    assert_eq!(
        self_alert(&rules, "SloxideCheckpointFailing", None)["expr"],
        "increase(sloxide_checkpoint_failures_total[10m]) > 0"
    );
    assert_eq!(
        self_alert(&rules, "SloxideConfigReloadFailed", None)["expr"],
        "sloxide_config_last_reload_successful == 0"
    );
}

#[test]
fn checkpoint_staleness_follows_the_checkpoint_interval() {
    // (interval, threshold in seconds, hold): 4 intervals and 2 intervals, each at
    // least 5m, in whole seconds.
    let cases = [
        ("15s", "300", "5m"),
        ("1500ms", "300", "5m"),
        ("2m", "480", "5m"),
        ("10m", "2400", "20m"),
        ("90001ms", "361", "5m"),
        ("1h", "14400", "2h"),
    ];
    for (interval, threshold, hold) in cases {
        let yaml = format!("state:\n  checkpoint_interval: {interval}\nslos: []\n");
        let rules = self_alert_list(&config(&yaml));
        let stale = self_alert(&rules, "SloxideCheckpointStale", None);
        assert_eq!(
            stale["expr"],
            format!(
                r#"sloxide_checkpoint_last_success_timestamp_seconds < time() - {threshold} unless ignoring (outcome, generation) sloxide_restore_outcome{{outcome="disabled"}}"#
            ),
            "{interval}"
        );
        assert_eq!(stale["for"], hold, "{interval}");
        let description = stale["annotations"]["description"].as_str().unwrap();
        assert!(
            description.contains(&format!(
                "4 times state.checkpoint_interval, {interval}, and 5m"
            )),
            "{description}"
        );
        let failing = self_alert(&rules, "SloxideCheckpointFailing", None);
        let description = failing["annotations"]["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("every state.checkpoint_interval ({interval})")),
            "{description}"
        );
    }
}

#[test]
fn hostile_names_are_quoted_for_yaml_promql_and_templates() {
    let service = r#"we"ird\ {{ .Value }} svc"#;
    let yaml = format!(
        "slos:\n  - name: odd\n    service: '{}'\n    description: 'has {{{{ braces }}}} and \"quotes\"'\n    objective: 99\n    indicator: {{availability: {{}}}}\n",
        service.replace('\'', "''")
    );
    let config = config(&yaml);
    assert_eq!(config.slos[0].service, service);
    let rules = rule_list(&config);
    let page = find(&rules, "SloxideBurnRate", "odd", "page");
    assert_eq!(page["labels"]["service"], service);
    let expr = page["expr"].as_str().unwrap();
    assert!(
        expr.contains(r#"service="we\"ird\\ {{ .Value }} svc""#),
        "{expr}"
    );
    let summary = page["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains(r#"(we"ird\ {{ "{{" }} .Value }} svc)"#),
        "{summary}"
    );
}

#[test]
fn dashboard_has_variables_and_one_burn_rate_panel_per_slo() {
    let config = config(EXAMPLE);
    let model: Value = serde_json::from_str(&dashboard(&config)).unwrap();
    assert_eq!(model["uid"], "sloxide-slo");
    assert_eq!(model["title"], "sloxide SLOs");
    assert!(model["schemaVersion"].as_u64().unwrap() >= 39);
    let variables = model["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = variables
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["datasource", "slo", "service", "region"]);
    assert_eq!(variables[0]["type"], "datasource");
    assert_eq!(variables[0]["query"], "prometheus");
    for variable in &variables[1..] {
        assert_eq!(variable["type"], "query");
        assert_eq!(variable["multi"], true);
        assert_eq!(variable["includeAll"], true);
    }

    let panels = model["panels"].as_array().unwrap();
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        assert_eq!(panel["datasource"], datasource, "{}", panel["title"]);
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"], datasource);
            assert!(!target["expr"].as_str().unwrap().is_empty());
        }
    }

    // Panels never overlap on the grid.
    let cells: Vec<(u64, u64, u64, u64)> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap();
            (n("x"), n("y"), n("w"), n("h"))
        })
        .collect();
    for (i, a) in cells.iter().enumerate() {
        assert!(a.0 + a.2 <= 24);
        for b in &cells[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "{a:?} overlaps {b:?}");
        }
    }

    for slo in &config.slos {
        let panel = panels
            .iter()
            .find(|p| {
                p["title"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("Burn rate: {} (", slo.name))
            })
            .unwrap_or_else(|| panic!("no burn-rate panel for {}", slo.name));
        assert_eq!(
            panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"],
            "line"
        );
    }
    let checkout = panels
        .iter()
        .find(|p| p["title"] == "Burn rate: checkout-availability (checkout, 99.9% over 30d)")
        .unwrap();
    let steps: Vec<(f64, &str)> = checkout["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|s| (s["value"].as_f64().unwrap(), s["color"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            (1.0, "orange"),
            (3.0, "orange"),
            (6.0, "red"),
            (14.4, "red")
        ]
    );

    let table = &panels.iter().find(|p| p["type"] == "table").unwrap();
    let sli = table["targets"][1]["expr"].as_str().unwrap();
    assert!(
        sli.contains(r#"slo="checkout-latency",service="checkout",region="",window="30d""#),
        "{sli}"
    );
    assert!(
        sli.contains(r#"slo="api-availability",service="api-gateway",region="",window="7d""#),
        "{sli}"
    );
    assert_eq!(sli.matches(" or ").count(), config.slos.len() - 1);

    // The bucket-based latency panel asks for the buckets' exemplars, and only it.
    for panel in panels {
        let bucket_based = panel["title"] == "Latency by region (histogram)";
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                target["exemplar"].as_bool().unwrap_or(false),
                bucket_based,
                "{}",
                panel["title"]
            );
        }
    }
    assert!(
        panels
            .iter()
            .any(|p| p["title"] == "Latency by region (histogram)")
    );
}

#[test]
fn dashboard_without_slos_has_no_empty_query() {
    let model: Value = serde_json::from_str(&dashboard(&Config::embedded_default())).unwrap();
    for panel in model["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert!(
                !target["expr"].as_str().unwrap().is_empty(),
                "{}",
                panel["title"]
            );
        }
    }
}
