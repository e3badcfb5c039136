//! The HTTP/2 authority shim sees every byte a local process sends to the
//! agent: never panics, never loops, and however the input is split into
//! reads the output is the same.
#![no_main]
use bytes::BytesMut;
use lanyard_uds::authority::Rewriter;
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn run(input: &[u8], step: usize) -> Result<Vec<u8>, ()> {
    let mut rw = Rewriter::new();
    let mut inbuf = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in input.chunks(step.max(1)) {
        inbuf.extend_from_slice(piece);
        rw.process(&mut inbuf, &mut out).map_err(|_| ())?;
    }
    Ok(out.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    // Mostly valid HTTP/2: the preface, then fuzzed frames.
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(body);
    let whole = run(&input, input.len());
    let split = run(&input, usize::from(step % 17) + 1);
    assert_eq!(whole, split);
    let _ = run(body, 7);
});
