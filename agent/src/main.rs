use std::process::ExitCode;

/// mimalloc instead of glibc's malloc. The Workload API's buffers are
/// allocated on one worker thread and freed on another; under glibc that
/// contends on the owning arena's lock (futex waits and wake-ups on every
/// call at load): about half of what FetchX509SVID cost the agent above the
/// bare unary call at 10 clients (BENCHMARKS.md, "Workload API: the
/// allocator").
/// Version 2 without transparent huge pages: of the variants measured, it
/// keeps the resident set closest to glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    lanyard_agent::cli::process::main()
}
