//! SLO filters and indicators compiled into checks over extracted attribute rows.

use super::scalar_text;
use crate::config::slo::{AttributeMatch, Indicator, Severity, Slo, Source, SpanKind};
use crate::otlp::logs::LogView;
use crate::otlp::spans::SpanView;
use crate::otlp::{AttrKeys, Value};

/// The HTTP status attribute of current semantic conventions.
pub const HTTP_STATUS: &str = "http.response.status_code";
/// The HTTP status attribute of older semantic conventions.
pub const HTTP_STATUS_OLD: &str = "http.status_code";
/// The gRPC status attribute.
pub const GRPC_STATUS: &str = "rpc.grpc.status_code";
/// gRPC codes that count as bad: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS.
pub const BAD_GRPC_CODES: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// One attribute condition: the row index and the accepted values.
#[derive(Debug, Clone)]
struct Condition {
    index: usize,
    accepted: Vec<Box<str>>,
}

#[derive(Debug, Clone)]
enum Check {
    /// Good when the span duration is at most the threshold.
    SpanLatency { threshold: u64 },
    /// Good when the attribute's number, in its unit, is at most the threshold.
    AttributeLatency {
        threshold: u64,
        index: usize,
        unit: u64,
    },
    /// Bad on status ERROR, HTTP >= 500 or a bad gRPC code.
    Availability {
        http: usize,
        http_old: usize,
        grpc: usize,
    },
    /// Bad when every condition holds.
    Events {
        severity_at_least: Option<Severity>,
        conditions: Vec<Condition>,
    },
}

/// One SLO, compiled.
#[derive(Debug, Clone)]
pub struct CompiledSlo {
    /// Position in the configuration's `slos`.
    pub index: usize,
    /// The `service.name` it applies to.
    pub service: Box<str>,
    /// Spans or logs.
    pub source: Source,
    kinds: u8,
    names: Vec<Box<[u8]>>,
    conditions: Vec<Condition>,
    check: Check,
}

/// Every attribute key an SLO reads, for [`AttrKeys`].
pub fn keys_of(slo: &Slo) -> Vec<&str> {
    let mut keys: Vec<&str> = slo
        .filter
        .attributes
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    match &slo.indicator {
        Indicator::Latency {
            attribute: Some(a), ..
        } => keys.push(a),
        Indicator::Latency {
            attribute: None, ..
        } => {}
        Indicator::Availability => keys.extend([HTTP_STATUS, HTTP_STATUS_OLD, GRPC_STATUS]),
        Indicator::Events { bad } => keys.extend(bad.attributes.iter().map(|(k, _)| k.as_str())),
    }
    keys
}

fn conditions(matches: &AttributeMatch, keys: &AttrKeys) -> Vec<Condition> {
    matches
        .iter()
        .map(|(key, values)| Condition {
            index: keys.index_of(key).unwrap_or(0),
            accepted: values.iter().map(|v| v.as_str().into()).collect(),
        })
        .collect()
}

impl CompiledSlo {
    /// Compiles `slo` against the extracted `keys` (which must include [`keys_of`]).
    pub fn compile(index: usize, slo: &Slo, keys: &AttrKeys) -> Self {
        let at = |k: &str| keys.index_of(k).unwrap_or(0);
        let check = match &slo.indicator {
            Indicator::Latency {
                threshold,
                attribute: None,
                ..
            } => Check::SpanLatency {
                threshold: threshold.as_nanos() as u64,
            },
            Indicator::Latency {
                threshold,
                attribute: Some(a),
                unit,
            } => Check::AttributeLatency {
                threshold: threshold.as_nanos() as u64,
                index: at(a),
                unit: unit.nanos(),
            },
            Indicator::Availability => Check::Availability {
                http: at(HTTP_STATUS),
                http_old: at(HTTP_STATUS_OLD),
                grpc: at(GRPC_STATUS),
            },
            Indicator::Events { bad } => Check::Events {
                severity_at_least: bad.severity_at_least,
                conditions: conditions(&bad.attributes, keys),
            },
        };
        Self {
            index,
            service: slo.service.as_str().into(),
            source: slo.source,
            kinds: slo
                .filter
                .span_kinds
                .iter()
                .fold(0, |mask, k| mask | 1 << (*k as u8)),
            names: slo
                .filter
                .span_names
                .iter()
                .map(|n| n.as_bytes().into())
                .collect(),
            conditions: conditions(&slo.filter.attributes, keys),
            check,
        }
    }

