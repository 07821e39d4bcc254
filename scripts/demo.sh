#!/usr/bin/env bash
# Sets up from nothing, then encrypts a sample model, inspects it, loads it back and prints
# what it did and how fast.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --progress-bar off -e .
python3 examples/demo.py "$@"
