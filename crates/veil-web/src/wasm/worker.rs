//! `FrameWorker`: the transform worker's binding of [`FrameCrypto`]. One per worker, shared by
//! every sender and receiver transform of the page, so one sender counter covers every track.

use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use super::time::now;
use crate::frames::{FrameCrypto, Opened};

/// The worker's SFrame state (specs/browser.md §4).
#[wasm_bindgen]
pub struct FrameWorker {
    inner: FrameCrypto,
    last_sender: Option<u32>,
}

#[wasm_bindgen]
impl FrameWorker {
    /// No keys yet: [`encrypt`](Self::encrypt) refuses, [`decrypt`](Self::decrypt) holds.
    ///
    /// # Errors
    /// Never with the default key configuration.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<FrameWorker, JsError> {
        Ok(Self {
            inner: FrameCrypto::new(veil_mls::KeyConfig::default()).map_err(super::js_err)?,
            last_sender: None,
        })
    }

    /// Install an epoch from the page's key blob; the caller zeroes its copy afterwards.
    ///
    /// # Errors
    /// A blob that does not parse or fit the key layout.
    pub fn install(&mut self, blob: &[u8]) -> Result<(), JsError> {
        self.inner.install(blob, now()).map_err(super::js_err)
    }

    /// Stop sending (left or removed).
    pub fn stop(&mut self) {
        self.inner.stop();
    }

    /// Retire expired keys and held frames; call about once a second.
    pub fn tick(&mut self) {
        self.inner.tick(now());
    }

    /// The SFrame ciphertext of a whole encoded frame, or `undefined` while this participant
    /// has no sender key: the caller drops the frame, nothing leaves in the clear.
    #[must_use]
    pub fn encrypt(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(frame)
    }

    /// The plaintext of a received frame, or `undefined` if it is held for an epoch not
    /// installed yet (it comes back from [`take_released`](Self::take_released) with `tag`).
    ///
    /// # Errors
    /// The frame did not decrypt; the message starts with the stats label in parentheses.
    pub fn decrypt(&mut self, frame: &[u8], tag: u32) -> Result<Option<Vec<u8>>, JsError> {
        match self.inner.decrypt(frame, u64::from(tag), now()) {
            Ok(Opened::Plaintext(p, sender)) => {
                self.last_sender = Some(sender);
                Ok(Some(p))
            }
            Ok(Opened::Held) => Ok(None),
            Err(e) => Err(super::js_err(e)),
        }
    }

    /// The leaf index of the sender of the frame decrypted last.
    #[wasm_bindgen(js_name = lastSender)]
    #[must_use]
    pub fn last_sender(&self) -> Option<u32> {
        self.last_sender
    }

    /// Held frames that decrypted since the last call: `[{tag, data, sender}]`.
    #[wasm_bindgen(js_name = takeReleased)]
    #[must_use]
    pub fn take_released(&mut self) -> Array {
        let out = Array::new();
        for (tag, data, sender) in self.inner.take_released() {
            let o = Object::new();
            let _ = Reflect::set(&o, &"tag".into(), &JsValue::from_f64(tag as f64));
            let _ = Reflect::set(&o, &"data".into(), &Uint8Array::from(&data[..]));
            let _ = Reflect::set(&o, &"sender".into(), &JsValue::from(sender));
            out.push(&o);
        }
        out
    }

    /// Counters as JSON: `encrypted`, `unsent`, `decrypted`, `held`, `failures` (by reason),
    /// `epoch`.
    #[must_use]
    pub fn stats(&self) -> String {
        let s = self.inner.stats();
        serde_json::json!({
            "encrypted": s.encrypted,
            "unsent": s.unsent,
            "decrypted": s.decrypted,
            "held": s.held,
            "failures": s.failures,
            "epoch": s.epoch,
        })
        .to_string()
    }
}
