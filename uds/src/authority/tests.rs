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
