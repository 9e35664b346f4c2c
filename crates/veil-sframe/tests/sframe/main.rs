//! veil-sframe integration tests, one binary (alloc.rs, with its counting global allocator, stays its own): frames, interop with the sframe crate, third-party vectors.

mod common;
mod frames;
mod interop;
mod vectors;
