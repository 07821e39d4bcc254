#!/usr/bin/env bash
# Sets up from nothing, then encrypts a sample model, inspects it, loads it back and prints
# what it did and how fast.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh "safetensors"
python examples/demo.py "$@"
