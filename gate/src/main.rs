use std::process::ExitCode;

fn main() -> ExitCode {
    lanyard_gate::cli::main()
}
