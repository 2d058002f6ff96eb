//! Inflating gzip, zlib and zstd bodies straight into the request's buffer.
//!
//! Reading a decoder through `std::io::Read::read_to_end` zero-fills the buffer before
//! each read (the decoders cannot say they write only what they report), and zstd's
//! reader copies each block from its own window buffer; on the mixed traffic's 400 KB
//! requests those were a `memset` and a `memmove` of every inflated byte, and making a
//! zstd context per body cost more than either (docs/benchmarks.md). Here the decoders
//! write into the buffer's spare capacity, a zstd context is kept per thread, and a
//! body that states its inflated size gets that room at once: a zstd frame is then
//! decoded in one pass, with no window buffer at all, as are zstd frames that state no
//! size (a Collector's) when their blocks bound them closely enough.
//!
//! Both loops keep the contract of `read_in_steps`: what is written is told to `grow`,
//! which charges it, at most [`STEP`] at a time (a zstd frame whose stated size is
//! believed, or one decoded in one pass by its bound, is charged for that before it is
//! written, as a snappy block is; what was not written is given back by the caller),
//! and writing stops once more than `limit` bytes came out, one byte past it.

use std::cell::RefCell;
use std::io;

use flate2::{Decompress, FlushDecompress, Status};
use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

use super::IngestError;

/// How much a decompression writes between two calls of its `grow`.
pub(super) const STEP: usize = 1 << 20;

/// A zstd context holding more than this after a body (the window buffers of a frame
/// that could not be decoded in one pass) is dropped rather than kept for the next.
const ZSTD_CONTEXT_KEPT: usize = 1 << 20;

