use std::path::Path;
use std::time::Duration;

use super::slo::{
    AlertSeverity, Alerting, BadCondition, DurationUnit, Filter, Indicator, Source, Tier,
};
use super::*;
use crate::otlp::{Severity, SpanKind};

const ORIGIN: &str = "test.yaml";
const EXAMPLE_YAML: &str = include_str!("../../config/example.yaml");

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(yaml, ORIGIN)
}

fn parse_ok(yaml: &str) -> Config {
    match parse(yaml) {
        Ok(config) => config,
        Err(error) => panic!("unexpected error: {error}\nfor:\n{yaml}"),
    }
}

fn parse_err(yaml: &str) -> String {
    match parse(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(error) => error.to_string(),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const M: u64 = 60;
const H: u64 = 3_600;
const D: u64 = 86_400;

/// A config with one SLO made of the common keys and `rest`, which is indented by 4.
fn one_slo(rest: &str) -> String {
    format!("slos:\n  - name: checkout\n    service: checkout\n    objective: 99.9\n{rest}")
}

#[test]
fn embedded_default_is_valid_and_equals_an_empty_file() {
    let embedded = match Config::from_yaml(DEFAULT_YAML, EMBEDDED_ORIGIN) {
        Ok(config) => config,
        Err(error) => panic!("the embedded default is invalid: {error}"),
    };
    assert_eq!(embedded, Config::embedded_default());
    assert_eq!(embedded, Config::default());
    for empty in [
        "",
        "\n",
        "# only a comment\n",
        "---\n",
        "~\n",
        "# a\n\n# b\n",
    ] {
        assert_eq!(parse_ok(empty), embedded, "for {empty:?}");
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = parse_ok("");
    let Config {
        listen,
        region,
        dimensions,
        histogram,
        timing,
        limits,
        state,
        slos,
        alerting,
        auth,
        tls,
        metrics,
    } = config;
    assert_eq!(auth, None);
    assert_eq!(tls, None);
    assert_eq!(metrics, Metrics::default());
    assert_eq!(listen.otlp_grpc.to_string(), "0.0.0.0:4317");
    assert_eq!(listen.otlp_http.to_string(), "0.0.0.0:4318");
    assert_eq!(listen.metrics.to_string(), "0.0.0.0:9464");
    assert_eq!(region.attributes, ["cloud.region"]);
    assert_eq!(region.default, "unknown");
    assert!(dimensions.is_empty());
    assert_eq!(
        histogram.buckets,
        [
            0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
            8.192, 16.384
        ]
    );
    assert_eq!(histogram.quantiles, [0.5, 0.9, 0.99, 0.999]);
    assert_eq!(timing.late_slack, secs(5 * M));
    assert_eq!(timing.max_skew, secs(M));
    assert_eq!(limits.max_request_bytes, 16 * 1024 * 1024);
    assert_eq!(limits.max_decompressed_bytes, 64 * 1024 * 1024);
    assert_eq!(limits.max_records_per_request, 100_000);
    assert_eq!(limits.max_series, 100_000);
    assert_eq!(limits.max_series_per_service, 5_000);
    assert_eq!(limits.max_label_bytes, 256);
    assert_eq!(limits.series_idle_expiry, secs(15 * M));
    assert_eq!(limits.compression, Compressions::ALL);
    assert_eq!(limits.max_in_flight_bytes, 256 << 20);
    assert_eq!(limits.body_read_timeout, secs(30));
    assert_eq!(limits.admission_wait, secs(1));
    assert_eq!(limits.max_connections, 4096);
    assert_eq!(limits.header_read_timeout, secs(10));
    assert_eq!(limits.idle_timeout, secs(60));
    assert_eq!(
        limits.compression.to_string(),
        "gzip, zstd, deflate, snappy or identity"
    );
    assert_eq!(state.data_dir, None);
    assert_eq!(state.checkpoint_interval, secs(15));
    assert!(slos.is_empty());
    let tier = |long, short, budget_percent| Tier {
        long: secs(long),
        short: secs(short),
        budget_percent,
    };
    assert_eq!(
        alerting,
        Alerting {
            page: vec![tier(H, 5 * M, 2.0), tier(6 * H, 30 * M, 5.0)],
            ticket: vec![tier(D, 2 * H, 10.0), tier(3 * D, 6 * H, 10.0)],
            min_events: 0,
        }
    );
}

#[test]
fn null_sections_take_the_defaults() {
    let yaml =
        "listen:\nregion:\ndimensions:\nhistogram:\ntiming:\nlimits:\nstate:\nslos:\nalerting:\n";
    assert_eq!(parse_ok(yaml), Config::embedded_default());
    let yaml = "limits:\n  max_series:\nalerting:\n  page: ~\n";
    assert_eq!(parse_ok(yaml), Config::embedded_default());
}

#[test]
fn example_is_valid() {
    let config = parse_ok(EXAMPLE_YAML);
    let loaded =
        match Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml")) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
    assert_eq!(loaded, config);
    assert_eq!(config.region.attributes, ["cloud.region", "region"]);
    assert_eq!(config.dimensions, ["http.route"]);
    assert_eq!(config.alerting, Alerting::default());
    let names: Vec<&str> = config.slos.iter().map(|slo| slo.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "checkout-latency",
            "checkout-availability",
            "api-availability",
            "deployments",
            "provisioning-latency"
        ]
    );

    let latency = &config.slos[0];
    assert_eq!(latency.service, "checkout");
    assert_eq!(latency.objective, 99.9);
    assert_eq!(latency.period, secs(30 * D));
    assert_eq!(latency.source, Source::Spans);
    assert_eq!(
        latency.filter,
        Filter {
            span_kinds: vec![SpanKind::Server],
            span_names: vec![],
            attributes: vec![("http.route".to_owned(), vec!["/api/checkout".to_owned()])],
        }
    );
    assert_eq!(
        latency.indicator,
        Indicator::Latency {
            threshold: Duration::from_millis(300),
            attribute: None,
            unit: DurationUnit::Ms,
        }
    );

    let availability = &config.slos[1];
    assert_eq!(availability.indicator, Indicator::Availability);
    assert_eq!(
        availability.filter.span_kinds,
        [SpanKind::Server, SpanKind::Consumer]
    );
    assert_eq!(config.slos[2].period, secs(7 * D));
    assert_eq!(
        config.slos[2].filter.attributes[0].1,
        ["/api/orders", "/api/orders/{id}", "/api/cart"]
    );

    let deployments = &config.slos[3];
    assert_eq!(deployments.source, Source::Logs);
    assert_eq!(
        deployments.filter,
        Filter {
            span_kinds: vec![],
            span_names: vec![],
            attributes: vec![("event.name".to_owned(), vec!["deployment".to_owned()])],
        }
    );
    assert_eq!(
        deployments.indicator,
        Indicator::Events {
            bad: BadCondition {
                severity_at_least: Some(Severity::Error),
                attributes: vec![("deployment.outcome".to_owned(), vec!["failure".to_owned()])],
            }
        }
    );

    assert_eq!(
        config.slos[4].indicator,
        Indicator::Latency {
            threshold: secs(2 * M),
            attribute: Some("provisioning.duration_ms".to_owned()),
            unit: DurationUnit::Ms,
        }
    );
}

#[test]
fn durations_parse() {
    let cases: &[(&str, Duration)] = &[
        ("0s", Duration::ZERO),
        ("1ns", Duration::from_nanos(1)),
        ("250us", Duration::from_micros(250)),
        ("300ms", Duration::from_millis(300)),
        ("10s", secs(10)),
        ("90s", secs(90)),
        ("5m", secs(5 * M)),
        ("1h", secs(H)),
        ("30d", secs(30 * D)),
        ("1500ms", Duration::from_millis(1_500)),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Ok(*expected), "for {text:?}");
    }
}

#[test]
fn bad_durations_are_refused_with_a_reason() {
    let cases: &[(&str, DurationError, &str)] = &[
        ("", DurationError::Empty, "write a whole number and a unit"),
        (
            "5",
            DurationError::MissingUnit("5".into()),
            "`5` has no unit",
        ),
        (
            "m",
            DurationError::NotANumber("m".into()),
            "`m` is not a duration",
        ),
        (
            "-5m",
            DurationError::NotANumber("-5m".into()),
            "is not a duration",
        ),
        (
            " 5m",
            DurationError::NotANumber(" 5m".into()),
            "is not a duration",
        ),
        (
            "1.5h",
            DurationError::Fraction("1.5h".into()),
            "use a smaller unit",
        ),
        (
            "5 m",
            DurationError::UnknownUnit {
                text: "5 m".into(),
                unit: " m".into(),
            },
            "unknown unit",
        ),
        (
            "5w",
            DurationError::UnknownUnit {
                text: "5w".into(),
                unit: "w".into(),
            },
            "use one of ns, us, ms, s, m, h or d",
        ),
        (
            "1h30m",
            DurationError::UnknownUnit {
                text: "1h30m".into(),
                unit: "h30m".into(),
            },
            "unknown unit `h30m`",
        ),
        (
            "5M",
            DurationError::UnknownUnit {
                text: "5M".into(),
                unit: "M".into(),
            },
            "unknown unit `M`",
        ),
        (
            "99999999999999999999999d",
            DurationError::Overflow("99999999999999999999999d".into()),
            "too long",
        ),
        (
            "18446744073709551615d",
            DurationError::Overflow("18446744073709551615d".into()),
            "too long",
        ),
    ];
    for (text, expected, message) in cases {
        let error = parse_duration(text).expect_err(text);
        assert_eq!(&error, expected, "for {text:?}");
        assert!(error.to_string().contains(message), "{error} for {text:?}");
    }
}

#[test]
fn sizes_parse() {
    let cases: &[(&str, u64)] = &[
        ("0", 0),
        ("1024", 1024),
        ("512KiB", 512 * 1024),
        ("4MiB", 4 << 20),
        ("16MiB", 16 << 20),
        ("1GiB", 1 << 30),
        ("16384GiB", 16384 << 30),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_size(text), Ok(*expected), "for {text:?}");
    }
}

