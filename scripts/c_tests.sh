#!/usr/bin/env bash
# The C ABI's tests: clippy and the Rust unit tests of the `capi` feature; the shared and the
# static library; the committed header checked against a fresh cbindgen run; the C test
# program (tests/c/) built with the system C compiler against each library and run over every
# entry point, every error code, every spec vector and the hostile corpus; and a few runs under
# valgrind (no invalid access, no leak). Called by scripts/test.sh; runs on its own too, with
# PYTHON naming a Python that has enctensor installed (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/rust_core/target}
LIB_DIR=$TARGET_DIR/release
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind; then
    echo "== installing valgrind =="
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq valgrind
fi
if ! need cbindgen; then
    echo "== installing cbindgen =="
    cargo install cbindgen --locked
fi

echo "== rust (capi): clippy, unit tests, shared and static library =="
(
    cd rust_core
    cargo clippy --all-targets --features capi -- -D warnings
    cargo test --quiet --features capi --lib capi::
    # Both library kinds from one build; `cargo rustc` leaves the crate's own crate types
    # (cdylib for Python, rlib) alone.
    cargo rustc --quiet --lib --release --features capi --crate-type cdylib --crate-type staticlib
)

echo "== header: rust_core/include/enctensor.h is what cbindgen makes now =="
(cd rust_core && cbindgen --quiet --config cbindgen.toml --output "$WORK/enctensor.h" src/capi/mod.rs)
if ! diff -u rust_core/include/enctensor.h "$WORK/enctensor.h"; then
    echo "rust_core/include/enctensor.h is stale: regenerate it with" >&2
    echo "  (cd rust_core && cbindgen --config cbindgen.toml --output include/enctensor.h src/capi/mod.rs)" >&2
    exit 1
fi
# The header stands alone in strict C99 and in C++.
cc -std=c99 -pedantic -Wall -Werror -fsyntax-only -include rust_core/include/enctensor.h -x c /dev/null
c++ -std=c++17 -Wall -Werror -fsyntax-only -include rust_core/include/enctensor.h -x c++ /dev/null

echo "== fixtures: the vectors' manifest and a file large enough for the parallel path =="
"$PYTHON" tests/c/vectors_manifest.py >"$WORK/manifest.txt"
# From $WORK: the package comes from the environment, not from a source tree without its
# compiled core.
(cd "$WORK" && "$PYTHON" - "$WORK/big.enct") <<'EOF'
import sys

import numpy as np

import enctensor

a = np.arange((3 << 20) // 4, dtype=np.uint32)
b = (np.arange((5 << 20) // 4, dtype=np.uint64) * 3).astype(np.uint32)
enctensor.save({"a": a, "b": b}, sys.argv[1], key=bytes(range(32)))
EOF

echo "== build the C tests against the shared and the static library =="
CFLAGS=(-std=c11 -O1 -g -Wall -Wextra -Werror -Irust_core/include -Itests/c)
SOURCES=(tests/c/test_capi.c tests/c/sha256.c)
cc "${CFLAGS[@]}" "${SOURCES[@]}" -L"$LIB_DIR" -lenctensor_core -Wl,-rpath,"$LIB_DIR" -lpthread \
    -o "$WORK/test_capi_shared"
# The system libraries the static library needs on Linux (`cargo rustc -- --print
# native-static-libs` lists them for a target), and the C++ runtime: BoringSSL, which the
# AES-GCM backend bundles, is C++ and its build script does not declare it.
cc "${CFLAGS[@]}" "${SOURCES[@]}" "$LIB_DIR/libenctensor_core.a" -lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl \
    -o "$WORK/test_capi_static"
if ldd "$WORK/test_capi_static" | grep -q libenctensor_core; then
    echo "test_capi_static links the shared library" >&2
    exit 1
fi

ARGS=("$WORK/manifest.txt" spec/vectors "$WORK/big.enct")
echo "== C tests: entry points, error codes, spec vectors (shared library) =="
"$WORK/test_capi_shared" all "${ARGS[@]}"
echo "== C tests: the same against the static library =="
"$WORK/test_capi_static" all "${ARGS[@]}"
echo "== C tests: hostile inputs (the fuzz corpora and every vector file, with the vectors' key) =="
"$WORK/test_capi_static" hostile rust_core/fuzz/corpus/open_decrypt rust_core/fuzz/corpus/parse spec/vectors
echo "== C tests: every one-bit change and truncations of three valid files =="
"$WORK/test_capi_static" flip spec/vectors/signature_verified.enct spec/vectors/dtype_all.enct \
    spec/vectors/header_unicode.enct

echo "== the README's C example (examples/c/load_model.c) =="
cc -std=c11 -Wall -Wextra -Werror -Irust_core/include examples/c/load_model.c -L"$LIB_DIR" -lenctensor_core \
    -Wl,-rpath,"$LIB_DIR" -o "$WORK/load_model"
printf '%s\n' 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f >"$WORK/key.hex"
printf '%s\n' 404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f >"$WORK/wrong.hex"
test "$("$WORK/load_model" "$WORK/big.enct" "$WORK/key.hex")" = "a U32 3145728 bytes
b U32 5242880 bytes"
if "$WORK/load_model" "$WORK/big.enct" "$WORK/wrong.hex" 2>"$WORK/err.txt"; then
    echo "load_model opened the file with a wrong key" >&2
    exit 1
fi
grep -q "no key opens" "$WORK/err.txt"

echo "== valgrind: entry points and a few hostile files, no error and no leak =="
VALGRIND=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
    --show-leak-kinds=definite,indirect)
"${VALGRIND[@]}" "$WORK/test_capi_shared" api "${ARGS[@]}"
mapfile -t HOSTILE < <(find rust_core/fuzz/corpus/open_decrypt -type f | sort | head -n 6)
"${VALGRIND[@]}" "$WORK/test_capi_shared" hostile "${HOSTILE[@]}" \
    spec/vectors/chunk_ciphertext_flipped.enct spec/vectors/signature_verified.enct \
    spec/vectors/json_deep_nesting.enct spec/vectors/tensor_shape_zero_first_with_overflow.enct \
    spec/vectors/chunks_several_tensors.enct
echo "c_tests: all passed"
