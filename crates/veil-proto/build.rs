//! Compile `proto/` with protox (a pure-Rust protobuf compiler), so a fresh machine builds with
//! cargo alone, then generate prost messages and tonic clients and servers.
//!
//! Two passes: messages and clients with prost's codec into `OUT_DIR`, then the servers alone
//! into `OUT_DIR/server` with `crate::codec::ProstCodec`, which refuses an undecodable request
//! with `INVALID_ARGUMENT` instead of `INTERNAL` (PROTO-DEC-01). The second pass names the
//! first pass's messages as extern paths, so it generates no message twice.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("veil/keys/v1/keys.proto"),
        root.join("veil/sfu/v1/sfu.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    // Without `transport` (the browser build) the clients have no `connect`: callers hand them
    // a gRPC-Web service.
    let transport = std::env::var_os("CARGO_FEATURE_TRANSPORT").is_some();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(transport)
        .compile_fds(fds.clone())?;
    let server_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&server_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(transport)
        .codec_path("crate::codec::ProstCodec")
        .extern_path(".veil.keys.v1", "crate::keys::v1")
        .extern_path(".veil.sfu.v1", "crate::sfu::v1")
        .out_dir(&server_out)
        .compile_fds(fds)?;
    Ok(())
}
