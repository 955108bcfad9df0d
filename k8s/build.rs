//! Compiles the kubelet's device plugin API (`proto/api.proto`) into Rust at build time:
//! `protox` parses it (pure Rust, no `protoc`, no network), `tonic-prost-build` generates
//! the messages and both sides of both services (the plugin serves `DevicePlugin` and calls
//! `Registration`; the kubelet stand-in of the tests does the opposite).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
