//! The page's clock and timers: `performance.now()` and `setTimeout`, in a window or a worker.

use std::time::Duration;

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;

/// Monotonic time since the page (or worker) started.
pub(crate) fn now() -> Duration {
    let ms = Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map_or(0.0, |p| p.now());
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// Resolve after `d` (a dropped sleep leaves a timer that resolves nobody: harmless).
pub(crate) async fn sleep(d: Duration) {
    let ms = d.as_secs_f64() * 1000.0;
    let p = Promise::new(&mut |resolve, _| {
        let g = js_sys::global();
        let set_timeout = Reflect::get(&g, &JsValue::from_str("setTimeout"))
            .ok()
            .and_then(|f| f.dyn_into::<Function>().ok());
        if let Some(f) = set_timeout {
            let _ = f.call2(&g, &resolve, &JsValue::from_f64(ms));
        }
    });
    let _ = JsFuture::from(p).await;
}

/// Sleep until `at` (page time), or forever.
pub(crate) async fn sleep_until(at: Option<Duration>) {
    match at {
        Some(at) => sleep(at.saturating_sub(now())).await,
        None => std::future::pending().await,
    }
}
