"""tiny.en encoder: the CPU program (per batch item, row blocks) vs the batched program (what accelerators run, and
what CPU ran before) vs openai-whisper PyTorch, in one process, interleaved rounds.

    python benchmarks/encoder_programs.py BATCH ROUNDS      # e.g. 1 15, 8 3
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import torch

import whisper_at_jax as wat
from whisper_at_jax import model as M

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import time_alternating  # noqa: E402


def main() -> None:
    batch, rounds = int(sys.argv[1]), int(sys.argv[2])
    m = wat.load_model("tiny.en", at_head=False)
    mel = np.random.default_rng(0).standard_normal((batch, 80, 3000)).astype(np.float32)
    mel_j, mel_t = jax.device_put(mel), torch.from_numpy(mel)
    batched = jax.jit(lambda p, x: M.encode_batched(M.encoder_pieces(p["encoder"], m.dims.n_audio_head), x)[0])
    ref = m.to_openai_whisper()

    def torch_run():
        with torch.inference_mode():
            ref.encoder(mel_t)

    fns = {"batched program (accelerators; CPU before)": lambda: jax.block_until_ready(batched(m.params, mel_j)),
           "CPU program (now)": lambda: jax.block_until_ready(m.encode(mel_j)),
           "openai-whisper (PyTorch fp32)": torch_run}
    load0 = os.getloadavg()[0]
    times = time_alternating(fns, rounds=rounds)
    base = times["openai-whisper (PyTorch fp32)"]
    for name, t in times.items():
        print(f"batch {batch}  {name:44s} {t:.3f} s  {t / base:.2f}x PyTorch")
    print(f"{rounds} rounds, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
