//! The compiled plan: configuration turned, once at startup, into attribute indexes
//! and label rules, so that classifying an event parses no strings and looks up no
//! configuration maps.

pub mod slo;

use std::fmt::Write as _;

use crate::config::slo::Source;
use crate::config::{Config, dimension_label};
use crate::otlp::{AttrKeys, SERVICE_NAME, Value};
use slo::CompiledSlo;
pub use slo::Verdict;

/// The service label when a resource carries no `service.name`.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// How many labels a span series can have: service, region, span_kind and the dimensions.
pub const MAX_SPAN_LABELS: usize = 3 + crate::config::MAX_DIMENSIONS;

/// A label value, borrowed from the request when it can be, formatted inline for
/// numbers, and owned only when invalid UTF-8 had to be repaired.
#[derive(Debug, Clone)]
pub enum Label<'a> {
    /// Borrowed text (valid UTF-8, already cut to the length limit).
    Borrowed(&'a str),
    /// A number or boolean written into an inline buffer.
    Inline(InlineStr),
    /// Repaired text (invalid UTF-8 replaced with U+FFFD), cut to the length limit.
    Owned(String),
}

impl Label<'_> {
    /// The label text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match self {
            Label::Borrowed(s) => s,
            Label::Inline(s) => s.as_str(),
            Label::Owned(s) => s,
        }
    }
}

/// A short string on the stack (numbers as labels).
#[derive(Debug, Clone, Copy)]
pub struct InlineStr {
    buf: [u8; 32],
    len: u8,
}

impl InlineStr {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; 32],
            len: 0,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever written (see `write_str`), so this cannot fail.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Write for InlineStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let start = self.len as usize;
        let end = start + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[start..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

/// Why a configuration could not be compiled into a plan. Validation makes this
/// unreachable for a checked [`Config`]; it is an error rather than a silent default
/// so that a bug shows as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A key the plan reads is not among the keys the walkers extract.
    #[error("attribute key {0:?} is read but not extracted")]
    UnknownKey(String),
}

/// The compiled plan for labels.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every key either walk extracts: the log walk's.
    keys: AttrKeys,
    /// The keys the span side reads (service, region, dimensions, span SLOs): the first
    /// keys of `keys`, at the same indexes. The trace walk extracts only these, so a
    /// span's row is no wider than its rules need.
    trace_keys: AttrKeys,
    region_keys: Vec<usize>,
    region_default: String,
    dimensions: Vec<Dimension>,
    max_label_bytes: usize,
    /// Compiled SLOs, sorted by service so that a resource finds its own in one search.
    slos: Vec<CompiledSlo>,
}

/// One configured dimension: the attribute it reads and the label it becomes.
#[derive(Debug, Clone)]
pub struct Dimension {
    /// Index into the extracted attribute row.
    pub index: usize,
    /// The Prometheus label name (`http.route` becomes `http_route`).
    pub label: String,
}

