//! Compile the collector protocol (proto/) without a system `protoc`:
//! protox parses the .proto files, tonic-prost-build generates the code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/linkmesh.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-stream buffers: see src/transport/codec.rs.
        .codec_path("crate::transport::codec::SmallCodec")
        .compile_fds(fds)?;
    Ok(())
}
