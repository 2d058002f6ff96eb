//! Protobuf wire primitives: a bounds-checked cursor over borrowed bytes.
//!
//! Only what the OTLP walkers need: varints, fixed-width scalars, length-delimited
//! slices and skipping by wire type. Every read checks its bounds and returns a
//! [`DecodeError`] instead of panicking.

use thiserror::Error;

/// Why a message could not be walked. The whole request is refused when this occurs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The buffer ended inside a field.
    #[error("truncated message: a field runs past the end of its buffer")]
    Truncated,
    /// A varint longer than ten bytes, or one whose value exceeds 64 bits.
    #[error("malformed varint: more than 10 bytes or more than 64 bits")]
    VarintOverflow,
    /// Field number 0, or one above 2^29 - 1.
    #[error("invalid field number {0}")]
    InvalidField(u64),
    /// Wire type 6 or 7, or an end-group without its start.
    #[error("invalid wire type {0}")]
    InvalidWireType(u8),
    /// Groups nested deeper than [`MAX_GROUP_DEPTH`].
    #[error("groups nested too deeply")]
    TooDeep,
    /// A known field arrived with a wire type its schema does not allow.
    #[error("field {0} has the wrong wire type")]
    WrongWireType(u32),
    /// A length that does not fit the buffer.
    #[error("length {0} exceeds the remaining buffer")]
    BadLength(u64),
    /// More records than `limits.max_records_per_request`; the walk stops there.
    #[error("more than limits.max_records_per_request ({0}) records in one request")]
    TooManyRecords(usize),
}

/// How deep deprecated groups may nest before the walker gives up (prost uses 100).
pub const MAX_GROUP_DEPTH: u32 = 100;

/// Protobuf wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// Wire type 0.
    Varint,
    /// Wire type 1.
    Fixed64,
    /// Wire type 2.
    Len,
    /// Wire type 3 (deprecated groups).
    StartGroup,
    /// Wire type 4.
    EndGroup,
    /// Wire type 5.
    Fixed32,
}

