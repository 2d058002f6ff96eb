//! OTLP decoding: borrowed views of the few fields that sloxide reads.
//!
//! Two producers fill the same [`Batch`]: the zero-copy protobuf walkers in
//! [`spans`] and [`logs`] (the hot path), and the OTLP/JSON path in [`json`], which
//! deserialises into `opentelemetry-proto` structs and borrows from them (the slow
//! path). Everything after decoding sees only a [`Batch`].

pub mod json;
pub mod kinds;
pub mod logs;
pub mod spans;
pub mod wire;

use std::ops::Range;

pub use kinds::{Severity, SpanKind, StatusCode};
pub use logs::LogView;
pub use spans::SpanView;
use wire::{DecodeError, Reader, WireType};

/// The attribute key that names the service.
pub const SERVICE_NAME: &str = "service.name";

/// One attribute value as it appears on the wire. Strings stay raw bytes: they are
/// repaired to UTF-8 only when they become a label.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Value<'a> {
    /// The key was absent, or its value was empty.
    #[default]
    Missing,
    /// `string_value`, possibly invalid UTF-8.
    Str(&'a [u8]),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// An array, key-value list or bytes value: present, but not a scalar.
    Other,
}

impl Value<'_> {
    /// Whether two values are the same on the wire: strings byte for byte (inline, no
    /// memcmp call), doubles bit for bit.
    #[inline(always)]
    pub fn same(&self, other: &Value<'_>) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => same_bytes(a, b),
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Double(a), Value::Double(b)) => a.to_bits() == b.to_bits(),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Missing, Value::Missing) | (Value::Other, Value::Other) => true,
            _ => false,
        }
    }
}

/// The attribute keys to extract, compiled from the configuration. Index 0 is always
/// `service.name`. Every resource and every event gets one row of `len()` values.
#[derive(Debug, Clone)]
pub struct AttrKeys {
    keys: Vec<Box<[u8]>>,
    /// One entry per key, ordered by key length (64 bytes or more counting as 64), so
    /// that the keys of length class `n` are `candidates[starts[n]..starts[n + 1]]`.
    candidates: Vec<Candidate>,
    starts: [u32; LENGTH_CLASSES + 1],
}

/// A key as the lookup compares it: its first and last 8 bytes held inline (zero-padded
/// when shorter), so that most mismatches cost two compares and no pointer chase.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    first: u64,
    last: u64,
    index: u32,
}

/// Key lengths 0 to 63 each have their own class; longer keys share the last.
const LENGTH_CLASSES: usize = 65;

/// The first and last 8 bytes of `key` as words; shorter keys are zero-padded at the end
/// (both words are then the same).
#[inline(always)]
fn end_words(key: &[u8]) -> (u64, u64) {
    let word = |s: &[u8]| {
        let mut raw = [0u8; 8];
        raw[..s.len()].copy_from_slice(s);
        u64::from_ne_bytes(raw)
    };
    let n = key.len();
    if n >= 8 {
        (word(&key[..8]), word(&key[n - 8..]))
    } else {
        let w = word(key);
        (w, w)
    }
}

