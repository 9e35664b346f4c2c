//! Integration tests of the SFU, one binary. Loopback tests of the SFU: real webrtc-rs peers
//! (publishers and subscribers) and headless Chromium against a real `EdgeSfu` (or the edge's
//! lower layers, `edge.rs`) on 127.0.0.1, no ICE servers, no mocks; and `chromium_replay`,
//! Chromium's captured traffic through the routing core. One behaviour per file; the checks
//! they prove are listed in specs/sfu.md.

#![allow(unreachable_pub)] // test helpers: `pub` for the submodules of this one binary

mod bandwidth;
mod chromium;
mod chromium_page;
mod chromium_renegotiation;
mod chromium_replay;
mod chromium_svc;
mod common;
mod dtx;
mod edge;
mod flood;
mod grpc;
mod key_frames;
mod lifecycle;
mod malformed;
mod nack;
mod negotiation;
mod payload;
mod rtcp;
mod simulcast;
mod spoof;
mod vanish;
mod workers;
