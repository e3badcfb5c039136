//! How Lanyard's errors carry their causes. An error's message is whole on
//! its own (a log line with `%e` says what failed and why), and the error
//! that caused it is kept as its [`std::error::Error::source`], for code
//! that needs to tell causes apart. [`report`] prints a chain once: a
//! cause whose text the message already holds is not repeated.

use std::error::Error;

/// A cause kept as a source.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// `e` and its causes on one line, `a: b: c`, each said once.
pub fn report(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Outer(String, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Top(#[source] Outer);

    #[test]
    fn a_cause_is_said_once() {
        let io = || std::io::Error::other("disk full");
        let repeated = Top(Outer("writing: disk full".into(), io()));
        assert_eq!(
            report(&repeated),
            "cannot start: database error: writing: disk full"
        );
        let new = Top(Outer("writing".into(), io()));
        assert_eq!(
            report(&new),
            "cannot start: database error: writing: disk full"
        );
        assert!(new.0.source().is_some(), "the cause is kept");
    }
}
