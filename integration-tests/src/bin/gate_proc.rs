//! `lanyard-gate` as a process of this package, so that end-to-end tests
//! can run it as a real process (and name its path in an entry's
//! selectors). The same code as the real binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    lanyard_gate::cli::main()
}
