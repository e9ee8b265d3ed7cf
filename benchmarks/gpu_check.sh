#!/usr/bin/env bash
# GPU check (issue 6): training images/s with CE vs RCL on ResNet-50 and ViT-S/16 at 224 px,
# and a short fine-tuning run; prints one table, writes benchmarks/results/gpu_check.{json,md}.
# Run from the repository root with .venv present:   bash benchmarks/gpu_check.sh [--compile]
# On a machine without a GPU:                          bash benchmarks/gpu_check.sh --cpu   (tiny smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "gpu_check: $PY not found; create the environment first (make setup)" >&2
  exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout 290 "$PY" -m benchmarks.gpu_check "$@"
