//! Compile `proto/` with protox (a pure-Rust protobuf compiler), so a fresh machine builds with
//! cargo alone, then generate prost messages and tonic clients and servers.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
