//! Accepting any `:authority` on a unix socket.
//!
//! Over a unix socket the HTTP/2 `:authority` carries no information, and
//! clients fill it in differently: grpc-go and tonic send `localhost`, the
//! gRPC C-core (Python, C++, Ruby, PHP, C#) sends the percent-encoded socket
//! path (`tmp%2Fx%2Fagent.sock`), grpc-java the raw path
//! (`/run/x/agent.sock`), some clients none at all. The HTTP/2 server under
//! tonic (hyper/h2) refuses any value that is not a valid URI authority with
//! `RST_STREAM PROTOCOL_ERROR` before a handler runs, so every non-Go,
//! non-Rust SPIFFE client would be locked out.
//!
//! [`crate::shim::AuthorityShim`] sits between the accepted socket and the HTTP/2 server
//! and rewrites, on the client-to-server direction only, a `:authority` that
//! is not a valid URI authority to `localhost`. It is applied to unix
//! listeners only; TCP/TLS listeners keep h2's strict parsing.
//!
//! How: it follows the HTTP/2 frame layer (RFC 9113 §4) of the bytes the
//! client sends. Every frame other than HEADERS/CONTINUATION passes through
//! untouched, without buffering (DATA is streamed as it arrives). Header
//! blocks are collected (HEADERS + CONTINUATION, padding removed) and
//! decoded with an HPACK decoder that mirrors the client's dynamic table, so
//! the shim always knows every header the server will see.
//! - While every authority on the connection is acceptable, each block is
//!   forwarded byte for byte (the server's HPACK table stays the client's).
//! - From the first block that needs a rewrite on, every block of the
//!   connection is re-encoded with literal representations that never touch
//!   the dynamic table (RFC 7541 §6.2.2), so the server's decoder state can
//!   never diverge from what the shim sends.
//!
//! Limits: a header block may not exceed [`MAX_BLOCK`] encoded or
//! [`MAX_DECODED`] decoded bytes (an HPACK bomb or a CONTINUATION flood ends
//! the connection with an I/O error). A stream whose first bytes are not the
//! HTTP/2 client preface is passed through unchanged, so the server answers
//! it as it would without the shim.
//!
//! Why not the alternatives: a patched h2 would apply to every listener of
//! the process (the TCP/TLS port included) and would have to be rebased on
//! each h2 release; a different HTTP/2 server stack would duplicate tonic's
//! whole transport. The shim costs one HPACK decode per request header block
//! (a few microseconds) and keeps both listeners on the stock stack.

use bytes::{Buf, BufMut, BytesMut};

use crate::frames::{
    CONTINUATION, END_HEADERS, END_STREAM, HEADERS, PADDED, PRIORITY, emit_block, put_int,
};
use std::io;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER: usize = 9;
/// The dynamic table size the server allows (SETTINGS_HEADER_TABLE_SIZE
/// default; tonic does not change it).
const TABLE_SIZE: usize = 4_096;
/// Largest encoded header block (all frames of it) accepted.
pub const MAX_BLOCK: usize = 64 * 1024;
/// Largest decoded header list accepted (name + value + 32 per field, as
/// RFC 9113 counts it).
pub const MAX_DECODED: usize = 64 * 1024;
/// The authority sent on when the client's is not a valid URI authority.
const REPLACEMENT: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the client preface; `usize` bytes of it matched so far.
    Preface(usize),
    /// Following frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: everything passes through.
    Transparent,
}

/// A header block being collected across HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
}

/// The rewriting state of one connection, independent of I/O (so it can be
/// unit-tested and fuzzed on byte strings).
pub struct Rewriter {
    phase: Phase,
    /// Payload bytes of the current pass-through frame still to forward.
    passthrough: usize,
    block: Option<Block>,
    decoder: crate::hpack::Decoder,
    reencode: bool,
    rewritten: u64,
    /// Frames and header blocks completed (the preface counts as one).
    progress: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("phase", &self.phase)
            .field("reencode", &self.reencode)
            .field("rewritten", &self.rewritten)
            .finish()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Whether h2 would accept `value` as `:authority`.
fn acceptable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

impl Rewriter {
    /// A rewriter for a fresh connection.
    pub fn new() -> Self {
        let decoder = crate::hpack::Decoder::new(TABLE_SIZE);
        Self {
            phase: Phase::Preface(0),
            passthrough: 0,
            block: None,
            decoder,
            reencode: false,
            rewritten: 0,
            progress: 0,
        }
    }

    /// How many header blocks had their authority replaced.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// How many raw bytes may be handed on without looking at them: the
    /// rest of a pass-through frame, or everything in transparent mode.
    pub fn direct_budget(&self) -> usize {
        match self.phase {
            Phase::Transparent => usize::MAX,
            Phase::Frames if self.block.is_none() => self.passthrough,
            _ => 0,
        }
    }

    /// Whether the client is in the middle of its preface, a frame header
    /// or a header block (what a header-read deadline covers).
    pub fn mid_header(&self, input_pending: bool) -> bool {
        match self.phase {
            Phase::Preface(_) => true,
            Phase::Transparent => false,
            Phase::Frames => input_pending || self.block.is_some(),
        }
    }

    /// Whether the client preface is still being read.
    pub fn in_preface(&self) -> bool {
        matches!(self.phase, Phase::Preface(_))
    }

    /// Frames and header blocks completed so far: a header-read deadline
    /// starts again only when this moves (CONTINUATION frames inside a
    /// block do not move it).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Bytes the rewriter holds (a header block's fragments so far).
    pub fn held(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.fragment.capacity())
    }

