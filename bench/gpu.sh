#!/usr/bin/env bash
# ResNet-50 training throughput on one GPU (synthetic 224 px, bf16-mixed, channels_last):
# tlcli vs a plain PyTorch loop in the same run, ratio printed and written to bench/results/gpu.md.
#   bench/gpu.sh                    # eager
#   bench/gpu.sh --compile          # torch.compile on both sides (first steps compile)
#   bench/gpu.sh --batch-size 128 --steps 30 --rounds 3
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi missing or failing); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" -m bench.gpu "$@"
