//! The browser bindings (wasm32 only): [`call::Call`] on the page, [`worker::FrameWorker`] in
//! the transform worker.

mod call;
mod keys;
mod signal;
mod time;
mod worker;

use wasm_bindgen::JsError;

/// A gRPC status as the page shows it: the code's name and the server's message.
fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Errors reach JavaScript as `Error`s with the crate error's message.
fn js_err(e: impl core::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}