impl AttrKeys {
    /// The keys, `service.name` first, duplicates removed, order otherwise kept.
    pub fn new<'k>(keys: impl IntoIterator<Item = &'k str>) -> Self {
        let mut out: Vec<Box<[u8]>> = vec![SERVICE_NAME.as_bytes().into()];
        for key in keys {
            if !out.iter().any(|k| &**k == key.as_bytes()) {
                out.push(key.as_bytes().into());
            }
        }
        let class = |len: usize| len.min(LENGTH_CLASSES - 1);
        let mut candidates: Vec<Candidate> = out
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let (first, last) = end_words(k);
                Candidate {
                    first,
                    last,
                    index: i as u32,
                }
            })
            .collect();
        candidates.sort_by_key(|c| class(out[c.index as usize].len()));
        let mut starts = [0u32; LENGTH_CLASSES + 1];
        for (n, start) in starts.iter_mut().enumerate() {
            *start = candidates.partition_point(|c| class(out[c.index as usize].len()) < n) as u32;
        }
        Self {
            keys: out,
            candidates,
            starts,
        }
    }

    /// How many keys, and so the width of a row.
    #[allow(clippy::len_without_is_empty)] // never empty: service.name is always there
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The row index of `key`, if it is extracted.
    ///
    /// Most keys on the wire are not wanted, and most are rejected by their length
    /// alone; the rest by their first and last 8 bytes, held inline; only keys longer
    /// than 16 bytes that agree on both are compared in full. With the one-byte tag
    /// dispatch of the span walk, a first version of this (by length, then comparing
    /// through the key's pointer) took the trace walk with `config/example.yaml`'s then
    /// ten keys from about 109 to about 99 µs per 1000 spans (benches/pipeline.rs,
    /// `sloxide_walk_only`), against a scan of every key with memcmp; holding the end
    /// words inline took it from about 71 to about 68 µs.
    #[inline(always)]
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let n = key.len();
        let class = n.min(LENGTH_CLASSES - 1);
        let (start, end) = (self.starts[class], self.starts[class + 1]);
        // Most keys on the wire have a length no wanted key has: that is decided before
        // the candidates are sliced (and their bounds checked).
        if start == end {
            return None;
        }
        let candidates = &self.candidates[start as usize..end as usize];
        let (first, last) = end_words(key);
        // A plain loop: written with `Iterator::find`, the search was not inlined.
        for c in candidates {
            if c.first == first && c.last == last {
                let index = c.index as usize;
                if n <= 16 || same_bytes(&self.keys[index], key) {
                    return Some(index);
                }
            }
        }
        None
    }

    /// Key `index`, as given to [`AttrKeys::new`] (`service.name` is 0).
    pub fn key(&self, index: usize) -> &[u8] {
        &self.keys[index]
    }

    /// The row index of `key`, if it is extracted.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.find(key.as_bytes())
    }
}

/// Byte equality for short strings, without a call to memcmp: the first and last 8
/// bytes decide almost every mismatch, the middle is compared only when they agree.
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    if n < 8 {
        // Short labels (span kinds, short routes) too: a memcmp call for these was 5%
        // of recording the mixed traffic (perf, benches/pipeline.rs).
        if n >= 4 {
            let half = |s: &[u8], at: usize| {
                let mut raw = [0u8; 4];
                raw.copy_from_slice(&s[at..at + 4]);
                u32::from_ne_bytes(raw)
            };
            return half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4);
        }
        // 0 to 3 bytes: the first, middle and last byte are all of them.
        return n == 0 || (a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1]);
    }
    let word = |s: &[u8], at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(raw)
    };
    if word(a, 0) != word(b, 0) || word(a, n - 8) != word(b, n - 8) {
        return false;
    }
    let mut at = 8;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    true
}

/// Why a single record was rejected while the rest of its request was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A span whose end is before its start, or with a zero start or end time.
    InvalidSpanTime,
    /// A log record whose `time_unix_nano` and `observed_time_unix_nano` are both 0.
    MissingLogTime,
}

impl RejectReason {
    /// The `reason` label of the refused counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpanTime => "invalid_time",
            Self::MissingLogTime => "missing_time",
        }
    }

    /// The `error_message` of an OTLP partial success.
    pub fn message(self) -> &'static str {
        match self {
            Self::InvalidSpanTime => {
                "span rejected: end time before start time, or a zero start or end time"
            }
            Self::MissingLogTime => {
                "log record rejected: time_unix_nano and observed_time_unix_nano are both 0"
            }
        }
    }
}

/// The resources of one request and the accepted events under each.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRun {
    /// Start of this resource's attribute row in [`Batch::values`].
    pub attrs: u32,
    /// This resource's events in [`Batch::events`].
    pub events: Range<u32>,
}

