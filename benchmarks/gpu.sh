#!/usr/bin/env bash
# GPU benchmark for a lent device (JAX + PyTorch preinstalled there). whisper-at travels as a wheel in .whl/:
#   python3 -m pip download --no-deps -d .whl whisper-at==0.5
# Writes results to ${OUT:-.}/gpu_*.json and prints markdown tables.
set -uo pipefail
OUT=${OUT:-.}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
python3 benchmarks/gpu.py --size large-v2 --batch 16 --mode tl_down_tr_512_1_8 --rounds 3 --dtypes bfloat16 --json "$OUT/gpu_large_v2.json" 2>&1 | grep -v Warning

