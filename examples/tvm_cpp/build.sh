#!/usr/bin/env bash
# Builds the TVM C++ example with the system C++ compiler against the headers and libraries of
# the apache-tvm (and apache-tvm-ffi) wheel installed for $PYTHON:
#   <out>/libenctensor_tvm.so  "enctensor.load_params" for any TVM runtime host, with the
#                              enctensor C library linked in statically
#   <out>/tvm_cpp_example      the host program (main.cc)
# Usage: examples/tvm_cpp/build.sh <out dir>    (PYTHON defaults to python, CXX to c++)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$(mkdir -p "${1:?usage: build.sh <out dir>}" && cd "$1" && pwd)
PYTHON=${PYTHON:-python}
CXX=${CXX:-c++}
LIB_DIR=${CARGO_TARGET_DIR:-$ROOT/rust_core/target}/release

# The same build as scripts/c_tests.sh (one cargo fingerprint: no rebuild between them).
(cd "$ROOT/rust_core" && cargo rustc --quiet --lib --release --features capi --crate-type cdylib --crate-type staticlib)

# Where the wheels are, without importing TVM.
read -r TVM TVM_FFI < <("$PYTHON" -c '
import importlib.util
print(*(importlib.util.find_spec(m).submodule_search_locations[0] for m in ("tvm", "tvm_ffi")))')
# -isystem: warnings in the TVM headers are not ours to fix.
INCLUDES=(-I"$ROOT/rust_core/include" -I"$HERE" -isystem "$TVM_FFI/include" -isystem "$TVM/include")
TVM_LIBS=(-L"$TVM/lib" -L"$TVM_FFI/lib" -Wl,-rpath,"$TVM/lib:$TVM_FFI/lib" -Wl,--no-as-needed -ltvm_runtime
    -ltvm_ffi -Wl,--as-needed)
CXXFLAGS=(-std=c++17 -O2 -Wall -Wextra -Werror)

# The two translation units compile in parallel (the TVM headers make each take a while).
"$CXX" "${CXXFLAGS[@]}" "${INCLUDES[@]}" -c "$HERE/main.cc" -o "$OUT/main.o" &
MAIN=$!
# --exclude-libs: the Rust library's symbols stay inside libenctensor_tvm.so.
"$CXX" "${CXXFLAGS[@]}" -fPIC -shared "${INCLUDES[@]}" "$HERE/enctensor_tvm.cc" -o "$OUT/libenctensor_tvm.so" \
    "$LIB_DIR/libenctensor_core.a" -Wl,--exclude-libs,ALL "${TVM_LIBS[@]}" -lpthread -ldl -lm
wait "$MAIN"
"$CXX" "$OUT/main.o" -o "$OUT/tvm_cpp_example" \
    -L"$OUT" -Wl,-rpath,'$ORIGIN' -Wl,--no-as-needed -lenctensor_tvm -Wl,--as-needed "${TVM_LIBS[@]}"
rm -f "$OUT/main.o"
