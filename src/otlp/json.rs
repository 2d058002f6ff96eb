//! The slow path: OTLP/JSON through `opentelemetry-proto`'s serde structs.
//!
//! JSON bodies are deserialised into owned prost structs (this allocates per record),
//! then [`fill_traces`] and [`fill_logs`] borrow from those structs into the same
//! [`Batch`] the protobuf walkers produce. The same two functions serve the tests as
//! the reference extraction that the walkers are checked against.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use super::{AttrKeys, Batch, LogView, RejectReason, SpanView, Value};
use crate::otlp::logs::LogBatch;
use crate::otlp::spans::TraceBatch;

/// A JSON body that is not a valid OTLP/JSON request.
#[derive(Debug, thiserror::Error)]
#[error("invalid OTLP/JSON: {0}")]
pub struct JsonError(#[from] serde_json::Error);

/// What one element of an array of an OTLP/JSON body becomes when decoded, by the
/// array's key: a span or a log record is a few hundred bytes, however few bytes its
/// text (`{}` is two).
fn element_bytes(key: &[u8]) -> usize {
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
    use std::mem::size_of;
    match key {
        b"spans" => size_of::<Span>(),
        b"logRecords" | b"log_records" => size_of::<LogRecord>(),
        b"resourceSpans" | b"resource_spans" => size_of::<ResourceSpans>(),
        b"resourceLogs" | b"resource_logs" => size_of::<ResourceLogs>(),
        b"scopeSpans" | b"scope_spans" => size_of::<ScopeSpans>(),
        b"scopeLogs" | b"scope_logs" => size_of::<ScopeLogs>(),
        b"events" => size_of::<span::Event>(),
        b"links" => size_of::<span::Link>(),
        // Attributes, array and key-value list values, and arrays serde skips.
        _ => size_of::<KeyValue>(),
    }
}

/// How deep [`decode_charge`] follows arrays and objects: serde_json refuses a body
/// nested deeper than 128, before it builds much.
const MAX_DEPTH: usize = 130;

/// What decoding `body` into the structures is charged to the in-flight budget: twice
/// its size (the strings it holds, copied), and for each element of each array what it
/// becomes ([`element_bytes`]). A body of many small elements (`{},{},…`, three bytes
/// each, every one of which becomes a whole span) is so charged for what it decodes
/// into, not for its size; one string-aware pass over the bytes, no allocation.
pub fn decode_charge(body: &[u8]) -> usize {
    // Per open array or object: what one element of the array costs (0 for an object),
    // and whether anything has come since it opened or since its last comma.
    let mut open = [(0usize, false); MAX_DEPTH];
    let mut depth = 0;
    let (mut in_string, mut escaped) = (false, false);
    let (mut string, mut key): (&[u8], &[u8]) = (&[], &[]);
    let mut string_start = 0;
    let mut elements = 0usize;
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                string = &body[string_start..i];
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        // Anything but a closing bracket or a comma starts (or continues) an element of
        // the innermost array.
        if depth > 0 && !matches!(b, b']' | b'}' | b',') && !open[depth - 1].1 {
            open[depth - 1].1 = true;
            elements = elements.saturating_add(open[depth - 1].0);
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b':' => key = string,
            b',' if depth > 0 => open[depth - 1].1 = false,
            b'[' | b'{' if depth == MAX_DEPTH => break,
            b'[' => {
                open[depth] = (element_bytes(key), false);
                depth += 1;
            }
            b'{' => {
                open[depth] = (0, true);
                depth += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    body.len().saturating_mul(2).saturating_add(elements)
}

/// Parses an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode_traces(body: &[u8]) -> Result<ExportTraceServiceRequest, JsonError> {
    Ok(serde_json::from_slice(body)?)
}

/// Parses an OTLP/JSON `ExportLogsServiceRequest`.
pub fn decode_logs(body: &[u8]) -> Result<ExportLogsServiceRequest, JsonError> {
    Ok(serde_json::from_slice(body)?)
}

/// Extracts a decoded trace request into `out`, with the walker's rules.
pub fn fill_traces<'a>(
    req: &'a ExportTraceServiceRequest,
    keys: &AttrKeys,
    out: &mut TraceBatch<'a>,
) {
    out.reset(keys);
    for rs in &req.resource_spans {
        let row = resource_row(rs.resource.as_ref().map(|r| &r.attributes[..]), keys, out);
        let first = out.events.len() as u32;
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            let attrs = out.push_row();
            fill_row(&span.attributes, keys, attrs, out);
            let view = SpanView {
                name: span.name.as_bytes(),
                kind: span.kind,
                start: span.start_time_unix_nano,
                end: span.end_time_unix_nano,
                status: span.status.as_ref().map_or(0, |s| s.code),
                attrs,
                trace_id: span.trace_id.as_slice().try_into().ok(),
                span_id: span.span_id.as_slice().try_into().ok(),
            };
            if view.start == 0 || view.end == 0 || view.end < view.start {
                out.pop_row(attrs);
                out.reject(RejectReason::InvalidSpanTime);
            } else {
                out.events.push(view);
            }
        }
        end_resource(row, first, out);
    }
}

