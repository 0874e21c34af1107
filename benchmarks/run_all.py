"""Run every CPU benchmark of the project and write one summary table (plus each benchmark's own table) into
``docs/benchmarks.md``, between the ``<!-- run_all:begin -->`` and ``<!-- run_all:end -->`` markers.

    python benchmarks/run_all.py [--rounds 2] [--doc docs/benchmarks.md]

Runs, each in its own process and in this order: ``encoder.py`` (tiny.en encoder vs openai-whisper's PyTorch and
CTranslate2; once in one process, once with ``--isolated``: each implementation in processes of its own),
``cpu_gemm.py`` (the encoder's fp32 products, XLA vs PyTorch), ``transcribe.py`` twice (temperature 0 without
fallback, where every implementation does the same work; then with each library's temperature fallback), each
against openai-whisper and faster-whisper with peak memory, ``word_timestamps.py`` (transcription with word
timestamps against openai-whisper's, and against ours without them), ``tagging.py`` (the tags' cost on top of
transcription, ``tag()`` vs whisper-at) and ``train_throughput.py`` (head-training examples/s, online and cached).
The GPU benchmarks are ``benchmarks/gpu.sh``, ``gpu_train.sh`` and ``gpu_asr.sh`` (a lent device only). Run this on a quiet machine: ratios inside a table come
from one run, interleaved or back to back, but the tables are minutes apart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import machine, markdown_table  # noqa: E402

BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
_ASR_COLUMNS = ["audio", "implementation", "seconds", "vs openai-whisper", "first call", "compiles (first call)",
                "compiles (timed)", "load", "peak RSS"]
#: (key, script, title, table columns, extra arguments, takes --rounds)
SCRIPTS = [
    ("encoder", "encoder.py", "tiny.en encoder, 30-s windows, one process",
     ["batch", "implementation", "seconds", "vs PyTorch", "note"], [], True),
    ("encoder_isolated", "encoder.py", "tiny.en encoder, 30-s windows, each implementation in its own processes",
     ["batch", "implementation", "seconds", "vs PyTorch", "note"], ["--isolated"], True),
    ("gemm", "cpu_gemm.py", "fp32 products of the tiny.en encoder, XLA vs PyTorch",
     ["product", "M x K x N", "XLA GFLOP/s", "PyTorch GFLOP/s", "XLA / PyTorch time"], ["--rounds", "20"], False),
    ("asr_greedy", "transcribe.py", "transcription, tiny.en, temperature 0 without fallback (the same work for all)",
     _ASR_COLUMNS, ["--greedy-only"], True),
    ("asr_fallback", "transcribe.py",
     "transcription, tiny.en, temperature 0 + each library's fallback (openai-whisper's defaults)",
     _ASR_COLUMNS, [], True),
    ("words", "word_timestamps.py", "word timestamps' cost, tiny.en, 176-s file, temperature 0 without fallback",
     ["run", "seconds", "vs without words", "vs openai-whisper, same words setting"], [], True),
    ("tags", "tagging.py", "Whisper-AT tags, tiny.en + TL-TR", ["implementation", "seconds", "audio s / s"], [], True),
    ("train", "train_throughput.py", "head training, tiny.en + TL-TR (the trainer, batch 16)",
     ["mode", "head", "batch", "steps", "examples_per_s", "wall_s_incl_compile"],
     ["--size", "tiny.en", "--modes", "cached,online", "--batch", "16", "--steps", "6"], False),
]


def _read(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # train_throughput.py appends one JSON object per line
        return {"rows": [json.loads(line) for line in text.splitlines() if line.strip()]}


def _find(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if all(str(r.get(k, "")).startswith(v) for k, v in match.items()):
            return r
    return None


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """One table over every benchmark: ours against the reference it is judged by, as a time ratio (< 1: ours is
    faster) or throughput."""
    out: list[dict] = []
    for key, method in (("encoder", "one process"), ("encoder_isolated", "own processes")):
        enc = results.get(key, {}).get("rows", [])
        for b in sorted({r["batch"] for r in enc}):
            ours = _find(enc, batch=str(b), implementation="ours (JAX fp32)")
            ct2 = _find(enc, batch=str(b), implementation="CTranslate2")
            if ours:
                out.append({"benchmark": f"encoder, batch {b} ({method})", "ours": f"{ours['seconds']} s",
                            "reference": "openai-whisper PyTorch fp32", "ours / reference time": ours["vs PyTorch"],
                            "other": f"CTranslate2 fp32 {ct2['vs PyTorch']}" if ct2 else ""})
    for key, label in (("asr_greedy", "no fallback"), ("asr_fallback", "with fallback")):
        rows = results.get(key, {}).get("rows", [])
        for audio in dict.fromkeys(r["audio"] for r in rows):
            ref = _find(rows, audio=audio, implementation="openai-whisper")
            fw = _find(rows, audio=audio, implementation="faster-whisper fp32")
            for impl, judge in (("ours sequential", ref), ("ours batched", fw)):
                ours = _find(rows, audio=audio, implementation=impl)
                if ours and judge:
                    ratio = float(ours["seconds"]) / float(judge["seconds"])
                    out.append({"benchmark": f"transcribe {audio}, {label}", "ours": f"{impl}: {ours['seconds']} s",
                                "reference": f"{judge['implementation']}: {judge['seconds']} s",
                                "ours / reference time": f"{ratio:.2f}x",
                                "other": f"peak RSS {ours['peak RSS']} vs {judge['peak RSS']}"})
    words = results.get("words", {}).get("seconds", {})
    for impl in ("ours sequential", "ours batched (8)"):
        if f"{impl}, words" in words and "openai-whisper, words" in words:
            t, ref = words[f"{impl}, words"], words["openai-whisper, words"]
            out.append({"benchmark": "transcribe with word timestamps", "ours": f"{impl}: {t:.2f} s",
                        "reference": f"openai-whisper: {ref:.2f} s", "ours / reference time": f"{t / ref:.2f}x",
                        "other": f"{t / words[impl]:.2f}x ours without words"})
    tags = results.get("tags", {})
    for k, v in tags.get("summary", {}).items():
        out.append({"benchmark": "tags", "ours": k, "reference": "", "ours / reference time": v, "other": ""})
    for r in results.get("train", {}).get("rows", []):
        out.append({"benchmark": f"head training ({r['mode']})", "ours": f"{r['examples_per_s']:.1f} examples/s",
                    "reference": "", "ours / reference time": "", "other": f"{r['head']}, batch {r['batch']}"})
    return out


def render(results: dict[str, dict], failed: dict[str, int], scripts: list[tuple], command: str,
           load: tuple[float, float]) -> str:
    lines = [BEGIN, f"## All CPU benchmarks in one run ({datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()})", "",
             f"Written by `{command}` (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the "
             "end). Summary (ratios < 1: ours takes less time):", "",
             markdown_table(summary_rows(results), ["benchmark", "ours", "reference", "ours / reference time",
                                                    "other"]), ""]
    for key, script, title, columns, _, _ in scripts:
        lines += [f"### {title} (`benchmarks/{script}`)", ""]
        if key in failed:
            lines += [f"failed (exit {failed[key]})", ""]
            continue
        rows = [{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in r.items()} for r in results[key]["rows"]]
        lines += [markdown_table(rows, columns), ""]
        lines += [f"- {k}: {v}" for k, v in results[key].get("summary", {}).items()] + [""]
    return "\n".join(lines + [END])


def write_section(doc: str, section: str) -> None:
    """Replace the run_all section of ``doc`` (or insert it after the first paragraph), atomically."""
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        first, sep, rest = text.partition("\n\n")
        first2, sep2, rest2 = rest.partition("\n\n")  # after the title and the intro paragraph
        text = first + sep + first2 + sep2 + section + "\n\n" + rest2
    from whisper_at_jax.io_utils import atomic_write_bytes

    atomic_write_bytes(doc, text.encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--only", default="", help="comma list of keys to run (" + ",".join(s[0] for s in SCRIPTS) + ")")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wat_run_all_")
    results: dict[str, dict] = {}
    failed: dict[str, int] = {}
    only = set(filter(None, args.only.split(",")))
    scripts = [s for s in SCRIPTS if not only or s[0] in only]
    load_start = os.getloadavg()[0]
    for key, script, _, _, extra, takes_rounds in scripts:
        out_json = os.path.join(tmp, f"{key}.json")
        cmd = [sys.executable, os.path.join(HERE, script), "--json", out_json, *extra]
        cmd += ["--rounds", str(args.rounds)] if takes_rounds else []
        print("running", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0 or not os.path.exists(out_json):
            failed[key] = proc.returncode
        else:
            results[key] = _read(out_json)
    command = "python benchmarks/run_all.py " + " ".join(sys.argv[1:])
    write_section(args.doc, render(results, failed, scripts, command.strip(), (load_start, os.getloadavg()[0])))
    print(f"wrote the run_all section of {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
