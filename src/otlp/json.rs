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
/// text (`{}` is two). A key written with escapes (`"sp\\u0061ns"`), which serde reads
/// as its unescaped self, is charged as the dearest.
fn element_bytes(key: &[u8]) -> usize {
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
    use std::mem::size_of;
    let dearest = size_of::<Span>().max(size_of::<LogRecord>());
    match key {
        b"spans" => size_of::<Span>(),
        b"logRecords" | b"log_records" => size_of::<LogRecord>(),
        b"resourceSpans" | b"resource_spans" => size_of::<ResourceSpans>(),
        b"resourceLogs" | b"resource_logs" => size_of::<ResourceLogs>(),
        b"scopeSpans" | b"scope_spans" => size_of::<ScopeSpans>(),
        b"scopeLogs" | b"scope_logs" => size_of::<ScopeLogs>(),
        b"events" => size_of::<span::Event>(),
        b"links" => size_of::<span::Link>(),
        key if key.contains(&b'\\') => dearest,
        // Attributes, array and key-value list values, and arrays serde skips.
        _ => size_of::<KeyValue>(),
    }
}

/// Whether an object under `key` (a member's key, or the key of the array it is an
/// element of) is an `AnyValue` (or a key-value list's entry): those are read through
/// serde's buffered form, every member of them held once more per `AnyValue` around
/// them while they are read. An escaped key may be one of them.
fn buffered(key: &[u8]) -> bool {
    matches!(key, b"value" | b"body" | b"values") || key.contains(&b'\\')
}

/// What one member of a buffered object costs while it is read, at each level of
/// buffering: serde's buffered key and value, and their share of its growing vector.
const MEMBER_BYTES: usize = 128;

/// How deep [`decode_charge`] follows arrays and objects: serde_json refuses a body
/// nested deeper than 128, before it builds much.
const MAX_DEPTH: usize = 130;

/// One open array or object of [`decode_charge`]'s pass.
#[derive(Clone, Copy)]
struct Open<'a> {
    array: bool,
    /// An array's key; its elements are charged by it.
    key: &'a [u8],
    /// Whether anything has come since it opened or since its last comma.
    filled: bool,
    /// A buffered object ([`buffered`]).
    buffered: bool,
}

/// What decoding `body` into the structures is charged to the in-flight budget: twice
/// its size (the strings it holds, copied); for each element of each array what it
/// becomes ([`element_bytes`]); and inside `AnyValue`s, which serde reads through a
/// buffered form that nested ones copy again at every level, each member
/// ([`MEMBER_BYTES`]), string and element once more per level. So a body of many small
/// elements (`{},{},…`, three bytes each, every one of which becomes a whole span), or
/// of deeply nested values, is charged for what it decodes into, not for its size. One
/// string-aware pass over the bytes, no allocation.
pub fn decode_charge(body: &[u8]) -> usize {
    let closed = Open {
        array: false,
        key: &[],
        filled: true,
        buffered: false,
    };
    let mut open = [closed; MAX_DEPTH];
    let mut depth = 0;
    // Buffered objects open around here.
    let mut layers = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let (mut string, mut key): (&[u8], &[u8]) = (&[], &[]);
    let mut string_start = 0;
    let mut charge = body.len().saturating_mul(2);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                string = &body[string_start..i];
                charge = charge.saturating_add(string.len().saturating_mul(layers));
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        // Anything but a closing bracket or a comma starts (or continues) an element of
        // the innermost array.
        if depth > 0
            && open[depth - 1].array
            && !open[depth - 1].filled
            && !matches!(b, b']' | b'}' | b',')
        {
            let array = &mut open[depth - 1];
            array.filled = true;
            let each = element_bytes(array.key).saturating_mul(layers.max(1));
            charge = charge.saturating_add(each);
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b':' => {
                key = string;
                charge = charge.saturating_add(MEMBER_BYTES.saturating_mul(layers));
            }
            b',' if depth > 0 && open[depth - 1].array => open[depth - 1].filled = false,
            b'[' | b'{' if depth == MAX_DEPTH => break,
            b'[' => {
                open[depth] = Open {
                    array: true,
                    key,
                    filled: false,
                    buffered: false,
                };
                depth += 1;
            }
            b'{' => {
                // The key it comes under: its array's, or the member's just read.
                let under = match depth {
                    0 => &[][..],
                    d if open[d - 1].array => open[d - 1].key,
                    _ => key,
                };
                let buffered = buffered(under);
                layers += usize::from(buffered);
                open[depth] = Open {
                    array: false,
                    key: &[],
                    filled: true,
                    buffered,
                };
                depth += 1;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                layers -= usize::from(open[depth].buffered);
            }
            _ => {}
        }
    }
    charge
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
        // An escaped key is read unescaped by serde: charged as the dearest element.
        assert_eq!(charge(br#"{"sp\u0061ns":[{},{}]}"#), 2 * span);
        // Inside an AnyValue, each member, string and element once more per level:
        // "stringValue" (11) and "abc" (3) once, and one member.
        assert_eq!(
            charge(br#"{"value":{"stringValue":"abc"}}"#),
            MEMBER_BYTES + 11 + 3
        );
        // One level down: "arrayValue" (10), "values" (6) and their members once, the
        // element once, and "intValue" (8), "1" and their member twice.
        assert_eq!(
            charge(br#"{"value":{"arrayValue":{"values":[{"intValue":"1"}]}}}"#),
            10 + 6 + 2 * MEMBER_BYTES + kv + 2 * (8 + 1 + MEMBER_BYTES)
        );
        // Deeper than serde_json reads: counted no further, and no panic.
        let deep = "[".repeat(1000);
        assert!(decode_charge(deep.as_bytes()) >= 2000);
    }
}
