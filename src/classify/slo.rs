//! SLO filters and indicators compiled into checks over extracted attribute rows.

use super::{PlanError, scalar_text};
use crate::config::slo::{AttributeMatch, Indicator, Slo, Source};
use crate::otlp::logs::LogView;
use crate::otlp::spans::SpanView;
use crate::otlp::{AttrKeys, Severity, SpanKind, StatusCode, Value};

/// The HTTP status attribute of current semantic conventions.
pub const HTTP_STATUS: &str = "http.response.status_code";
/// The HTTP status attribute of older semantic conventions.
pub const HTTP_STATUS_OLD: &str = "http.status_code";
/// The gRPC status attribute.
pub const GRPC_STATUS: &str = "rpc.grpc.status_code";
/// gRPC codes that count as bad: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS.
pub const BAD_GRPC_CODES: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// What an SLO makes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not counted: the filter does not select it, or the indicator cannot judge it
    /// (a latency attribute that is missing or not a number).
    Ignored,
    /// A good event.
    Good,
    /// A bad event.
    Bad,
}

impl Verdict {
    fn of_bad(bad: Option<bool>) -> Self {
        match bad {
            None => Verdict::Ignored,
            Some(false) => Verdict::Good,
            Some(true) => Verdict::Bad,
        }
    }
}

/// The row index of an attribute key, which the plan's keys must hold.
fn index_of(keys: &AttrKeys, key: &str) -> Result<usize, PlanError> {
    keys.index_of(key)
        .ok_or_else(|| PlanError::UnknownKey(key.to_owned()))
}

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

fn conditions(matches: &AttributeMatch, keys: &AttrKeys) -> Result<Vec<Condition>, PlanError> {
    matches
        .iter()
        .map(|(key, values)| {
            Ok(Condition {
                index: index_of(keys, key)?,
                accepted: values.iter().map(|v| v.as_str().into()).collect(),
            })
        })
        .collect()
}