/// A decoded request: resources, their accepted events, and the extracted attribute
/// values, all borrowed from the request body (or from the JSON structs).
#[derive(Debug)]
pub struct Batch<'a, E> {
    /// One entry per resource, in wire order.
    pub resources: Vec<ResourceRun>,
    /// Accepted events; each resource owns a contiguous range.
    pub events: Vec<E>,
    /// Attribute rows, each [`AttrKeys::len`] wide.
    pub values: Vec<Value<'a>>,
    /// Row width.
    pub width: usize,
    /// Records rejected individually (they are not in `events`).
    pub rejected: u64,
    /// Why the first rejected record was rejected.
    pub reject_reason: Option<RejectReason>,
    /// The most records (accepted or rejected) one request may hold; the walkers stop
    /// with [`DecodeError::TooManyRecords`] at the next one.
    pub max_records: usize,
}

impl<E> Default for Batch<'_, E> {
    fn default() -> Self {
        Self {
            resources: Vec::new(),
            events: Vec::new(),
            values: Vec::new(),
            width: 1,
            rejected: 0,
            reject_reason: None,
            max_records: usize::MAX,
        }
    }
}

impl<'a, E> Batch<'a, E> {
    /// Empties the batch for a request decoded with `keys`, keeping its capacity.
    pub fn reset(&mut self, keys: &AttrKeys) {
        self.resources.clear();
        self.events.clear();
        self.values.clear();
        self.width = keys.len();
        self.rejected = 0;
        self.reject_reason = None;
    }

    /// Empties the batch and lets it borrow from a new lifetime, keeping its capacity.
    /// The allocation test proves that this reuses the buffers.
    pub fn recycle<'b, F>(self) -> Batch<'b, F> {
        let Self {
            resources,
            events,
            values,
            width,
            max_records,
            ..
        } = self;
        Batch {
            resources: empty_reuse(resources),
            events: empty_reuse(events),
            values: empty_reuse(values),
            width,
            rejected: 0,
            reject_reason: None,
            max_records,
        }
    }

    /// Gives back the memory of buffers grown past room for `events` records (and
    /// their attribute rows), so that one huge request does not pin its size for as
    /// long as the thread lives. Capacity up to that stays, and is reused.
    pub fn trim(&mut self, events: usize) {
        fn cap<T>(v: &mut Vec<T>, max: usize) {
            if v.capacity() > max {
                v.clear();
                v.shrink_to(max);
            }
        }
        cap(&mut self.events, events);
        cap(
            &mut self.values,
            events.saturating_mul(self.width.max(1) + 1),
        );
        cap(&mut self.resources, events);
    }

    /// The attribute row of a resource.
    #[inline]
    pub fn resource_attrs(&self, run: &ResourceRun) -> &[Value<'a>] {
        let start = run.attrs as usize;
        &self.values[start..start + self.width]
    }

    /// An attribute row by its start index.
    #[inline]
    pub fn row(&self, start: u32) -> &[Value<'a>] {
        let start = start as usize;
        &self.values[start..start + self.width]
    }

    /// The events of a resource.
    #[inline]
    pub fn events_of(&self, run: &ResourceRun) -> &[E] {
        &self.events[run.events.start as usize..run.events.end as usize]
    }

    /// Refuses one more record once the request holds `max_records` already.
    #[inline]
    pub(crate) fn admit_record(&self) -> Result<(), DecodeError> {
        if self.events.len() as u64 + self.rejected >= self.max_records as u64 {
            return Err(DecodeError::TooManyRecords(self.max_records));
        }
        Ok(())
    }

    /// Appends an empty attribute row and returns its start.
    #[inline]
    pub(crate) fn push_row(&mut self) -> u32 {
        let start = self.values.len();
        self.values.resize(start + self.width, Value::Missing);
        start as u32
    }

    /// Drops the last row (the record it belonged to was rejected).
    #[inline]
    pub(crate) fn pop_row(&mut self, start: u32) {
        self.values.truncate(start as usize);
    }

    /// Counts one rejected record.
    #[inline]
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.rejected += 1;
        self.reject_reason.get_or_insert(reason);
    }

    /// Sets slot `index` of the row at `row` unless an earlier key already filled it.
    #[inline(always)]
    pub(crate) fn set_first(&mut self, row: u32, index: usize, value: Value<'a>) {
        let slot = &mut self.values[row as usize + index];
        if matches!(slot, Value::Missing) {
            *slot = value;
        }
    }
}

