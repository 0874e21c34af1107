"""tiny.en encoder on 30-s windows: ours (jit, warm; fp32 and bf16) vs openai-whisper PyTorch and CTranslate2.

    python benchmarks/encoder.py [--rounds 5] [--isolated] [--json out.json]

All implementations run the same real weights (the embedded tiny.en) on the same log-mel input. By default they
share one process and are timed in interleaved rounds, so load drifts hit all alike. ``--isolated`` times each
implementation in a fresh process of its own instead (one process per implementation and round, the processes of a
round run one after another; each reports the median of ``--calls`` warm calls, the table the median over rounds):
libraries loaded side by side can slow each other (thread pools, allocator state), and PyTorch's batch-1 time moves
by ~10% from one process to the next, so a single process's ratio can mislead. Ratios are what to quote (time /
PyTorch time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import machine, markdown_table, time_alternating, write_json  # noqa: E402

PYTORCH, CT2, OURS, OURS_BF16 = ("openai-whisper (PyTorch fp32)", "CTranslate2 fp32", "ours (JAX fp32)",
                                 "ours (JAX bf16 compute)")
IMPLEMENTATIONS = (PYTORCH, CT2, OURS, OURS_BF16)


def _mel(batch: int) -> np.ndarray:
    """The same [batch, 80, 3000] log-mel input in every process: openai-whisper's front end on seeded noise."""
    import torch
    import whisper

    audio = np.random.default_rng(batch).standard_normal((batch, 480000)).astype(np.float32) * 0.1
    return np.stack([whisper.log_mel_spectrogram(torch.from_numpy(a)).numpy() for a in audio])


def _runner(name: str, mel: np.ndarray) -> tuple[Callable[[], object], float | None]:
    """A zero-argument call of implementation ``name`` on ``mel``, and ours' first-call (compile) seconds."""
    import jax

    import whisper_at_jax as wat
    from whisper_at_jax.convert import embedded_model_dir

    if name == PYTORCH:
        import torch

        ref = wat.load_model("tiny.en", at_head=False).to_openai_whisper()
        mel_t = torch.from_numpy(mel)

        def torch_run():
            with torch.inference_mode():
                ref.encoder(mel_t)

        return torch_run, None
    if name == CT2:
        import ctranslate2

        ct2 = ctranslate2.models.Whisper(str(embedded_model_dir("tiny.en")[0]), device="cpu",
                                         compute_type="float32", intra_threads=os.cpu_count())
        return lambda: ct2.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True), None
    model = wat.load_model("tiny.en", at_head=False, dtype="bfloat16" if name == OURS_BF16 else "float32")
    mel_j = jax.device_put(mel)
    t0 = time.perf_counter()
    jax.block_until_ready(model.encode(mel_j))
    return (lambda: jax.block_until_ready(model.encode(mel_j))), time.perf_counter() - t0


def _time_one(name: str, batch: int, calls: int) -> dict:
    """Child process of ``--isolated``: one implementation, warm, median of ``calls`` calls."""
    fn, compile_s = _runner(name, _mel(batch))
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "compile_s": compile_s}


def _time_isolated(batch: int, rounds: int, calls: int) -> tuple[dict[str, float], float | None]:
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    compile_s = None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "one.json")
        for _ in range(rounds):
            for name in IMPLEMENTATIONS:
                subprocess.run([sys.executable, os.path.abspath(__file__), "--only", name, "--batches", str(batch),
                                "--calls", str(calls), "--json", out], check=True)
                with open(out) as f:
                    result = json.load(f)
                times[name].append(result["seconds"])
                compile_s = result["compile_s"] if name == OURS else compile_s
    return {name: statistics.median(v) for name, v in times.items()}, compile_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--isolated", action="store_true", help="each implementation in a fresh process of its own")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per process with --isolated")
    ap.add_argument("--only", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # --isolated's child process
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    if args.only:
        write_json(args.json, _time_one(args.only, batches[0], args.calls))
        return

    import jax
    import torch

    rows = []
    load_start = os.getloadavg()[0]
    for b in batches:
        if args.isolated:
            t, compile_s = _time_isolated(b, args.rounds, args.calls)
        else:
            mel = _mel(b)
            runners = {name: _runner(name, mel) for name in IMPLEMENTATIONS}
            compile_s = runners[OURS][1]
            t = time_alternating({name: fn for name, (fn, _) in runners.items()}, rounds=args.rounds)
        base = t[PYTORCH]
        for name, secs in t.items():
            rows.append({"batch": b, "implementation": name, "seconds": f"{secs:.3f}",
                         "vs PyTorch": f"{secs / base:.2f}x",
                         "note": f"first call (compile) {compile_s:.1f} s" if name == OURS else ""})
    # Other jobs share this machine: the 1-minute load average at start and end says how loaded it was.
    load = (load_start, os.getloadavg()[0])
    method = (f"each in its own process, median over {args.rounds} rounds of {args.calls} calls" if args.isolated
              else f"one process, {args.rounds} interleaved rounds")
    print(f"tiny.en encoder, 30-s windows, {machine()}, jax {jax.__version__}, torch {torch.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, {method}, load average {load[0]:.1f} -> {load[1]:.1f}")
    print(markdown_table(rows, ["batch", "implementation", "seconds", "vs PyTorch", "note"]))
    if args.json:
        write_json(args.json, {"machine": machine(), "method": method, "load_average": load, "rows": rows})


if __name__ == "__main__":
    main()
