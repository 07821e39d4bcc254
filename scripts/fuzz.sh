#!/usr/bin/env bash
# Fuzzes the Rust core with cargo-fuzz (libFuzzer + AddressSanitizer), each target for a
# bounded time, starting from the committed corpora in rust_core/fuzz/corpus/<target>.
#
#   scripts/fuzz.sh [SECONDS]     # default 60 s per target
#
# Targets: parse (header::parse_file, no key) and open_decrypt (open with the test vectors'
# key, read every tensor, some ranges, verify). The committed corpora and spec/vectors seed the
# runs; new inputs go to a scratch directory, so the committed corpora stay as they are; to grow them, run `cargo +nightly fuzz run -O <target>
# corpus/<target>` in rust_core/fuzz and then `cargo +nightly fuzz cmin -O <target>`.
#
# Exits non-zero on a crash, panic, timeout (an input taking over 10 s) or out-of-memory
# (over 2 GiB); the input is left in rust_core/fuzz/artifacts/<target>/ and the command to
# reproduce it is printed. Needs the nightly toolchain (rustup toolchain install nightly);
# installs cargo-fuzz from crates.io if it is missing. Build output goes to
# $CARGO_TARGET_DIR, by default ~/.cache/enctensor/fuzz-target, so that a machine that keeps
# its home directory builds incrementally.
set -euo pipefail

per_target="${1:-60}"
if ! [[ "$per_target" =~ ^[0-9]+$ ]] || [ "$per_target" -lt 1 ]; then
  echo "usage: $0 [SECONDS]  (seconds of fuzzing per target, default 60)" >&2
  exit 2
fi
cd "$(dirname "$0")/../rust_core/fuzz"
start=$(date +%s)

if ! cargo +nightly --version >/dev/null 2>&1; then
  # CI must fuzz; a developer without nightly gets a loud skip rather than a failed suite.
  if [ "${CI:-}" = "true" ]; then
    echo "fuzz.sh: the nightly Rust toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
  fi
  echo "fuzz.sh: SKIPPED: no nightly Rust toolchain (rustup toolchain install nightly); CI runs it" >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz =="
  cargo install cargo-fuzz --locked
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/enctensor/fuzz-target}"

targets=(parse open_decrypt)
echo "== building fuzz targets (${targets[*]}) =="
cargo +nightly fuzz build -O

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${per_target} s =="
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  set +e
  # New inputs go to the scratch directory; the committed corpus and the spec vectors seed it.
  cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" ../../spec/vectors -- \
    -max_total_time="$per_target" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" | sed "s/^/$t: /" || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | sed "s/^/$t: /" || true
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "fuzz.sh: target $t FAILED (exit $rc):" >&2
    grep -E -A40 'ERROR: libFuzzer|panicked at|SUMMARY|Test unit written to' "$log" | head -80 >&2 || tail -50 "$log" >&2
    for a in "artifacts/$t"/*; do
      [ -e "$a" ] && echo "reproduce: (cd rust_core/fuzz && cargo +nightly fuzz run -O $t $a)" >&2
    done
  fi
done
echo "== fuzz.sh done in $(( $(date +%s) - start )) s (status $status) =="
exit "$status"
