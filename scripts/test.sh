#!/usr/bin/env bash
# Sets up from nothing and runs every test: Rust (fmt, clippy, cargo test) and Python (ruff,
# stub check, mypy, pytest, including every spec vector through both readers). Fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh "test,torch,tvm,models"

echo "== rust: fmt, clippy, tests =="
(
  cd rust_core
  cargo fmt --check
  cargo clippy --all-targets -- -D warnings
  cargo clippy --all-targets --features python -- -D warnings
  cargo test
)

echo "== python: ruff, stubtest, mypy =="
python -m ruff check .
python -m ruff format --check .
(cd /tmp && python -m mypy.stubtest enctensor._core)
python -m mypy enctensor

echo "== rust: bounded fuzzing (cargo-fuzz, 30 s per target) =="
bash scripts/fuzz.sh 30

echo "== C ABI: libraries, header, C tests over every vector and the hostile corpus, valgrind =="
PYTHON=python bash scripts/c_tests.sh

echo "== python: pytest =="
set +e
# -n auto: pytest-xdist on every core (5.5 min instead of about 10 here); "$@" can override it.
python -m pytest -q -p no:cacheprovider -n auto "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
