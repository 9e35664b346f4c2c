//! The bodies of Veil's fuzz targets (fuzz/README.md), one module and one function per target.
//!
//! The libFuzzer targets in `fuzz_targets/` are one line each, calling these functions under
//! cargo-fuzz (nightly, sanitizers, coverage feedback); the stable smoke driver
//! (`src/bin/smoke.rs`) calls the same functions with its own seeded mutator ([`mutate`]), so a
//! short pass runs in CI without nightly. A target's function panics when it finds a bug:
//! every assertion in it is a property of Veil's code, not of the harness.
#![forbid(unsafe_code)]

pub mod dd_parse;
pub mod ext_block;
pub mod kds_request;
pub mod mutate;
pub mod reassembly;
pub mod route;
pub mod rtp_rtcp;
pub mod sframe_decrypt;
pub mod sframe_header;
pub mod sfu_sdp;
pub mod sfu_signal;

/// One fuzz target: its name (the libFuzzer binary's and the corpus folder's) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// `fuzz_targets/<name>.rs`, `corpus/<name>/`.
    pub name: &'static str,
    /// The body: panics on a bug.
    pub run: fn(&[u8]),
}

/// Every target, in the order the smoke driver and `run.sh` run them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "sframe_header",
        run: sframe_header::sframe_header,
    },
    Target {
        name: "sframe_decrypt",
        run: sframe_decrypt::sframe_decrypt,
    },
    Target {
        name: "dd_parse",
        run: dd_parse::dd_parse,
    },
    Target {
        name: "ext_block",
        run: ext_block::ext_block,
    },
    Target {
        name: "reassembly",
        run: reassembly::reassembly,
    },
    Target {
        name: "route",
        run: route::route,
    },
    Target {
        name: "rtp_rtcp",
        run: rtp_rtcp::rtp_rtcp,
    },
    Target {
        name: "kds_request",
        run: kds_request::kds_request,
    },
    Target {
        name: "sfu_signal",
        run: sfu_signal::sfu_signal,
    },
    Target {
        name: "sfu_sdp",
        run: sfu_sdp::sfu_sdp,
    },
];