impl Plan {
    /// Compiles `config`.
    pub fn compile(config: &Config) -> Result<Self, PlanError> {
        let of = |source: Source| {
            config
                .slos
                .iter()
                .filter(move |s| s.source == source)
                .flat_map(slo::keys_of)
        };
        let trace_side: Vec<&str> = config
            .region
            .attributes
            .iter()
            .chain(&config.dimensions)
            .map(String::as_str)
            .chain(of(Source::Spans))
            .collect();
        let keys = AttrKeys::new(trace_side.iter().copied().chain(of(Source::Logs)));
        let trace_keys = AttrKeys::new(trace_side);
        // Both keep the first of each key in order, so the trace keys are a prefix of
        // all the keys, at the same indexes.
        for i in 0..trace_keys.len() {
            let key = trace_keys.key(i);
            if keys.find(key) != Some(i) {
                return Err(PlanError::UnknownKey(
                    String::from_utf8_lossy(key).into_owned(),
                ));
            }
        }
        // Span SLOs and the span-side rules are compiled against the trace keys, so a
        // key they read that the trace walk would not extract is an error, not a
        // silently missing value.
        let mut slos: Vec<CompiledSlo> = config
            .slos
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let keys = match s.source {
                    Source::Spans => &trace_keys,
                    Source::Logs => &keys,
                };
                CompiledSlo::compile(i, s, keys)
            })
            .collect::<Result<_, _>>()?;
        slos.sort_by(|a, b| a.service.cmp(&b.service).then(a.index.cmp(&b.index)));
        let index = |k: &str| {
            trace_keys
                .index_of(k)
                .ok_or_else(|| PlanError::UnknownKey(k.to_owned()))
        };
        if index(SERVICE_NAME)? != 0 {
            return Err(PlanError::UnknownKey(SERVICE_NAME.to_owned()));
        }
        Ok(Self {
            region_keys: config
                .region
                .attributes
                .iter()
                .map(|k| index(k))
                .collect::<Result<_, _>>()?,
            region_default: config.region.default.clone(),
            dimensions: config
                .dimensions
                .iter()
                .map(|d| {
                    Ok(Dimension {
                        index: index(d)?,
                        label: dimension_label(d),
                    })
                })
                .collect::<Result<_, PlanError>>()?,
            max_label_bytes: config.limits.max_label_bytes,
            keys,
            trace_keys,
            slos,
        })
    }

    /// The SLOs of `service` (of both sources): look them up once per resource.
    #[inline]
    pub fn slos_of(&self, service: &str) -> &[CompiledSlo] {
        if self.slos.is_empty() {
            return &[];
        }
        let start = self.slos.partition_point(|s| &*s.service < service);
        let len = self.slos[start..]
            .iter()
            .take_while(|s| &*s.service == service)
            .count();
        &self.slos[start..start + len]
    }

    /// The attribute keys the log walk extracts: every key the plan reads.
    pub fn keys(&self) -> &AttrKeys {
        &self.keys
    }

    /// The attribute keys the trace walk extracts: the first [`Plan::keys`], those the
    /// span side reads (service, region, dimensions, span SLOs).
    pub fn trace_keys(&self) -> &AttrKeys {
        &self.trace_keys
    }

    /// The configured dimensions, in label order.
    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// The service of a resource row.
    #[inline]
    pub fn service<'a>(&self, resource: &[Value<'a>]) -> Label<'a> {
        // `compile` checked that service.name is key 0.
        self.label(&resource[0])
            .unwrap_or(Label::Borrowed(UNKNOWN_SERVICE))
    }

    /// The region found in one attribute row, trying the region keys in order.
    #[inline]
    pub fn region_in<'a>(&self, row: &[Value<'a>]) -> Option<Label<'a>> {
        self.region_keys.iter().find_map(|&i| self.label(&row[i]))
    }

    /// An event's region: the resource's (found once per resource), else the event's
    /// own, else the default.
    #[inline]
    pub fn region<'a>(
        &'a self,
        resource_region: &Option<Label<'a>>,
        event: &[Value<'a>],
    ) -> Label<'a> {
        match resource_region {
            Some(r) => r.clone(),
            None => self
                .region_in(event)
                .unwrap_or(Label::Borrowed(&self.region_default)),
        }
    }

    /// The default region.
    pub fn region_default(&self) -> &str {
        &self.region_default
    }

    /// The value of dimension `d` for an event: the event's attribute, else the
    /// resource's, else empty (an absent label).
    #[inline]
    pub fn dimension<'a>(
        &self,
        d: &Dimension,
        event: &[Value<'a>],
        resource: &[Value<'a>],
    ) -> Label<'a> {
        self.label(&event[d.index])
            .or_else(|| self.label(&resource[d.index]))
            .unwrap_or(Label::Borrowed(""))
    }

    /// Turns an attribute value into a label value: strings repaired to UTF-8 and cut to
    /// `max_label_bytes` at a character boundary; numbers and booleans written out;
    /// empty strings, arrays, maps and bytes, and absent values, give `None`. An empty
    /// string is no label value in Prometheus (`region=""` selects a series without a
    /// region), so it falls through to the next source, like an absent attribute.
    #[inline]
    pub fn label<'a>(&self, value: &Value<'a>) -> Option<Label<'a>> {
        let max = self.max_label_bytes;
        match *value {
            Value::Str(b"") => None,
            Value::Str(bytes) => Some(match std::str::from_utf8(bytes) {
                Ok(s) => Label::Borrowed(cut(s, max)),
                Err(_) => {
                    let repaired = String::from_utf8_lossy(bytes);
                    Label::Owned(cut(&repaired, max).to_owned())
                }
            }),
            _ => scalar_text(value).map(|text| match text {
                Label::Inline(mut s) => {
                    s.len = cut(s.as_str(), max).len() as u8;
                    Label::Inline(s)
                }
                Label::Owned(s) => Label::Owned(cut(&s, max).to_owned()),
                borrowed => borrowed,
            }),
        }
    }
}