#[test]
fn bad_sizes_are_refused_with_a_reason() {
    let unknown = |text: &str, unit: &str| SizeError::UnknownUnit {
        text: text.into(),
        unit: unit.into(),
    };
    let cases: &[(&str, SizeError, &str)] = &[
        ("", SizeError::Empty, "is not a size"),
        ("MiB", SizeError::NotANumber("MiB".into()), "is not a size"),
        ("-1", SizeError::NotANumber("-1".into()), "is not a size"),
        (
            "1.5MiB",
            SizeError::Fraction("1.5MiB".into()),
            "use a smaller unit",
        ),
        (
            "16MB",
            unknown("16MB", "MB"),
            "binary units KiB, MiB or GiB",
        ),
        ("16mib", unknown("16mib", "mib"), "unknown unit `mib`"),
        ("16 MiB", unknown("16 MiB", " MiB"), "unknown unit"),
        ("1TiB", unknown("1TiB", "TiB"), "unknown unit `TiB`"),
        ("16B", unknown("16B", "B"), "unknown unit `B`"),
        (
            "18446744073709551616",
            SizeError::Overflow("18446744073709551616".into()),
            "too large",
        ),
        (
            "17179869184GiB",
            SizeError::Overflow("17179869184GiB".into()),
            "too large",
        ),
    ];
    for (text, expected, message) in cases {
        let error = parse_size(text).expect_err(text);
        assert_eq!(&error, expected, "for {text:?}");
        assert!(error.to_string().contains(message), "{error} for {text:?}");
    }
}

#[test]
fn format_duration_writes_the_shortest_form() {
    let cases: &[(Duration, &str)] = &[
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1), "1ns"),
        (Duration::from_micros(1_500), "1500us"),
        (Duration::from_millis(300), "300ms"),
        (Duration::from_millis(1_000), "1s"),
        (secs(90), "90s"),
        (secs(5 * M), "5m"),
        (secs(90 * M), "90m"),
        (secs(H), "1h"),
        (secs(36 * H), "36h"),
        (secs(D), "1d"),
        (secs(30 * D), "30d"),
    ];
    for (duration, text) in cases {
        assert_eq!(format_duration(*duration), *text);
    }
}

#[test]
fn format_duration_round_trips() {
    let units = [
        Duration::from_nanos(1),
        Duration::from_micros(1),
        Duration::from_millis(1),
        secs(1),
        secs(M),
        secs(H),
        secs(D),
    ];
    for unit in units {
        for n in (0..2_000).chain([86_400, 1_000_003]) {
            let duration = unit * n;
            let text = format_duration(duration);
            assert_eq!(parse_duration(&text), Ok(duration), "for {text}");
        }
    }
}

