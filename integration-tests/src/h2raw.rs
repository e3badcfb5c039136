//! A hand-written HTTP/2 gRPC client for one call over a unix socket, so a
//! test can send exactly the `:authority` (or none) that other gRPC stacks
//! send, which no Rust HTTP/2 client will.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What came back for the call.
#[derive(Debug, Default)]
pub struct Reply {
    /// gRPC messages received (without their 5-byte prefix).
    pub messages: Vec<Vec<u8>>,
    /// `grpc-status` from the headers or trailers, when one arrived.
    pub grpc_status: Option<String>,
    /// `grpc-message`, when one arrived.
    pub grpc_message: Option<String>,
    /// The HTTP/2 error code when the server reset the stream.
    pub reset: Option<u32>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // Literal without indexing, new name; lengths below 127 only.
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// Decodes the percent-encoding gRPC applies to `grpc-message`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Calls `path` with `body` (a serialized request) on the socket, sending
/// `authority` as given (`None`: no `:authority` at all), and collects the
/// reply until the stream ends or `max_messages` messages arrived.
pub async fn call(
    socket: &Path,
    authority: Option<&[u8]>,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    max_messages: usize,
) -> std::io::Result<Reply> {
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut s = UnixStream::connect(socket).await?;
        send_request(&mut s, authority, path, extra, body).await?;
        read_reply(&mut s, max_messages).await
    })
    .await
    .map_err(|_| std::io::Error::other("HTTP/2 call timed out"))?
}

/// Writes the connection preface and one request on stream 1.
pub async fn send_request(
    s: &mut UnixStream,
    authority: Option<&[u8]>,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut block = Vec::new();
    literal(&mut block, b":method", b"POST");
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":path", path.as_bytes());
    if let Some(a) = authority {
        literal(&mut block, b":authority", a);
    }
    literal(&mut block, b"content-type", b"application/grpc");
    literal(&mut block, b"te", b"trailers");
    for (k, v) in extra {
        literal(&mut block, k.as_bytes(), v.as_bytes());
    }
    let mut msg = vec![0u8];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
    msg.extend_from_slice(body);
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &msg));
    s.write_all(&out).await
}

/// Reads the reply to stream 1 until it ends or `max_messages` arrived.
pub async fn read_reply(s: &mut UnixStream, max_messages: usize) -> std::io::Result<Reply> {
    let mut dec = loona_hpack::Decoder::new();
    let mut reply = Reply::default();
    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return Ok(reply);
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await?;
        match kind {
            0x4 if flags & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).await?,
            0x1 if stream == 1 => {
                let headers = dec
                    .decode(&payload)
                    .map_err(|e| std::io::Error::other(format!("HPACK: {e:?}")))?;
                for (n, v) in headers {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    match n.as_slice() {
                        b"grpc-status" => reply.grpc_status = Some(v),
                        b"grpc-message" => reply.grpc_message = Some(percent_decode(&v)),
                        _ => {}
                    }
                }
                if flags & 0x1 != 0 {
                    return Ok(reply);
                }
            }
            0x0 if stream == 1 => {
                data.extend_from_slice(&payload);
                while data.len() >= 5 {
                    let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                    if data.len() < 5 + n {
                        break;
                    }
                    reply.messages.push(data[5..5 + n].to_vec());
                    data.drain(..5 + n);
                }
                if reply.messages.len() >= max_messages || flags & 0x1 != 0 {
                    return Ok(reply);
                }
                // Keep the connection's and stream's windows open.
                if len > 0 {
                    let inc = (len as u32).to_be_bytes();
                    s.write_all(&frame(0x8, 0, 0, &inc)).await?;
                    s.write_all(&frame(0x8, 0, 1, &inc)).await?;
                }
            }
            0x3 if stream == 1 && payload.len() == 4 => {
                reply.reset = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
                return Ok(reply);
            }
            0x7 => return Ok(reply),
            _ => {}
        }
    }
}