/// Empties `v` and retypes it without giving up its allocation. `T` and `U` differ only
/// in lifetimes, so the in-place collect path of `Vec` applies.
fn empty_reuse<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// Walks an `Export*ServiceRequest`: field 1 is the repeated `Resource*` message,
/// whose field 1 is the resource and field 2 the repeated `Scope*` message, whose
/// field 2 is the repeated record. Spans and logs share this shape.
pub(crate) fn walk_export<'a, E>(
    body: &'a [u8],
    keys: &AttrKeys,
    out: &mut Batch<'a, E>,
    mut record: impl FnMut(&'a [u8], &AttrKeys, &mut Batch<'a, E>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    out.reset(keys);
    walk_top(body, keys, out, &mut record)
}

/// The top level of [`walk_export`]: its fields from here to the end of `body`.
fn walk_top<'a, E>(
    body: &'a [u8],
    keys: &AttrKeys,
    out: &mut Batch<'a, E>,
    record: &mut impl FnMut(&'a [u8], &AttrKeys, &mut Batch<'a, E>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut top = Reader::new(body);
    while let Some((field, wire)) = top.tag()? {
        if field != 1 {
            top.skip(field, wire)?;
            continue;
        }
        expect(field, wire, WireType::Len)?;
        walk_resource(top.long_bytes()?, keys, out, record)?;
    }
    Ok(())
}

/// One `Resource*` message of [`walk_export`].
fn walk_resource<'a, E>(
    resource_msg: &'a [u8],
    keys: &AttrKeys,
    out: &mut Batch<'a, E>,
    record: &mut impl FnMut(&'a [u8], &AttrKeys, &mut Batch<'a, E>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let row = out.push_row();
    let first_event = out.events.len() as u32;
    // The resource may follow its scopes on the wire, so find it first.
    let mut pass = Reader::new(resource_msg);
    while let Some((field, wire)) = pass.tag()? {
        if field == 1 {
            expect(field, wire, WireType::Len)?;
            attributes_of(pass.bytes()?, 1, keys, row, out)?;
        } else {
            pass.skip(field, wire)?;
        }
    }
    let mut pass = Reader::new(resource_msg);
    while let Some((field, wire)) = pass.tag()? {
        if field != 2 {
            pass.skip(field, wire)?;
            continue;
        }
        expect(field, wire, WireType::Len)?;
        let mut scope = Reader::new(pass.bytes()?);
        loop {
            // A record's one-byte tag (field 2, length-delimited) is tested for first:
            // decoding the tag of every record cost about 25 instructions a span.
            if scope.peek() == Some(0x12) {
                scope.bump();
                record(scope.long_bytes()?, keys, out)?;
                continue;
            }
            let Some((field, wire)) = scope.tag()? else {
                break;
            };
            if field == 2 {
                expect(field, wire, WireType::Len)?;
                record(scope.long_bytes()?, keys, out)?;
            } else {
                scope.skip(field, wire)?;
            }
        }
    }
    let events = first_event..out.events.len() as u32;
    if events.is_empty() {
        // A resource without an accepted record adds nothing to any series, and is not
        // kept: a body of empty resources (`0a 00`, two bytes each) would otherwise grow
        // a row and a run per resource, over a hundred times its size, and no record
        // limit counts resources.
        out.pop_row(row);
    } else {
        out.resources.push(ResourceRun { attrs: row, events });
    }
    Ok(())
}

