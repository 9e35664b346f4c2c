//! The soak at full length (issue 23; specs/netem.md SOAK-01..04): prints the samples and
//! each figure's slope per hour, and rewrites the soak section of RELIABILITY.md at the
//! repository root (between `<!-- soak:begin -->` and `<!-- soak:end -->`; the rest of the
//! file is kept).
//!
//! `cargo build -p veil-server && cargo run -p veil-e2e --example soak -- --minutes 5
//! --server-binary target/debug/veil-server` (the figures in RELIABILITY.md come from this
//! command: the server in a process of its own, so that its memory, descriptors and threads
//! are its own); `--hours N` for a long one; without `--server-binary` the server runs in
//! this process.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use veil_e2e::reliability::{default_path, write_section};
use veil_e2e::soak::{Plan, SECTION, run};

/// Three stable participants for `--minutes` (or `--hours`), a churner joining or leaving
/// every `--churn-seconds`, side rooms created and ended, `/metrics` read every
/// `--sample-seconds`.
#[derive(Debug, Parser)]
struct Args {
    /// Length of the run, minutes.
    #[arg(
        long,
        env = "VEIL_SOAK_MINUTES",
        default_value_t = 5,
        conflicts_with = "hours"
    )]
    minutes: u64,
    /// Length of the run, hours (instead of `--minutes`).
    #[arg(long, env = "VEIL_SOAK_HOURS")]
    hours: Option<u64>,
    /// A join or a leave of the churner this often, seconds.
    #[arg(long, env = "VEIL_SOAK_CHURN_SECONDS", default_value_t = 3)]
    churn_seconds: u64,
    /// `/metrics` is read this often, seconds.
    #[arg(long, env = "VEIL_SOAK_SAMPLE_SECONDS", default_value_t = 10)]
    sample_seconds: u64,
    /// The `veil-server` binary to run as a child process (every figure then the server's
    /// alone); without it the server runs in this process.
    #[arg(long, env = "VEIL_SOAK_SERVER_BINARY")]
    server_binary: Option<PathBuf>,
    /// Where to write the section (RELIABILITY.md at the repository root by default); `-`
    /// prints it only.
    #[arg(long, env = "VEIL_SOAK_OUT")]
    out: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let (duration, length) = match args.hours {
        Some(h) => (Duration::from_secs(h * 3600), format!("--hours {h}")),
        None => (
            Duration::from_secs(args.minutes * 60),
            format!("--minutes {}", args.minutes),
        ),
    };
    let command = match &args.server_binary {
        Some(_) => format!(
            "cargo build -p veil-server && cargo run -p veil-e2e --example soak -- {length} \
             --server-binary target/debug/veil-server"
        ),
        None => format!("cargo run -p veil-e2e --example soak -- {length}"),
    };
    let plan = Plan {
        churn_every: Duration::from_secs(args.churn_seconds.max(1)),
        sample_every: Duration::from_secs(args.sample_seconds.max(1)),
        server_binary: args.server_binary.clone(),
        ..Plan::issue(duration)
    };
    let report = run(&plan).await;
    println!("{}\n{}", report.table(usize::MAX), report.summary());
    let out = match args.out.as_deref() {
        Some("-") => return,
        Some(p) => PathBuf::from(p),
        None => default_path(),
    };
    write_section(&out, SECTION, &report.section(&command)).expect("write RELIABILITY.md");
    eprintln!("wrote the soak section of {}", out.display());
}