    /// Records that `n` bytes were handed on directly.
    pub fn consumed_directly(&mut self, n: usize) {
        if self.phase == Phase::Frames {
            self.passthrough = self.passthrough.saturating_sub(n);
        }
    }

    /// Moves what can be processed from `input` to `output`. Incomplete
    /// frames stay in `input` until more bytes arrive.
    pub fn process(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<()> {
        loop {
            match self.phase {
                Phase::Transparent => {
                    output.extend_from_slice(input);
                    input.clear();
                    return Ok(());
                }
                Phase::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        self.phase = Phase::Transparent;
                        continue;
                    }
                    output.extend_from_slice(&input[..n]);
                    input.advance(n);
                    if seen + n == PREFACE.len() {
                        self.phase = Phase::Frames;
                        self.progress += 1;
                    } else {
                        self.phase = Phase::Preface(seen + n);
                        return Ok(());
                    }
                }
                Phase::Frames => {
                    if self.passthrough > 0 {
                        let n = self.passthrough.min(input.len());
                        output.extend_from_slice(&input[..n]);
                        input.advance(n);
                        self.passthrough -= n;
                        if self.passthrough > 0 {
                            return Ok(());
                        }
                    }
                    if input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
                    let kind = input[3];
                    let is_block_frame = kind == HEADERS || (kind == CONTINUATION);
                    if !is_block_frame {
                        if self.block.is_some() {
                            // RFC 9113 §6.10: nothing may interleave a block.
                            return Err(invalid("HTTP/2 frame interleaved with a header block"));
                        }
                        output.extend_from_slice(&input[..FRAME_HEADER]);
                        input.advance(FRAME_HEADER);
                        self.passthrough = len;
                        self.progress += 1;
                        continue;
                    }
                    if len > MAX_BLOCK {
                        return Err(invalid("HTTP/2 header frame too large"));
                    }
                    if input.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let flags = input[4];
                    let stream =
                        u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    input.advance(FRAME_HEADER);
                    let payload = input.split_to(len);
                    if kind == HEADERS {
                        self.headers(flags, stream, payload, output)?;
                    } else {
                        self.continuation(flags, stream, payload, output)?;
                    }
                }
            }
        }
    }

    fn headers(
        &mut self,
        flags: u8,
        stream: u32,
        payload: BytesMut,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        if self.block.is_some() {
            return Err(invalid("HTTP/2 HEADERS inside another header block"));
        }
        let mut body: &[u8] = &payload;
        let mut pad = 0usize;
        if flags & PADDED != 0 {
            let (&p, rest) = body
                .split_first()
                .ok_or_else(|| invalid("HTTP/2 padded HEADERS without a pad length"))?;
            pad = p as usize;
            body = rest;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            if body.len() < 5 {
                return Err(invalid("HTTP/2 HEADERS priority truncated"));
            }
            let mut p = [0u8; 5];
            p.copy_from_slice(&body[..5]);
            priority = Some(p);
            body = &body[5..];
        }
        if pad > body.len() {
            return Err(invalid("HTTP/2 HEADERS padding exceeds the frame"));
        }
        let fragment = BytesMut::from(&body[..body.len() - pad]);
        self.block = Some(Block {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment,
        });
        if flags & END_HEADERS != 0 {
            self.finish(output)?;
        }
        Ok(())
    }

    fn continuation(
        &mut self,
        flags: u8,
        stream: u32,
        payload: BytesMut,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        let block = self
            .block
            .as_mut()
            .ok_or_else(|| invalid("HTTP/2 CONTINUATION without a header block"))?;
        if block.stream != stream {
            return Err(invalid("HTTP/2 CONTINUATION on another stream"));
        }
        if block.fragment.len() + payload.len() > MAX_BLOCK {
            return Err(invalid("HTTP/2 header block too large"));
        }
        block.fragment.extend_from_slice(&payload);
        if flags & END_HEADERS != 0 {
            self.finish(output)?;
        }
        Ok(())
    }

    /// Decodes the collected block and forwards it, as it came or re-encoded.
    fn finish(&mut self, output: &mut BytesMut) -> io::Result<()> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        self.progress += 1;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        let mut too_big = false;
        let mut bad_authority = false;
        self.decoder
            .decode(&block.fragment, |name, value| {
                decoded += name.len() + value.len() + 32;
                if decoded > MAX_DECODED {
                    too_big = true;
                    return;
                }
                if name == b":authority" && !acceptable_authority(value) {
                    bad_authority = true;
                }
                fields.push((name.to_vec(), value.to_vec()));
            })
            .map_err(|_| invalid("HTTP/2 header block does not decode (HPACK)"))?;
        if too_big {
            return Err(invalid("HTTP/2 header list too large"));
        }
        if bad_authority {
            self.reencode = true;
            self.rewritten += 1;
        }
        let encoded;
        let bytes: &[u8] = if self.reencode {
            encoded = encode_literals(&fields);
            &encoded
        } else {
            &block.fragment
        };
        emit_block(
            block.stream,
            block.end_stream,
            block.priority,
            bytes,
            output,
        );
        Ok(())
    }
}

/// Encodes fields as "literal without indexing, new name", no Huffman: the
/// receiver's dynamic table is never touched. Invalid authorities become
/// [`REPLACEMENT`].
fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> BytesMut {
    let mut out = BytesMut::with_capacity(fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum());
    for (name, value) in fields {
        let value: &[u8] = if name == b":authority" && !acceptable_authority(value) {
            REPLACEMENT
        } else {
            value
        };
        out.put_u8(0x00);
        put_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        put_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

#[cfg(test)]
mod tests;