/// [`walk_export`] of a body that arrived in pieces (the frames of a transport), from
/// byte `skip` of their concatenation, without joining the pieces first. Each
/// `Resource*` message that lies within one piece is walked where it is; one that
/// spans pieces is copied into `joined` first, and so is the rest of the body from the
/// first top-level field that is not a `Resource*` message with a plain length (which
/// [`walk_top`] then reads as it would in one piece). The batch is the same as
/// [`walk_export`] of the concatenation gives, and so is the error.
pub(crate) fn walk_export_pieces<'a, E, P: AsRef<[u8]>>(
    pieces: &'a [P],
    skip: usize,
    joined: &'a mut Vec<u8>,
    keys: &AttrKeys,
    out: &mut Batch<'a, E>,
    mut record: impl FnMut(&'a [u8], &AttrKeys, &mut Batch<'a, E>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    out.reset(keys);
    // Two passes over the top level: the first copies what must be joined, so that the
    // second can borrow from `joined` for as long as the batch lives.
    joined.clear();
    scan_pieces(pieces, skip, |item| match item {
        Piece::Whole(_) => {}
        Piece::Split(at, len) => at.copy_to(len, joined),
        Piece::Rest(at) => at.copy_to(usize::MAX, joined),
    });
    let joined: &'a [u8] = joined;
    let mut next = 0;
    let mut result = Ok(());
    scan_pieces(pieces, skip, |item| {
        if result.is_err() {
            return;
        }
        result = match item {
            Piece::Whole(msg) => walk_resource(msg, keys, out, &mut record),
            Piece::Split(_, len) => {
                next += len;
                walk_resource(&joined[next - len..next], keys, out, &mut record)
            }
            Piece::Rest(_) => walk_top(&joined[next..], keys, out, &mut record),
        };
    });
    result
}

/// How many bytes [`walk_export_pieces`] of `pieces` from byte `skip` copies into its
/// `joined` buffer: what the caller holds on top of the pieces during the walk.
pub fn joined_len<P: AsRef<[u8]>>(pieces: &[P], skip: usize) -> usize {
    let mut len = 0;
    scan_pieces(pieces, skip, |item| match item {
        Piece::Whole(_) => {}
        Piece::Split(_, n) => len += n,
        Piece::Rest(at) => len += at.remaining(),
    });
    len
}

/// What [`scan_pieces`] finds at the top level.
enum Piece<'a, P> {
    /// A `Resource*` message within one piece.
    Whole(&'a [u8]),
    /// A `Resource*` message of this many bytes, from here, across pieces.
    Split(At<'a, P>, usize),
    /// Everything from here on, for [`walk_top`].
    Rest(At<'a, P>),
}

/// A position in a body of pieces.
struct At<'a, P> {
    pieces: &'a [P],
    /// Bytes of `pieces[0]` already behind.
    offset: usize,
}

impl<'a, P: AsRef<[u8]>> At<'a, P> {
    /// The unread part of the current piece (empty at the end).
    fn here(&self) -> &'a [u8] {
        self.pieces
            .first()
            .map_or(&[], |p| &p.as_ref()[self.offset..])
    }

    /// Moves `n` bytes on (at most to the end), over piece boundaries.
    fn advance(&mut self, mut n: usize) {
        while let Some(piece) = self.pieces.first() {
            let left = piece.as_ref().len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.pieces = &self.pieces[1..];
            self.offset = 0;
        }
    }

    /// The bytes from here to the end.
    fn remaining(&self) -> usize {
        self.pieces.iter().map(|p| p.as_ref().len()).sum::<usize>() - self.offset
    }

    /// Copies up to `len` bytes from here onto `out`.
    fn copy_to(&self, mut len: usize, out: &mut Vec<u8>) {
        let mut at = Self {
            pieces: self.pieces,
            offset: self.offset,
        };
        while len > 0 && !at.pieces.is_empty() {
            let here = at.here();
            let n = here.len().min(len);
            out.extend_from_slice(&here[..n]);
            len -= n;
            at.advance(n);
        }
    }

    /// Up to `N` bytes from here, wherever they lie, and how many there were.
    fn peek<const N: usize>(&self) -> ([u8; N], usize) {
        let mut buf = [0; N];
        let mut n = 0;
        let mut at = Self {
            pieces: self.pieces,
            offset: self.offset,
        };
        while n < N && !at.pieces.is_empty() {
            let here = at.here();
            let k = here.len().min(N - n);
            buf[n..n + k].copy_from_slice(&here[..k]);
            n += k;
            at.advance(k);
        }
        (buf, n)
    }
}

