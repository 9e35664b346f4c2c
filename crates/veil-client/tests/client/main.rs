//! Integration tests of veil-client, one binary: the client over real WebRTC (webrtc-rs on
//! loopback): the frame path, then a call whose membership changes under a running media
//! stream; and the shape of its video packets against Chromium 156's capture.

#![allow(unreachable_pub)]

mod call;
mod chromium_shape;
mod common;
mod p2p;
