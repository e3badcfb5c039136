//! Standard output for the commands. `outln!` panics when the reader has
//! gone (`lanyard-... | head`); a command whose reader went away has
//! nothing left to say, so it ends quietly with status 0 instead.

use std::io::Write;

/// Writes `args` (and a newline with `newline`) to standard output.
pub(crate) fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let end: &[u8] = if newline { b"\n" } else { b"" };
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(end))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `outln!` that ends the command quietly when the reader has gone.
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*), true)
    };
}

/// `print!` that ends the command quietly when the reader has gone.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*), false)
    };
}
pub(crate) use {out, outln};

/// Prints a listing: `{"<key>": [...]}` in JSON; in text, each item's
/// block with a blank line between them, or `empty` when there is none.
pub(crate) fn print_list<T>(
    output: super::Output,
    key: &str,
    items: &[T],
    empty: &str,
    json: impl Fn(&T) -> serde_json::Value,
    text: impl Fn(&T) -> String,
) {
    match output {
        super::Output::Json => {
            let list: Vec<serde_json::Value> = items.iter().map(json).collect();
            outln!("{}", serde_json::json!({ key: list }));
        }
        super::Output::Text if items.is_empty() => outln!("{empty}"),
        super::Output::Text => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    outln!();
                }
                out!("{}", text(item));
            }
        }
    }
}

/// Unix seconds as RFC 3339 text.
pub(crate) fn time_text(secs: i64) -> String {
    lanyard_core::clock::format_rfc3339(lanyard_core::clock::from_unix_secs(
        u64::try_from(secs).unwrap_or(0),
    ))
}
