#!/usr/bin/env bash
# The GPU check: model-only and pipeline throughput at batch sizes 64/256/1024 in float16
# and float32, and max |delta similarity| between the two, on a CUDA machine, in a few minutes.
#
#   scripts/gpu_check.sh              # on a CUDA machine; elsewhere it says so and exits 0
#   scripts/gpu_check.sh --smoke      # the same code paths on CPU with a tiny model (CI)
#
# Installs nothing beyond the project: the machine's own torch (with CUDA) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import tis_ray" 2>/dev/null; then
  "$PYTHON" -m pip install -q -e .
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
