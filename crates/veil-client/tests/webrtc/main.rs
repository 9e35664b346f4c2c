//! The client over real WebRTC (webrtc-rs on loopback): the frame path, then a call whose
//! membership changes under a running media stream.

#![allow(unreachable_pub)]

mod call;
mod common;
mod p2p;
