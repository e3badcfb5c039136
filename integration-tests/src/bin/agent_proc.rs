//! `lanyard-agent` as a process of this package, so that end-to-end tests
//! can run its command line (`run`, the admin and client commands) as a
//! real process. The same code as the real binary; only the allocator
//! differs (the system's here).

use std::process::ExitCode;

fn main() -> ExitCode {
    lanyard_agent::cli::process::main()
}