    /// Whether the SLO selects this span, and if so whether it is bad.
    #[inline]
    pub fn classify_span(
        &self,
        span: &SpanView<'_>,
        event: &[Value<'_>],
        resource: &[Value<'_>],
    ) -> Option<bool> {
        let kind = SpanKind::from_otlp(span.kind) as u8;
        if self.kinds != 0 && self.kinds & (1 << kind) == 0 {
            return None;
        }
        if !self.names.is_empty() && !self.names.iter().any(|n| **n == *span.name) {
            return None;
        }
        if !self.selects(event, resource) {
            return None;
        }
        self.judge(
            Some(span.duration_nanos()),
            span.status == 2,
            None,
            event,
            resource,
        )
    }

    /// Whether the SLO selects this log record, and if so whether it is bad.
    #[inline]
    pub fn classify_log(
        &self,
        record: &LogView,
        event: &[Value<'_>],
        resource: &[Value<'_>],
    ) -> Option<bool> {
        if !self.selects(event, resource) {
            return None;
        }
        let severity = Severity::from_otlp(record.severity);
        self.judge(None, false, Some(severity), event, resource)
    }

    /// Good or bad by the indicator, for an event the filter selected. `duration` is a
    /// span's own (logs have none: a span-latency check counts nothing for them);
    /// `status_error` is a span's ERROR status; `severity` is a log record's.
    #[inline]
    fn judge(
        &self,
        duration: Option<u64>,
        status_error: bool,
        severity: Option<Severity>,
        event: &[Value<'_>],
        resource: &[Value<'_>],
    ) -> Option<bool> {
        Some(match &self.check {
            Check::SpanLatency { threshold } => duration? > *threshold,
            Check::AttributeLatency {
                threshold,
                index,
                unit,
            } => nanos_of(pick(event, resource, *index), *unit)? > *threshold,
            Check::Availability {
                http,
                http_old,
                grpc,
            } => {
                status_error
                    || bad_http(pick(event, resource, *http))
                    || bad_http(pick(event, resource, *http_old))
                    || bad_grpc(pick(event, resource, *grpc))
            }
            Check::Events {
                severity_at_least,
                conditions,
            } => {
                severity_at_least.is_none_or(|s| severity.is_some_and(|got| got >= s))
                    && conditions.iter().all(|c| holds(c, event, resource))
            }
        })
    }

    fn selects(&self, event: &[Value<'_>], resource: &[Value<'_>]) -> bool {
        self.conditions.iter().all(|c| holds(c, event, resource))
    }
}

/// The event's attribute, or the resource's when the event has none.
#[inline]
fn pick<'a>(event: &[Value<'a>], resource: &[Value<'a>], index: usize) -> Value<'a> {
    match event[index] {
        Value::Missing => resource[index],
        v => v,
    }
}

#[inline]
fn holds(c: &Condition, event: &[Value<'_>], resource: &[Value<'_>]) -> bool {
    let scalar;
    let text: &[u8] = match pick(event, resource, c.index) {
        Value::Str(s) => s,
        other => match scalar_text(&other) {
            Some(t) => {
                scalar = t;
                scalar.as_str().as_bytes()
            }
            None => return false,
        },
    };
    c.accepted.iter().any(|a| a.as_bytes() == text)
}

/// An integer attribute, or a string holding one.
#[inline]
fn integer(v: Value<'_>) -> Option<i64> {
    match v {
        Value::Int(i) => Some(i),
        Value::Str(s) => std::str::from_utf8(s).ok()?.trim().parse().ok(),
        Value::Double(d) if d.fract() == 0.0 => Some(d as i64),
        _ => None,
    }
}

#[inline]
fn bad_http(v: Value<'_>) -> bool {
    integer(v).is_some_and(|code| code >= 500)
}

#[inline]
fn bad_grpc(v: Value<'_>) -> bool {
    integer(v).is_some_and(|code| BAD_GRPC_CODES.contains(&code))
}

/// A numeric attribute in `unit` nanoseconds, as nanoseconds.
#[inline]
fn nanos_of(v: Value<'_>, unit: u64) -> Option<u64> {
    let n = match v {
        Value::Int(i) => i as f64,
        Value::Double(d) => d,
        Value::Str(s) => std::str::from_utf8(s).ok()?.trim().parse().ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then(|| (n * unit as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn compile(yaml: &str) -> (AttrKeys, Vec<CompiledSlo>) {
        let config = Config::from_yaml(yaml, "t.yaml").unwrap();
        let keys = AttrKeys::new(config.slos.iter().flat_map(keys_of));
        let slos = config
            .slos
            .iter()
            .enumerate()
            .map(|(i, s)| CompiledSlo::compile(i, s, &keys))
            .collect();
        (keys, slos)
    }

    fn span(kind: i32, name: &'static [u8], ms: u64, status: i32) -> SpanView<'static> {
        SpanView {
            name,
            kind,
            start: 1,
            end: 1 + ms * 1_000_000,
            status,
            attrs: 0,
        }
    }

    #[test]
    fn numbers_too_long_for_the_inline_buffer_are_compared_in_full() {
        let (keys, slos) = compile(
            r#"
slos:
  - name: a
    service: s
    objective: 99
    filter: {attributes: {x: ["1", "10000000000000000000000000000000000000000"]}}
    indicator: {availability: {}}
"#,
        );
        let x = keys.index_of("x").unwrap();
        let with = |v: Value<'static>| {
            let mut r = vec![Value::Missing; keys.len()];
            r[x] = v;
            r
        };
        let res = vec![Value::Missing; keys.len()];
        let judge = |v| slos[0].classify_span(&span(2, b"op", 1, 0), &with(v), &res);
        assert_eq!(judge(Value::Double(1.0)), Some(false), "1 is accepted");
        assert_eq!(
            judge(Value::Double(1e40)),
            Some(false),
            "written out in full"
        );
        assert_eq!(judge(Value::Double(1e32)), None, "not cut down to \"1\"");
    }

    #[test]
    fn latency_availability_and_filters() {
        let (keys, slos) = compile(
            r#"
slos:
  - name: lat
    service: checkout
    objective: 99.9
    filter: {span_names: ["POST /checkout"], attributes: {http.route: [/checkout, /pay]}}
    indicator: {latency: {threshold: 300ms}}
  - name: avail
    service: checkout
    objective: 99.9
    indicator: {availability: {}}
"#,
        );
        let row = |pairs: &[(&str, Value<'static>)]| {
            let mut r = vec![Value::Missing; keys.len()];
            for (k, v) in pairs {
                r[keys.index_of(k).unwrap()] = *v;
            }
            r
        };
        let res = row(&[]);
        let routed = row(&[("http.route", Value::Str(b"/pay"))]);
        let (lat, avail) = (&slos[0], &slos[1]);
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 300, 0), &routed, &res),
            Some(false)
        );
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 301, 0), &routed, &res),
            Some(true)
        );
        assert_eq!(
            lat.classify_span(&span(3, b"POST /checkout", 1, 0), &routed, &res),
            None,
            "client spans are not selected by default"
        );
        assert_eq!(
            lat.classify_span(&span(2, b"GET /", 1, 0), &routed, &res),
            None
        );
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 1, 0), &res, &res),
            None,
            "route missing"
        );
        // The resource's attribute applies when the span has none.
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 1, 0), &res, &routed),
            Some(false)
        );

        let bad = |pairs: &[(&str, Value<'static>)], status| {
            avail.classify_span(&span(5, b"x", 1, status), &row(pairs), &res)
        };
        assert_eq!(bad(&[], 0), Some(false));
        assert_eq!(bad(&[], 2), Some(true), "status ERROR");
        assert_eq!(
            bad(&[("http.response.status_code", Value::Int(503))], 0),
            Some(true)
        );
        assert_eq!(
            bad(&[("http.response.status_code", Value::Int(404))], 0),
            Some(false)
        );
        assert_eq!(
            bad(&[("http.status_code", Value::Str(b"500"))], 0),
            Some(true),
            "older convention, as a string"
        );
        assert_eq!(
            bad(&[("rpc.grpc.status_code", Value::Int(14))], 0),
            Some(true)
        );
        assert_eq!(
            bad(&[("rpc.grpc.status_code", Value::Int(5))], 0),
            Some(false),
            "NOT_FOUND is not bad"
        );
    }

    #[test]
    fn log_events_and_attribute_latency() {
        let (keys, slos) = compile(
            r#"
slos:
  - name: deployments
    service: deployer
    source: logs
    objective: 95
    filter: {attributes: {event.name: deployment}}
    indicator: {events: {bad: {severity_at_least: error, attributes: {deployment.outcome: failure}}}}
  - name: provisioning
    service: provisioner
    source: logs
    objective: 99
    indicator: {latency: {threshold: 2m, attribute: provisioning.duration_ms, unit: ms}}
"#,
        );
        let row = |pairs: &[(&str, Value<'static>)]| {
            let mut r = vec![Value::Missing; keys.len()];
            for (k, v) in pairs {
                r[keys.index_of(k).unwrap()] = *v;
            }
            r
        };
        let rec = |sev| LogView {
            time: 1,
            observed: 0,
            severity: sev,
            attrs: 0,
        };
        let res = row(&[]);
        let dep = &slos[0];
        let failed = row(&[
            ("event.name", Value::Str(b"deployment")),
            ("deployment.outcome", Value::Str(b"failure")),
        ]);
        assert_eq!(dep.classify_log(&rec(17), &failed, &res), Some(true));
        assert_eq!(
            dep.classify_log(&rec(13), &failed, &res),
            Some(false),
            "warn is below error"
        );
        let ok = row(&[
            ("event.name", Value::Str(b"deployment")),
            ("deployment.outcome", Value::Str(b"success")),
        ]);
        assert_eq!(dep.classify_log(&rec(17), &ok, &res), Some(false));
        assert_eq!(
            dep.classify_log(&rec(17), &res, &res),
            None,
            "not a deployment"
        );

        let prov = &slos[1];
        let ms = |v| row(&[("provisioning.duration_ms", v)]);
        assert_eq!(
            prov.classify_log(&rec(9), &ms(Value::Int(120_000)), &res),
            Some(false)
        );
        assert_eq!(
            prov.classify_log(&rec(9), &ms(Value::Double(120_000.5)), &res),
            Some(true)
        );
        assert_eq!(
            prov.classify_log(&rec(9), &ms(Value::Str(b"90000")), &res),
            Some(false)
        );
        assert_eq!(
            prov.classify_log(&rec(9), &res, &res),
            None,
            "no duration: not counted"
        );
    }
}
