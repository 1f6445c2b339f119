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
        .compile_fds(fds.clone())?;
    // The gRPC endpoint's server once more, sending `fleet::outbound::Outbound`
    // (a ServerToAgent whose pushed config is encoded once for the whole
    // fleet) instead of a ServerToAgent; the messages are those above.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("outbound");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&out)
        .codec_path("crate::transport::codec::SmallCodec")
        .extern_path(".opamp.proto.ServerToAgent", "crate::fleet::outbound::Outbound")
        .extern_path(".opamp.proto", "crate::proto::opamp_msgs")
        .compile_fds(fds)?;
    Ok(())
}
