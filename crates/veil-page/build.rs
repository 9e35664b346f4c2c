//! Build the browser client from this commit's sources (specs/browser.md §1):
//!
//! 1. `cargo build -p veil-web --release --target wasm32-unknown-unknown`, in a target
//!    directory of its own beside this build's (`<target>/web`), so it never waits for the
//!    outer build's lock and stays incremental across profiles;
//! 2. its bindings with `wasm-bindgen-cli-support` (`--target web`), pinned to the version of
//!    the `wasm-bindgen` crate;
//! 3. `www/` and the bindings embedded as `ASSETS` (`OUT_DIR/assets.rs`).
//!
//! A machine without the wasm32 target gets it from rustup, as `.ci/run` does; if that is
//! impossible, the build stops and says what to run.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../..").canonicalize()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // What the wasm build reads: the crates veil-web builds from, the API, the lock file.
    for p in [
        "crates/veil-web",
        "crates/veil-call",
        "crates/veil-mls",
        "crates/veil-sframe",
        "crates/veil-wire",
        "crates/veil-proto",
        "proto",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", manifest.join("www").display());

    ensure_target()?;
    let target_dir = web_target_dir(&out);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "veil-web",
            "--lib",
            "--release",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are not the browser build's: flags for the host, a clippy
    // wrapper, a target directory of its own.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        build.env_remove(var);
    }
    let status = build.status()?;
    if !status.success() {
        return Err(format!("building veil-web for {TARGET} failed ({status}); see above").into());
    }
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join("veil_web.wasm");

    let www = out.join("www");
    std::fs::create_dir_all(&www)?;
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)?
        .typescript(false)
        .generate(&www)?;

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for dir in [manifest.join("www"), www.clone()] {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_file() {
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or("a file name that is not UTF-8")?
                    .to_owned();
                let served = if name == "index.html" {
                    "/index.html".to_owned()
                } else {
                    format!("/assets/{name}")
                };
                files.push((served, p));
            }
        }
    }
    files.sort();
    let mut code = String::from("static ASSETS: &[Asset] = &[\n");
    for (served, p) in &files {
        code.push_str(&format!(
            "    Asset {{ path: {served:?}, content_type: {:?}, body: include_bytes!({:?}) }},\n",
            content_type(p),
            p.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code)?;
    Ok(())
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `<target>/web`: `OUT_DIR` is `<target>[/<triple>]/<profile>/build/<pkg>/out`.
fn web_target_dir(out: &Path) -> PathBuf {
    out.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map_or_else(|| out.join("web-target"), |t| t.join("web"))
}

/// The wasm32 standard library is installed, or installed now with rustup.
fn ensure_target() -> Result<(), Error> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    if sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (the browser client needs it)"
    );
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the browser client is built for {TARGET}, which this Rust toolchain lacks: run \
             `rustup target add {TARGET}` and build again"
        )
        .into())
    }
}
