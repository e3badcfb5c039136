//! Compiles the .proto files with protox (pure Rust), so that a fresh
//! machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/workload.proto",
        "proto/lanyard/types/v1/types.proto",
        "proto/lanyard/server/v1/server.proto",
        "proto/lanyard/admin/v1/admin.proto",
        "proto/lanyard/task/v1/task.proto",
        "proto/lanyard/broker/v1/broker.proto",
        "proto/envoy/service/auth/v3/external_auth.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
