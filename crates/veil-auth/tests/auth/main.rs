//! Integration tests of `veil-auth`: one binary, one behaviour per module (STYLE.md §10).
//! Check ids (AUTH-xx) refer to `specs/auth.md`.

mod algorithms;
mod common;
mod errors;
mod interop;
mod keyfile;
mod leeway;
mod rotation;
mod roundtrip;
mod tamper;
