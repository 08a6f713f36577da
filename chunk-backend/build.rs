//! Compiles `proto/chunk.proto` with protox (pure Rust, no `protoc` to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/chunk.proto");
    let fds = protox::compile(["chunk.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