/// Walks the top level of a body of pieces from byte `skip`, handing `visit` each
/// `Resource*` message (field 1, tag byte `0x0a`, with a length that fits), and the
/// rest of the body from the first field that is anything else.
fn scan_pieces<'a, P: AsRef<[u8]>>(
    pieces: &'a [P],
    skip: usize,
    mut visit: impl FnMut(Piece<'a, P>),
) {
    let mut at = At { pieces, offset: 0 };
    at.advance(skip);
    let mut left = at.remaining();
    while left > 0 {
        // The tag and up to ten bytes of length, read as the one-piece walk reads them.
        let (head, n) = at.peek::<11>();
        let mut reader = Reader::new(&head[1..n]);
        let len = match (head[0], reader.varint()) {
            (0x0a, Ok(len)) => len,
            _ => return visit(Piece::Rest(at)),
        };
        let header = n - 1 - reader.rest_len();
        let Ok(len) = usize::try_from(len) else {
            return visit(Piece::Rest(at));
        };
        if len > left - 1 - header {
            return visit(Piece::Rest(at));
        }
        at.advance(1 + header);
        let here = at.here();
        if here.len() >= len {
            visit(Piece::Whole(&here[..len]));
        } else {
            visit(Piece::Split(
                At {
                    pieces: at.pieces,
                    offset: at.offset,
                },
                len,
            ));
        }
        at.advance(len);
        left -= 1 + header + len;
    }
}

/// Fails unless a known field arrived with the wire type its schema gives it.
#[inline]
pub(crate) fn expect(field: u32, got: WireType, want: WireType) -> Result<(), DecodeError> {
    if got == want {
        Ok(())
    } else {
        Err(DecodeError::WrongWireType(field))
    }
}

/// Reads every `KeyValue` under field `attr_field` of `msg` into the row at `row`.
/// Used for `Resource.attributes` (field 1).
fn attributes_of<'a, E>(
    msg: &'a [u8],
    attr_field: u32,
    keys: &AttrKeys,
    row: u32,
    out: &mut Batch<'a, E>,
) -> Result<(), DecodeError> {
    let mut r = Reader::new(msg);
    while let Some((field, wire)) = r.tag()? {
        if field == attr_field {
            expect(field, wire, WireType::Len)?;
            key_value(r.bytes()?, keys, row, out)?;
        } else {
            r.skip(field, wire)?;
        }
    }
    Ok(())
}

/// Reads the attributes at the start of `rest` that have the one-byte tag `tag` and a
/// one-byte length (as SDKs write them, one `KeyValue` after another) with
/// [`key_value`], and returns the bytes after them. The cursor is a plain slice, which
/// stays in registers: a [`Reader`] was stored to the stack after every read.
#[inline(always)]
pub(crate) fn attribute_run<'a, E>(
    mut rest: &'a [u8],
    tag: u8,
    keys: &AttrKeys,
    row: u32,
    out: &mut Batch<'a, E>,
) -> Result<&'a [u8], DecodeError> {
    while let [t, len, tail @ ..] = rest
        && *t == tag
        && *len < 0x80
    {
        let Some((kv, after)) = tail.split_at_checked(usize::from(*len)) else {
            return Err(DecodeError::BadLength(u64::from(*len)));
        };
        rest = after;
        key_value(kv, keys, row, out)?;
    }
    Ok(rest)
}

/// Reads one `KeyValue` (1: key, 2: value), in either order, and keeps the value when
/// the key is wanted.
#[inline(always)]
pub(crate) fn key_value<'a, E>(
    msg: &'a [u8],
    keys: &AttrKeys,
    row: u32,
    out: &mut Batch<'a, E>,
) -> Result<(), DecodeError> {
    // Fast path for the layout every SDK writes: key (field 1) with a one-byte length,
    // then the value (field 2) with a one-byte length, and nothing else. Most keys are
    // not wanted, and this decides that from the key alone, inline in the record's
    // walk; wanted values and other layouts are handled out of line. Inlining this path
    // (and only this path) took the trace walk from about 99 to about 71 µs per 1000
    // spans (benches/pipeline.rs, `sloxide_walk_only`).
    if let [0x0a, klen, rest @ ..] = msg
        && *klen < 0x80
        && let Some((key, after)) = rest.split_at_checked(usize::from(*klen))
        && let [0x12, vlen, value @ ..] = after
        && *vlen < 0x80
        && usize::from(*vlen) == value.len()
    {
        let Some(index) = keys.find(key) else {
            return Ok(());
        };
        // A string, or an integer below 16384 (a status code, say), is kept inline too:
        // the walk went from about 66 to about 57 µs per 1000 spans.
        return match value {
            [0x0a, len, s @ ..] if usize::from(*len) == s.len() => {
                out.set_first(row, index, Value::Str(s));
                Ok(())
            }
            [0x18, v] if *v < 0x80 => {
                out.set_first(row, index, Value::Int(i64::from(*v)));
                Ok(())
            }
            [0x18, lo, hi] if *lo >= 0x80 && *hi < 0x80 => {
                let v = i64::from(lo & 0x7f) | i64::from(*hi) << 7;
                out.set_first(row, index, Value::Int(v));
                Ok(())
            }
            _ => keep_value(value, row, index, out),
        };
    }
    key_value_general(msg, keys, row, out)
}

