//! Policy errors, each with the `source:line:col` it points at.

use miette::Diagnostic;

/// Why a policy set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text does not parse, or does not validate against the schema.
    /// Each item reads `source:line:col: message`.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The policy set is larger than the engine accepts.
    #[error("policy set too large: {0}")]
    TooLarge(String),
    /// The shipped schema does not load (a build defect).
    #[error("policy schema: {0}")]
    Schema(String),
}

/// `line:col` (1-based) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One message per diagnostic, located by its first label.
pub(crate) fn located(source: &str, text: &str, d: &dyn Diagnostic) -> String {
    let mut msg = d.to_string();
    if let Some(help) = d.help() {
        msg.push_str(&format!(" ({help})"));
    }
    match d.labels().and_then(|mut l| l.next()) {
        Some(label) => {
            let (line, col) = line_col(text, label.offset());
            format!("{source}:{line}:{col}: {msg}")
        }
        None => format!("{source}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 5), (2, 3));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 100), (3, 2));
    }
}
