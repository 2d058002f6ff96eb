//! The zero-copy walker for `ExportTraceServiceRequest`.

use super::wire::{DecodeError, Reader, WireType};
use super::{AttrKeys, Batch, RejectReason, expect, key_value, walk_export};

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

#[inline]
fn span<'a>(msg: &'a [u8], keys: &AttrKeys, out: &mut TraceBatch<'a>) -> Result<(), DecodeError> {
    let row = out.push_row();
    let mut view = SpanView {
        name: &[],
        kind: 0,
        start: 0,
        end: 0,
        status: 0,
        attrs: row,
    };
    let mut r = Reader::new(msg);
    while let Some((field, wire)) = r.tag()? {
        match field {
            5 => {
                expect(field, wire, WireType::Len)?;
                view.name = r.bytes()?;
            }
            6 => {
                expect(field, wire, WireType::Varint)?;
                view.kind = r.enum_i32()?;
            }
            7 => {
                expect(field, wire, WireType::Fixed64)?;
                view.start = r.fixed64()?;
            }
            8 => {
                expect(field, wire, WireType::Fixed64)?;
                view.end = r.fixed64()?;
            }
            9 => {
                expect(field, wire, WireType::Len)?;
                key_value(r.bytes()?, keys, row, out)?;
            }
            15 => {
                expect(field, wire, WireType::Len)?;
                // Status messages merge, so a later one without a code keeps the earlier code.
                let mut status = Reader::new(r.bytes()?);
                while let Some((field, wire)) = status.tag()? {
                    if field == 3 {
                        expect(field, wire, WireType::Varint)?;
                        view.status = status.enum_i32()?;
                    } else {
                        status.skip(field, wire)?;
                    }
                }
            }
            _ => r.skip(field, wire)?,
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
