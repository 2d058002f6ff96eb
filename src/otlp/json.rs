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
        let events = first..out.events.len() as u32;
        out.resources
            .push(super::ResourceRun { attrs: row, events });
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
        let events = first..out.events.len() as u32;
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
