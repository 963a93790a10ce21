//! Compiles the subset of etcd's v3 API the control plane speaks (proto/etcd.proto) with
//! protox (no protoc needed) and tonic-prost-build, as trellis-api does for discovery.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    let fds = protox::compile(["proto/etcd.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