#[test]
fn values_in_every_form_are_accepted() {
    let yaml = "\
listen:
  otlp_grpc: 127.0.0.1:0
  otlp_http: 127.0.0.1:0
  metrics: \"[::1]:9464\"
region:
  attributes: []
  default: eu
dimensions: [http.route, rpc.method]
histogram:
  buckets: [1, 2.5, 10]
  quantiles: []
timing:
  late_slack: 0s
  max_skew: 300ms
limits:
  max_request_bytes: 1024
  max_decompressed_bytes: 512KiB
  max_series: 1_000
  max_series_per_service: 10
  max_label_bytes: 16
  series_idle_expiry: 1h
state:
  data_dir: /tmp/sloxide
  checkpoint_interval: 1m
alerting:
  page: []
  ticket:
    - {long: 90d, short: 1m, budget_percent: 100}
  min_events: 20
";
    let config = parse_ok(yaml);
    assert_eq!(config.listen.metrics.to_string(), "[::1]:9464");
    assert!(config.region.attributes.is_empty());
    assert_eq!(config.region.default, "eu");
    assert_eq!(config.dimensions, ["http.route", "rpc.method"]);
    assert_eq!(config.histogram.buckets, [1.0, 2.5, 10.0]);
    assert!(config.histogram.quantiles.is_empty());
    assert_eq!(config.timing.late_slack, Duration::ZERO);
    assert_eq!(config.timing.max_skew, Duration::from_millis(300));
    assert_eq!(config.limits.max_request_bytes, 1024);
    assert_eq!(config.limits.max_decompressed_bytes, 512 * 1024);
    assert_eq!(config.limits.max_series, 1_000);
    assert_eq!(config.limits.max_label_bytes, 16);
    assert_eq!(
        config.state.data_dir.as_deref(),
        Some(Path::new("/tmp/sloxide"))
    );
    assert!(config.alerting.page.is_empty());
    assert_eq!(config.alerting.ticket[0].long, secs(90 * D));
    assert_eq!(config.alerting.min_events, 20);
}

#[test]
fn attribute_values_are_compared_as_strings() {
    let yaml = one_slo(
        "    filter:
      attributes:
        http.response.status_code: 200
        retry: true
        env: no
        ratio: 1.50
        tier: [1, gold, false, -3]
        quoted: \"007\"
    indicator:
      availability:
",
    );
    let config = parse_ok(&yaml);
    let slo = &config.slos[0];
    assert_eq!(slo.indicator, Indicator::Availability);
    let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    assert_eq!(
        slo.filter.attributes,
        vec![
            ("http.response.status_code".to_owned(), strings(&["200"])),
            ("retry".to_owned(), strings(&["true"])),
            ("env".to_owned(), strings(&["no"])),
            ("ratio".to_owned(), strings(&["1.5"])),
            ("tier".to_owned(), strings(&["1", "gold", "false", "-3"])),
            ("quoted".to_owned(), strings(&["007"])),
        ]
    );
}

#[test]
fn slo_defaults_and_sources() {
    let config = parse_ok(&one_slo("    indicator:\n      availability: {}\n"));
    let slo = &config.slos[0];
    assert_eq!(slo.period, secs(30 * D));
    assert_eq!(slo.source, Source::Spans);
    assert_eq!(slo.description, None);
    assert_eq!(slo.filter, Filter::default_for(Source::Spans));
    assert_eq!(
        slo.filter.span_kinds,
        [SpanKind::Server, SpanKind::Consumer]
    );

    let config = parse_ok(&one_slo(
        "    source: logs\n    period: 1h\n    indicator:\n      latency: {threshold: 2s, attribute: took, unit: s}\n",
    ));
    let slo = &config.slos[0];
    assert_eq!(slo.period, secs(H));
    assert_eq!(slo.filter, Filter::default_for(Source::Logs));
    assert_eq!(
        slo.indicator,
        Indicator::Latency {
            threshold: secs(2),
            attribute: Some("took".to_owned()),
            unit: DurationUnit::S,
        }
    );

    let config = parse_ok(&one_slo(
        "    source: logs\n    period: 90d\n    indicator:\n      latency: {threshold: 2s, attribute: took}\n",
    ));
    assert_eq!(config.slos[0].period, secs(90 * D));
    assert!(matches!(
        config.slos[0].indicator,
        Indicator::Latency {
            unit: DurationUnit::Ms,
            ..
        }
    ));

    // An events indicator works on spans too, with attribute conditions.
    let config = parse_ok(&one_slo(
        "    filter:\n      span_names: [\"POST /pay\"]\n    indicator:\n      events:\n        bad:\n          attributes: {payment.declined: true}\n",
    ));
    assert_eq!(config.slos[0].filter.span_names, ["POST /pay"]);
    assert!(matches!(
        &config.slos[0].indicator,
        Indicator::Events { bad } if bad.severity_at_least.is_none() && bad.attributes.len() == 1
    ));
}

#[test]
fn severities_and_kinds_are_ordered_and_named() {
    use Severity::*;
    let ordered = [Unspecified, Trace, Debug, Info, Warn, Error, Fatal];
    assert!(ordered.windows(2).all(|pair| pair[0] < pair[1]));
    let names: Vec<&str> = ordered.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "unspecified",
            "trace",
            "debug",
            "info",
            "warn",
            "error",
            "fatal"
        ]
    );
    assert_eq!(Severity::from_otlp(0), Unspecified);
    assert_eq!(Severity::from_otlp(9), Info);
    assert_eq!(Severity::from_otlp(17), Error);
    assert_eq!(Severity::from_otlp(24), Fatal);
    assert_eq!(Severity::from_otlp(25), Unspecified);
    for (number, kind) in SpanKind::ALL.iter().enumerate() {
        assert_eq!(SpanKind::from_otlp(number as i32), *kind);
    }
    assert_eq!(SpanKind::from_otlp(9), SpanKind::Unspecified);
    assert_eq!(SpanKind::Consumer.to_string(), "consumer");
    assert_eq!(AlertSeverity::Page.as_str(), "page");
    assert_eq!(AlertSeverity::Ticket.to_string(), "ticket");
    assert_eq!(DurationUnit::Us.nanos(), 1_000);
}

