"""Transcription speed on this CPU, tiny.en, greedy: ours (sequential, batched) vs openai-whisper and faster-whisper.

    python benchmarks/transcribe.py [--audio FILE ...] [--rounds 3] [--json out.json]

Without ``--audio`` two inputs are made from the project's speech sample (tests/data/speech_en.flac): a 30-s clip
and a ~3-min file (the sample repeated with pauses and gain changes). Each implementation runs in its own
subprocess (so peak memory is its own): load, a first call (compile/warm-up, reported separately), then
``rounds`` timed calls; the median is compared with openai-whisper's. All decode greedily (beam 1, temperature
fallback as each library does by default; faster-whisper's ``BatchedInferencePipeline`` also applies its VAD).
For ours, XLA compilations are counted (``jax.monitoring``'s backend-compile events): how many the first call
made and how long they took, and how many the timed calls made (0 when every shape is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import machine, markdown_table, write_json  # noqa: E402

# jax's monitoring event for one XLA compilation (jax/_src/dispatch.py BACKEND_COMPILE_EVENT)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
IMPLEMENTATIONS = ["openai-whisper", "ours sequential", "ours batched (8)", "faster-whisper fp32",
                   "faster-whisper int8", "faster-whisper batched fp32 (8)"]


def make_inputs(out_dir: str) -> list[str]:
    import numpy as np
    import soundfile as sf

    speech, sr = sf.read(os.path.join(ROOT, "tests", "data", "speech_en.flac"), dtype="float32")
    pause = np.zeros(sr, np.float32)
    clip = np.concatenate([speech, pause, speech])[: 30 * sr]
    pieces = []
    for i in range(12):
        pieces += [speech * (0.5 + 0.1 * (i % 5)), pause[: sr // 2 + (i % 3) * sr // 2]]
    long = np.concatenate(pieces)
    paths = [os.path.join(out_dir, "clip_30s.wav"), os.path.join(out_dir, f"long_{len(long) // sr}s.wav")]
    sf.write(paths[0], clip, sr)
    sf.write(paths[1], long, sr)
    return paths


def worker(impl: str, audio_path: str, rounds: int, greedy_only: bool = False) -> dict:
    """Runs in a subprocess: returns load/first/median seconds and peak RSS for one implementation (for ours
    also the number and seconds of XLA compilations in the first call, and the number in the timed calls)."""
    compiles: list[float] = []  # seconds of each backend compilation (ours only)
    # temperature 0 alone: no fallback, so every implementation decodes the same greedy tokens once per window.
    # With the default fallback, a window that trips a threshold is decoded again by sampling, and how often
    # depends on each library's random draws (torch's are unseeded): a run-to-run lottery, not speed.
    temp = {"temperature": 0.0} if greedy_only else {}
    t0 = time.perf_counter()
    if impl == "openai-whisper":
        import whisper_at_jax as wat

        ref = wat.load_model("tiny.en", at_head=False).to_openai_whisper()
        audio = __import__("soundfile").read(audio_path, dtype="float32")[0]
        run = lambda: ref.transcribe(audio, fp16=False, language="en", **temp)["text"]  # noqa: E731
    elif impl.startswith("ours"):
        import jax.monitoring

        import whisper_at_jax as wat

        def on_duration(event: str, seconds: float, **kwargs) -> None:
            if event == BACKEND_COMPILE_EVENT:
                compiles.append(seconds)

        jax.monitoring.register_event_duration_secs_listener(on_duration)

        model = wat.load_model("tiny.en", at_head=False)
        audio = wat.load_audio(audio_path)
        mode = "batched" if "batched" in impl else "sequential"
        run = lambda: model.transcribe(audio, mode=mode, batch_size=8, **temp)["text"]  # noqa: E731
    else:
        import soundfile as sf
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from whisper_at_jax.convert import embedded_model_dir

        compute = "int8" if "int8" in impl else "float32"
        fw = WhisperModel(str(embedded_model_dir("tiny.en")[0]), device="cpu", compute_type=compute,
                          cpu_threads=os.cpu_count())
        audio = sf.read(audio_path, dtype="float32")[0]
        if "batched" in impl:
            pipe = BatchedInferencePipeline(fw)
            run = lambda: " ".join(s.text for s in pipe.transcribe(audio, language="en", beam_size=1,  # noqa: E731
                                                                  batch_size=8, **temp)[0])
        else:
            run = lambda: " ".join(s.text for s in fw.transcribe(audio, language="en", beam_size=1, **temp)[0])  # noqa: E731
    load_s = time.perf_counter() - t0
    del compiles[:]  # loading's own (small) programs are not the transcription's
    t0 = time.perf_counter()
    text = run()
    first_s = time.perf_counter() - t0
    first_compiles = list(compiles)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out = {"load_s": load_s, "first_s": first_s, "median_s": statistics.median(times),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "text": text}
    if impl.startswith("ours"):
        out.update(first_compiles=len(first_compiles), first_compile_s=sum(first_compiles),
                   later_compiles=len(compiles) - len(first_compiles))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", nargs="*")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--greedy-only", action="store_true",
                    help="temperature 0 without fallback for every implementation (the same work for all)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.audio[0], args.rounds, args.greedy_only)))
        return
    tmp = tempfile.mkdtemp(prefix="wat_bench_")
    inputs = args.audio or make_inputs(tmp)
    import soundfile as sf

    rows = []
    for path in inputs:
        dur = sf.info(path).duration
        results = {}
        for impl in args.impls.split(","):
            out = subprocess.run([sys.executable, __file__, "--worker", impl, "--audio", path, "--rounds",
                                  str(args.rounds)] + ["--greedy-only"] * args.greedy_only,
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{impl} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{os.path.basename(path)} {impl}: {results[impl]['median_s']:.2f} s", file=sys.stderr)
        base = results.get("openai-whisper", {}).get("median_s")
        for impl, r in results.items():
            rows.append({"audio": f"{os.path.basename(path)} ({dur:.0f} s)", "implementation": impl,
                         "seconds": f"{r['median_s']:.2f}",
                         "vs openai-whisper": f"{r['median_s'] / base:.2f}x" if base else "",
                         "first call": f"{r['first_s']:.1f} s", "load": f"{r['load_s']:.1f} s",
                         "peak RSS": f"{r['peak_rss_mb']:.0f} MB",
                         "compiles (first call)": (f"{r['first_compiles']} ({r['first_compile_s']:.1f} s)"
                                                   if "first_compiles" in r else ""),
                         "compiles (timed)": r.get("later_compiles", "")})
    print(f"tiny.en, greedy{' without temperature fallback' if args.greedy_only else ' + fallback'}, {machine()}")
    print(markdown_table(rows, ["audio", "implementation", "seconds", "vs openai-whisper", "first call",
                                "compiles (first call)", "compiles (timed)", "load", "peak RSS"]))
    if args.json:
        write_json(args.json, {"machine": machine(), "greedy_only": args.greedy_only, "rows": rows})


if __name__ == "__main__":
    main()