/// A number or boolean written out, as labels and SLO filters see it: inline when it
/// fits (every integer does), owned otherwise (`1e40` is written out in full). `None`
/// for strings and for values that are not scalars.
pub(crate) fn scalar_text(value: &Value<'_>) -> Option<Label<'static>> {
    let mut inline = InlineStr::new();
    Some(match *value {
        Value::Int(i) => {
            let _ = write!(inline, "{i}");
            Label::Inline(inline)
        }
        Value::Double(d) => {
            if write!(inline, "{d}").is_ok() {
                Label::Inline(inline)
            } else {
                Label::Owned(d.to_string())
            }
        }
        Value::Bool(b) => Label::Borrowed(if b { "true" } else { "false" }),
        Value::Str(_) | Value::Missing | Value::Other => return None,
    })
}

/// `s` cut to at most `max` bytes, at a character boundary.
#[inline]
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_walk_extracts_only_the_span_side_keys() {
        let config = Config::from_yaml(
            include_str!("../config/example.yaml"),
            "config/example.yaml",
        )
        .unwrap();
        let plan = Plan::compile(&config).unwrap();
        let (all, traces) = (plan.keys(), plan.trace_keys());
        assert!(traces.len() < all.len(), "example.yaml has log-only keys");
        for i in 0..traces.len() {
            assert_eq!(all.find(traces.key(i)), Some(i), "a prefix, same indexes");
        }
        for key in ["cloud.region", "http.route", "http.response.status_code"] {
            assert!(
                traces.index_of(key).is_some(),
                "{key} is read by the span side"
            );
        }
        for key in [
            "event.name",
            "deployment.outcome",
            "provisioning.duration_ms",
        ] {
            assert_eq!(traces.index_of(key), None, "{key} is read by log SLOs only");
            assert!(all.index_of(key).is_some(), "{key} is extracted from logs");
        }
    }

    #[test]
    fn labels_are_cut_at_character_boundaries() {
        assert_eq!(cut("abcdef", 4), "abcd");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("ab", 4), "ab");
        assert_eq!(cut("日本語", 7), "日本");
    }

    #[test]
    fn values_become_labels() {
        let config = Config::from_yaml(
            "region: {attributes: [cloud.region, region]}\ndimensions: [http.route]\nlimits: {max_label_bytes: 16}",
            "t",
        )
        .unwrap();
        let plan = Plan::compile(&config).unwrap();
        let l = |v: Value<'_>| plan.label(&v).map(|l| l.as_str().to_owned());
        assert_eq!(l(Value::Int(-42)).as_deref(), Some("-42"));
        assert_eq!(
            l(Value::Int(i64::MIN)).as_deref(),
            Some("-922337203685477"),
            "integers are cut to max_label_bytes too"
        );
        assert_eq!(l(Value::Double(0.5)).as_deref(), Some("0.5"));
        assert_eq!(
            l(Value::Double(1e40)).as_deref(),
            Some("1000000000000000"),
            "a long number is cut to max_label_bytes (16 here), not lost"
        );
        assert_eq!(l(Value::Bool(true)).as_deref(), Some("true"));
        assert_eq!(l(Value::Other), None);
        assert_eq!(l(Value::Str(b"")), None, "an empty string is no value");
        assert_eq!(
            l(Value::Str(b"a\xffb")).as_deref(),
            Some("a\u{fffd}b"),
            "invalid UTF-8 is repaired"
        );
        assert_eq!(
            l(Value::Str("x".repeat(40).as_bytes())).as_deref(),
            Some("xxxxxxxxxxxxxxxx")
        );
        // service.name, cloud.region, region, http.route
        let keys = plan.keys();
        let mut row = vec![Value::Missing; keys.len()];
        assert_eq!(plan.service(&row).as_str(), UNKNOWN_SERVICE);
        assert!(plan.region_in(&row).is_none());
        row[0] = Value::Str(b"");
        assert_eq!(
            plan.service(&row).as_str(),
            UNKNOWN_SERVICE,
            "empty service.name"
        );
        row[keys.index_of("cloud.region").unwrap()] = Value::Str(b"");
        row[keys.index_of("region").unwrap()] = Value::Str(b"eu");
        assert_eq!(
            plan.region_in(&row).unwrap().as_str(),
            "eu",
            "empty falls through"
        );
        assert_eq!(plan.region_in(&row).unwrap().as_str(), "eu");
        row[keys.index_of("cloud.region").unwrap()] = Value::Str(b"us");
        assert_eq!(
            plan.region_in(&row).unwrap().as_str(),
            "us",
            "first key wins"
        );
    }
}
