//! RFC 8785 (JSON Canonicalization Scheme) serialisation of a JSON value:
//! no whitespace, object members sorted by the UTF-16 code units of their
//! names, strings escaped as ECMAScript's `JSON.stringify` does, numbers in
//! ECMAScript form. Task grants hold only integers, so [`canonical_json`]
//! refuses non-integral numbers; [`canonical_json_any`] (for what a tool
//! call's arguments may hold) prints every finite number as ECMAScript's
//! `Number.prototype.toString` does, from the shortest round-trip digits.

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
    write_value(value, &mut out, false)?;
    Ok(out)
}

/// The RFC 8785 canonical text of `value`, with any finite number (a
/// tool call's arguments: amounts, ratios).
pub fn canonical_json_any(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(value, &mut out, true)?;
    Ok(out)
}

/// ECMAScript's `Number.prototype.toString` of a finite double (RFC 8785
/// section 3.2.2.3), from Rust's shortest round-trip digits.
fn es_number(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some("0".into());
    }
    let sign = if x < 0.0 { "-" } else { "" };
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = i32::try_from(digits.len()).ok()?;
    let n = exp + 1;
    let pad = |z: i32| "0".repeat(usize::try_from(z).unwrap_or(0));
    let at = |i: i32| usize::try_from(i).unwrap_or(0);
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", pad(n - k))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..at(n)], &digits[at(n)..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", pad(-n))
    } else {
        let e = n - 1;
        let e = if e < 0 {
            format!("-{}", -e)
        } else {
            format!("+{e}")
        };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    Some(format!("{sign}{body}"))
}

fn write_value(value: &Value, out: &mut String, any: bool) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) if any => match n.as_f64().and_then(es_number) {
            Some(text) => out.push_str(&text),
            None => return Err(CanonicalError::Number(n.to_string())),
        },
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
                write_value(item, out, any)?;
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
                write_value(v, out, any)?;
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

    #[test]
    fn any_number_prints_as_ecmascript_does() {
        // RFC 8785 appendix B and section 3.2.2.3.
        for (x, want) in [
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (333_333_333.333_333_3, "333333333.3333333"),
            (1e30, "1e+30"),
            (4.5, "4.5"),
            (2e-3, "0.002"),
            (0.000_001, "0.000001"),
            (-0.0, "0"),
            (123_456_789_012_345_680_000.0, "123456789012345680000"),
            (-5e-324, "-5e-324"),
            (1.797_693_134_862_315_7e308, "1.7976931348623157e+308"),
            (12.5, "12.5"),
            (100.0, "100"),
        ] {
            assert_eq!(es_number(x).unwrap(), want, "{x:e}");
        }
        let v = json!({"amount": 12.50, "n": 3, "big": 9007199254740993u64});
        assert_eq!(
            canonical_json_any(&v).unwrap(),
            r#"{"amount":12.5,"big":9007199254740992,"n":3}"#
        );
    }
}
