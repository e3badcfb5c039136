//! The few DER encodings Lanyard writes and reads by hand (the task claims
//! extension, certificate re-signing): definite-length
//! TLVs written and read strictly (minimal lengths, no trailing bytes).

pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const BIT_STRING: u8 = 0x03;

/// Appends one TLV.
pub(crate) fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// One TLV, as a new buffer.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    write(&mut out, tag, content);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes: leading zeros
/// dropped, one 0x00 put back when the high bit is set (DER's minimal
/// two's complement).
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len().saturating_sub(1));
    let trimmed = &magnitude[first..];
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    tlv(INTEGER, &body)
}

/// A cursor over DER bytes.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next tag without consuming it.
    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV with `tag` and returns its content.
    pub(crate) fn read(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let (&t, rest) = self.rest.split_first().ok_or("truncated")?;
        if t != tag {
            return Err(format!("expected tag {tag:#04x}, found {t:#04x}"));
        }
        let (&first, mut rest) = rest.split_first().ok_or("truncated length")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("bad length".into());
            }
            let (len_bytes, tail) = rest.split_at(n);
            rest = tail;
            if len_bytes[0] == 0 {
                return Err("non-minimal length".into());
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 {
                return Err("non-minimal length".into());
            }
            len
        };
        if rest.len() < len {
            return Err("truncated content".into());
        }
        let (content, tail) = rest.split_at(len);
        self.rest = tail;
        Ok(content)
    }

    /// Reads one TLV with `tag` and returns it whole (header included).
    pub(crate) fn read_raw(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let start = self.rest;
        let content_len = self.read(tag)?.len();
        let consumed = start.len() - self.rest.len();
        debug_assert!(consumed >= content_len);
        Ok(&start[..consumed])
    }

    /// Reads a UTF8String (or an implicitly tagged one).
    pub(crate) fn read_utf8(&mut self, tag: u8) -> Result<&'a str, String> {
        std::str::from_utf8(self.read(tag)?).map_err(|_| "invalid UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_integers_are_minimal() {
        assert_eq!(unsigned_integer(&[0, 0, 1]), vec![INTEGER, 1, 1]);
        assert_eq!(unsigned_integer(&[0x80]), vec![INTEGER, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0]), vec![INTEGER, 1, 0]);
        assert_eq!(unsigned_integer(&[]), vec![INTEGER, 1, 0]);
        assert_eq!(tlv(SEQUENCE, &[0u8; 200])[..3], [SEQUENCE, 0x81, 200]);
    }

    #[test]
    fn round_trip_and_strictness() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let mut out = Vec::new();
            write(&mut out, OCTET_STRING, &content);
            let mut r = Reader::new(&out);
            assert_eq!(r.read(OCTET_STRING).unwrap(), content.as_slice());
            assert!(r.is_empty());
        }
        assert!(
            Reader::new(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5])
                .read(0x04)
                .is_err()
        );
        assert!(Reader::new(&[0x04, 0x05, 1]).read(0x04).is_err());
        assert!(Reader::new(&[0x0c, 0x01, 0xff]).read_utf8(0x0c).is_err());
        assert!(Reader::new(&[0x02, 0x01, 0x01]).read(0x04).is_err());
    }
}
