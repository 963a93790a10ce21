//! Compiles the discovery protocol with protox (no protoc needed) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/discovery.proto");
    let fds = protox::compile(["proto/discovery.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
