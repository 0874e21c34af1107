"""tiny.en encoder on 30-s windows: ours (jit, warm; fp32 and bf16) vs openai-whisper PyTorch and CTranslate2.

    python benchmarks/encoder.py [--rounds 5] [--json out.json]

All implementations run the same real weights (the embedded tiny.en) on the same log-mel input, in one process,
timed in interleaved rounds; ratios are what to quote (time / PyTorch time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import machine, markdown_table, time_alternating, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import ctranslate2
    import jax
    import torch
    import whisper

    import whisper_at_jax as wat
    from whisper_at_jax.convert import embedded_model_dir

    model = wat.load_model("tiny.en", at_head=False)
    model_bf16 = wat.load_model("tiny.en", at_head=False, dtype="bfloat16")
    ref = model.to_openai_whisper()
    ct2 = ctranslate2.models.Whisper(str(embedded_model_dir("tiny.en")[0]), device="cpu", compute_type="float32",
                                     intra_threads=os.cpu_count())
    rng = np.random.default_rng(0)
    rows = []
    load_start = os.getloadavg()[0]
    for b in [int(x) for x in args.batches.split(",")]:
        audio = rng.standard_normal((b, 480000)).astype(np.float32) * 0.1
        mel = np.stack([whisper.log_mel_spectrogram(torch.from_numpy(a)).numpy() for a in audio])
        mel_j = jax.device_put(mel)
        mel_t = torch.from_numpy(mel)
        t0 = time.perf_counter()
        jax.block_until_ready(model.encode(mel_j))
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(model_bf16.encode(mel_j))

        def torch_run():
            with torch.inference_mode():
                ref.encoder(mel_t)

        fns = {
            "openai-whisper (PyTorch fp32)": torch_run,
            "CTranslate2 fp32": lambda: ct2.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True),
            "ours (JAX fp32)": lambda: jax.block_until_ready(model.encode(mel_j)),
            "ours (JAX bf16 compute)": lambda: jax.block_until_ready(model_bf16.encode(mel_j)),
        }
        t = time_alternating(fns, rounds=args.rounds)
        base = t["openai-whisper (PyTorch fp32)"]
        for name, secs in t.items():
            rows.append({"batch": b, "implementation": name, "seconds": f"{secs:.3f}",
                         "vs PyTorch": f"{secs / base:.2f}x",
                         "note": f"first call (compile) {compile_s:.1f} s" if name == "ours (JAX fp32)" else ""})
    # Other jobs share this machine: the 1-minute load average at start and end says how loaded it was.
    load = (load_start, os.getloadavg()[0])
    print(f"tiny.en encoder, 30-s windows, {machine()}, jax {jax.__version__}, torch {torch.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, {args.rounds} rounds, load average {load[0]:.1f} -> "
          f"{load[1]:.1f}")
    print(markdown_table(rows, ["batch", "implementation", "seconds", "vs PyTorch", "note"]))
    if args.json:
        write_json(args.json, {"machine": machine(), "load_average": load, "rows": rows})


if __name__ == "__main__":
    main()
