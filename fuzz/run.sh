#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60) and print executions and crashes per
# target. With a nightly toolchain and cargo-fuzz: libFuzzer (coverage-guided, sanitizers),
# new inputs kept in a scratch folder, never in corpus/. Otherwise (or with VEIL_FUZZ_STABLE=1)
# the stable smoke driver (src/bin/smoke.rs). Exits non-zero if any target crashed; crashing
# inputs are in artifacts/<target>/.
#
#   fuzz/run.sh          # 60 s per target
#   fuzz/run.sh 5        # a smoke pass
#   VEIL_FUZZ_TARGETS="kds_request sfu_signal" fuzz/run.sh 120
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
case "$secs" in ''|*[!0-9]*) echo "usage: $0 [SECONDS]  (whole seconds, e.g. 60)" >&2; exit 2;; esac

if [ "${VEIL_FUZZ_STABLE:-}" != 1 ] && cargo +nightly fuzz --version >/dev/null 2>&1; then
  targets="${VEIL_FUZZ_TARGETS:-$(cargo +nightly fuzz list | grep -vxE 'smoke|seeds')}"
  scratch="$(mktemp -d "${TMPDIR:-/tmp}/veil-fuzz.XXXXXX")"
  echo "libFuzzer: ${secs} s per target; logs and new inputs in $scratch" >&2
  cargo +nightly fuzz build >&2
  rows=()
  failed=0
  for t in $targets; do
    mkdir -p "$scratch/$t" "corpus/$t"
    log="$scratch/$t.log"
    echo "fuzzing $t" >&2
    crashed=0
    cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || crashed=1
    # The final stats if libFuzzer got to print them, else its last status line (`#N ...`).
    execs="$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log" | tail -n1)"
    [ -n "$execs" ] || execs="$(grep -oE '^#[0-9]+' "$log" | tail -n1 | tr -d '#')"
    rate="$(awk '/^stat::average_exec_per_sec:/ {print $2}' "$log" | tail -n1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | awk '{print $2}')"
    if [ "$crashed" = 1 ]; then
      failed=1
      echo "CRASH in $t (log: $log):" >&2
      grep -E 'panicked at|^SUMMARY|Test unit written to' "$log" >&2 || tail -n 20 "$log" >&2
    fi
    rows+=("$(printf '%-16s %12s %9s %10s %8s' "$t" "${execs:-?}" "$crashed" "${rate:-?}" "${cov:-?}")")
  done
  printf '%-16s %12s %9s %10s %8s\n' target executions crashes exec/s cov
  printf '%s\n' "${rows[@]}"
  exit "$failed"
fi

echo "no nightly cargo-fuzz (or VEIL_FUZZ_STABLE=1): the stable smoke driver, ${secs} s per target" >&2
args=(--seconds "$secs")
for t in ${VEIL_FUZZ_TARGETS:-}; do args+=(--target "$t"); done
exec cargo run -q --manifest-path Cargo.toml --bin smoke -- "${args[@]}"