/// Stores the `AnyValue` in `msg` at slot `index` of the row at `row`.
#[inline(never)]
fn keep_value<'a, E>(
    msg: &'a [u8],
    row: u32,
    index: usize,
    out: &mut Batch<'a, E>,
) -> Result<(), DecodeError> {
    let value = any_value(msg)?;
    if value != Value::Missing {
        out.set_first(row, index, value);
    }
    Ok(())
}

/// [`key_value`] for any field order and layout. A repeated `value` field merges, as
/// protobuf merges repeated embedded messages: the payloads are read in order onto one
/// value, so an empty one after `"a"` leaves `"a"`.
#[inline(never)]
fn key_value_general<'a, E>(
    msg: &'a [u8],
    keys: &AttrKeys,
    row: u32,
    out: &mut Batch<'a, E>,
) -> Result<(), DecodeError> {
    let mut r = Reader::new(msg);
    let mut key: &[u8] = &[];
    let mut values = 0;
    while let Some((field, wire)) = r.tag()? {
        match field {
            1 => {
                expect(field, wire, WireType::Len)?;
                key = r.bytes()?;
            }
            2 => {
                expect(field, wire, WireType::Len)?;
                r.bytes()?;
                values += 1;
            }
            _ => r.skip(field, wire)?,
        }
    }
    let Some(index) = keys.find(key) else {
        return Ok(());
    };
    let mut value = Value::Missing;
    if values > 0 {
        let mut r = Reader::new(msg);
        while let Some((field, wire)) = r.tag()? {
            if field == 2 {
                value = any_value_onto(r.bytes()?, value)?;
            } else {
                r.skip(field, wire)?;
            }
        }
    }
    if value != Value::Missing {
        out.set_first(row, index, value);
    }
    Ok(())
}

/// Reads an `AnyValue` oneof; the last field present wins, as in protobuf. Always
/// inlined: returned through memory, the `Result<Value>` was stored and reloaded at odd
/// offsets, and those moves took half of `key_value`'s time (perf annotate).
#[inline(always)]
fn any_value(msg: &[u8]) -> Result<Value<'_>, DecodeError> {
    any_value_onto(msg, Value::Missing)
}

