#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: creates (once) and activates the project virtualenv, so
# nothing is ever installed into the system interpreter. ENCTENSOR_VENV overrides its place.
#   source scripts/venv.sh EXTRAS     # e.g. "test,torch,tvm,models" or "" for the bare package
venv="${ENCTENSOR_VENV:-$PWD/.venv}"

# The Rust core builds BoringSSL (boring-sys): cmake, a C/C++ compiler, and libclang for
# bindgen. Installed with apt-get on Debian/Ubuntu when missing.
have_build_deps() {
  command -v cmake >/dev/null && command -v c++ >/dev/null \
    && ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1
}
if ! have_build_deps; then
  echo "== installing build requirements: cmake clang libclang-dev (apt-get) =="
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  if ! command -v apt-get >/dev/null; then
    echo "venv.sh: install cmake, a C/C++ compiler and libclang (for bindgen) first" >&2
    exit 1
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq cmake clang libclang-dev >/dev/null
fi
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating the project virtualenv $venv =="
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --progress-bar off --quiet --upgrade pip
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "== installing into $venv: enctensor${extras:+[$extras]} and its dependencies =="
echo "   (the first run downloads them, torch alone is several GB; then maturin builds the Rust"
echo "   extension: a cold cargo build takes a few minutes, its progress lines follow)"
set +e
python -m pip install --progress-bar off -v -e "$spec" 2>&1 \
  | grep -E --line-buffered '^ *(Compiling|Finished|Built wheel|Successfully installed)|^ERROR|^error'
pip_status=${PIPESTATUS[0]}
set -e
if [ "$pip_status" -ne 0 ]; then
  echo "venv.sh: pip install -e \"$spec\" failed (exit $pip_status); rerun it by hand to see why" >&2
  exit 1
fi
