//! Compiles `proto/csi.proto` (the CSI services the plugin serves) at build
//! time without protoc: protox parses it into a file-descriptor set (it ships
//! the well-known `google/protobuf` types), and tonic-prost-build generates
//! the messages and the server and client stubs from that set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let fds = protox::compile(["proto/csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
