#!/usr/bin/env bash
# GPU benchmark for a lent device (JAX + PyTorch preinstalled there). whisper-at travels as a wheel in .whl/:
#   python3 -m pip download --no-deps -d .whl whisper-at==0.5
# Writes results to ${OUT:-.}/gpu_*.json and prints markdown tables.
set -uo pipefail
OUT=${OUT:-.}
source "$(dirname "$0")/device_env.sh"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
python3 benchmarks/gpu.py --size large-v2 --batch 16 --mode tl_down_tr_512_1_8 --rounds 3 --dtypes bfloat16 --json "$OUT/gpu_large_v2.json" 2>&1 | grep -v Warning

