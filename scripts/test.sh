#!/usr/bin/env bash
# Sets up from nothing and runs every test: Rust (fmt, clippy, cargo test) and Python (ruff,
# stub check, pytest, including every spec vector through both readers). Fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== install (pip; builds the Rust extension with maturin) =="
python3 -m pip install --quiet --progress-bar off -e ".[test,torch,tvm,models]"

echo "== rust: fmt, clippy, tests =="
(
  cd rust_core
  cargo fmt --check
  cargo clippy --all-targets -- -D warnings
  cargo clippy --all-targets --features python -- -D warnings
  cargo test
)

echo "== python: ruff, stubtest =="
python3 -m ruff check .
python3 -m ruff format --check .
(cd /tmp && python3 -m mypy.stubtest enctensor._core)

echo "== rust: bounded fuzzing (cargo-fuzz, 30 s per target) =="
bash scripts/fuzz.sh 30

echo "== python: pytest =="
set +e
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
