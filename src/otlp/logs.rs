//! The zero-copy walker for `ExportLogsServiceRequest`.

use super::wire::{DecodeError, Reader, WireType};
use super::{AttrKeys, Batch, RejectReason, expect, key_value, walk_export, walk_export_pieces};

/// What sloxide reads of one log record. Borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogView {
    /// `time_unix_nano`, or 0.
    pub time: u64,
    /// `observed_time_unix_nano`, or 0.
    pub observed: u64,
    /// `severity_number` as on the wire (0 unspecified, 1..=24).
    pub severity: i32,
    /// Start of this record's attribute row in [`Batch::values`].
    pub attrs: u32,
}

impl LogView {
    /// The event time: `time_unix_nano`, or the observed time when that is 0.
    #[inline]
    pub fn event_time(&self) -> u64 {
        if self.time != 0 {
            self.time
        } else {
            self.observed
        }
    }
}

/// A decoded logs request.
pub type LogBatch<'a> = Batch<'a, LogView>;

/// Walks `body` as an `ExportLogsServiceRequest` into `out`. Records with neither time
/// are counted in `out.rejected` and left out. On error, `out` must not be recorded.
pub fn walk_logs<'a>(
    body: &'a [u8],
    keys: &AttrKeys,
    out: &mut LogBatch<'a>,
) -> Result<(), DecodeError> {
    walk_export(body, keys, out, record)
}

/// [`walk_logs`] of a body that arrived in `pieces` (a transport's frames), from byte `skip`
/// of their concatenation, without joining them: only what lies across two pieces is
/// copied, into `joined`. The batch, or the error, is what [`walk_logs`] of the
/// concatenation gives.
pub fn walk_logs_pieces<'a, P: AsRef<[u8]>>(
    pieces: &'a [P],
    skip: usize,
    joined: &'a mut Vec<u8>,
    keys: &AttrKeys,
    out: &mut LogBatch<'a>,
) -> Result<(), DecodeError> {
    walk_export_pieces(pieces, skip, joined, keys, out, record)
}

#[inline]
fn record<'a>(msg: &'a [u8], keys: &AttrKeys, out: &mut LogBatch<'a>) -> Result<(), DecodeError> {
    out.admit_record()?;
    let row = out.push_row();
    let mut view = LogView {
        time: 0,
        observed: 0,
        severity: 0,
        attrs: row,
    };
    let mut r = Reader::new(msg);
    while let Some((field, wire)) = r.tag()? {
        match field {
            1 => {
                expect(field, wire, WireType::Fixed64)?;
                view.time = r.fixed64()?;
            }
            2 => {
                expect(field, wire, WireType::Varint)?;
                view.severity = r.enum_i32()?;
            }
            6 => {
                expect(field, wire, WireType::Len)?;
                key_value(r.bytes()?, keys, row, out)?;
            }
            11 => {
                expect(field, wire, WireType::Fixed64)?;
                view.observed = r.fixed64()?;
            }
            _ => r.skip(field, wire)?,
        }
    }
    if view.time == 0 && view.observed == 0 {
        out.pop_row(row);
        out.reject(RejectReason::MissingLogTime);
    } else {
        out.events.push(view);
    }
    Ok(())
}
