//! The reliability scenarios at full length (issue 23): each prints its table and rewrites its
//! own section of RELIABILITY.md at the repository root.
//!
//! ```text
//! cargo run -p veil-e2e --example reliability -- all
//! cargo run -p veil-e2e --example reliability -- impaired --seconds 60
//! cargo run -p veil-e2e --example reliability -- bandwidth
//! cargo run -p veil-e2e --example reliability -- outage --seconds 10
//! cargo run -p veil-e2e --example reliability -- restart --rounds 4
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use veil_e2e::{bandwidth, impaired, outage, reliability, restart};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
    /// The file to rewrite (RELIABILITY.md at the repository root by default); `-` prints
    /// only.
    #[arg(long, env = "VEIL_RELIABILITY_OUT", global = true)]
    out: Option<String>,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Four participants, every leg through a lossy relay, a join, a leave and 2 s bursts of
    /// 20 % loss.
    Impaired {
        /// Media time of the call, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The relay's seed.
        #[arg(long, default_value_t = 23)]
        seed: u64,
    },
    /// One subscriber's path free, capped at 300 kbit/s, then free again.
    Bandwidth,
    /// One participant's media path black for a while.
    Outage {
        /// How long, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// `kill -9` of the server mid-call and a restart on the same data directory.
    Restart {
        /// How many kills.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// Every scenario above with its defaults.
    All,
}

fn write(out: Option<&str>, name: &str, body: &str) {
    println!("{body}");
    let path = match out {
        Some("-") => return,
        Some(p) => PathBuf::from(p),
        None => reliability::default_path(),
    };
    reliability::write_section(&path, name, body).expect("write RELIABILITY.md");
    eprintln!("wrote section {name} of {}", path.display());
}

const IMPAIRED_NOTES: &str = "Only media (UDP) is impaired: the key service's gRPC (TCP) is \
not. Audio has no retransmission, so its delivery follows the loss of both legs; video's \
NACK/RTX repairs (\"delivered\": frames decrypted over frames sent between the first and the \
last received of each publisher's stream). \"decrypt failures (outside switches)\": all of \
them, and those not within an epoch switch (from its start to a second after every \
participant reached the new epoch). \"replays accepted\": frames delivered twice. \"NACKs \
sent\", \"RTX sent\": each client's getStats (`nackCount` of what it receives, \
`retransmittedPacketsSent` of what it sends). Key-frame requests are the SFU's PLIs as each \
publisher received them.";

async fn impaired(out: Option<&str>, seconds: u64, seed: u64) {
    let plan = impaired::Plan::issue(Duration::from_secs(seconds), seed);
    let report = impaired::run(&plan).await;
    let body = format!(
        "## Impaired call\n\n`cargo run -p veil-e2e --example reliability -- impaired \
         --seconds {seconds}` (CI: `tests/tests/e2e/impaired.rs`, 24 s, \
         NETEM-CALL-01..03).\n\n{IMPAIRED_NOTES}\n\n{}",
        report.table()
    );
    write(out, "impaired", &body);
}

async fn bandwidth(out: Option<&str>) {
    let phases = bandwidth::run(&bandwidth::issue_phases()).await;
    let body = format!(
        "## Bandwidth\n\n`cargo run -p veil-e2e --example reliability -- bandwidth` (CI: \
         `tests/tests/e2e/bandwidth.rs`, SFU-BWE-10). Alice publishes three simulcast layers \
         (about 150, 500 and 1,500 kbit/s) and audio; bob asks for the top layer while his \
         path through the relay is free, capped at 300 kbit/s (a 30 kB queue), then free \
         again. The layers are the SFU's own `veil_sfu_subscriber_layer` gauge for bob's \
         subscription (0 lowest, 2 top; `-` before he has one), the estimate its \
         `veil_sfu_subscriber_estimate_bps`.\n\n{}",
        bandwidth::table(&phases)
    );
    write(out, "bandwidth", &body);
}

async fn outage(out: Option<&str>, seconds: u64) {
    let o = outage::run(Duration::from_secs(seconds)).await;
    let body = format!(
        "## Network outage\n\n`cargo run -p veil-e2e --example reliability -- outage \
         --seconds {seconds}` (CI: `tests/tests/e2e/blackout.rs`). Bob's media path through \
         the relay goes black; his SDK reconnects to the SFU by itself (specs/sfu.md \
         \"Reconnecting\": a new session, no ICE restart, no new MLS epoch).\n\n{}",
        o.table()
    );
    write(out, "outage", &body);
}

async fn restarts(out: Option<&str>, rounds: usize) {
    let r = restart::run(rounds).await;
    let body = format!(
        "## Server restarts\n\n`cargo run -p veil-e2e --example reliability -- restart \
         --rounds {rounds}` (CI: `client/tests/cli/restart.rs`, and the key service's \
         `server/tests/keys/durability.rs`). A `veil-server` process (SQLite) is killed with \
         SIGKILL while alice, bob and carol talk, and started again 2 s later on the same \
         port and data directory; the SDK reconnects by itself (specs/sfu.md \
         SFU-CLI-01..04).\n\n{}",
        r.table()
    );
    write(out, "restart", &body);
}

fn main() {
    // The restart scenario's server is this executable started again.
    restart::serve_if_child();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let out = args.out.as_deref();
    rt.block_on(async {
        match args.what {
            What::Impaired { seconds, seed } => impaired(out, seconds, seed).await,
            What::Bandwidth => bandwidth(out).await,
            What::Outage { seconds } => outage(out, seconds).await,
            What::Restart { rounds } => restarts(out, rounds).await,
            What::All => {
                impaired(out, 60, 23).await;
                bandwidth(out).await;
                outage(out, 10).await;
                restarts(out, 4).await;
            }
        }
    });
}
