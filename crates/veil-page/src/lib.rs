//! The browser client's files, embedded: `veil-server` serves them on its web listener
//! (specs/browser.md §1). The build script compiles `crates/veil-web` to
//! `wasm32-unknown-unknown` with this commit's sources, makes its JavaScript bindings with
//! `wasm-bindgen-cli-support` (the version of the `wasm-bindgen` crate, so they always match),
//! and embeds them with the page's own files from `www/`. Nothing built is committed.
//!
//! ```
//! let page = veil_page::asset("/").expect("the page");
//! assert_eq!(page.content_type, "text/html; charset=utf-8");
//! assert!(veil_page::asset("/assets/veil_web_bg.wasm").is_some());
//! assert!(veil_page::asset("/assets/nope.js").is_none());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// One file of the page.
#[derive(Debug)]
pub struct Asset {
    /// Where it is served, e.g. `/assets/app.js`.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The file served at `path`: `/` and `/room/<name>` are the page itself (the room comes
/// from the path, the token from the fragment, which never reaches the server), the rest
/// live under `/assets/`.
#[must_use]
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/"
        || path
            .strip_prefix("/room/")
            .is_some_and(|r| !r.is_empty() && !r.contains('/'))
    {
        "/index.html"
    } else {
        path
    };
    ASSETS.iter().find(|a| a.path == path)
}

/// Every embedded file.
#[must_use]
pub fn assets() -> &'static [Asset] {
    ASSETS
}
