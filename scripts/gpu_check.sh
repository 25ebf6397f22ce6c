#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py says what it measures): run it from anywhere.
#
#   scripts/gpu_check.sh [--out DIR]   # on a CUDA machine; without one it exits 1, saying why
#   scripts/gpu_check.sh --smoke       # every path on CPU with a tiny model (CI)
#
# Installs nothing: the check runs tis_ray from this source tree with the machine's own
# Python, torch and transformers (the lent GPU machine has no package registry). Its
# pipeline part needs Ray, and is skipped, saying so, where Ray is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