#[test]
fn tier_thresholds_scale_with_the_period() {
    let alerting = Alerting::default();
    let cases: &[(Duration, [f64; 4])] = &[
        (secs(30 * D), [14.4, 6.0, 3.0, 1.0]),
        (secs(7 * D), [3.36, 1.4, 0.7, 7.0 / 30.0]),
        (secs(H), [0.02, 0.05 / 6.0, 0.1 / 24.0, 0.1 / 72.0]),
    ];
    for (period, expected) in cases {
        let thresholds: Vec<f64> = alerting
            .tiers()
            .map(|(_, tier)| tier.threshold(*period))
            .collect();
        assert_eq!(thresholds.len(), 4);
        for (got, want) in thresholds.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{got} != {want} for {period:?}");
        }
    }
    let severities: Vec<AlertSeverity> = alerting.tiers().map(|(severity, _)| severity).collect();
    use AlertSeverity::{Page, Ticket};
    assert_eq!(severities, [Page, Page, Ticket, Ticket]);
}

#[test]
fn windows_are_the_sorted_union() {
    let config = parse_ok(&one_slo("    indicator:\n      availability: {}\n"));
    let slo = &config.slos[0];
    let labels =
        |windows: Vec<Duration>| windows.into_iter().map(format_duration).collect::<Vec<_>>();
    assert_eq!(
        labels(slo.windows(&config.alerting)),
        ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
    );

    let config = parse_ok(&one_slo(
        "    period: 2h\n    indicator:\n      availability: {}\nalerting:\n  page: [{long: 4d, short: 10m, budget_percent: 2}]\n  ticket: []\n",
    ));
    assert_eq!(
        labels(config.slos[0].windows(&config.alerting)),
        ["5m", "10m", "30m", "1h", "2h", "6h", "1d", "3d", "4d"]
    );
}

#[test]
fn dimension_labels_follow_prometheus_rules() {
    assert_eq!(dimension_label("http.route"), "http_route");
    assert_eq!(dimension_label("rpc-method"), "rpc_method");
    assert_eq!(dimension_label("9lives"), "_9lives");
    assert_eq!(dimension_label("k8s.pod.name"), "k8s_pod_name");
}

