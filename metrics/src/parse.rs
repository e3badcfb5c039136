//! Reading the text format back (tests and tools).

/// Parses OpenMetrics/Prometheus text into `series → value` (a series is
/// the name with its labels as written), checking every line: `# HELP`,
/// `# TYPE`, `# UNIT`, `# EOF` last, and `name{labels} value` samples
/// with a number as value. For tests and tools that read `/metrics`.
pub fn parse_exposition(text: &str) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap_or("");
            if !matches!(kind, "HELP" | "TYPE" | "UNIT") {
                return Err(at("unknown comment"));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(at("bad metric name"));
        }
        if name_end < series.len() && !series.ends_with('}') {
            return Err(at("unterminated labels"));
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("value is not a number"))?,
        };
        out.insert(series.to_owned(), v);
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_every_line() {
        let ok = "# HELP a_total A.\n# TYPE a counter\na_total{x=\"1\"} 2\nb 1.5\n# EOF\n";
        let m = parse_exposition(ok).unwrap();
        assert_eq!(m.get("a_total{x=\"1\"}"), Some(&2.0));
        for bad in [
            "a 1\n",
            "a x\n# EOF\n",
            "# EOF\na 1\n",
            "# FOO bar\n# EOF\n",
            "a{x=\"1\" 1\n# EOF\n",
            "a-b 1\n# EOF\n",
        ] {
            assert!(parse_exposition(bad).is_err(), "{bad:?}");
        }
    }
}
