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
mod tests {
    use super::*;
    use crate::frames::{MIN_MAX_FRAME, put_frame_header};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn block_with(authority: &[u8]) -> Vec<u8> {
        let fields = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
        ];
        // Encode without the rewrite (the rewrite only touches bad values,
        // and this helper must be able to produce them).
        let mut out = BytesMut::new();
        for (n, v) in &fields {
            out.put_u8(0x00);
            put_int(&mut out, 0, 7, n.len());
            out.extend_from_slice(n);
            put_int(&mut out, 0, 7, v.len());
            out.extend_from_slice(v);
        }
        out.to_vec()
    }

    /// Runs `input` through a rewriter fed in `step`-byte pieces.
    fn run(input: &[u8], step: usize) -> io::Result<(Vec<u8>, Rewriter)> {
        let mut rw = Rewriter::new();
        let mut inbuf = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(step.max(1)) {
            inbuf.extend_from_slice(piece);
            rw.process(&mut inbuf, &mut out)?;
        }
        Ok((out.to_vec(), rw))
    }

    fn authorities(stream: &[u8]) -> Vec<Vec<u8>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut rest = &stream[PREFACE.len()..];
        let mut found = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let kind = rest[3];
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS {
                for (n, v) in dec.decode(payload).unwrap() {
                    if n == b":authority" {
                        found.push(v);
                    }
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        found
    }

    #[test]
    fn rewrites_path_authorities_and_keeps_valid_ones() {
        for (auth, want) in [
            (&b"tmp%2Fx%2Fagent.sock"[..], &b"localhost"[..]),
            (b"/run/x/agent.sock", b"localhost"),
            (b"localhost", b"localhost"),
            (b"example.org:443", b"example.org:443"),
        ] {
            let mut input = PREFACE.to_vec();
            input.extend(frame(0x4, 0, 0, &[]));
            input.extend(frame(HEADERS, END_HEADERS, 1, &block_with(auth)));
            input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
            for step in [1, 3, 7, 1000] {
                let (out, _) = run(&input, step).unwrap();
                assert_eq!(
                    authorities(&out),
                    vec![want.to_vec()],
                    "{auth:?} step {step}"
                );
                assert!(out.ends_with(b"\0\0\0\0\0"));
            }
        }
    }

    #[test]
    fn valid_blocks_pass_through_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block_with(b"localhost")));
        let (out, rw) = run(&input, 5).unwrap();
        assert_eq!(out, input);
        assert_eq!(rw.rewritten(), 0);
    }

    #[test]
    fn joins_continuations_and_strips_padding() {
        let block = block_with(b"/run/agent.sock");
        let (a, b) = block.split_at(10);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_STREAM, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        let (out, rw) = run(&input, 2).unwrap();
        assert_eq!(rw.rewritten(), 1);
        assert_eq!(authorities(&out), vec![b"localhost".to_vec()]);
        assert_eq!(out[PREFACE.len() + 4], END_STREAM | END_HEADERS);
    }

    #[test]
    fn refuses_interleaving_floods_and_bombs() {
        let block = block_with(b"x");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert!(run(&input, 100).is_err());

        // CONTINUATION flood: the block grows past the limit.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        for _ in 0..(MAX_BLOCK / 1000 + 2) {
            input.extend(frame(CONTINUATION, 0, 1, &[0x82; 1000]));
        }
        assert!(run(&input, 4096).is_err());

        // HPACK bomb: one big literal indexed into the table, then
        // referenced thousands of times.
        let mut bomb = BytesMut::new();
        bomb.put_u8(0x40);
        put_int(&mut bomb, 0, 7, 1);
        bomb.extend_from_slice(b"a");
        put_int(&mut bomb, 0, 7, 3000);
        bomb.extend_from_slice(&[b'v'; 3000]);
        bomb.extend_from_slice(&[0xbe; 2000]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &bomb));
        assert!(run(&input, 4096).is_err());

        // Garbage HPACK.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        assert!(run(&input, 4096).is_err());
    }

    #[test]
    fn non_http2_bytes_pass_through() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, _) = run(input, 4).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let big = vec![b'a'; 40_000];
        let fields = vec![
            (b":authority".to_vec(), b"/a/b".to_vec()),
            (b"x-big".to_vec(), big),
        ];
        let enc = encode_literals(&fields);
        let block = Block {
            stream: 1,
            end_stream: false,
            priority: Some([0, 0, 0, 0, 16]),
            fragment: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        emit_block(
            block.stream,
            block.end_stream,
            block.priority,
            &enc,
            &mut out,
        );
        let mut rest = &out[..];
        let mut joined = Vec::new();
        let mut frames = 0;
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            assert!(len <= MIN_MAX_FRAME);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            joined.extend_from_slice(if frames == 0 { &payload[5..] } else { payload });
            rest = &rest[FRAME_HEADER + len..];
            frames += 1;
        }
        assert_eq!(frames, 3);
        let dec = loona_hpack::Decoder::new().decode(&joined).unwrap();
        assert_eq!(dec[0].1, b"localhost");
        assert_eq!(dec[1].1.len(), 40_000);
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn decode_all(stream: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut dec = loona_hpack::Decoder::new();
            let mut rest = &stream[PREFACE.len()..];
            let mut fields = Vec::new();
            let mut block = Vec::new();
            while rest.len() >= FRAME_HEADER {
                let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                let (kind, flags) = (rest[3], rest[4]);
                let mut payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
                if kind == HEADERS && flags & PRIORITY != 0 {
                    payload = &payload[5..];
                }
                if kind == HEADERS || kind == CONTINUATION {
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        fields.extend(dec.decode(&block).unwrap());
                        block.clear();
                    }
                }
                rest = &rest[FRAME_HEADER + len..];
            }
            fields
        }

        proptest! {
            /// Any header list with any authority: the output decodes, every
            /// field but a bad authority is unchanged, the authority is one
            /// h2 accepts, and how the bytes are split into reads does not
            /// matter.
            #[test]
            fn any_authority_comes_out_acceptable(
                authority in proptest::collection::vec(0x21u8..0x7f, 1..200),
                extra in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,100}"), 0..20),
                blocks in 1usize..4,
                step in 1usize..64,
            ) {
                let mut input = PREFACE.to_vec();
                let mut want = Vec::new();
                for b in 0..blocks {
                    let mut fields = vec![
                        (b":method".to_vec(), b"POST".to_vec()),
                        (b":path".to_vec(), b"/x".to_vec()),
                        (b":authority".to_vec(), authority.clone()),
                    ];
                    for (n, v) in &extra {
                        fields.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
                    }
                    let mut raw = BytesMut::new();
                    for (n, v) in &fields {
                        raw.put_u8(0x40); // with incremental indexing
                        put_int(&mut raw, 0, 7, n.len());
                        raw.extend_from_slice(n);
                        put_int(&mut raw, 0, 7, v.len());
                        raw.extend_from_slice(v);
                    }
                    let stream = 1 + 2 * b as u32;
                    input.extend(frame(HEADERS, END_HEADERS, stream, &raw));
                    for (n, v) in fields {
                        let v = if n == b":authority" && !acceptable_authority(&v) {
                            REPLACEMENT.to_vec()
                        } else {
                            v
                        };
                        want.push((n, v));
                    }
                }
                let (whole, _) = run(&input, input.len()).unwrap();
                let (split, _) = run(&input, step).unwrap();
                prop_assert_eq!(&whole, &split);
                prop_assert_eq!(decode_all(&whole), want);
            }
        }
    }
}