/// Each bad file, and fragments that its error's `Display` must contain: the origin and
/// position, the key path, and the reason.
const BAD: &[(&str, &str, &[&str])] = &[
    // Schema errors found by serde: the key path comes from a second reading.
    (
        "unknown top-level key",
        "listen: {}\nlimitz: 1\n",
        &[
            "test.yaml:2:1: limitz: unknown field `limitz`",
            "expected one of",
        ],
    ),
    (
        "unknown nested key",
        "limits:\n  max_series: 10\n  max_seriez: 5\n",
        &["test.yaml:3:3: limits.max_seriez: unknown field `max_seriez`"],
    ),
    (
        "unknown key in a flow mapping",
        "alerting:\n  page:\n    - {long: 1h, shrt: 5m}\n",
        &["test.yaml:3:18: alerting.page[0].shrt: unknown field `shrt`"],
    ),
    (
        "unknown slo key",
        "slos:\n  - name: a\n    service: b\n    objectiv: 99\n",
        &[
            "test.yaml:4:5: slos[0].objectiv: unknown field `objectiv`",
            "objective",
        ],
    ),
    (
        "unknown indicator key",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator:\n      ratio: {}\n",
        &[
            "test.yaml:6:7: slos[0].indicator.ratio: unknown field `ratio`",
            "latency, availability, events",
        ],
    ),
    (
        "unknown key in availability",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator:\n      availability: {codes: [500]}\n",
        &[
            "test.yaml:6:22: slos[0].indicator.availability.codes: unknown field `codes`; this mapping takes no keys, so write {}",
        ],
    ),
    (
        "unknown span kind",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    filter: {span_kinds: [server, serve]}\n",
        &["test.yaml:5:35: slos[0].filter.span_kinds[1]: unknown variant `serve`"],
    ),
    (
        "unknown severity",
        "slos:\n  - {name: a, service: b, objective: 99, source: logs, indicator: {events: {bad: {severity_at_least: warning}}}}\n",
        &[
            "test.yaml:2:",
            "slos[0].indicator.events.bad.severity_at_least: unknown variant `warning`",
        ],
    ),
    (
        "unknown source",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    source: metrics\n",
        &["test.yaml:5:13: slos[0].source: unknown variant `metrics`"],
    ),
    (
        "wrong type",
        "limits:\n  max_series: lots\n",
        &[
            "test.yaml:2:15: limits.max_series: `lots` is not a whole number; write digits, e.g. 100000",
        ],
    ),
    (
        "list where a value belongs",
        "region:\n  default: [a, b]\n",
        &["test.yaml:2:12: region.default: expected a single value here, not a list or a mapping"],
    ),
    (
        "an unquoted IPv6 address",
        "listen:\n  metrics: [::]:9464   # all addresses\n",
        &[
            "test.yaml:2:12: expected a single value here, not a list or a mapping; quote an IPv6 address and port, e.g. \"[::]:4317\", as YAML reads [...] as a list",
        ],
    ),
    (
        "objective is not a number",
        "slos:\n  - name: a\n    service: b\n    objective: 99.9%\n",
        &["test.yaml:4:16: slos[0].objective: `99.9%` is not a number"],
    ),
    (
        "duplicate key",
        "limits:\n  max_series: 1\n  max_series: 2\n",
        &["test.yaml:3:3: limits.max_series: duplicate mapping key"],
    ),
    ("yaml syntax", "limits: [1, 2\n", &["test.yaml:"]),
    (
        "two documents",
        "limits: {}\n---\nlimits: {}\n",
        &["test.yaml:"],
    ),
    (
        "a list where a section belongs",
        "limits: [1, 2]\n",
        &["test.yaml:1:9: limits: expected a mapping of keys to values here"],
    ),
    (
        "a value where a list belongs",
        "slos: checkout\n",
        &["test.yaml:1:7: slos: expected a list here"],
    ),
    (
        "bucket that is not a number",
        "histogram:\n  buckets: [1, two]\n",
        &["test.yaml:2:16: histogram.buckets[1]: `two` is not a number"],
    ),
    (
        "negative min_events",
        "alerting:\n  min_events: -1\n",
        &["test.yaml:2:15: alerting.min_events: `-1` is not a whole number"],
    ),
    // Validation errors.
    (
        "bad address",
        "listen:\n  metrics: localhost:9464\n",
        &["test.yaml:2:12: listen.metrics: `localhost:9464` is not an address; write ip:port"],
    ),
    (
        "same address twice",
        "listen:\n  otlp_grpc: 0.0.0.0:9000\n  otlp_http: 0.0.0.0:9000\n",
        &["test.yaml:3:14: listen.otlp_http: 0.0.0.0:9000 is also listen.otlp_grpc"],
    ),
    (
        "duplicate region attribute",
        "region:\n  attributes: [region, region]\n",
        &["test.yaml:2:24: region.attributes[1]: `region` is listed twice"],
    ),
    (
        "empty region default",
        "region:\n  default: \"\"\n",
        &["test.yaml:2:12: region.default: an empty region is not allowed"],
    ),
    (
        "dimension that is a built-in label",
        "dimensions: [http.route, span.kind]\n",
        &[
            "test.yaml:1:26: dimensions[1]: `span.kind` would become the label `span_kind`, which sloxide sets itself",
        ],
    ),
    (
        "dimensions that collide",
        "dimensions: [http.route, http_route]\n",
        &[
            "test.yaml:1:26: dimensions[1]: `http_route` and `http.route` would both become the label `http_route`",
        ],
    ),
    (
        "repeated dimension",
        "dimensions: [http.route, http.route]\n",
        &["test.yaml:1:26: dimensions[1]: `http.route` is listed twice; remove one"],
    ),
    (
        "reserved label",
        "dimensions: [__name__]\n",
        &[
            "dimensions[0]: `__name__` would become the label `__name__`",
            "reserved",
        ],
    ),
    (
        "empty dimension",
        "dimensions: [\"\"]\n",
        &["test.yaml:1:14: dimensions[0]: an empty attribute key"],
    ),
    (
        "empty buckets",
        "histogram:\n  buckets: []\n",
        &["test.yaml:2:12: histogram.buckets: an empty list is not allowed"],
    ),
    (
        "buckets not ascending",
        "histogram:\n  buckets: [0.1, 0.5, 0.5, 1]\n",
        &[
            "test.yaml:2:23: histogram.buckets[2]: 0.5 does not come after 0.5; list the values in strictly ascending order",
        ],
    ),
    (
        "too many buckets",
        "histogram:\n  buckets: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65]\n",
        &["test.yaml:2:12: histogram.buckets: 65 bounds are more than the 64 allowed"],
    ),
    (
        "too many quantiles",
        "histogram:\n  quantiles: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17]\n",
        &["histogram.quantiles[16]: 17 quantiles are more than the 16 allowed"],
    ),
    (
        "negative bucket",
        "histogram:\n  buckets: [-1, 1]\n",
        &["test.yaml:2:13: histogram.buckets[0]: -1 is not a bucket bound"],
    ),
    (
        "infinite bucket",
        "histogram:\n  buckets: [1, .inf]\n",
        &["histogram.buckets[1]: inf is not a bucket bound"],
    ),
    (
        "quantile 1.0",
        "histogram:\n  quantiles: [0.5, 1.0]\n",
        &[
            "test.yaml:2:20: histogram.quantiles[1]: 1 is out of range; a quantile is strictly between 0 and 1",
        ],
    ),
    (
        "quantile 0",
        "histogram:\n  quantiles: [0]\n",
        &["histogram.quantiles[0]: 0 is out of range"],
    ),
    (
        "quantiles not ascending",
        "histogram:\n  quantiles: [0.99, 0.5]\n",
        &["histogram.quantiles[1]: 0.5 does not come after 0.99"],
    ),
    (
        "duration without unit",
        "timing:\n  late_slack: 300\n",
        &[
            "test.yaml:2:15: timing.late_slack: `300` has no unit; write it with one of ns, us, ms, s, m, h or d, e.g. 300ms or 300s",
        ],
    ),
    (
        "duration with a bad unit",
        "timing:\n  max_skew: 5x\n",
        &["test.yaml:2:13: timing.max_skew: `5x` has the unknown unit `x`"],
    ),
    (
        "late slack too long",
        "timing:\n  late_slack: 2d\n",
        &["timing.late_slack: `2d` is too long; the maximum is 1d"],
    ),
    (
        "decimal size unit",
        "limits:\n  max_request_bytes: 16MB\n",
        &[
            "test.yaml:2:22: limits.max_request_bytes: `16MB` has the unknown unit `MB`; sizes use the binary units",
        ],
    ),
    (
        "max_decompressed_bytes below max_request_bytes",
        "limits:\n  max_request_bytes: 16MiB\n  max_decompressed_bytes: 4MiB\n",
        &[
            "test.yaml:3:27: limits.max_decompressed_bytes: 4194304 bytes is less than limits.max_request_bytes (16777216 bytes)",
        ],
    ),
    (
        "max_request_bytes above the default max_decompressed_bytes",
        "limits:\n  max_request_bytes: 128MiB\n",
        &["test.yaml:2:22: limits.max_decompressed_bytes: 67108864 bytes is less than"],
    ),
    (
        "unknown compression",
        "limits:\n  compression: [gzip, br]\n",
        &[
            "test.yaml:2:23: limits.compression[1]: unknown variant `br`",
            "gzip",
            "zstd",
            "deflate",
            "snappy",
        ],
    ),
    (
        "compression listed twice",
        "limits:\n  compression: [zstd, gzip, zstd]\n",
        &["test.yaml:2:29: limits.compression[2]: `zstd` is listed twice; remove one"],
    ),
    (
        "zero request size",
        "limits:\n  max_request_bytes: 0\n",
        &["limits.max_request_bytes: `0` is too small"],
    ),
    (
        "zero max_series",
        "limits:\n  max_series: 0\n",
        &["test.yaml:2:15: limits.max_series: 0 is not allowed; give a positive number"],
    ),
    (
        "zero max_records_per_request",
        "limits:\n  max_records_per_request: 0\n",
        &["limits.max_records_per_request: 0 is not allowed"],
    ),
    (
        "a tiny in-flight budget",
        "limits:\n  max_in_flight_bytes: 64KiB\n",
        &[
            "test.yaml:2:24: limits.max_in_flight_bytes: `64KiB` is too small; the minimum is 1048576 bytes",
        ],
    ),
    (
        "a body timeout too short to mean anything",
        "limits:\n  body_read_timeout: 10ms\n",
        &["limits.body_read_timeout: `10ms` is too short; the minimum is 100ms"],
    ),
    (
        "a header timeout past a day",
        "limits:\n  header_read_timeout: 10000000000000000000s\n",
        &["limits.header_read_timeout:"],
    ),
    (
        "an idle timeout past a day",
        "limits:\n  idle_timeout: 2d\n",
        &["limits.idle_timeout: `2d` is too long; the maximum is 1d"],
    ),
    (
        "an admission wait past a minute",
        "limits:\n  admission_wait: 5m\n",
        &["limits.admission_wait: `5m` is too long; the maximum is 1m"],
    ),
    (
        "auth without its tokens file",
        "auth:\n  header: x-token\n",
        &[
            "test.yaml:2:3: auth.bearer_tokens_file: missing; give the file of bearer tokens, one per line",
        ],
    ),
    (
        "auth with a tokens file that is not there",
        "auth:\n  bearer_tokens_file: /nonexistent/sloxide-tokens\n",
        &["test.yaml:2:23: auth.bearer_tokens_file: cannot read /nonexistent/sloxide-tokens:"],
    ),
    (
        "auth with a header name that is not one",
        "auth:\n  bearer_tokens_file: /nonexistent/t\n  header: \"x token\"\n",
        &["auth.bearer_tokens_file: cannot read"],
    ),
    (
        "auth with an unknown key",
        "auth:\n  tokens_file: /tmp/t\n",
        &["unknown field `tokens_file`"],
    ),
    (
        "zero max_series_per_service",
        "limits:\n  max_series_per_service: 0\n",
        &["limits.max_series_per_service: 0 is not allowed"],
    ),
    (
        "tiny max_label_bytes",
        "limits:\n  max_label_bytes: 8\n",
        &["limits.max_label_bytes: `8` is too small; the minimum is 16 bytes"],
    ),
    (
        "zero idle expiry",
        "limits:\n  series_idle_expiry: 0s\n",
        &["limits.series_idle_expiry: `0s` is zero; give a positive duration"],
    ),
    (
        "zero checkpoint interval",
        "state:\n  checkpoint_interval: 0ms\n",
        &["state.checkpoint_interval: `0ms` is zero"],
    ),
    (
        "empty data dir",
        "state:\n  data_dir: ''\n",
        &["state.data_dir: an empty path is not allowed"],
    ),
    // SLOs.
    (
        "objective 0",
        "slos:\n  - name: a\n    service: b\n    objective: 0\n",
        &[
            "test.yaml:4:16: slos[0].objective: 0 is out of range; an objective is a percentage strictly between 0 and 100",
        ],
    ),
    (
        "objective as a ratio",
        "slos:\n  - name: a\n    service: b\n    objective: 0.999\n",
        &[
            "test.yaml:4:16: slos[0].objective: 0.999 is read as 0.999%, an SLO that can hardly ever burn; objectives are percents: did you mean 99.9?",
        ],
    ),
    (
        "objective with seven decimals",
        "slos:\n  - name: a\n    service: b\n    objective: 99.9999999\n",
        &[
            "test.yaml:4:16: slos[0].objective: 99.9999999 has more decimals than sloxide keeps (six decimals of a percent, e.g. 99.999999)",
        ],
    ),
    (
        "objective 100",
        "slos:\n  - name: a\n    service: b\n    objective: 100\n",
        &[
            "test.yaml:4:16: slos[0].objective: 100 is out of range; an objective is a percentage strictly between 0 and 100",
        ],
    ),
    (
        "missing objective",
        "slos:\n  - name: a\n    service: b\n",
        &["test.yaml:2:5: slos[0].objective: missing; every slo needs an objective"],
    ),
    (
        "missing name",
        "slos:\n  - service: b\n    objective: 99\n",
        &["test.yaml:2:5: slos[0].name: missing"],
    ),
    (
        "missing service",
        "slos:\n  - name: a\n    objective: 99\n",
        &["test.yaml:2:5: slos[0].service: missing"],
    ),
    (
        "period 30m",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    period: 30m\n",
        &["test.yaml:5:13: slos[0].period: `30m` is out of range; a period is between 1h and 90d"],
    ),
    (
        "period 91d",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    period: 91d\n",
        &["test.yaml:5:13: slos[0].period: `91d` is out of range"],
    ),
    (
        "period without unit",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    period: 30\n",
        &["slos[0].period: `30` has no unit"],
    ),
    (
        "duplicate slo name",
        "slos:\n  - {name: a, service: b, objective: 99, indicator: {availability: {}}}\n  - {name: a, service: c, objective: 99, indicator: {availability: {}}}\n",
        &[
            "test.yaml:3:12: slos[1].name: `a` is already the name of slos[0]; slo names must be unique",
        ],
    ),
    (
        "slo service longer than the label limit",
        "limits: {max_label_bytes: 16}\nslos:\n  - {name: a, service: a-very-long-service-name, objective: 99, indicator: {availability: {}}}\n",
        &[
            "slos[0].service: `a-very-long-service-name` is 24 bytes, longer than limits.max_label_bytes (16)",
        ],
    ),
    (
        "bad slo name",
        "slos:\n  - name: Checkout\n",
        &[
            "test.yaml:2:11: slos[0].name: `Checkout` is not a valid slo name; use only lowercase letters, digits",
        ],
    ),
    (
        "slo name with a space",
        "slos:\n  - name: check out\n",
        &["slos[0].name: `check out` is not a valid slo name"],
    ),
    (
        "no indicator",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n",
        &[
            "test.yaml:2:5: slos[0].indicator: missing; give exactly one of latency, availability or events",
        ],
    ),
    (
        "empty indicator",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator: {}\n",
        &[
            "test.yaml:5:16: slos[0].indicator: no indicator given; give exactly one of latency, availability or events",
        ],
    ),
    (
        "two indicators",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator:\n      availability: {}\n      latency: {threshold: 1s}\n",
        &[
            "test.yaml:6:7: slos[0].indicator: `latency` and `availability` are both given; give exactly one",
        ],
    ),
    (
        "three indicators",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator: {availability: {}, latency: {threshold: 1s}, events: {}}\n",
        &["slos[0].indicator: `latency`, `availability` and `events` are all given"],
    ),
    (
        "latency without threshold",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator:\n      latency:\n",
        &["slos[0].indicator.latency.threshold: missing; a latency indicator needs a threshold"],
    ),
    (
        "zero threshold",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator: {latency: {threshold: 0ms}}\n",
        &["test.yaml:5:38: slos[0].indicator.latency.threshold: `0ms` is zero"],
    ),
    (
        "latency attribute on a spans slo",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator:\n      latency:\n        threshold: 1s\n        attribute: took_ms\n",
        &[
            "test.yaml:8:20: slos[0].indicator.latency.attribute: attribute applies to logs slos only",
        ],
    ),
    (
        "latency unit on a spans slo",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator:\n      latency: {threshold: 1s, unit: ms}\n",
        &["slos[0].indicator.latency.unit: unit applies to logs slos only"],
    ),
    (
        "missing attribute on a logs latency slo",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    source: logs\n    indicator:\n      latency:\n        threshold: 1s\n",
        &[
            "test.yaml:8:9: slos[0].indicator.latency.attribute: missing; a latency indicator on a logs slo needs the attribute",
        ],
    ),
    (
        "bad latency unit",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    source: logs\n    indicator: {latency: {threshold: 1s, attribute: t, unit: min}}\n",
        &["slos[0].indicator.latency.unit: unknown variant `min`"],
    ),
    (
        "span_kinds on a logs slo",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    source: logs\n    filter:\n      span_kinds: [server]\n",
        &[
            "test.yaml:7:19: slos[0].filter.span_kinds: span_kinds applies to spans only; remove it from this logs slo",
        ],
    ),
    (
        "span_names on a logs slo",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    source: logs\n    filter:\n      span_names: [x]\n",
        &["slos[0].filter.span_names: span_names applies to spans only"],
    ),
    (
        "empty span_kinds",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    filter: {span_kinds: []}\n",
        &["slos[0].filter.span_kinds: an empty list matches no span"],
    ),
    (
        "repeated span kind",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    filter: {span_kinds: [server, server]}\n",
        &["slos[0].filter.span_kinds[1]: `server` is listed twice"],
    ),
    (
        "attribute without a value",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    filter:\n      attributes:\n        http.route:\n",
        &["slos[0].filter.attributes[\"http.route\"]: `http.route` has no value"],
    ),
    (
        "attribute with an empty list",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    filter:\n      attributes: {http.route: []}\n",
        &["test.yaml:6:32: slos[0].filter.attributes[\"http.route\"]: `http.route` has no value"],
    ),
    (
        "attribute with a mapping value",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    filter:\n      attributes: {http.route: {a: b}}\n",
        &["test.yaml:6:32: slos[0].filter.attributes[\"http.route\"]:"],
    ),
    (
        "events without bad",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator: {events: {}}\n",
        &["slos[0].indicator.events.bad: missing; an events indicator needs the conditions"],
    ),
    (
        "events with no condition",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    source: logs\n    indicator: {events: {bad: {attributes: {}}}}\n",
        &[
            "slos[0].indicator.events.bad: no condition given; give at least one of severity_at_least or attributes",
        ],
    ),
    (
        "severity on a spans slo",
        "slos:\n  - name: a\n    service: b\n    objective: 99\n    indicator: {events: {bad: {severity_at_least: error}}}\n",
        &[
            "slos[0].indicator.events.bad.severity_at_least: severity_at_least applies to logs slos only",
        ],
    ),
    // Alerting.
    (
        "tier with short equal to long",
        "alerting:\n  page:\n    - {long: 1h, short: 1h, budget_percent: 2}\n",
        &["test.yaml:3:25: alerting.page[0].short: 1h is not shorter than long (1h)"],
    ),
    (
        "tier with short above long",
        "alerting:\n  ticket:\n    - long: 1h\n      short: 2h\n      budget_percent: 2\n",
        &["test.yaml:4:14: alerting.ticket[0].short: 2h is not shorter than long (1h)"],
    ),
    (
        "tier without budget",
        "alerting:\n  page:\n    - {long: 1h, short: 5m}\n",
        &[
            "test.yaml:3:7: alerting.page[0].budget_percent: missing; a tier needs long, short and budget_percent",
        ],
    ),
    (
        "tier with zero budget",
        "alerting:\n  page:\n    - {long: 1h, short: 5m, budget_percent: 0}\n",
        &["alerting.page[0].budget_percent: 0 is out of range"],
    ),
    (
        "tier with budget over 100",
        "alerting:\n  page:\n    - {long: 1h, short: 5m, budget_percent: 101}\n",
        &["alerting.page[0].budget_percent: 101 is out of range"],
    ),
    (
        "tier window too short",
        "alerting:\n  page:\n    - {long: 1h, short: 10s, budget_percent: 2}\n",
        &["alerting.page[0].short: `10s` is too short; the minimum is 1m"],
    ),
    (
        "tier window too long",
        "alerting:\n  ticket:\n    - {long: 100d, short: 1d, budget_percent: 2}\n",
        &["alerting.ticket[0].long: `100d` is too long; the maximum is 90d"],
    ),
];

