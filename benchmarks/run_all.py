"""Run every CPU benchmark and write one page of tables: ``docs/benchmarks_cpu.md``.

    python benchmarks/run_all.py [--rounds 3] [--out docs/benchmarks_cpu.md]

Runs, in this order, each in its own process: ``encoder.py`` (tiny.en encoder vs openai-whisper and CTranslate2),
``transcribe.py`` (vs openai-whisper and faster-whisper, peak memory per implementation), ``tagging.py`` (tags
overhead, ``tag()`` vs whisper-at). The GPU benchmark is ``benchmarks/gpu.sh`` (a lent device only). Run it on a
quiet machine: the ratios inside each table are measured in one run, but the tables are minutes apart.
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

_ASR_COLUMNS = ["audio", "implementation", "seconds", "vs openai-whisper", "first call", "compiles (first call)",
                "compiles (timed)", "load", "peak RSS"]
#: (script, title, table columns, extra arguments)
SCRIPTS = [
    ("encoder.py", "tiny.en encoder, 30-s windows", ["batch", "implementation", "seconds", "vs PyTorch", "note"], []),
    ("transcribe.py", "transcription, tiny.en, temperature 0 without fallback (the same work for all)", _ASR_COLUMNS,
     ["--greedy-only"]),
    ("transcribe.py", "transcription, tiny.en, temperature 0 + each library's fallback (openai-whisper's defaults)",
     _ASR_COLUMNS, []),
    ("tagging.py", "Whisper-AT tags, tiny.en + TL-TR", ["implementation", "seconds", "audio s / s"], []),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks_cpu.md"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wat_run_all_")
    lines = [f"# CPU benchmarks ({datetime.date.today()}, {machine()})", "",
             "Written by `python benchmarks/run_all.py`; each table's ratios come from one run.", ""]
    for i, (script, title, columns, extra) in enumerate(SCRIPTS):
        out_json = os.path.join(tmp, f"{i}_{script}.json")
        cmd = [sys.executable, os.path.join(HERE, script), "--rounds", str(args.rounds), "--json", out_json, *extra]
        print("running", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        lines += [f"## {title} (`benchmarks/{script}`)", ""]
        if proc.returncode != 0 or not os.path.exists(out_json):
            lines += [f"failed (exit {proc.returncode})", ""]
            continue
        with open(out_json) as f:
            data = json.load(f)
        lines += [markdown_table(data["rows"], columns), ""]
        for k, v in data.get("summary", {}).items():
            lines.append(f"- {k}: {v}")
        lines.append("")
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