/// Extracts a decoded logs request into `out`, with the walker's rules.
pub fn fill_logs<'a>(req: &'a ExportLogsServiceRequest, keys: &AttrKeys, out: &mut LogBatch<'a>) {
    out.reset(keys);
    for rl in &req.resource_logs {
        let row = resource_row(rl.resource.as_ref().map(|r| &r.attributes[..]), keys, out);
        let first = out.events.len() as u32;
        for rec in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
            let attrs = out.push_row();
            fill_row(&rec.attributes, keys, attrs, out);
            let view = LogView {
                time: rec.time_unix_nano,
                observed: rec.observed_time_unix_nano,
                severity: rec.severity_number,
                attrs,
            };
            if view.time == 0 && view.observed == 0 {
                out.pop_row(attrs);
                out.reject(RejectReason::MissingLogTime);
            } else {
                out.events.push(view);
            }
        }
        end_resource(row, first, out);
    }
}

/// Keeps the resource whose row starts at `row` when it has accepted records (from
/// `first` on), as the walkers do.
fn end_resource<E>(row: u32, first: u32, out: &mut Batch<'_, E>) {
    let events = first..out.events.len() as u32;
    if events.is_empty() {
        out.pop_row(row);
    } else {
        out.resources
            .push(super::ResourceRun { attrs: row, events });
    }
}

fn resource_row<'a, E>(
    attrs: Option<&'a [KeyValue]>,
    keys: &AttrKeys,
    out: &mut Batch<'a, E>,
) -> u32 {
    let row = out.push_row();
    if let Some(attrs) = attrs {
        fill_row(attrs, keys, row, out);
    }
    row
}

fn fill_row<'a, E>(attrs: &'a [KeyValue], keys: &AttrKeys, row: u32, out: &mut Batch<'a, E>) {
    for kv in attrs {
        if let Some(index) = keys.find(kv.key.as_bytes()) {
            let value = value_of(kv.value.as_ref());
            if value != Value::Missing {
                out.set_first(row, index, value);
            }
        }
    }
}

/// The borrowed view of a prost `AnyValue`.
pub fn value_of(value: Option<&AnyValue>) -> Value<'_> {
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(any_value::Value::StringValueStrindex(_)) => Value::Missing,
        Some(any_value::Value::StringValue(s)) => Value::Str(s.as_bytes()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
        Some(
            any_value::Value::ArrayValue(_)
            | any_value::Value::KvlistValue(_)
            | any_value::Value::BytesValue(_),
        ) => Value::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_charged_by_what_their_elements_become() {
        use opentelemetry_proto::tonic::trace::v1::Span;
        let span = std::mem::size_of::<Span>();
        let kv = std::mem::size_of::<KeyValue>();
        let charge = |body: &[u8]| decode_charge(body) - 2 * body.len();
        assert_eq!(charge(b""), 0);
        assert_eq!(charge(br#"{"spans":[]}"#), 0);
        assert_eq!(charge(br#"{"spans":[{}]}"#), span);
        assert_eq!(charge(br#"{"spans":[{},{},{}]}"#), 3 * span);
        assert_eq!(
            charge(br#"{"spans": [ {} , {} ] }"#),
            2 * span,
            "whitespace"
        );
        // Nested arrays take their own keys; a string's brackets, braces, commas and
        // escaped quotes are text.
        let body = br#"{"spans":[{"name":"a,[{\"x\"}]","attributes":[{"key":"k"},{"key":"v"}]}]}"#;
        assert_eq!(charge(body), span + 2 * kv);
        // Unknown or unkeyed arrays: an attribute's worth per element.
        assert_eq!(charge(br#"{"x":[1,2,[3]]}"#), 4 * kv);
        assert!(span >= 200, "a span is a few hundred bytes: {span}");
        // Deeper than serde_json reads: counted no further, and no panic.
        let deep = "[".repeat(1000);
        assert!(decode_charge(deep.as_bytes()) >= 2000);
    }
}
