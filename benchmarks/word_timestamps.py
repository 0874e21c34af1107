"""What word timestamps cost: tiny.en transcription with and without ``word_timestamps``, ours (sequential and
batched) against openai-whisper on the same weights, greedy without fallback (every implementation does the same
decoding work).

    python benchmarks/word_timestamps.py [--rounds 3] [--device cpu|cuda] [--json out.json]

Input: ``benchmarks/transcribe.py``'s 176-s file (the project's speech sample twelve times with pauses). Each
implementation is timed alternately in one process after one untimed call (ours then has its programs compiled);
median of ``--rounds`` calls. ``--device cuda`` (a lent GPU, ``benchmarks/gpu_asr.sh``) runs openai-whisper's
PyTorch model there in fp32; ours runs on JAX's default device either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, markdown_table, write_json  # noqa: E402
from transcribe import make_inputs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where openai-whisper's PyTorch model runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import statistics

    import torch
    import whisper

    import whisper_at_jax as wat
    from whisper_at_jax.audio import SAMPLE_RATE, load_audio

    model = wat.load_model("tiny.en", at_head=False)
    ref = model.to_openai_whisper().to(args.device)
    with tempfile.TemporaryDirectory() as d:
        audio = load_audio(make_inputs(d)[1])
    common = dict(temperature=0.0)
    runs = {
        "openai-whisper": lambda: whisper.transcribe(ref, torch.from_numpy(audio), fp16=False, verbose=None,
                                                     **common),
        "openai-whisper, words": lambda: whisper.transcribe(ref, torch.from_numpy(audio), fp16=False, verbose=None,
                                                            word_timestamps=True, **common),
        "ours sequential": lambda: model.transcribe(audio, **common),
        "ours sequential, words": lambda: model.transcribe(audio, word_timestamps=True, **common),
        "ours batched (8)": lambda: model.transcribe(audio, mode="batched", **common),
        "ours batched (8), words": lambda: model.transcribe(audio, mode="batched", word_timestamps=True, **common),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    rows = []
    for name, t in med.items():
        base = name.removesuffix(", words")
        rows.append({"run": name, "seconds": f"{t:.2f}",
                     "vs without words": f"{t / med[base]:.2f}x" if base != name else "",
                     "vs openai-whisper, same words setting": f"{t / med['openai-whisper' + name[len(base):]]:.2f}x"
                     if not name.startswith("openai") else ""})
    print(f"tiny.en, {len(audio) / SAMPLE_RATE:.0f}-s file, greedy, {args.rounds} rounds, {machine()}")
    print(markdown_table(rows, ["run", "seconds", "vs without words", "vs openai-whisper, same words setting"]))
    if args.json:
        write_json(args.json, {"machine": machine(), "seconds": med, "rows": rows})


if __name__ == "__main__":
    main()
