//! The stable smoke driver: every fuzz target (or those named) for a fixed time, without
//! nightly or libFuzzer. Each target first runs every input of `corpus/<target>/`, then seeded
//! mutations of them ([`veil_fuzz::mutate`]) until its time is up. A panic anywhere in the
//! process while an input runs (the target's thread, a tokio task, an SFU worker) is a crash:
//! the input goes to `artifacts/<target>/crash-<sha256 prefix>` and the driver exits 1 after
//! the table.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --bin smoke -- --seconds 3
//! cargo run --manifest-path fuzz/Cargo.toml --bin smoke -- --target kds_request --seconds 60
//! ```

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use sha2::{Digest, Sha256};
use veil_fuzz::mutate::{Rng, mutate};
use veil_fuzz::{TARGETS, Target};

/// Run Veil's fuzz targets on stable for a fixed time each and print executions and crashes.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of mutation per target, after its corpus ran once.
    #[arg(long, env = "VEIL_FUZZ_SECONDS", default_value_t = 10.0)]
    seconds: f64,
    /// Run only this target (repeat for several); default: all.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Seed of the mutator (a run is reproducible for one seed, up to timing).
    #[arg(long, env = "VEIL_FUZZ_SEED", default_value_t = 1)]
    seed: u64,
    /// Folder with one sub-folder of seed inputs per target.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))]
    corpus: PathBuf,
    /// Where crashing inputs are written, one sub-folder per target.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts"))]
    artifacts: PathBuf,
    /// Run these input files through the chosen targets (no mutation), e.g. to replay a crash.
    #[arg(long, value_name = "FILE")]
    replay: Vec<PathBuf>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

/// Panics seen anywhere in the process, and the last one's message.
static PANICS: AtomicU64 = AtomicU64::new(0);
static LAST: Mutex<String> = Mutex::new(String::new());

fn install_hook() {
    panic::set_hook(Box::new(|info| {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        let msg = format!("thread {thread}: {info}");
        *LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = msg;
        PANICS.fetch_add(1, Ordering::SeqCst);
    }));
}

/// Run one input; the panic message if it crashed.
fn run_one(t: &Target, input: &[u8]) -> Option<String> {
    let before = PANICS.load(Ordering::SeqCst);
    let caught = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(input))).is_err();
    if caught || PANICS.load(Ordering::SeqCst) != before {
        Some(
            LAST.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    } else {
        None
    }
}

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Row {
    name: &'static str,
    seeds: usize,
    execs: u64,
    crashes: u64,
    secs: f64,
}

fn fuzz(t: &Target, args: &Args, seed: u64) -> Row {
    let start = Instant::now();
    let mut row = Row {
        name: t.name,
        seeds: 0,
        execs: 0,
        crashes: 0,
        secs: 0.0,
    };
    let crash = |input: &[u8], msg: String, row: &mut Row| {
        row.crashes += 1;
        let dir = args.artifacts.join(t.name);
        let path = dir.join(format!("crash-{}", hex(&Sha256::digest(input)[..20])));
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
        eprintln!("CRASH in {}: {msg}", t.name);
        match saved {
            Ok(()) => eprintln!("  input: {}", path.display()),
            Err(e) => eprintln!("  could not write {}: {e}", path.display()),
        }
    };
    if !args.replay.is_empty() {
        for p in &args.replay {
            let input = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            row.execs += 1;
            if let Some(msg) = run_one(t, &input) {
                crash(&input, msg, &mut row);
            }
        }
        row.secs = start.elapsed().as_secs_f64();
        return row;
    }
    let mut corpus = seeds(&args.corpus.join(t.name));
    row.seeds = corpus.len();
    // Every seed runs once, whatever the time: the corpus is also the regression suite.
    for input in &corpus {
        row.execs += 1;
        if let Some(msg) = run_one(t, input) {
            crash(input, msg, &mut row);
            row.secs = start.elapsed().as_secs_f64();
            return row;
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let max_len = corpus
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .saturating_mul(2)
        .max(4096);
    let mut rng = Rng::new(seed);
    let deadline = start + Duration::from_secs_f64(args.seconds);
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].clone();
        let other = &corpus[rng.below(corpus.len())];
        mutate(&mut rng, &mut input, other, max_len);
        row.execs += 1;
        if let Some(msg) = run_one(t, &input) {
            // The first crash ends the target, as with libFuzzer: later ones are likely the same.
            crash(&input, msg, &mut row);
            break;
        }
    }
    row.secs = start.elapsed().as_secs_f64();
    row
}

/// Every target has its libFuzzer entry, and every entry is a target: CI builds only this
/// driver, so this is what keeps `fuzz_targets/` in step with [`TARGETS`].
fn check_entries() -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets");
    for t in TARGETS {
        let file = dir.join(format!("{}.rs", t.name));
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let call = format!("veil_fuzz::{0}::{0}(data)", t.name);
        if !text.contains(&call) {
            return Err(format!("{} does not call {call}", file.display()));
        }
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if !TARGETS.iter().any(|t| t.name == name) {
            return Err(format!(
                "fuzz_targets/{name}.rs is not in veil_fuzz::TARGETS"
            ));
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = check_entries() {
        eprintln!("{e}");
        return std::process::ExitCode::from(2);
    }
    if args.list {
        for t in TARGETS {
            println!("{}", t.name);
        }
        return std::process::ExitCode::SUCCESS;
    }
    let chosen: Vec<&Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.targets {
            let Some(t) = TARGETS.iter().find(|t| t.name == name) else {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                eprintln!("no target {name:?}: choose from {}", names.join(", "));
                return std::process::ExitCode::from(2);
            };
            v.push(t);
        }
        v
    };
    install_hook();
    let mut rows = Vec::new();
    for (i, t) in chosen.iter().enumerate() {
        eprintln!(
            "fuzzing {} for {} s (after its corpus)",
            t.name, args.seconds
        );
        rows.push(fuzz(t, &args, args.seed.wrapping_add(i as u64)));
    }
    println!(
        "{:<16} {:>7} {:>12} {:>9} {:>10}",
        "target", "seeds", "executions", "crashes", "exec/s"
    );
    for r in &rows {
        let rate = r.execs as f64 / r.secs.max(1e-9);
        println!(
            "{:<16} {:>7} {:>12} {:>9} {:>10.0}",
            r.name, r.seeds, r.execs, r.crashes, rate
        );
    }
    if rows.iter().any(|r| r.crashes > 0) {
        eprintln!("crashes found: inputs under {}", args.artifacts.display());
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
