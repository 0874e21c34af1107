"""Transcription on a GPU: do our results there equal this CPU's (and so openai-whisper's), and how fast is it?

    python benchmarks/gpu_asr.py --reference DIR          # here, on the CPU: writes DIR/reference.json + inputs
    python benchmarks/gpu_asr.py --check DIR --json OUT    # on the lent GPU (benchmarks/gpu_asr.sh)

The inputs are ``benchmarks/transcribe.py``'s (a 30-s clip and a ~3-min file made from tests/data/speech_en.flac).
``--reference`` records, on the CPU, the tiny.en encoder's final states on the clip's window, every segment's
tokens of ``transcribe`` in both modes (openai-whisper's defaults, temperature fallback included) and the words of
``transcribe(word_timestamps=True, temperature=0)`` on the long file in both modes (the CPU results are the ones
the test suite holds equal to openai-whisper's). ``--check`` repeats them on the GPU with the package as it is
(float32 products at HIGHEST precision, ``model.matmul_precision``) and reports the encoder's max abs diff to the
CPU, whether every segment's tokens are the same, how many words differ in text or in start / end time (0.01 s,
the unit they are rounded to) and the largest probability difference, and warm transcription times of the long
file (with fallback). Speed against openai-whisper on the same GPU: ``benchmarks/word_timestamps.py --device cuda``
(greedy, so every implementation does the same work).
"""

from __future__ import annotations

import argparse
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
    from whisper_at_jax.audio import N_FRAMES, N_SAMPLES

    return wat.log_mel_spectrogram(audio, padding=N_SAMPLES)[None, :, :N_FRAMES]


def _segments(result: dict) -> list[list[int]]:
    return [list(map(int, s["tokens"])) for s in result["segments"]]


def _words(result: dict) -> list[list]:
    return [[w["word"], w["start"], w["end"], w["probability"]] for s in result["segments"] for w in s["words"]]


def _transcribe_words(model, audio: np.ndarray, mode: str) -> dict:
    return model.transcribe(audio, mode=mode, batch_size=8, word_timestamps=True, temperature=0.0)


def _compare_words(ours: list[list], want: list[list]) -> dict:
    """How far our words are from the reference's: text, times (rounded to 0.01 s by both) and probabilities."""
    if [w[0] for w in ours] != [w[0] for w in want]:
        return {"words equal": False, "n_words": len(ours), "n_words_cpu": len(want)}
    times = np.array([w[1:3] for w in ours], np.float64) - np.array([w[1:3] for w in want], np.float64)
    probs = np.array([w[3] for w in ours], np.float64) - np.array([w[3] for w in want], np.float64)
    return {"words equal": True, "n_words": len(ours),
            "words with another start or end": int((np.abs(times) > 1e-9).any(axis=1).sum()),
            "max time diff_s": round(float(np.abs(times).max(initial=0.0)), 2),
            "max probability diff": float(np.abs(probs).max(initial=0.0))}


def reference(out_dir: str) -> None:
    import whisper_at_jax as wat

    os.makedirs(out_dir, exist_ok=True)
    paths = make_inputs(out_dir)
    model = wat.load_model("tiny.en", at_head=False)
    clip = wat.load_audio(paths[0])
    final = np.asarray(model.encode(_first_window(wat, clip)))
    np.save(os.path.join(out_dir, "clip_final.npy"), final)
    ref = {"inputs": [os.path.basename(p) for p in paths], "tokens": {}, "text": {}, "words": {}}
    for p in paths:
        audio = wat.load_audio(p)
        for mode in MODES:
            r = model.transcribe(audio, mode=mode, batch_size=8)
            ref["tokens"][f"{os.path.basename(p)}/{mode}"] = _segments(r)
            ref["text"][f"{os.path.basename(p)}/{mode}"] = r["text"]
    for mode in MODES:
        ref["words"][f"{ref['inputs'][1]}/{mode}"] = _words(_transcribe_words(model, wat.load_audio(paths[1]), mode))
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
    report: dict = {"device": str(jax.devices()[0]), "jax": jax.__version__}
    model = wat.load_model("tiny.en", at_head=False)
    final = np.asarray(model.encode(_first_window(wat, audio[ref["inputs"][0]])))
    report["encoder_max_abs_diff_vs_cpu"] = float(np.abs(final - cpu_final).max())
    report["encoder_max_abs"] = float(np.abs(cpu_final).max())
    for name, a in audio.items():
        for mode in MODES:
            r = model.transcribe(a, mode=mode, batch_size=8)
            key = f"{name}/{mode}"
            ours, want = _segments(r), ref["tokens"][key]
            report[f"{key} tokens equal"] = ours == want
            if ours != want:
                report[f"{key} text"] = r["text"]
                report[f"{key} cpu text"] = ref["text"][key]
    _save(report, json_path)
    for mode in MODES:
        key = f"{long_name}/{mode}"
        report[f"{key} word_timestamps"] = _compare_words(_words(_transcribe_words(model, audio[long_name], mode)),
                                                          ref["words"][key])
    _save(report, json_path)
    for mode in MODES:
        first, median = _time(lambda: model.transcribe(audio[long_name], mode=mode, batch_size=8), rounds)
        report[f"{long_name}/{mode} first_s"] = round(first, 3)
        report[f"{long_name}/{mode} median_s"] = round(median, 3)
    _save(report, json_path)
    print(json.dumps(report, indent=1), flush=True)
    return report


def _save(report: dict, path: str) -> None:
    if path:
        from whisper_at_jax.io_utils import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(report, indent=1).encode())


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
