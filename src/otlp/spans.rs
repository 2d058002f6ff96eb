//! The zero-copy walker for `ExportTraceServiceRequest`.

use super::wire::{DecodeError, Reader, WireType};
use super::{
    AttrKeys, Batch, RejectReason, attribute_run, expect, key_value, walk_export,
    walk_export_pieces,
};

/// What sloxide reads of one span. Borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanView<'a> {
    /// `name`, raw bytes.
    pub name: &'a [u8],
    /// `kind` as on the wire (0 unspecified .. 5 consumer; other values are kept).
    pub kind: i32,
    /// `start_time_unix_nano`.
    pub start: u64,
    /// `end_time_unix_nano`.
    pub end: u64,
    /// `status.code` (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// Start of this span's attribute row in [`Batch::values`].
    pub attrs: u32,
    /// `trace_id`, when it is 16 bytes long (for exemplars).
    pub trace_id: Option<&'a [u8; 16]>,
    /// `span_id`, when it is 8 bytes long (for exemplars).
    pub span_id: Option<&'a [u8; 8]>,
}

impl SpanView<'_> {
    /// The span's duration in nanoseconds (accepted spans never end before they start).
    #[inline]
    pub fn duration_nanos(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// A decoded trace request.
pub type TraceBatch<'a> = Batch<'a, SpanView<'a>>;

/// Walks `body` as an `ExportTraceServiceRequest` into `out`, extracting the attributes
/// named by `keys`. Spans with invalid times are counted in `out.rejected` and left
/// out. On error, `out` holds a partial walk and must not be recorded.
pub fn walk_traces<'a>(
    body: &'a [u8],
    keys: &AttrKeys,
    out: &mut TraceBatch<'a>,
) -> Result<(), DecodeError> {
    walk_export(body, keys, out, span)
}

/// [`walk_traces`] of a body that arrived in `pieces` (a transport's frames), from byte `skip`
/// of their concatenation, without joining them: only what lies across two pieces is
/// copied, into `joined`. The batch, or the error, is what [`walk_traces`] of the
/// concatenation gives.
pub fn walk_traces_pieces<'a, P: AsRef<[u8]>>(
    pieces: &'a [P],
    skip: usize,
    joined: &'a mut Vec<u8>,
    keys: &AttrKeys,
    out: &mut TraceBatch<'a>,
) -> Result<(), DecodeError> {
    walk_export_pieces(pieces, skip, joined, keys, out, span)
}

/// Out of line on purpose: inlined into the request walk, it ran out of registers and
/// kept its reader on the stack; on its own the trace walk went from about 70 to about
/// 66 µs per 1000 spans (benches/pipeline.rs, `sloxide_walk_only`).
#[inline(never)]
fn span<'a>(msg: &'a [u8], keys: &AttrKeys, out: &mut TraceBatch<'a>) -> Result<(), DecodeError> {
    out.admit_record()?;
    let row = out.push_row();
    let mut view = SpanView {
        name: &[],
        kind: 0,
        start: 0,
        end: 0,
        status: 0,
        attrs: row,
        trace_id: None,
        span_id: None,
    };
    let mut r = Reader::new(msg);
    // The ids as SDKs write them, a 16-byte trace_id then an 8-byte span_id, checked and
    // read as one 28-byte block: four byte compares instead of two fields' tag, length
    // and bounds steps. Anything else takes the steps below, field by field.
    if let Some((ids, rest)) = r.rest().split_first_chunk::<28>()
        && ids[..2] == [0x0a, 16]
        && ids[18..20] == [0x12, 8]
    {
        view.trace_id = ids[2..18].try_into().ok();
        view.span_id = ids[20..].try_into().ok();
        r = Reader::new(rest);
    }
    // SDKs write a span's fields in field-number order. Taking that order first, with
    // one test per field, costs a well-predicted branch per field; the jump on the tag
    // byte below mispredicted on about every field of a mixed request (perf annotate).
    // Whatever is left, or comes in another order, takes the loop, which reads any field
    // in any order: fields are still read in the order they come, so the result is the
    // same.
    if r.peek() == Some(0x0a) {
        r.bump();
        view.trace_id = r.bytes()?.try_into().ok();
    }
    if r.peek() == Some(0x12) {
        r.bump();
        view.span_id = r.bytes()?.try_into().ok();
    }
    while matches!(r.peek(), Some(0x1a | 0x22)) {
        r.bump();
        r.bytes()?;
    }
    if r.peek() == Some(0x2a) {
        r.bump();
        view.name = r.bytes()?;
    }
    // kind (below 128), start and end, as SDKs write them: one 20-byte block.
    if let Some((times, rest)) = r.rest().split_first_chunk::<20>()
        && times[0] == 0x30
        && times[1] < 0x80
        && times[2] == 0x39
        && times[11] == 0x41
        && let (Ok(start), Ok(end)) = (
            <[u8; 8]>::try_from(&times[3..11]),
            <[u8; 8]>::try_from(&times[12..]),
        )
    {
        view.kind = i32::from(times[1]);
        view.start = u64::from_le_bytes(start);
        view.end = u64::from_le_bytes(end);
        r = Reader::new(rest);
    }
    if r.peek() == Some(0x30) {
        r.bump();
        view.kind = r.enum_i32()?;
    }
    if r.peek() == Some(0x39) {
        r.bump();
        view.start = r.fixed64()?;
    }
    if r.peek() == Some(0x41) {
        r.bump();
        view.end = r.fixed64()?;
    }
    r = Reader::new(attribute_run(r.rest(), 0x4a, keys, row, out)?);
    while r.peek() == Some(0x4a) {
        r.bump();
        key_value(r.bytes()?, keys, row, out)?;
    }
    while matches!(r.peek(), Some(0x5a | 0x6a)) {
        r.bump();
        r.bytes()?;
    }
    if r.peek() == Some(0x7a) {
        r.bump();
        view.status = status_code(r.bytes()?, view.status)?;
    }
    if r.peek() == Some(0x85) && r.peek_second() == Some(0x01) {
        r.bump();
        r.bump();
        r.fixed32()?;
    }
    while let Some(byte) = r.peek() {
        // The fields an SDK writes, with the wire types the schema gives them, are
        // dispatched on their one-byte tag; everything else (unknown fields, wrong wire
        // types, multi-byte tags) takes the general path below: one jump on the tag byte
        // instead of decoding the tag, matching the wire type and then the field (with
        // the key lookup of `AttrKeys::find`, about 109 to 99 µs per 1000 spans).
        match byte {
            0x2a => {
                r.bump();
                view.name = r.bytes()?;
            }
            0x30 => {
                r.bump();
                view.kind = r.enum_i32()?;
            }
            0x39 => {
                r.bump();
                view.start = r.fixed64()?;
            }
            0x41 => {
                r.bump();
                view.end = r.fixed64()?;
            }
            0x4a => {
                r.bump();
                key_value(r.bytes()?, keys, row, out)?;
            }
            // The ids, for exemplars.
            0x0a => {
                r.bump();
                view.trace_id = r.bytes()?.try_into().ok();
            }
            0x12 => {
                r.bump();
                view.span_id = r.bytes()?.try_into().ok();
            }
            // trace_state, parent_span_id, events, links: not read.
            0x1a | 0x22 | 0x5a | 0x6a => {
                r.bump();
                r.bytes()?;
            }
            0x7a => {
                r.bump();
                view.status = status_code(r.bytes()?, view.status)?;
            }
            // flags (field 16, fixed32): a two-byte tag, written by current SDKs on
            // every span; not read.
            0x85 if r.peek_second() == Some(0x01) => {
                r.bump();
                r.bump();
                r.fixed32()?;
            }
            _ => {
                let field;
                (r, field) = general_field(r, keys, row, out)?;
                match field {
                    Field::TraceId(id) => view.trace_id = id.try_into().ok(),
                    Field::SpanId(id) => view.span_id = id.try_into().ok(),
                    Field::Name(name) => view.name = name,
                    Field::Kind(kind) => view.kind = kind,
                    Field::Start(start) => view.start = start,
                    Field::End(end) => view.end = end,
                    Field::Status(msg) => view.status = status_code(msg, view.status)?,
                    Field::Done => {}
                }
            }
        }
    }
    if view.start == 0 || view.end == 0 || view.end < view.start {
        out.pop_row(row);
        out.reject(RejectReason::InvalidSpanTime);
    } else {
        out.events.push(view);
    }
    Ok(())
}