impl CompiledSlo {
    /// Compiles `slo` against the extracted `keys`, which must include [`keys_of`]:
    /// a key they lack is an error, never a silent index.
    pub fn compile(index: usize, slo: &Slo, keys: &AttrKeys) -> Result<Self, PlanError> {
        let at = |k: &str| index_of(keys, k);
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
                index: at(a)?,
                unit: unit.nanos(),
            },
            Indicator::Availability => Check::Availability {
                http: at(HTTP_STATUS)?,
                http_old: at(HTTP_STATUS_OLD)?,
                grpc: at(GRPC_STATUS)?,
            },
            Indicator::Events { bad } => Check::Events {
                severity_at_least: bad.severity_at_least,
                conditions: conditions(&bad.attributes, keys)?,
            },
        };
        Ok(Self {
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
            conditions: conditions(&slo.filter.attributes, keys)?,
            check,
        })
    }

    /// Whether the SLO counts this span, and if so whether it is good or bad.
    #[inline]
    pub fn classify_span(
        &self,
        span: &SpanView<'_>,
        event: &[Value<'_>],
        resource: &[Value<'_>],
    ) -> Verdict {
        let kind = SpanKind::from_otlp(span.kind) as u8;
        if self.kinds != 0 && self.kinds & (1 << kind) == 0 {
            return Verdict::Ignored;
        }
        if !self.names.is_empty() && !self.names.iter().any(|n| **n == *span.name) {
            return Verdict::Ignored;
        }
        if !self.selects(event, resource) {
            return Verdict::Ignored;
        }
        Verdict::of_bad(self.judge(
            Some(span.duration_nanos()),
            StatusCode::from_otlp(span.status) == StatusCode::Error,
            None,
            event,
            resource,
        ))
    }

    /// Whether the SLO counts this log record, and if so whether it is good or bad.
    #[inline]
    pub fn classify_log(
        &self,
        record: &LogView,
        event: &[Value<'_>],
        resource: &[Value<'_>],
    ) -> Verdict {
        if !self.selects(event, resource) {
            return Verdict::Ignored;
        }
        let severity = Severity::from_otlp(record.severity);
        Verdict::of_bad(self.judge(None, false, Some(severity), event, resource))
    }

    /// Whether an event the filter selected is bad by the indicator (`None`: it cannot
    /// be judged). `duration` is a span's own (logs have none: a span-latency check
    /// counts nothing for them); `status_error` is a span's ERROR status; `severity` is
    /// a log record's.
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
            .map(|(i, s)| CompiledSlo::compile(i, s, &keys).unwrap())
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
            trace_id: None,
            span_id: None,
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
        assert_eq!(judge(Value::Double(1.0)), Verdict::Good, "1 is accepted");
        assert_eq!(
            judge(Value::Double(1e40)),
            Verdict::Good,
            "written out in full"
        );
        assert_eq!(
            judge(Value::Double(1e32)),
            Verdict::Ignored,
            "not cut down to \"1\""
        );
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
            Verdict::Good
        );
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 301, 0), &routed, &res),
            Verdict::Bad
        );
        assert_eq!(
            lat.classify_span(&span(3, b"POST /checkout", 1, 0), &routed, &res),
            Verdict::Ignored,
            "client spans are not selected by default"
        );
        assert_eq!(
            lat.classify_span(&span(2, b"GET /", 1, 0), &routed, &res),
            Verdict::Ignored
        );
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 1, 0), &res, &res),
            Verdict::Ignored,
            "route missing"
        );
        // The resource's attribute applies when the span has none.
        assert_eq!(
            lat.classify_span(&span(2, b"POST /checkout", 1, 0), &res, &routed),
            Verdict::Good
        );

        let bad = |pairs: &[(&str, Value<'static>)], status| {
            avail.classify_span(&span(5, b"x", 1, status), &row(pairs), &res)
        };
        assert_eq!(bad(&[], 0), Verdict::Good);
        assert_eq!(bad(&[], 2), Verdict::Bad, "status ERROR");
        assert_eq!(
            bad(&[("http.response.status_code", Value::Int(503))], 0),
            Verdict::Bad
        );
        assert_eq!(
            bad(&[("http.response.status_code", Value::Int(404))], 0),
            Verdict::Good
        );
        assert_eq!(
            bad(&[("http.status_code", Value::Str(b"500"))], 0),
            Verdict::Bad,
            "older convention, as a string"
        );
        assert_eq!(
            bad(&[("rpc.grpc.status_code", Value::Int(14))], 0),
            Verdict::Bad
        );
        assert_eq!(
            bad(&[("rpc.grpc.status_code", Value::Int(5))], 0),
            Verdict::Good,
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
        assert_eq!(dep.classify_log(&rec(17), &failed, &res), Verdict::Bad);
        assert_eq!(
            dep.classify_log(&rec(13), &failed, &res),
            Verdict::Good,
            "warn is below error"
        );
        let ok = row(&[
            ("event.name", Value::Str(b"deployment")),
            ("deployment.outcome", Value::Str(b"success")),
        ]);
        assert_eq!(dep.classify_log(&rec(17), &ok, &res), Verdict::Good);
        assert_eq!(
            dep.classify_log(&rec(17), &res, &res),
            Verdict::Ignored,
            "not a deployment"
        );

        let prov = &slos[1];
        let ms = |v| row(&[("provisioning.duration_ms", v)]);
        assert_eq!(
            prov.classify_log(&rec(9), &ms(Value::Int(120_000)), &res),
            Verdict::Good
        );
        assert_eq!(
            prov.classify_log(&rec(9), &ms(Value::Double(120_000.5)), &res),
            Verdict::Bad
        );
        assert_eq!(
            prov.classify_log(&rec(9), &ms(Value::Str(b"90000")), &res),
            Verdict::Good
        );
        assert_eq!(
            prov.classify_log(&rec(9), &res, &res),
            Verdict::Ignored,
            "no duration: not counted"
        );
    }
}