thread_local! {
    /// The zstd context of this thread's last body, for its next one.
    static ZSTD_CONTEXT: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Room in `out` for the next write: what is spare, else [`STEP`] or a quarter of what
/// came so far more, whichever is more (at most what passes `limit` by a byte):
/// reserved exactly, so the buffer passes what the body becomes by at most a quarter
/// (doubling, by up to all of it), and a large body is moved a bounded number of times.
fn make_room(out: &mut Vec<u8>, start: usize, limit: usize) {
    if out.capacity() == out.len() {
        let written = out.len() - start;
        out.reserve_exact(
            STEP.max(written / 4)
                .min((limit - written).saturating_add(1)),
        );
    }
}

/// Reserves room for all of a stated size at once (at most what passes `limit` by a
/// byte).
fn reserve_stated(out: &mut Vec<u8>, limit: usize, stated: Option<usize>) {
    if let Some(n) = stated {
        out.reserve_exact(n.min(limit.saturating_add(1)));
    }
}

/// Inflates the gzip members (one after another, as `MultiGzDecoder` reads them) or
/// the zlib stream (`gzip` false; what follows its end is ignored, as `ZlibDecoder`
/// does) in `src` onto the end of `out`. `stated` is the size the body states, when
/// it is believed: the room reserved first. The outer error is `grow`'s, the inner
/// one the format's.
///
/// A gzip member's header and trailer are read here and its deflate data by a raw
/// inflater, reset for the next member: a gzip-mode inflater cannot be reset, and
/// making one per member allocates its state each time, which a body of thousands of
/// empty members would pay for each of them.
pub(super) fn inflate(
    gzip: bool,
    src: &[u8],
    limit: usize,
    stated: Option<usize>,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> Result<(), IngestError>,
) -> Result<io::Result<()>, IngestError> {
    let start = out.len();
    let mut inflater = Decompress::new(!gzip);
    let mut input = src;
    // The member's checksum, and where its output began.
    let mut member = (crc32fast::Hasher::new(), start);
    if gzip {
        match gzip_header(input) {
            Ok(len) => input = &input[len..],
            Err(e) => return Ok(Err(e)),
        }
    }
    reserve_stated(out, limit, stated.filter(|&n| n <= limit));
    while out.len() - start <= limit {
        make_room(out, start, limit);
        let room = (out.capacity() - out.len())
            .min(STEP)
            .min((limit - (out.len() - start)).saturating_add(1));
        let (read_before, written_before) = (inflater.total_in(), inflater.total_out());
        let status = inflater.decompress_uninit(
            input,
            &mut out.spare_capacity_mut()[..room],
            FlushDecompress::None,
        );
        let read = (inflater.total_in() - read_before) as usize;
        let written = (inflater.total_out() - written_before) as usize;
        debug_assert!(written <= room, "an inflater writes within its room");
        // SAFETY: the inflater initialised the first `written` bytes of the spare
        // capacity it was handed (`total_out` counts exactly what it wrote there), as
        // `Decompress::decompress_vec` relies on too.
        unsafe { out.set_len(out.len() + written) };
        if written > 0 {
            if gzip {
                member.0.update(&out[out.len() - written..]);
            }
            grow(written)?;
        }
        input = &input[read..];
        match status {
            Err(e) => return Ok(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            // A member that ends past the limit is refused as too large, as reading did,
            // whatever its trailer says.
            Ok(Status::StreamEnd) if gzip && out.len() - start > limit => return Ok(Ok(())),
            Ok(Status::StreamEnd) if gzip => {
                let (crc, began) = std::mem::replace(&mut member, (Default::default(), out.len()));
                match gzip_trailer(input, crc.finalize(), out.len() - began) {
                    Ok(rest) => input = rest,
                    Err(e) => return Ok(Err(e)),
                }
                if input.is_empty() {
                    return Ok(Ok(()));
                }
                match gzip_header(input) {
                    Ok(len) => input = &input[len..],
                    Err(e) => return Ok(Err(e)),
                }
                inflater.reset(false);
            }
            Ok(Status::StreamEnd) => return Ok(Ok(())),
            // With room to write and nothing written or read, the input ended before the
            // stream did.
            Ok(Status::Ok | Status::BufError) if read == 0 && written == 0 && room > 0 => {
                return Ok(Err(cut_short()));
            }
            Ok(Status::Ok | Status::BufError) => {}
        }
    }
    Ok(Ok(()))
}

/// The longest file name or comment a gzip header may hold, as flate2's reader allows.
const GZIP_FIELD_MAX: usize = 65_535;

/// The length of the gzip member header (RFC 1952) that `input` opens with, checked as
/// flate2's reader checks it: the magic bytes, deflate, no reserved flag, a name and a
/// comment of at most [`GZIP_FIELD_MAX`] bytes, and the header's checksum when it has
/// one.
fn gzip_header(input: &[u8]) -> io::Result<usize> {
    const FHCRC: u8 = 1 << 1;
    const FEXTRA: u8 = 1 << 2;
    const FNAME: u8 = 1 << 3;
    const FCOMMENT: u8 = 1 << 4;
    const RESERVED: u8 = 0xe0;
    let invalid = |what| io::Error::new(io::ErrorKind::InvalidData, what);
    let Some(fixed) = input.first_chunk::<10>() else {
        return Err(cut_short());
    };
    if fixed[..3] != [0x1f, 0x8b, 8] || fixed[3] & RESERVED != 0 {
        return Err(invalid("invalid gzip header"));
    }
    let flags = fixed[3];
    let mut at = fixed.len();
    if flags & FEXTRA != 0 {
        let Some(&[lo, hi]) = input.get(at..at + 2) else {
            return Err(cut_short());
        };
        at += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            let rest = input.get(at..).unwrap_or_default();
            match rest.iter().take(GZIP_FIELD_MAX + 1).position(|&b| b == 0) {
                Some(nul) => at += nul + 1,
                None if rest.len() > GZIP_FIELD_MAX => {
                    return Err(invalid("gzip header field too long"));
                }
                None => return Err(cut_short()),
            }
        }
    }
    if flags & FHCRC != 0 {
        let Some(&[lo, hi]) = input.get(at..at + 2) else {
            return Err(cut_short());
        };
        if crc32fast::hash(&input[..at]) as u16 != u16::from_le_bytes([lo, hi]) {
            return Err(invalid("gzip header checksum does not match"));
        }
        at += 2;
    }
    if at > input.len() {
        return Err(cut_short());
    }
    Ok(at)
}

/// Checks the trailer of a gzip member whose output had checksum `crc` and `len` bytes
/// (its `ISIZE` is the length modulo 2^32); what follows the trailer.
fn gzip_trailer(input: &[u8], crc: u32, len: usize) -> io::Result<&[u8]> {
    let Some((trailer, rest)) = input.split_first_chunk::<8>() else {
        return Err(cut_short());
    };
    let stated_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let stated_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if stated_crc != crc || stated_len != len as u32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "corrupt gzip stream does not have a matching checksum",
        ));
    }
    Ok(rest)
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the body ends before its compressed stream does",
    )
}

