#!/usr/bin/env bash
# Head-training throughput on a lent GPU: the real trainer (benchmarks/train_throughput.py), tiny.en and large-v2
# sizes, online (frozen encoder inside the step) and cached. ml_collections travels as a wheel in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections
set -uo pipefail
OUT=${OUT:-.}
source "$(dirname "$0")/device_env.sh"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
J="$OUT/gpu_train.jsonl"
B=benchmarks/train_throughput.py
python3 $B --size tiny.en --modes online,cached --batch 48 --steps 30 --json "$J" 2>&1 | grep -v Warning
python3 $B --size large-v2 --modes online --head tl_down_tr_512_1_8 --encoder-dtype bfloat16 --batch 48 --steps 20 --json "$J" 2>&1 | grep -v Warning
python3 $B --size large-v2 --modes online,cached --head tl_tr_1_8 --encoder-dtype bfloat16 --batch 48 --steps 20 --json "$J" 2>&1 | grep -v Warning
python3 $B --size large-v2 --modes online --head tl_down_tr_512_1_8 --encoder-dtype float32 --batch 48 --steps 10 --json "$J" 2>&1 | grep -v Warning