/// A cursor over one protobuf message.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    /// The bytes not yet read: a shrinking slice (two words) rather than a buffer and an
    /// offset (three). Measured neutral on the trace walk; kept as the simpler form.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    /// How many bytes are left.
    #[inline]
    pub fn rest_len(&self) -> usize {
        self.rest.len()
    }

    /// The bytes not yet read.
    #[inline(always)]
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// True once every byte has been consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next byte, without consuming it: a one-byte tag (fields 1 to 15) is the
    /// whole tag, so walkers dispatch on it directly.
    #[inline(always)]
    pub fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The byte after the next one, without consuming anything: the second byte of a
    /// two-byte tag.
    #[inline(always)]
    pub fn peek_second(&self) -> Option<u8> {
        self.rest.get(1).copied()
    }

    /// Consumes the byte [`Reader::peek`] returned.
    #[inline(always)]
    pub fn bump(&mut self) {
        self.rest = &self.rest[1..];
    }

    /// Reads a base-128 varint.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        // Fast path: one-byte varints dominate tags, kinds and small lengths. Inlining
        // it everywhere and keeping the loop out of line took the trace walk from about
        // 200 to about 120 ns per span (benches/decode.rs).
        if let [b, rest @ ..] = self.rest
            && *b < 0x80
        {
            self.rest = rest;
            let b = *b;
            return Ok(u64::from(b));
        }
        self.varint_slow()
    }

    #[cold]
    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let [b, rest @ ..] = self.rest else {
                return Err(DecodeError::Truncated);
            };
            self.rest = rest;
            let b = *b;
            // The tenth byte holds bit 63 only; more is an overflow, as prost says.
            if i == 9 && b > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    /// Reads the next tag, or `None` at the end of the message.
    #[inline]
    pub fn tag(&mut self) -> Result<Option<(u32, WireType)>, DecodeError> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(DecodeError::InvalidField(field));
        }
        let wire = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            other => return Err(DecodeError::InvalidWireType(other as u8)),
        };
        Ok(Some((field as u32, wire)))
    }

    /// Reads a length-delimited field's payload.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        self.split(len)
    }

    /// [`Reader::bytes`] for a field that is usually 128 bytes to 16 KiB long (a span, a
    /// log record, a resource): its two-byte length is read inline too, rather than by
    /// the varint loop. Used only where such fields are read, so that the reads of
    /// attributes stay as small as they were.
    #[inline(always)]
    pub fn long_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = match self.rest {
            [b, rest @ ..] if *b < 0x80 => {
                self.rest = rest;
                u64::from(*b)
            }
            [lo, hi, rest @ ..] if *hi < 0x80 => {
                self.rest = rest;
                u64::from(lo & 0x7f) | u64::from(*hi) << 7
            }
            _ => self.varint_slow()?,
        };
        self.split(len)
    }

    /// The next `len` bytes, as the field just read declared.
    #[inline(always)]
    fn split(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        if len > self.rest.len() as u64 {
            return Err(DecodeError::BadLength(len));
        }
        let (field, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(field)
    }

    /// Reads a little-endian fixed64.
    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let Some((chunk, rest)) = self.rest.split_first_chunk::<8>() else {
            return Err(DecodeError::Truncated);
        };
        self.rest = rest;
        Ok(u64::from_le_bytes(*chunk))
    }

    /// Reads a little-endian fixed32.
    #[inline]
    pub fn fixed32(&mut self) -> Result<u32, DecodeError> {
        let Some((chunk, rest)) = self.rest.split_first_chunk::<4>() else {
            return Err(DecodeError::Truncated);
        };
        self.rest = rest;
        Ok(u32::from_le_bytes(*chunk))
    }

    /// Skips a field's payload by its wire type.
    #[inline]
    pub fn skip(&mut self, field: u32, wire: WireType) -> Result<(), DecodeError> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.fixed64().map(drop),
            WireType::Fixed32 => self.fixed32().map(drop),
            WireType::Len => self.bytes().map(drop),
            WireType::StartGroup => self.skip_group(field, 1),
            WireType::EndGroup => Err(DecodeError::InvalidWireType(4)),
        }
    }

    fn skip_group(&mut self, field: u32, depth: u32) -> Result<(), DecodeError> {
        if depth > MAX_GROUP_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        loop {
            let Some((inner, wire)) = self.tag()? else {
                return Err(DecodeError::Truncated);
            };
            match wire {
                WireType::EndGroup if inner == field => return Ok(()),
                WireType::EndGroup => return Err(DecodeError::InvalidWireType(4)),
                WireType::StartGroup => self.skip_group(inner, depth + 1)?,
                other => self.skip(inner, other)?,
            }
        }
    }

    /// Reads a varint field as an `i32` enum value, truncating as protobuf does.
    #[inline]
    pub fn enum_i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.varint()? as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_and_reject_overflow() {
        let mut r = Reader::new(&[0x96, 0x01, 0x00]);
        assert_eq!(r.varint(), Ok(150));
        assert_eq!(r.varint(), Ok(0));
        assert!(r.is_empty());
        let eleven = [0xff; 11];
        assert_eq!(
            Reader::new(&eleven).varint(),
            Err(DecodeError::VarintOverflow)
        );
        let mut max = [0xff; 10];
        max[9] = 0x01;
        assert_eq!(Reader::new(&max).varint(), Ok(u64::MAX));
        max[9] = 0x02;
        assert_eq!(
            Reader::new(&max).varint(),
            Err(DecodeError::VarintOverflow),
            "bits beyond 64"
        );
        assert_eq!(Reader::new(&[0x80]).varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn tags_reject_field_zero_and_bad_wire_types() {
        assert_eq!(
            Reader::new(&[0x02]).tag(),
            Err(DecodeError::InvalidField(0))
        );
        assert_eq!(
            Reader::new(&[0x0e]).tag(),
            Err(DecodeError::InvalidWireType(6))
        );
        assert_eq!(Reader::new(&[]).tag(), Ok(None));
    }

    #[test]
    fn lengths_are_bounds_checked() {
        assert_eq!(
            Reader::new(&[0x05, 1, 2]).bytes(),
            Err(DecodeError::BadLength(5))
        );
        assert_eq!(Reader::new(&[0x02, 1, 2]).bytes(), Ok(&[1u8, 2][..]));
        assert_eq!(
            Reader::new(&[1, 2, 3]).fixed64(),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn groups_are_skipped_and_must_close() {
        // field 1 start group, field 2 varint 7, field 1 end group, then field 3 varint.
        let buf = [0x0b, 0x10, 0x07, 0x0c, 0x18, 0x01];
        let mut r = Reader::new(&buf);
        let (f, w) = r.tag().unwrap().unwrap();
        r.skip(f, w).unwrap();
        assert_eq!(r.tag(), Ok(Some((3, WireType::Varint))));
        let unclosed = [0x0b, 0x10, 0x07];
        let mut r = Reader::new(&unclosed);
        let (f, w) = r.tag().unwrap().unwrap();
        assert_eq!(r.skip(f, w), Err(DecodeError::Truncated));
    }
}
