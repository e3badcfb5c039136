//! Writing HTTP/2 frames (RFC 9113 §4) and HPACK integers (RFC 7541
//! §5.1): what the `:authority` shim sends on when it re-encodes a header
//! block.

use bytes::{BufMut, BytesMut};

/// Frame types.
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const CONTINUATION: u8 = 0x9;
/// Frame flags.
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY: u8 = 0x20;
/// Largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE
/// initial value); re-encoded blocks are split at this size.
pub(crate) const MIN_MAX_FRAME: usize = 16_384;

/// Appends an HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
pub(crate) fn put_int(out: &mut BytesMut, first: u8, prefix: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    value -= max;
    while value >= 128 {
        out.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.put_u8(value as u8);
}

/// Writes a header block as one HEADERS frame and as many CONTINUATION
/// frames as needed to keep every payload within [`MIN_MAX_FRAME`].
pub(crate) fn emit_block(
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    bytes: &[u8],
    out: &mut BytesMut,
) {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first_room = MIN_MAX_FRAME - prio_len;
    let (first, mut rest) = bytes.split_at(bytes.len().min(first_room));
    let mut flags = 0u8;
    if end_stream {
        flags |= END_STREAM;
    }
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    put_frame_header(out, prio_len + first.len(), HEADERS, flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MIN_MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// Appends a frame header (RFC 9113 §4.1).
pub(crate) fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & 0x7fff_ffff);
}