/// A span field read by [`general_field`].
enum Field<'a> {
    TraceId(&'a [u8]),
    SpanId(&'a [u8]),
    Name(&'a [u8]),
    Kind(i32),
    Start(u64),
    End(u64),
    Status(&'a [u8]),
    /// Read and dealt with (an attribute), or skipped.
    Done,
}

/// A span field that the one-byte dispatch of [`span`] does not take: a multi-byte tag,
/// an unknown field, or a known field with the wrong wire type (an error). Out of line
/// and cold, so that the loop of `span` stays small: its hot path then spans fewer cache
/// lines, and its speed depends less on where the linker happens to put it. The reader
/// goes in and comes back by value, so that `span` keeps it in registers.
#[cold]
#[inline(never)]
fn general_field<'a>(
    mut r: Reader<'a>,
    keys: &AttrKeys,
    row: u32,
    out: &mut TraceBatch<'a>,
) -> Result<(Reader<'a>, Field<'a>), DecodeError> {
    // `span` peeked a byte, so a tag (or an error) is there.
    let Some((field, wire)) = r.tag()? else {
        return Ok((r, Field::Done));
    };
    let field = match field {
        // The ids behind a tag longer than a byte (`8a 00`, say), which are still the
        // ids, or with the wrong wire type, which is an error (as in prost): the
        // one-byte dispatch takes only `0a` and `12`.
        1 => {
            expect(field, wire, WireType::Len)?;
            Field::TraceId(r.bytes()?)
        }
        2 => {
            expect(field, wire, WireType::Len)?;
            Field::SpanId(r.bytes()?)
        }
        5 => {
            expect(field, wire, WireType::Len)?;
            Field::Name(r.bytes()?)
        }
        6 => {
            expect(field, wire, WireType::Varint)?;
            Field::Kind(r.enum_i32()?)
        }
        7 => {
            expect(field, wire, WireType::Fixed64)?;
            Field::Start(r.fixed64()?)
        }
        8 => {
            expect(field, wire, WireType::Fixed64)?;
            Field::End(r.fixed64()?)
        }
        9 => {
            expect(field, wire, WireType::Len)?;
            key_value(r.bytes()?, keys, row, out)?;
            Field::Done
        }
        15 => {
            expect(field, wire, WireType::Len)?;
            Field::Status(r.bytes()?)
        }
        _ => {
            r.skip(field, wire)?;
            Field::Done
        }
    };
    Ok((r, field))
}

/// The `code` of a `Status` message. Status messages merge, so one without a code keeps
/// the `earlier` code.
fn status_code(msg: &[u8], earlier: i32) -> Result<i32, DecodeError> {
    let mut code = earlier;
    let mut status = Reader::new(msg);
    while let Some((field, wire)) = status.tag()? {
        if field == 3 {
            expect(field, wire, WireType::Varint)?;
            code = status.enum_i32()?;
        } else {
            status.skip(field, wire)?;
        }
    }
    Ok(code)
}
