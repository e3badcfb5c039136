//! An HPACK decoder (RFC 7541) for the authority shim: it mirrors the
//! client's dynamic table so every header of every block is known, and
//! refuses malformed input instead of guessing.
//!
//! Only decoding lives here; the shim re-encodes with literals that never
//! touch the receiver's table. Huffman strings are decoded with the
//! canonical-code method (one comparison per bit, tables built once).

mod tables;

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field.
    #[error("header block truncated")]
    Truncated,
    /// An integer is too large.
    #[error("integer overflow")]
    Overflow,
    /// An index names no table entry.
    #[error("index {0} out of range")]
    BadIndex(usize),
    /// A dynamic table size update above the allowed size, or after a field.
    #[error("invalid dynamic table size update")]
    BadSizeUpdate,
    /// A Huffman string is malformed (EOS inside, bad padding).
    #[error("malformed Huffman string")]
    BadHuffman,
}

/// Largest integer accepted (well above any legal length or index).
const MAX_INT: usize = 1 << 24;

/// Decodes an integer with an `n`-bit prefix at `buf[*pos]`.
fn integer(buf: &[u8], pos: &mut usize, n: u8) -> Result<usize, HpackError> {
    let mask = (1usize << n) - 1;
    let first = *buf.get(*pos).ok_or(HpackError::Truncated)? as usize & mask;
    *pos += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0u32;
    loop {
        // Continuation bytes carry 7 bits each: past the bits MAX_INT
        // needs, more of them (zero-valued ones, `0x80 0x80 ...`, leave the
        // value small) could only shift past the width of the integer.
        if shift > MAX_INT.ilog2() {
            return Err(HpackError::Overflow);
        }
        let b = *buf.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += ((b & 0x7f) as usize) << shift;
        if value > MAX_INT {
            return Err(HpackError::Overflow);
        }
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// Canonical Huffman decoding tables, derived from the RFC's code table.
struct Canonical {
    /// Symbols ordered by (code length, symbol).
    sorted: Vec<u16>,
    /// Per length: first code, count, offset into `sorted`.
    first: [u32; 31],
    count: [u32; 31],
    offset: [u32; 31],
}

fn canonical() -> &'static Canonical {
    static C: OnceLock<Canonical> = OnceLock::new();
    C.get_or_init(|| {
        let mut sorted: Vec<u16> = (0..257u16).collect();
        sorted.sort_by_key(|&s| (tables::HUFFMAN[s as usize].1, s));
        let mut c = Canonical {
            sorted,
            first: [0; 31],
            count: [0; 31],
            offset: [0; 31],
        };
        for (i, &s) in c.sorted.iter().enumerate() {
            let (code, len) = tables::HUFFMAN[s as usize];
            let l = len as usize;
            if c.count[l] == 0 {
                c.first[l] = code;
                c.offset[l] = i as u32;
            }
            c.count[l] += 1;
        }
        c
    })
}

/// Decodes a Huffman-coded string into `out`.
fn huffman(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = canonical();
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in input {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return Err(HpackError::BadHuffman);
            }
            let idx = code.wrapping_sub(t.first[len]);
            if t.count[len] > 0 && code >= t.first[len] && idx < t.count[len] {
                let sym = t.sorted[(t.offset[len] + idx) as usize];
                if sym == 256 {
                    return Err(HpackError::BadHuffman);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

/// Decodes a string literal at `buf[*pos]` into `out`.
fn string(buf: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huff = buf.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(buf, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Overflow)?;
    let raw = buf.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    out.clear();
    if huff {
        huffman(raw, out)
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// A decoder that follows one peer's dynamic table.
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    allowed: usize,
}

impl Decoder {
    /// A decoder whose peer may use a dynamic table of up to `allowed`
    /// bytes (the SETTINGS_HEADER_TABLE_SIZE the receiver advertised).
    pub fn new(allowed: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: allowed,
            allowed,
        }
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let entry = name.len() + value.len() + 32;
        if entry > self.max_size {
            // RFC 7541 §4.4: a larger entry empties the table.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.size += entry;
        self.table.push_front((name, value));
        self.evict();
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (n, v) = tables::STATIC[index - 1];
                Ok((n, v))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// Decodes one complete header block, calling `field` for each header.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut name = Vec::new();
        let mut value = Vec::new();
        let mut fields_seen = false;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let index = integer(block, &mut pos, 7)?;
                let (n, v) = self.entry(index)?;
                field(n, v);
                fields_seen = true;
            } else if b & 0xe0 == 0x20 {
                let size = integer(block, &mut pos, 5)?;
                if fields_seen || size > self.allowed {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max_size = size;
                self.evict();
            } else {
                let (prefix, index_it) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = integer(block, &mut pos, prefix)?;
                if index == 0 {
                    string(block, &mut pos, &mut name)?;
                } else {
                    let (n, _) = self.entry(index)?;
                    name.clear();
                    name.extend_from_slice(n);
                }
                string(block, &mut pos, &mut value)?;
                field(&name, &value);
                fields_seen = true;
                if index_it {
                    self.insert(name.clone(), value.clone());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    #[test]
    fn integers_with_endless_continuation_bytes_are_refused() {
        // A 7-bit prefix full, then zero-valued continuation bytes: the
        // value stays small while the shift would pass 64 bits.
        let mut block = vec![0x7f];
        block.extend(std::iter::repeat_n(0x80, 64));
        block.push(0x00);
        let mut pos = 0;
        assert!(matches!(
            integer(&block, &mut pos, 7),
            Err(HpackError::Overflow)
        ));
        // The largest accepted value still decodes: 127 + 0xff_ff81 = 1 << 24.
        let mut pos = 0;
        assert_eq!(
            integer(&[0x7f, 0x81, 0xff, 0xff, 0x07], &mut pos, 7),
            Ok(MAX_INT)
        );
        let mut d = Decoder::new(4096);
        assert!(decode_all(&mut d, &block).is_err());
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// RFC 7541 C.4: requests with Huffman coding, sharing a table.
    #[test]
    fn rfc_7541_c4_huffman_requests() {
        let mut d = Decoder::new(4096);
        let r1 = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            r1,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let r2 = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            r2,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        let r3 = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        )
        .unwrap();
        assert_eq!(
            r3,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    /// RFC 7541 C.5: responses with a 256-byte table and evictions.
    #[test]
    fn rfc_7541_c5_evictions() {
        let mut d = Decoder::new(256);
        decode_all(
            &mut d,
            &hex(
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            ),
        )
        .unwrap();
        assert_eq!(d.size, 222);
        let r2 = decode_all(&mut d, &hex("4803 3330 37c1 c0bf")).unwrap();
        assert_eq!(r2[0], (b":status".to_vec(), b"307".to_vec()));
        assert_eq!(d.size, 222);
        assert_eq!(d.table.len(), 4);
    }

    #[test]
    fn refuses_malformed_blocks() {
        let mut d = Decoder::new(4096);
        for bad in [
            &[0x80][..],                     // index 0
            &[0xff, 0xff, 0xff, 0xff, 0x7f], // huge index
            &[0xbe],                         // empty dynamic table
            &[0x82, 0x3f, 0xe1, 0x1f],       // size update after a field
            &[0x3f, 0xe2, 0x1f],             // size update above allowed
            &[0x00, 0x05, b'a'],             // truncated name
            &[0x00, 0x81, 0xff, 0x00],       // Huffman: bad padding / EOS
        ] {
            assert!(decode_all(&mut d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_code_is_canonical() {
        // Within each length, codes are consecutive from `first`: checks the
        // property the decoder relies on, over the RFC's table.
        let t = canonical();
        for (i, &s) in t.sorted.iter().enumerate() {
            let (code, len) = tables::HUFFMAN[s as usize];
            let l = len as usize;
            assert_eq!(code, t.first[l] + (i as u32 - t.offset[l]), "symbol {s}");
        }
    }

    fn huffman_encode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in data {
            let (code, len) = tables::HUFFMAN[b as usize];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
        }
        out
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn huffman_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200)) {
                let mut out = Vec::new();
                huffman(&huffman_encode(&data), &mut out).unwrap();
                prop_assert_eq!(out, data);
            }

            /// Blocks of literals (Huffman or not, indexed or not) decode as
            /// an independent decoder decodes them; garbage never panics.
            #[test]
            fn agrees_with_an_independent_decoder(
                fields in proptest::collection::vec(
                    ("[a-z:][a-z0-9-]{0,15}", proptest::collection::vec(any::<u8>(), 0..40), 0u8..3, any::<bool>()),
                    0..12,
                ),
                garbage in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut block = Vec::new();
                for (name, value, kind, huff) in &fields {
                    block.push(match kind { 0 => 0x40, 1 => 0x00, _ => 0x10 });
                    for s in [name.as_bytes(), value.as_slice()] {
                        let (bytes, flag) = if *huff { (huffman_encode(s), 0x80) } else { (s.to_vec(), 0) };
                        let mut len = Vec::new();
                        // 7-bit prefix integer.
                        if bytes.len() < 127 { len.push(flag | bytes.len() as u8); } else {
                            len.push(flag | 127);
                            let mut v = bytes.len() - 127;
                            while v >= 128 { len.push((v % 128) as u8 | 0x80); v /= 128; }
                            len.push(v as u8);
                        }
                        block.extend(len);
                        block.extend(bytes);
                    }
                }
                let mut ours = Decoder::new(4096);
                let mine = decode_all(&mut ours, &block).unwrap();
                let theirs = loona_hpack::Decoder::new().decode(&block).unwrap();
                prop_assert_eq!(mine, theirs);
                let _ = decode_all(&mut Decoder::new(4096), &garbage);
            }
        }
    }
}