#[test]
fn bad_files_name_the_place_the_key_and_the_fix() {
    let mut failures = Vec::new();
    for (name, yaml, fragments) in BAD {
        let error = match parse(yaml) {
            Ok(_) => panic!("{name}: no error for:\n{yaml}"),
            Err(error) => error,
        };
        let message = error.to_string();
        println!("{name}: {message}");
        for fragment in *fragments {
            if !message.contains(fragment) {
                failures.push(format!("{name}: {message:?} does not contain {fragment:?}"));
            }
        }
        assert!(
            !message.contains('\n'),
            "{name}: the message spans lines: {message:?}"
        );
        let (ConfigError::Parse {
            message: reason, ..
        }
        | ConfigError::Invalid {
            message: reason, ..
        }) = &error
        else {
            panic!("{name}: {error:?}");
        };
        assert!(
            !reason.starts_with(char::is_uppercase),
            "{name}: {message:?} does not start lowercase"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn errors_expose_position_and_key() {
    let Err(error) = parse("slos:\n  - name: a\n    service: b\n    objective: 100\n") else {
        panic!("no error");
    };
    assert_eq!(
        error.position(),
        Some(Position {
            line: 4,
            column: 16
        })
    );
    assert_eq!(error.key(), Some("slos[0].objective"));
    println!("{error}");

    let Err(error) = parse("limits:\n  max_seriez: 5\n") else {
        panic!("no error");
    };
    assert_eq!(error.position(), Some(Position { line: 2, column: 3 }));
    assert_eq!(error.key(), Some("limits.max_seriez"));
    assert!(matches!(error, ConfigError::Parse { .. }));
    println!("{error}");
}

#[test]
fn load_names_the_missing_file() {
    let path = Path::new("/nonexistent/sloxide.yaml");
    let Err(error) = Config::load(path) else {
        panic!("no error");
    };
    assert!(matches!(error, ConfigError::Read { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with("/nonexistent/sloxide.yaml: cannot read"),
        "{message}"
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn compression_lists_the_accepted_ones() {
    let limits = |yaml: &str| parse_ok(yaml).limits.compression;
    let some = limits("limits:\n  compression: [zstd, gzip]\n");
    assert_eq!(
        some,
        Compressions::of(&[Compression::Gzip, Compression::Zstd])
    );
    assert!(some.contains(Compression::Zstd) && !some.contains(Compression::Snappy));
    assert_eq!(some.to_string(), "gzip, zstd or identity");
    let none = limits("limits:\n  compression: []\n");
    assert_eq!(none, Compressions::NONE);
    assert_eq!(none.to_string(), "identity only");
    assert_eq!(limits("limits:\n  compression: ~\n"), Compressions::ALL);
    assert_eq!(
        limits("limits:\n  compression: [snappy]\n").to_string(),
        "snappy or identity"
    );
    for bits in 0..=u8::MAX {
        let set = Compressions::from_bits(bits);
        assert_eq!(Compressions::from_bits(set.bits()), set);
        assert_eq!(Compressions::of(&set.iter().collect::<Vec<_>>()), set);
    }
}

#[test]
fn auth_reads_its_tokens_file_and_defaults_to_bearer_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "t1\n").unwrap();
    let config = parse_ok(&format!(
        "auth:\n  bearer_tokens_file: {}\n",
        file.display()
    ));
    let auth = config.auth.unwrap();
    assert_eq!(auth.bearer_tokens_file, file);
    assert_eq!(auth.header, "Authorization");
    assert_eq!(auth.scheme, "Bearer");
    let bad = format!(
        "auth:\n  bearer_tokens_file: {}\n  header: \"x token\"\n",
        file.display()
    );
    let err = parse_err(&bad);
    assert!(
        err.contains("auth.header: \"x token\" is not a valid HTTP header name"),
        "{err}"
    );
    std::fs::write(&file, "# only a comment\n").unwrap();
    let err = parse_err(&format!(
        "auth:\n  bearer_tokens_file: {}\n",
        file.display()
    ));
    assert!(err.contains("holds no token; write one per line"), "{err}");
}

#[test]
fn connection_limits_read_and_refuse_zero() {
    let config =
        parse_ok("limits: {max_connections: 100, header_read_timeout: 2s, idle_timeout: 3s}");
    assert_eq!(config.limits.max_connections, 100);
    assert_eq!(config.limits.header_read_timeout, secs(2));
    assert_eq!(config.limits.idle_timeout, secs(3));
    for yaml in [
        "limits: {max_connections: 0}",
        "limits: {header_read_timeout: 0s}",
        "limits: {idle_timeout: 0s}",
    ] {
        let error = parse(yaml).unwrap_err().to_string();
        assert!(error.contains("limits."), "{error}");
    }
}

#[test]
fn tls_files_are_checked_and_errors_name_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let (m, g) = (missing.display(), garbage.display());

    let error = parse(&format!("tls: {{cert_file: {m}, key_file: {m}}}")).unwrap_err();
    assert_eq!(error.key(), Some("tls.cert_file"));
    let text = error.to_string();
    assert!(
        text.contains(&m.to_string()) && text.contains("cannot read"),
        "{text}"
    );
    assert_eq!(error.position().map(|p| p.line), Some(1));

    let error = parse(&format!(
        "metrics:\n  tls:\n    cert_file: {g}\n    key_file: {g}\n"
    ))
    .unwrap_err();
    assert_eq!(error.key(), Some("metrics.tls.cert_file"));
    assert!(error.to_string().contains("no PEM CERTIFICATE"), "{error}");
    assert_eq!(error.position().map(|p| p.line), Some(3));

    let error = parse(&format!("tls: {{cert_file: {g}}}")).unwrap_err();
    assert_eq!(error.key(), Some("tls.key_file"));
    assert!(error.to_string().contains("needs both"), "{error}");

    let error = parse(&format!(
        "tls: {{cert_file: {g}, key_file: {g}, min_version: \"1.1\"}}"
    ))
    .unwrap_err();
    assert_eq!(error.key(), Some("tls.min_version"));
}

#[test]
fn the_check_line_gives_the_budget_as_minutes_per_period() {
    let config = parse_ok(
        "slos:\n  - {name: a, service: s, objective: 99.9, indicator: {availability: {}}}\n  - {name: b, service: s, objective: 99, period: 7d, indicator: {availability: {}}}\n  - {name: c, service: s, objective: 99.95, period: 28d, indicator: {availability: {}}}\n",
    );
    let budgets: Vec<String> = config.slos.iter().map(|s| s.budget_minutes()).collect();
    assert_eq!(
        budgets,
        ["43.2 min / 30d", "100.8 min / 7d", "20.16 min / 28d"]
    );
    let line = config.slos[0].summary(&config.alerting);
    assert!(
        line.contains("objective=99.9% period=30d budget=43.2 min / 30d burn thresholds: "),
        "{line}"
    );
}

#[test]
fn the_most_buckets_and_quantiles_allowed_are_accepted() {
    let list =
        |n: usize, f: &dyn Fn(usize) -> String| (1..=n).map(f).collect::<Vec<_>>().join(", ");
    let yaml = format!(
        "histogram:\n  buckets: [{}]\n  quantiles: [{}]\n",
        list(MAX_BUCKETS, &|i| i.to_string()),
        list(MAX_QUANTILES, &|i| format!("0.{i:02}")),
    );
    let config = parse_ok(&yaml);
    assert_eq!(config.histogram.buckets.len(), MAX_BUCKETS);
    assert_eq!(config.histogram.quantiles.len(), MAX_QUANTILES);
}