/// Runs `f` with this thread's kept zstd context (made when there is none; `None`
/// when it cannot be), and keeps the context for the next body unless it holds more
/// than [`ZSTD_CONTEXT_KEPT`].
fn with_zstd_context<R>(f: impl FnOnce(&mut DCtx<'static>) -> R) -> Option<R> {
    let kept = ZSTD_CONTEXT.with(|c| c.borrow_mut().take());
    let mut context = kept.or_else(DCtx::try_create)?;
    let result = f(&mut context);
    if context.sizeof() <= ZSTD_CONTEXT_KEPT {
        ZSTD_CONTEXT.with(|c| *c.borrow_mut() = Some(context));
    }
    Some(result)
}

/// Inflates the zstd frames in `src` onto the end of `out`, with the thread's kept
/// context. `stated` is the first frame's content size, when it is believed: it is
/// charged and reserved first, so zstd decodes that frame in one pass. Frames that state
/// no size (a Collector streams its bodies, so its frames do not) are decoded in one
/// pass too when the bound their block headers give is at most `limit` and `bound_max`,
/// and `grow` takes it: that bound is charged and reserved first. `window_log_max`
/// bounds the window a frame decoded in steps may ask for (one decoded in one pass has
/// none: it refers back into `out`). The outer error is `grow`'s, the inner one the
/// format's. Bytes charged ahead and not written stay charged: the caller gives them
/// back.
pub(super) fn inflate_zstd(
    src: &[u8],
    limit: usize,
    stated: Option<usize>,
    bound_max: usize,
    window_log_max: u32,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> Result<(), IngestError>,
) -> Result<io::Result<()>, IngestError> {
    with_zstd_context(|context| {
        let zstd_error = |code| io::Error::other(zstd_safe::get_error_name(code));
        if let Err(code) = context
            .reset(ResetDirective::SessionOnly)
            .and_then(|_| context.set_parameter(DParameter::WindowLogMax(window_log_max)))
        {
            return Ok(Err(zstd_error(code)));
        }
        let start = out.len();
        // Bytes charged before they were written.
        let mut ahead = 0;
        let stated = stated.filter(|&n| n <= limit);
        if let Some(n) = stated {
            grow(n)?;
            ahead = n;
        }
        reserve_stated(out, limit, stated);
        // The bound is charged only where it fits: a body flushed in small blocks is
        // bounded far above what it holds, and is then charged as it inflates, in steps.
        // An empty body is no frame, which zstd's one-pass decode would take as nothing.
        if stated.is_none()
            && !src.is_empty()
            && let Some(bound) = one_pass_bound(src, limit.min(bound_max))
            && grow(bound).is_ok()
        {
            ahead = bound;
            out.reserve_exact(bound);
            let mut tail = Tail {
                out: &mut *out,
                from: start,
                end: start + bound,
            };
            match context.decompress(&mut tail, src) {
                Ok(_) => return Ok(Ok(())),
                // A bound is never short, but were it so, the steps below would tell.
                Err(code)
                    if zstd_safe::is_error_kind(
                        code,
                        ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall,
                    ) =>
                {
                    out.truncate(start);
                    if let Err(code) = context.reset(ResetDirective::SessionOnly) {
                        return Ok(Err(zstd_error(code)));
                    }
                }
                // Damaged: refused as it is, not decoded a second time.
                Err(code) => return Ok(Err(zstd_error(code))),
            }
        }
        let mut input = InBuffer::around(src);
        // An empty body is not a zstd stream: it waits for a frame, as a cut one does.
        let mut in_frame = true;
        loop {
            if out.len() - start > limit || (input.pos() == src.len() && !in_frame) {
                return Ok(Ok(()));
            }
            make_room(out, start, limit);
            let (read_before, written_before) = (input.pos(), out.len());
            // What was charged ahead, or a step, within the limit and a byte.
            let room = (out.capacity() - written_before)
                .min(if ahead > 0 { ahead } else { STEP })
                .min((limit - (written_before - start)).saturating_add(1));
            let mut upto = Upto {
                out: &mut *out,
                end: written_before + room,
            };
            let status = context.decompress_stream(
                &mut OutBuffer::around_pos(&mut upto, written_before),
                &mut input,
            );
            let written = out.len() - written_before;
            let paid = written.min(ahead);
            ahead -= paid;
            if written > paid {
                grow(written - paid)?;
            }
            match status {
                Err(code) => return Ok(Err(zstd_error(code))),
                Ok(0) => in_frame = false,
                Ok(_) => {
                    in_frame = true;
                    if input.pos() == read_before && written == 0 && room > 0 {
                        return Ok(Err(cut_short()));
                    }
                }
            }
        }
    })
    .unwrap_or_else(|| Ok(Err(io::Error::other("no memory for a zstd context"))))
}

/// The most the zstd frames in `src` can inflate to, from their headers and their
/// blocks', when that is at most `max` and the body is nothing but frames: then it can
/// be decoded in one pass into that much room. Each compressed block is counted at the
/// most a block can hold (128 KiB, or the window when smaller): a frame written in
/// full blocks, as a Collector's is, is bounded within a block of what it holds; one
/// flushed in small blocks, far above it.
fn one_pass_bound(src: &[u8], max: usize) -> Option<usize> {
    let bound = zstd_safe::decompress_bound(src).ok()?;
    usize::try_from(bound).ok().filter(|&b| b <= max)
}

/// The part of a buffer from `from` (its length) to `end` (within its capacity), for
/// zstd's one-pass decode to write into.
struct Tail<'a> {
    out: &'a mut Vec<u8>,
    from: usize,
    end: usize,
}

