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
