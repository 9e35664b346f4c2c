//! The impaired call at full length (issue 23; specs/netem.md): prints its table and writes
//! RELIABILITY.md at the repository root.
//!
//! `cargo run -p veil-e2e --example impaired_call -- --seconds 60` (the figures in
//! RELIABILITY.md come from this command).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use veil_e2e::impaired::{Plan, run};

/// Four participants for `--seconds`, every leg through a lossy relay, with a join, a leave
/// and 2 s bursts of 20 % loss.
#[derive(Debug, Parser)]
struct Args {
    /// Media time of the call, seconds.
    #[arg(long, env = "VEIL_IMPAIRED_SECONDS", default_value_t = 60)]
    seconds: u64,
    /// The relay's seed.
    #[arg(long, env = "VEIL_IMPAIRED_SEED", default_value_t = 23)]
    seed: u64,
    /// Where to write the table (RELIABILITY.md at the repository root by default); `-`
    /// prints it only.
    #[arg(long, env = "VEIL_IMPAIRED_OUT")]
    out: Option<String>,
}

const PREAMBLE: &str = "# Reliability\n\n\
Figures of Veil's calls under network impairment, measured on this repository's machines (2 \
cores, loopback, debug build of Veil's crates with optimised dependencies). The machines have \
no kernel netem, so every participant's media goes through `veil-netem`'s userspace relay \
(specs/netem.md), which the SFU advertises as its address (`--sfu-advertise`, SFU-ADV-01). \
The short version of the same call runs in CI \
(`tests/tests/e2e/impaired.rs`, NETEM-CALL-01..03).\n\n\
Only media (UDP) is impaired: the key service's gRPC (TCP) is not. Audio has no \
retransmission, so its delivery follows the loss of both legs; video's NACK/RTX repairs \
(\"delivered\": frames decrypted over frames sent between the first and the last received \
of each publisher's stream).\n\n\
Regenerate with `cargo run -p veil-e2e --example impaired_call -- --seconds 60`.\n\n\
\"decrypt failures (outside switches)\": all of them, and those not within an epoch switch \
(from its start to a second after every participant reached the new epoch). \"replays \
accepted\": frames delivered twice. \"NACKs sent\", \"RTX sent\": each client's getStats \
(`nackCount` of what it receives, `retransmittedPacketsSent` of what it sends). Key-frame \
requests are the SFU's PLIs as each publisher received them.\n\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let plan = Plan::issue(Duration::from_secs(args.seconds), args.seed);
    let report = run(&plan).await;
    let table = report.table();
    println!("{table}");
    let out = match args.out.as_deref() {
        Some("-") => return,
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../RELIABILITY.md"),
    };
    std::fs::write(&out, format!("{PREAMBLE}{table}")).expect("write the table");
    eprintln!("wrote {}", out.display());
}