// SAFETY: the pointer is `from` bytes into the vector, `from` being its length, and the
// capacity reported from there ends within the vector's capacity, so zstd writes only
// within memory the vector owns; it calls `filled_until` only with a length up to which
// it has written from that pointer.
unsafe impl zstd_safe::WriteBuf for Tail<'_> {
    fn as_slice(&self) -> &[u8] {
        &self.out[self.from..]
    }

    fn capacity(&self) -> usize {
        self.end.min(self.out.capacity()) - self.from
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `from` is the vector's length, within its allocation.
        unsafe { self.out.as_mut_ptr().add(self.from) }
    }

    unsafe fn filled_until(&mut self, n: usize) {
        // SAFETY: as above, the `n` bytes after `from` are initialised and within
        // capacity.
        unsafe { self.out.set_len(self.from + n) }
    }
}

/// A buffer seen as ending at `end` (within its capacity), so that one zstd call
/// writes no further.
struct Upto<'a> {
    out: &'a mut Vec<u8>,
    end: usize,
}

// SAFETY: the capacity reported is at most the vector's, so zstd writes only within
// memory the vector owns; and zstd calls `filled_until` only with a length up to which
// it has written, within that capacity.
unsafe impl zstd_safe::WriteBuf for Upto<'_> {
    fn as_slice(&self) -> &[u8] {
        self.out
    }

    fn capacity(&self) -> usize {
        self.end.min(self.out.capacity())
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.out.as_mut_ptr()
    }

    unsafe fn filled_until(&mut self, n: usize) {
        // SAFETY: as above, the first `n` bytes are initialised and within capacity.
        unsafe { self.out.set_len(n) }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::super::admission::{BASE_RESERVATION, Budget};
    use super::super::{
        Format, IngestError, STATED_RATIO_MAX, decompress_charged, decompress_within,
        one_pass_bound_max, stated_size_of, zstd_window_log_max,
    };
    use super::STEP;

    /// What reading the decoders through `std::io::Read` gave, as sloxide did before
    /// these loops: the same answer is wanted from them. On an error, what was read
    /// before it.
    fn through_read(
        format: Format,
        src: &[u8],
        limit: usize,
    ) -> (Result<Vec<u8>, &'static str>, usize) {
        let cap = (limit as u64).saturating_add(1);
        let mut out = Vec::new();
        let read = match format {
            Format::Gzip => flate2::bufread::MultiGzDecoder::new(src)
                .take(cap)
                .read_to_end(&mut out),
            Format::Zlib => flate2::bufread::ZlibDecoder::new(src)
                .take(cap)
                .read_to_end(&mut out),
            Format::Zstd => zstd::stream::read::Decoder::with_buffer(src).and_then(|mut d| {
                d.window_log_max(zstd_window_log_max(limit))?;
                d.take(cap).read_to_end(&mut out)
            }),
            _ => unreachable!("only the inflated formats"),
        };
        let before = out.len();
        let answer = match read {
            Err(_) => Err("invalid"),
            Ok(_) if out.len() > limit => Err("too large"),
            Ok(_) => Ok(out),
        };
        (answer, before)
    }

    /// Inflates onto a buffer that holds 4 bytes and has `spare` bytes more of room, as
    /// a pooled buffer does, and checks what was charged: every byte written, at most
    /// [`STEP`] at a time, but for a zstd frame's believed size or its one-pass bound,
    /// charged first (and all of it, when less came).
    fn here(
        format: Format,
        src: &[u8],
        limit: usize,
        spare: usize,
    ) -> Result<Vec<u8>, &'static str> {
        let mut out = Vec::with_capacity(4 + spare);
        out.extend_from_slice(b"head");
        let mut charges = Vec::new();
        let result = decompress_charged(format, src, limit, &mut out, &mut |n| {
            charges.push(n);
            Ok(())
        });
        assert_eq!(&out[..4], b"head", "{format:?}: what was there stays");
        let written = out.len() - 4;
        assert!(
            written <= limit.saturating_add(1),
            "{format:?}: {written} past"
        );
        let stated = stated_size_of(format, src).filter(|&n| n <= limit);
        let bound = zstd::zstd_safe::decompress_bound(src)
            .ok()
            .and_then(|b| usize::try_from(b).ok())
            .filter(|&b| b <= limit.min(one_pass_bound_max(src.len())));
        let ahead = match (format, stated) {
            (Format::Zstd, Some(n)) => Some(n),
            (Format::Zstd, None) => bound,
            _ => None,
        };
        for (i, &n) in charges.iter().enumerate() {
            let first_ahead = i == 0 && Some(n) == ahead;
            assert!(n <= STEP || first_ahead, "{format:?}: a charge of {n}");
        }
        if result.is_ok() {
            assert_eq!(
                charges.iter().sum::<usize>(),
                written.max(ahead.unwrap_or(0)),
                "{format:?}: charged"
            );
        }
        match result {
            Ok(()) => Ok(out.split_off(4)),
            Err(IngestError::Decompress { .. }) => Err("invalid"),
            Err(IngestError::DecompressedTooLarge { .. }) => Err("too large"),
            Err(e) => panic!("{format:?}: {e}"),
        }
    }

    fn gzip(body: &[u8], level: u32, name: bool) -> Vec<u8> {
        let mut builder = flate2::GzBuilder::new();
        if name {
            builder = builder.filename("spans.pb").comment("exported");
        }
        let mut enc = builder.write(Vec::new(), flate2::Compression::new(level));
        enc.write_all(body).unwrap();
        enc.finish().unwrap()
    }

    /// A gzip member with an extra field and a header checksum (`FEXTRA`, `FHCRC`),
    /// which flate2's writer does not write.
    fn gzip_with_header_checksum(body: &[u8]) -> Vec<u8> {
        let plain = gzip(body, 6, false);
        let mut header = vec![0x1f, 0x8b, 8, 0x02 | 0x04, 0, 0, 0, 0, 0, 255];
        header.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        let crc = crc32fast::hash(&header) as u16;
        header.extend_from_slice(&crc.to_le_bytes());
        [&header[..], &plain[10..]].concat()
    }

    fn zlib(body: &[u8], level: u32) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
        enc.write_all(body).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(body: &[u8], content_size: bool) -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(content_size).unwrap();
        if content_size {
            enc.set_pledged_src_size(Some(body.len() as u64)).unwrap();
        }
        enc.write_all(body).unwrap();
        enc.finish().unwrap()
    }

    /// One zstd frame written as a stream, with no content size, a checksum and a window
    /// of `2^window_log` bytes, as a Collector writes its bodies (`window_log` 22).
    fn streamed(body: &[u8], window_log: u32) -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.include_checksum(true).unwrap();
        enc.window_log(window_log).unwrap();
        enc.write_all(body).unwrap();
        enc.finish().unwrap()
    }

    /// [`streamed`] with a 4 MiB window, flushed every 4 KiB: each flush ends a block, so
    /// the bound (each block counted at 128 KiB) is far above what the frame holds.
    fn flushed(body: &[u8]) -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.window_log(22).unwrap();
        for chunk in body.chunks(4096) {
            enc.write_all(chunk).unwrap();
            enc.flush().unwrap();
        }
        enc.finish().unwrap()
    }

    /// Letters at random: about 2 to 1, so that a stated size is believed.
    fn letters(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnop"[(x >> 60) as usize]
            })
            .collect()
    }

    /// Bodies of each format: whole, in several members or frames, with what may
    /// follow them, cut short anywhere, and with a byte damaged; and whether the body
    /// is whole (members or frames only).
    fn cases(format: Format) -> Vec<(Vec<u8>, bool)> {
        let text = b"GET /api/orders/{id} 200 checkout eu-west-1 ".repeat(2_000);
        let noise: Vec<u8> = (0..150_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let payloads: [&[u8]; 4] = [b"", b"x", &text, &noise];
        let mut whole = Vec::new();
        for payload in payloads {
            match format {
                Format::Gzip => {
                    whole.push(gzip(payload, 1, false));
                    whole.push(gzip(payload, 6, true));
                }
                Format::Zlib => {
                    whole.push(zlib(payload, 1));
                    whole.push(zlib(payload, 9));
                }
                _ => {
                    whole.push(zstd(payload, true));
                    whole.push(zstd(payload, false));
                }
            }
        }
        if format == Format::Gzip {
            whole.push(gzip_with_header_checksum(&text));
        }
        let mut all = vec![(Vec::new(), false)];
        for body in &whole {
            all.push((body.clone(), true));
            all.push(([&body[..], &whole[4]].concat(), true));
            all.push(([&body[..], b"\0\0\0\0"].concat(), false));
            all.push(([&body[..], b"trailing"].concat(), false));
            let len = body.len();
            let mut cuts: Vec<usize> = (0..len.min(24)).collect();
            cuts.extend((1..8).map(|k| len * k / 8));
            cuts.push(len.saturating_sub(1));
            cuts.push(len.saturating_sub(4));
            for cut in cuts.into_iter().filter(|&c| c < len) {
                all.push((body[..cut].to_vec(), false));
            }
            for at in [
                3,
                9,
                12,
                len / 2,
                len.saturating_sub(6),
                len.saturating_sub(2),
            ] {
                if at < len {
                    let mut damaged = body.clone();
                    damaged[at] ^= 0x41;
                    all.push((damaged, false));
                }
            }
        }
        if format == Format::Gzip {
            // Many members, each empty; names as long as a header may hold them, one
            // byte longer, and one that the body ends in.
            all.push((gzip(b"", 6, false).repeat(3_000), true));
            for (name, nul) in [(65_535, true), (65_536, true), (65_535, false)] {
                let mut named = gzip(b"x", 6, false);
                named[3] |= 0x08;
                let field = std::iter::repeat_n(b'n', name).chain(nul.then_some(0));
                if nul {
                    named.splice(10..10, field);
                } else {
                    named.truncate(10);
                    named.extend(field);
                }
                all.push((named, false));
            }
        }
        all
    }

    /// The same bodies accepted, with the same bytes, and the same refused, onto an
    /// empty buffer or one with room to spare, and with the largest limit. A damaged zstd
    /// body that inflates past the limit before its damage may be refused for either:
    /// reading stopped at the limit, before the damage, where zstd inflating in place
    /// may come to the damage within the same write (gzip and zlib answer as reading
    /// did).
    #[test]
    fn inflating_in_place_answers_as_reading_the_decoders_did() {
        for format in [Format::Gzip, Format::Zlib, Format::Zstd] {
            for (i, (body, whole)) in cases(format).iter().enumerate() {
                for limit in [0, 1, 87_999, 88_000, 150_000, 1 << 20] {
                    let (want, before_error) = through_read(format, body, limit);
                    for spare in [0, 1 << 20] {
                        let got = here(format, body, limit, spare);
                        let at = format!(
                            "{format:?} case {i} ({} bytes), limit {limit}, spare {spare}",
                            body.len()
                        );
                        match (&got, &want) {
                            (Ok(got), Ok(want)) => assert!(got == want, "{at}: other bytes"),
                            (Err(a), Err(b)) if a == b => {}
                            (Err(_), Err(_)) => {
                                assert!(
                                    !whole && before_error > limit && format == Format::Zstd,
                                    "{at}: {got:?}, {want:?}"
                                )
                            }
                            _ => panic!(
                                "{at}: {:?} where reading gave {:?}",
                                got.map(|b| b.len()),
                                want.map(|b| b.len())
                            ),
                        }
                    }
                }
                let at = format!("{format:?} case {i}: the largest limit");
                assert!(
                    here(format, body, usize::MAX, 0) == here(format, body, 1 << 30, 0),
                    "{at}"
                );
            }
        }
    }

    /// Bodies larger than a step: written and charged a step at a time (a zstd frame's
    /// believed size at once), within limits that fall between steps.
    #[test]
    fn bodies_of_many_steps_are_charged_as_they_come() {
        let payload = letters(3 * STEP + 12_345);
        let bodies = [
            (Format::Gzip, gzip(&payload, 1, false)),
            (Format::Zlib, zlib(&payload, 1)),
            (Format::Zstd, zstd(&payload, true)),
            (Format::Zstd, zstd(&payload, false)),
        ];
        for (format, body) in &bodies {
            for limit in [2 * STEP + 7, payload.len(), usize::MAX] {
                for spare in [0, STEP] {
                    let got = here(*format, body, limit, spare);
                    if limit >= payload.len() {
                        assert!(got.as_deref() == Ok(&payload[..]), "{format:?}, {limit}");
                    } else {
                        assert_eq!(got, Err("too large"), "{format:?}, {limit}");
                    }
                }
            }
        }
    }

    /// A zstd body decoded in one pass is charged its bound first; once inflated, the
    /// request holds what it became, not the bound (a body flushed in small blocks is
    /// bounded at many times its size).
    #[tokio::test]
    async fn what_a_zstd_body_was_charged_ahead_and_did_not_become_is_given_back() {
        let payload = letters(300_000);
        let flushed = flushed(&payload);
        let bound = zstd::zstd_safe::decompress_bound(&flushed).unwrap() as usize;
        assert!(bound > 4 * payload.len(), "{bound}");
        assert!(bound <= one_pass_bound_max(flushed.len()), "{bound}");
        let budget = Budget::new(64 << 20);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut reservation = budget.admit(0, deadline).await.unwrap();
        let mut out = Vec::new();
        decompress_within(Format::Zstd, &flushed, 16 << 20, &mut reservation, &mut out).unwrap();
        assert_eq!(out, payload);
        assert_eq!(reservation.bytes(), bound, "the bound was charged");
        reservation.trim(0);
        assert_eq!(reservation.bytes(), BASE_RESERVATION + payload.len());
        assert_eq!(budget.in_use_bytes(), BASE_RESERVATION + payload.len());
    }

    /// A body flushed in small blocks is bounded far above what it holds: where that
    /// bound is refused (a budget near its ceiling), it is decoded in steps, charged as
    /// it comes, and accepted as before. A damaged frame decoded in one pass is refused
    /// from that pass, not decoded a second time in steps.
    #[test]
    fn zstd_bounds_are_charged_only_where_they_fit_and_damage_is_decoded_once() {
        let payload = letters(300_000);
        let flushed = flushed(&payload);
        let bound = zstd::zstd_safe::decompress_bound(&flushed).unwrap() as usize;
        assert!(bound > 8 * payload.len(), "{bound}");
        assert!(bound <= one_pass_bound_max(flushed.len()), "{bound}");
        let charge = |src: &[u8], refuse_above: usize| {
            let mut charges = Vec::new();
            let mut out = Vec::new();
            let result = decompress_charged(Format::Zstd, src, 16 << 20, &mut out, &mut |n| {
                if n > refuse_above {
                    return Err(IngestError::Overloaded);
                }
                charges.push(n);
                Ok(())
            });
            (result.map(|()| out), charges)
        };
        let (got, charges) = charge(&flushed, STEP);
        assert!(got.as_deref().is_ok_and(|b| b == &payload[..]));
        assert_eq!(charges.iter().sum::<usize>(), payload.len());
        // Taken, the bound is charged once, and nothing after it.
        let (got, charges) = charge(&flushed, usize::MAX);
        assert!(got.as_deref().is_ok_and(|b| b == &payload[..]));
        assert_eq!(charges, [bound]);
        // A checksum that does not match: refused after the one pass, with its one
        // charge. Decoded again in steps, it would have left the thread's context
        // holding its 4 MiB window, and the context would not have been kept.
        let mut damaged = streamed(&payload, 22);
        let last = damaged.len() - 1;
        damaged[last] ^= 0x41;
        let bound = zstd::zstd_safe::decompress_bound(&damaged).unwrap() as usize;
        std::thread::spawn(move || {
            let (got, charges) = charge(&damaged, usize::MAX);
            assert!(matches!(got, Err(IngestError::Decompress { .. })));
            assert_eq!(charges, [bound]);
            let kept = super::ZSTD_CONTEXT.with(|c| c.borrow().as_ref().map(|c| c.sizeof()));
            assert!(
                kept.is_some_and(|n| n <= super::ZSTD_CONTEXT_KEPT),
                "{kept:?}"
            );
        })
        .join()
        .unwrap();
    }

    /// A frame that states its size, and one that states none but whose bound is
    /// within the limit and [`one_pass_bound_max`] of the body (a Collector's, with its
    /// 4 MiB window, large or small), are decoded in one pass, with no window buffer,
    /// and the context is kept for the next body; one decoded in steps (here, a bound
    /// past that) leaves the context holding its window, and it is not kept.
    #[test]
    fn zstd_frames_decode_in_one_pass_where_they_can_and_the_context_is_kept() {
        std::thread::spawn(|| {
            let kept = || super::ZSTD_CONTEXT.with(|c| c.borrow().as_ref().map(|c| c.sizeof()));
            let body = letters(4_000_000);
            let frame = zstd(&body, true);
            assert_eq!(
                stated_size_of(Format::Zstd, &frame),
                Some(body.len()),
                "believed"
            );
            assert!(here(Format::Zstd, &frame, 8 << 20, 0).as_deref() == Ok(&body[..]));
            let size = kept().expect("kept");
            assert!(size <= super::ZSTD_CONTEXT_KEPT, "{size}");
            // As a Collector writes them: no content size, a 4 MiB window.
            let unsized_frame = streamed(&body, 22);
            assert_eq!(stated_size_of(Format::Zstd, &unsized_frame), None);
            assert!(here(Format::Zstd, &unsized_frame, 8 << 20, 0).as_deref() == Ok(&body[..]));
            let size = kept().expect("kept after a frame of no stated size");
            assert!(size <= super::ZSTD_CONTEXT_KEPT, "{size}");
            // A small one too, whose bound (a whole block) is hundreds of times its size.
            let few = letters(2_000);
            let small_frame = streamed(&few, 22);
            assert!(small_frame.len() * STATED_RATIO_MAX < 128 << 10);
            assert!(here(Format::Zstd, &small_frame, 8 << 20, 0).as_deref() == Ok(&few[..]));
            let size = kept().expect("kept after a small frame of no stated size");
            assert!(size <= super::ZSTD_CONTEXT_KEPT, "{size}");
            // A window larger than a frame decoded in steps may ask for under this limit
            // is no cost in one pass, which has none: accepted, where reading refused it.
            let small = letters(100_000);
            let wide = streamed(&small, 27);
            assert!(zstd_window_log_max(1 << 20) < 27);
            assert_eq!(through_read(Format::Zstd, &wide, 1 << 20).0, Err("invalid"));
            assert!(here(Format::Zstd, &wide, 1 << 20, 0).as_deref() == Ok(&small[..]));
            // Past its bound's limit, the same frame is refused as too large, as ever.
            assert_eq!(
                here(Format::Zstd, &unsized_frame, body.len() - 1, 0),
                Err("too large")
            );
            let zeros = vec![0; 4_000_000];
            let bomb = zstd(&zeros, false);
            assert!(
                one_pass_bound_max(bomb.len()) < zeros.len(),
                "{}",
                bomb.len()
            );
            assert!(here(Format::Zstd, &bomb, 8 << 20, 0).as_deref() == Ok(&zeros[..]));
            assert_eq!(kept(), None, "a context holding a window is dropped");
        })
        .join()
        .unwrap();
    }
}
