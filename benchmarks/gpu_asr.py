"""Transcription on a GPU: do our results there equal this CPU's (and so openai-whisper's), and how fast is it?

    python benchmarks/gpu_asr.py --reference DIR          # here, on the CPU: writes DIR/reference.json + inputs
    python benchmarks/gpu_asr.py --check DIR --json OUT    # on the lent GPU (benchmarks/gpu_asr.sh)

The inputs are ``benchmarks/transcribe.py``'s (a 30-s clip and a ~3-min file made from tests/data/speech_en.flac).
``--reference`` records, on the CPU, the tiny.en encoder's final states on the clip's window and every segment's
tokens of ``transcribe`` in both modes (the CPU results are the ones the test suite holds equal to openai-whisper's).
``--check`` repeats them on the GPU twice: with JAX's default float32 matmul precision there (TF32 on Hopper) and
under ``jax.default_matmul_precision("highest")``; it reports the encoder's max abs diff to the CPU, whether
every segment's tokens are the same, and warm transcription times of the long file, next to openai-whisper's
PyTorch on the same GPU and weights (fp32 and fp16), when ``import whisper`` works there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from transcribe import make_inputs  # noqa: E402

MODES = ("sequential", "batched")


def _first_window(wat, audio: np.ndarray):
    """The mel of the audio's first 30-s window (zero-padded, as openai-whisper pads), batched."""
    return wat.log_mel_spectrogram(audio, padding=480000)[None, :, :3000]


def _segments(result: dict) -> list[list[int]]:
    return [list(map(int, s["tokens"])) for s in result["segments"]]


def reference(out_dir: str) -> None:
    import whisper_at_jax as wat

    os.makedirs(out_dir, exist_ok=True)
    paths = make_inputs(out_dir)
    model = wat.load_model("tiny.en", at_head=False)
    clip = wat.load_audio(paths[0])
    final = np.asarray(model.encode(_first_window(wat, clip)))
    np.save(os.path.join(out_dir, "clip_final.npy"), final)
    ref = {"inputs": [os.path.basename(p) for p in paths], "tokens": {}, "text": {}}
    for p in paths:
        audio = wat.load_audio(p)
        for mode in MODES:
            r = model.transcribe(audio, mode=mode, batch_size=8)
            ref["tokens"][f"{os.path.basename(p)}/{mode}"] = _segments(r)
            ref["text"][f"{os.path.basename(p)}/{mode}"] = r["text"]
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f)
    print("reference written to", out_dir)


def _time(fn, rounds: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first


def check(ref_dir: str, rounds: int, json_path: str = "") -> dict:
    """Runs the checks; the report is (re)written to ``json_path`` after each part, so a run cut short by its time
    limit still returns what it measured."""
    import jax

    import whisper_at_jax as wat

    with open(os.path.join(ref_dir, "reference.json")) as f:
        ref = json.load(f)
    cpu_final = np.load(os.path.join(ref_dir, "clip_final.npy"))
    paths = [os.path.join(ref_dir, name) for name in ref["inputs"]]
    if not all(os.path.isfile(p) for p in paths):  # the inputs are made again from the repo's sample: no need to carry
        assert [os.path.basename(p) for p in make_inputs(ref_dir)] == ref["inputs"]
    audio = {os.path.basename(p): wat.load_audio(p) for p in paths}
    long_name = ref["inputs"][1]
    report: dict = {"device": str(jax.devices()[0]), "jax": jax.__version__, "rows": []}
    for precision in ("default", "highest"):
        ctx = jax.default_matmul_precision("highest") if precision == "highest" else contextlib.nullcontext()
        with ctx:
            model = wat.load_model("tiny.en", at_head=False)
            final = np.asarray(model.encode(_first_window(wat, audio[ref["inputs"][0]])))
            row = {"precision": precision, "encoder_max_abs_diff_vs_cpu": float(np.abs(final - cpu_final).max()),
                   "encoder_max_abs": float(np.abs(cpu_final).max())}
            for name, a in audio.items():
                for mode in MODES:
                    r = model.transcribe(a, mode=mode, batch_size=8)
                    key = f"{name}/{mode}"
                    ours, want = _segments(r), ref["tokens"][key]
                    row[f"{key} tokens equal"] = ours == want
                    if ours != want:
                        row[f"{key} text"] = r["text"]
                        row[f"{key} cpu text"] = ref["text"][key]
            for mode in MODES:
                first, median = _time(lambda: model.transcribe(audio[long_name], mode=mode, batch_size=8), rounds)
                row[f"{long_name}/{mode} first_s"] = round(first, 3)
                row[f"{long_name}/{mode} median_s"] = round(median, 3)
        print(json.dumps(row, indent=1), flush=True)
        report["rows"].append(row)
        _save(report, json_path)
    try:
        report["openai-whisper"] = _openai_whisper(audio[long_name], ref["text"][f"{long_name}/sequential"], rounds)
        print(json.dumps(report["openai-whisper"], indent=1), flush=True)
    except ImportError as e:
        report["openai-whisper"] = f"not run: {e}"
    _save(report, json_path)
    return report


def _save(report: dict, path: str) -> None:
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(path + ".tmp", path)


def _openai_whisper(audio: np.ndarray, cpu_text: str, rounds: int) -> dict:
    import torch

    import whisper_at_jax as wat

    cuda = torch.cuda.is_available()
    ref = wat.load_model("tiny.en", at_head=False).to_openai_whisper().to("cuda" if cuda else "cpu")
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    for fp16 in (False, True) if cuda else (False,):
        name = "fp16" if fp16 else "fp32"

        def run(fp16=fp16):
            r = ref.transcribe(audio, fp16=fp16, language="en")
            if cuda:
                torch.cuda.synchronize()
            return r

        text = run()["text"]
        first, median = _time(run, rounds)
        out[f"{name} median_s"] = round(median, 3)
        out[f"{name} text equals our cpu text"] = text == cpu_text
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="write the CPU reference and inputs to this folder")
    ap.add_argument("--check", help="folder written by --reference: check and time on this machine's device")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.reference:
        reference(args.reference)
    if args.check:
        check(args.check, args.rounds, args.json)


if __name__ == "__main__":
    main()