/// Reads an `AnyValue` message merged onto `value` (what an earlier occurrence set).
#[inline(always)]
fn any_value_onto<'a>(msg: &'a [u8], mut value: Value<'a>) -> Result<Value<'a>, DecodeError> {
    let mut r = Reader::new(msg);
    while let Some((field, wire)) = r.tag()? {
        value = match field {
            1 => {
                expect(field, wire, WireType::Len)?;
                Value::Str(r.bytes()?)
            }
            2 => {
                expect(field, wire, WireType::Varint)?;
                Value::Bool(r.varint()? != 0)
            }
            3 => {
                expect(field, wire, WireType::Varint)?;
                Value::Int(r.varint()? as i64)
            }
            4 => {
                expect(field, wire, WireType::Fixed64)?;
                Value::Double(f64::from_bits(r.fixed64()?))
            }
            5..=7 => {
                expect(field, wire, WireType::Len)?;
                r.bytes()?;
                Value::Other
            }
            // string_value_strindex belongs to profiles; other signals treat it as absent.
            8 => {
                expect(field, wire, WireType::Varint)?;
                r.varint()?;
                Value::Missing
            }
            _ => {
                r.skip(field, wire)?;
                value
            }
        };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_length_ends_and_middle() {
        let long_a = format!("{}a{}", "k".repeat(40), "z".repeat(40));
        let long_b = format!("{}b{}", "k".repeat(40), "z".repeat(40));
        let keys = AttrKeys::new([
            "region",
            "http.route",
            "event.name",
            "a",
            "",
            // Same length and same first and last 8 bytes: only the middle differs.
            "abcdefgh-1-ijklmnop",
            "abcdefgh-2-ijklmnop",
            long_a.as_str(),
        ]);
        assert_eq!(keys.len(), 9);
        assert_eq!(keys.find(b"service.name"), Some(0));
        assert_eq!(keys.find(b"region"), Some(1));
        assert_eq!(keys.find(b"http.route"), Some(2));
        assert_eq!(keys.find(b"event.name"), Some(3));
        assert_eq!(keys.find(b"url.scheme"), None, "same length, other bytes");
        assert_eq!(keys.find(b"a"), Some(4));
        assert_eq!(keys.find(b"b"), None);
        assert_eq!(keys.find(b""), Some(5));
        assert_eq!(keys.find(b"abcdefgh-1-ijklmnop"), Some(6));
        assert_eq!(keys.find(b"abcdefgh-2-ijklmnop"), Some(7));
        assert_eq!(keys.find(b"abcdefgh-3-ijklmnop"), None);
        assert_eq!(keys.find(long_a.as_bytes()), Some(8));
        assert_eq!(keys.find(long_b.as_bytes()), None, "64 bytes or more");
        assert_eq!(keys.find(b"regio"), None);
    }

    #[test]
    fn resources_without_records_are_not_kept() {
        use crate::otlp::logs::{LogBatch, walk_logs};
        use crate::otlp::spans::{TraceBatch, walk_traces};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        use prost::Message;
        // 100 000 empty resources (`0a 00`), and a trace request with one span between
        // an empty resource and one whose scope has no span.
        let empties = [0x0a, 0x00].repeat(100_000);
        let keys = AttrKeys::new(["region", "http.route"]);
        let mut batch = TraceBatch::default();
        walk_traces(&empties, &keys, &mut batch).unwrap();
        assert!(batch.resources.is_empty() && batch.values.is_empty());
        let mut logs = LogBatch::default();
        walk_logs(&empties, &keys, &mut logs).unwrap();
        assert!(logs.resources.is_empty() && logs.values.is_empty());

        let span = Span {
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans::default(),
                ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![ScopeSpans::default()],
                    ..Default::default()
                },
            ],
        };
        let body = request.encode_to_vec();
        walk_traces(&body, &keys, &mut batch).unwrap();
        assert_eq!(batch.resources.len(), 1);
        assert_eq!(batch.resources[0].events, 0..1);
        assert_eq!(
            batch.values.len(),
            2 * batch.width,
            "the resource's row and the span's"
        );
        let mut filled = TraceBatch::default();
        json::fill_traces(&request, &keys, &mut filled);
        assert_eq!(
            filled.resources, batch.resources,
            "the JSON path keeps the same"
        );
        assert_eq!(filled.values, batch.values);
    }

    #[test]
    fn same_bytes_agrees_with_equality() {
        let words = [
            &b""[..],
            b"a",
            b"b",
            b"ab",
            b"ac",
            b"bb",
            b"abc",
            b"abd",
            b"xbc",
            b"axc",
            b"abcd",
            b"abce",
            b"xbcd",
            b"abcde",
            b"abxde",
            b"abcdef",
            b"abcdefg",
            b"abcxefg",
            b"xbcdefg",
            b"abcdefx",
            b"abcdefgh",
            b"abcdefgi",
            b"abcdefgh12345678",
            b"abcdefgh12345679",
            b"abcdefgh123456789",
            b"abcdefgh1x3456789",
        ];
        for a in words {
            for b in words {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }
}
