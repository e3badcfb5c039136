//! RFC 8785 (JSON Canonicalization Scheme) serialisation of a JSON value:
//! no whitespace, object members sorted by the UTF-16 code units of their
//! names, strings escaped as ECMAScript's `JSON.stringify` does, numbers in
//! ECMAScript form. Task grants hold only integers, so non-integral numbers
//! (whose ECMAScript form needs a shortest-round-trip printer) are refused
//! rather than printed in a form another implementation might not produce.

use serde_json::Value;

/// Why a value has no canonical form here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A non-integral number, or an integer beyond ±2^53 (not exactly
    /// representable as an IEEE 754 double, so not portable under RFC 8785).
    #[error("number {0} has no portable canonical form (only integers up to 2^53 are accepted)")]
    Number(String),
}

/// Largest integer every JSON implementation represents exactly.
const MAX_SAFE: u64 = (1 << 53) - 1;

/// The RFC 8785 canonical text of `value`.
pub fn canonical_json(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let ok = n
                .as_u64()
                .filter(|v| *v <= MAX_SAFE)
                .map(|v| v.to_string())
                .or_else(|| {
                    n.as_i64()
                        .filter(|v| v.unsigned_abs() <= MAX_SAFE)
                        .map(|v| v.to_string())
                });
            match ok {
                Some(text) => out.push_str(&text),
                None => return Err(CanonicalError::Number(n.to_string())),
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc8785_vectors() {
        // RFC 8785 section 3.2.3: members sorted by UTF-16 code units, so
        // U+1F600 (surrogates D83D DE00) sorts before U+FB33.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical_json(&v).unwrap(), expected);
        // Escapes and literals (RFC 8785 section 3.2.2.2).
        let v = json!({"b": [true, false, null, 0, -1, 9007199254740991u64], "a": "\u{0f}\"\\\n\u{7f}é"});
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#"{"a":"\u000f\"\\\n"#.to_owned()
                + "\u{7f}é\",\"b\":[true,false,null,0,-1,9007199254740991]}"
        );
        assert!(canonical_json(&json!(1.5)).is_err());
        assert!(canonical_json(&json!(9007199254740992u64)).is_err());
    }
}
