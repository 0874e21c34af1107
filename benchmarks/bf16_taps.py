#!/usr/bin/env python3
"""What bf16 encoder taps do to trained ESC-50 heads (issue #17 item 5): fp32 vs bf16 feature extraction, the same
five folds, the same seeds, the same heads; writes the ``bf16_taps`` section of docs/tpu.md.

    python benchmarks/bf16_taps.py --shared /work/shared             # runs whatever is missing, then the report
    python benchmarks/bf16_taps.py --report_only                      # the report from finished results folders

For each model (``--models``, default tiny.en and base) and each encoder dtype (float32, bfloat16) it runs the real
ESC-50 script, ``scripts/esc50.py --encoder_dtype DTYPE`` (the trainer's ``extract_features`` with the encoder
computing in that dtype; taps stored fp16 as always), into ``RUNS/MODEL_DTYPE``: the last-layer linear probe
(``linear``, five folds) and one trainer head (``--head``, default TL-TR-d ``tl_down_tr`` at docs/results.md's
recipe, lr 5e-4, 12 epochs; folds ``--head_folds``). esc50.py skips runs its results.json already holds, so a
stopped study resumes. Then, per model:

- accuracy: each dtype's heads trained and tested on that dtype's taps (what a bf16 TPU pipeline would give);
- same clips: the fp32-trained head of each fold (the probe refitted exactly as esc50.py fits it, checked against
  its recorded accuracy; the trainer head from its ``final_head.npz``) applied to the held-out clips' fp32 taps and
  to their bf16 taps: top-1 agreement, max and mean absolute difference of the softmax probabilities, and that
  head's accuracy on the bf16 taps (an fp32-trained head served by a bf16 encoder);
- the taps themselves: relative RMS difference ||bf16 - fp32|| / ||fp32|| per layer over all 2,000 clips (both
  read back from their fp16 features files; fp16 storage alone contributes ~3e-4).

Extraction times are read from the extraction logs kept in ``RUNS/logs``. The section lands between
``<!-- BEGIN bf16_taps -->`` and ``<!-- END bf16_taps -->`` in ``--doc``; the rest of the file is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_section  # noqa: E402
from whisper_at_jax.experiments import esc50  # noqa: E402

DTYPES = ("float32", "bfloat16")
BEGIN, END = "<!-- BEGIN bf16_taps -->", "<!-- END bf16_taps -->"
THRESHOLD = 0.5  # points of five-fold accuracy the issue allows bf16 to cost
HEAD_NAMES = {"linear": "linear probe (last layer, sklearn)", "tl_down_tr": "TL-TR-d (d = 256)",
              "tl_tr": "TL-TR (full width)", "wa_mlp": "WA-MLP", "last_mlp": "Last-MLP"}


def run_dir(runs: Path, model: str, dtype: str) -> Path:
    return runs / f"{model}_{dtype}"


def features_dir(model: str, dtype: str) -> Path:
    return esc50.default_features(model, dtype)


# ---------------------------------------------------------------------------------------------------------------
# running the study


def esc50_cmd(shared: str, model: str, dtype: str, out: Path, heads: str, extra: list[str] = ()) -> list[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "esc50.py"), "--model", model, "--encoder_dtype", dtype,
           "--heads", heads, "--out", str(out), *extra]
    return cmd + (["--shared", shared] if shared else [])


def run_logged(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output appended to ``log`` (and echoed); returns the wall seconds. Fails loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd[1:])}\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
        for line in p.stdout:
            f.write(line)
            f.flush()
            if "\r" not in line:  # tqdm bars stay in the log only
                print(line, end="", flush=True)
        rc = p.wait()
    if rc:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)} (log {log})")
    return time.perf_counter() - t0


def run_study(args: argparse.Namespace, runs: Path) -> None:
    for model in args.models:
        folds = args.head_folds.get(model, args.folds)
        for dtype in DTYPES:
            out = run_dir(runs, model, dtype)
            logs = runs / "logs"
            # 1. features (extraction is timed by esc50.py itself: "features: N clips in S s"), 2. the probe
            run_logged(esc50_cmd(args.shared, model, dtype, out, "linear",
                                 ["--folds", ",".join(map(str, args.folds))]), logs / f"{model}_{dtype}_extract.log")
            # 3. the trainer head, one fold per call so a stopped study loses at most one fold
            for fold in folds:
                if any(r["head"] == args.head and r["fold"] == fold and r.get("lr") == args.lr
                       for r in load_runs(out)):
                    continue
                run_logged(esc50_cmd(args.shared, model, dtype, out, args.head,
                                     ["--lr", f"{args.lr:g}", "--epochs", str(args.epochs), "--folds", str(fold)]),
                           logs / f"{model}_{dtype}_{args.head}.log")


# ---------------------------------------------------------------------------------------------------------------
# the analysis


def load_runs(out: Path) -> list[dict]:
    p = out / "results.json"
    return json.loads(p.read_text())["runs"] if p.is_file() else []


def accuracies(out: Path, head: str, lr: float | None) -> dict[int, float]:
    """{fold: accuracy %} of one head (``lr`` None for the probe) in a results folder."""
    return {r["fold"]: 100 * r["accuracy"] for r in load_runs(out)
            if r["head"] == head and (lr is None or r.get("lr") == lr)}


def extraction_seconds(log: Path) -> float | None:
    """The seconds esc50.py reported for the extraction ("features: 2000 clips in 408 s ..."), if it extracted."""
    if not log.is_file():
        return None
    m = re.findall(r"(?<![\w-])features: (\d+) clips in (\d+) s", log.read_text(errors="replace"))
    return float(m[-1][1]) if m else None


def prob_compare(p32: np.ndarray, p16: np.ndarray, y: np.ndarray) -> dict:
    return {"n": int(len(y)), "agree": int((p32.argmax(1) == p16.argmax(1)).sum()),
            "max_abs": float(np.abs(p32 - p16).max()), "sum_abs": float(np.abs(p32 - p16).sum()),
            "n_probs": int(p32.size), "correct32": int((p32.argmax(1) == y).sum()),
            "correct16": int((p16.argmax(1) == y).sum())}


def merge(parts: list[dict]) -> dict:
    n = sum(p["n"] for p in parts)
    return {"n": n, "agree_pct": 100 * sum(p["agree"] for p in parts) / n,
            "max_abs": max(p["max_abs"] for p in parts),
            "mean_abs": sum(p["sum_abs"] for p in parts) / sum(p["n_probs"] for p in parts),
            "acc32": 100 * sum(p["correct32"] for p in parts) / n,
            "acc16": 100 * sum(p["correct16"] for p in parts) / n, "folds": len(parts)}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def probe_same_clips(x32: np.ndarray, x16: np.ndarray, y: np.ndarray, folds: np.ndarray, fold_list: list[int],
                     recorded: dict[int, float]) -> list[dict]:
    """The last-layer probe fitted on the fp32 taps of the training folds exactly as esc50.linear_probe fits it,
    applied to the held-out fold's fp32 and bf16 taps."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    parts = []
    for fold in fold_list:
        tr = folds != fold
        sc = StandardScaler().fit(x32[tr])
        clf = LogisticRegression(max_iter=3000, random_state=0).fit(sc.transform(x32[tr]), y[tr])
        p32, p16 = clf.predict_proba(sc.transform(x32[~tr])), clf.predict_proba(sc.transform(x16[~tr]))
        part = prob_compare(p32, p16, y[~tr])
        acc = 100 * part["correct32"] / part["n"]
        if fold in recorded and abs(acc - recorded[fold]) > 1e-6:
            raise SystemExit(f"probe refit, fold {fold}: {acc:.2f}% but esc50.py recorded {recorded[fold]:.2f}%")
        parts.append(part)
    return parts


def head_same_clips(model: str, head: str, lr: float, out32: Path, x32: np.ndarray, x16: np.ndarray,
                    y: np.ndarray, n_classes: int, folds: np.ndarray, recorded: dict[int, float]
                    ) -> tuple[list[dict], float]:
    """Each fold's fp32-trained trainer head (its final_head.npz) on the held-out fold's fp32 and bf16 taps.
    Returns the per-fold comparisons and the largest gap (points) to the accuracy esc50.py recorded."""
    import jax

    from whisper_at_jax.configs import esc50 as esc_config
    from whisper_at_jax.api import compute_dtype
    from whisper_at_jax.heads import make_head

    mode = esc50.HEAD_MODES.get(head, head)
    c = esc_config.get_config(f"{model},{mode}")
    net = make_head(mode, int(x32.shape[1]), int(x32.shape[3]), n_classes, dtype=compute_dtype(c.head.dtype))
    apply = jax.jit(lambda p, t: net.apply({"params": p}, t))
    parts, gap = [], 0.0
    for fold in sorted(recorded):
        path = out32 / "work" / f"{head}_lr{lr:g}_fold{fold}" / "final_head.npz"
        with np.load(path) as z:
            params: dict = {}
            for k in z.files:
                node = params
                *parents, leaf = k.split("/")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = z[k]
        held = folds == fold

        def probs(x: np.ndarray) -> np.ndarray:
            return softmax(np.concatenate([np.asarray(apply(params, x[s:s + 100]), np.float64)
                                           for s in range(0, len(x), 100)]))

        part = prob_compare(probs(x32[held]), probs(x16[held]), y[held])
        gap = max(gap, abs(100 * part["correct32"] / part["n"] - recorded[fold]))
        parts.append(part)
    return parts, gap


def taps_relative_rms(x32: np.ndarray, x16: np.ndarray) -> tuple[list[float], list[float]]:
    """Per layer: ||bf16 - fp32|| / ||fp32|| over every clip and element, and the largest per-clip value."""
    overall, worst = [], []
    for layer in range(x32.shape[1]):
        a, b = x32[:, layer].astype(np.float64), x16[:, layer].astype(np.float64)
        num = ((b - a) ** 2).reshape(len(a), -1).sum(1)
        den = (a ** 2).reshape(len(a), -1).sum(1)
        overall.append(float(np.sqrt(num.sum() / den.sum())))
        worst.append(float(np.sqrt(num / den).max()))
    return overall, worst


def analyse(args: argparse.Namespace, runs: Path) -> dict:
    report: dict = {"models": {}}
    for model in args.models:
        out32, out16 = run_dir(runs, model, "float32"), run_dir(runs, model, "bfloat16")
        f32, f16 = features_dir(model, "float32"), features_dir(model, "bfloat16")
        for out in (out32, out16):
            rj = out / "results.json"
            if not rj.is_file():
                raise SystemExit(f"{rj}: missing (run the study first, without --report_only)")
            f = Path(json.loads(rj.read_text())["features"])
            if f not in (f32, f16):
                raise SystemExit(f"{rj}: made from {f}, expected {f32} or {f16}")
        m: dict = {"extract_s": {d: extraction_seconds(runs / "logs" / f"{model}_{d}_extract.log") for d in DTYPES},
                   "heads": {}}
        x32, y32, ids32, fo32 = esc50.load_all_taps(f32)
        x16, _, ids16, fo16 = esc50.load_all_taps(f16)
        if ids32 != ids16 or not np.array_equal(fo32, fo16):
            raise SystemExit(f"{f32} and {f16} hold different clips or folds")
        x32, x16, y = x32.astype(np.float32), x16.astype(np.float32), y32.argmax(1)
        m["n_clips"], m["shape"] = int(len(x32)), list(x32.shape[1:])
        m["taps_rel_rms"], m["taps_rel_rms_worst_clip"] = taps_relative_rms(x32, x16)
        for head, lr in (("linear", None), (args.head, args.lr)):
            a32, a16 = accuracies(out32, head, lr), accuracies(out16, head, lr)
            both = sorted(set(a32) & set(a16))
            h: dict = {"lr": lr, "epochs": None if lr is None else args.epochs, "folds": both,
                       "acc32": [a32[k] for k in both], "acc16": [a16[k] for k in both],
                       "seconds32": [r["seconds"] for r in load_runs(out32) if r["head"] == head
                                     and (lr is None or r.get("lr") == lr) and r["fold"] in both],
                       "seconds16": [r["seconds"] for r in load_runs(out16) if r["head"] == head
                                     and (lr is None or r.get("lr") == lr) and r["fold"] in both]}
            if not both:
                m["heads"][head] = h
                continue
            d = np.asarray(h["acc16"]) - np.asarray(h["acc32"])
            h.update(mean32=float(np.mean(h["acc32"])), mean16=float(np.mean(h["acc16"])), diff=float(d.mean()),
                     diff_std=float(d.std(ddof=1)) if len(d) > 1 else 0.0)
            if head == "linear":
                # the probe's input, computed by esc50.py's own function: the last layer's time mean
                xm32, xm16 = esc50.time_mean_features(f32)[0][:, -1], esc50.time_mean_features(f16)[0][:, -1]
                parts = probe_same_clips(xm32, xm16, y, fo32, both, a32)
                h["refit_gap"] = 0.0
            else:
                parts, h["refit_gap"] = head_same_clips(model, head, lr, out32, x32, x16, y, int(y32.shape[1]),
                                                        fo32, {k: a32[k] for k in both})
            h["same_clips"] = merge(parts)
            m["heads"][head] = h
        report["models"][model] = m
    return report


# ---------------------------------------------------------------------------------------------------------------
# the markdown section


def para(text: str) -> str:
    """A prose paragraph wrapped at 120 columns, as the other docs are."""
    return textwrap.fill(text, 118, break_long_words=False, break_on_hyphens=False)


def fmt_folds(v: list[float]) -> str:
    return " / ".join(f"{a:.2f}" for a in v)


def conclusion(report: dict) -> tuple[str, bool, bool]:
    """(text, any cost > THRESHOLD, every model and head measured on all five folds)."""
    costs = [(model, head, -h["diff"], len(h["folds"])) for model, m in report["models"].items()
             for head, h in m["heads"].items() if h.get("folds")]
    worst = max(costs, key=lambda c: c[2]) if costs else None
    over = [c for c in costs if c[2] > THRESHOLD]
    complete = all(n == 5 for *_, n in costs) and len(costs) == 2 * len(report["models"])
    return ("" if worst is None else f"the worst bf16 - fp32 difference is {-worst[2]:+.2f} points: {worst[0]}, "
            f"{HEAD_NAMES.get(worst[1], worst[1])}, {worst[3]} folds"), bool(over), complete


def section(report: dict, args: argparse.Namespace, command: str) -> str:
    head = args.head
    L = [BEGIN, "", "## bf16 encoder taps vs fp32 taps: what they do to trained ESC-50 heads", "",
         para("On a TPU, fp32 matmuls at HIGHEST precision cost several MXU passes each, and bf16 compute is the "
         "natural default; this section measures on this CPU what bf16 taps cost a trained head (the same bf16 "
         "program; XLA:CPU's bf16 arithmetic, matmuls accumulating in fp32 with bf16 results, is close to a TPU's, "
         "not bit-identical). The encoder computes in fp32 (`precision=HIGHEST`) or bf16 (params "
         "stay fp32, residual stream and matmul inputs bf16, LayerNorm and softmax in fp32: "
         "`whisper_at_jax.model`); everything after it is identical: taps pooled by 10 frames and stored fp16, "
         "the heads trained in fp32 through `configs/esc50.py` + `whisper_at_jax.train` (cached mode, "
         "`config.seed=0`, the same data order and augmentation draws for both dtypes) and the probe fitted "
         "by sklearn (`random_state=0`). ESC-50, 2,000 clips, folds 1-5 (docs/results.md section 1's protocol)."),
         ""]
    for model, m in report["models"].items():
        ex = m["extract_s"]
        ext = ", ".join(f"{d} {ex[d]:.0f} s" for d in DTYPES if ex.get(d) is not None)
        L += [f"### {model} (taps [{', '.join(map(str, m['shape']))}] per clip)", ""]
        if ext:
            L += [para(f"Extraction of the {m['n_clips']} clips (the encoder pass, 5-s clips, batch 16) on this "
                       f"shared 2-core CPU: {ext}."), ""]
        L += ["| head | lr, epochs | taps | fold 1 / 2 / 3 / 4 / 5 (%) | mean | bf16 - fp32 (points) |",
              "|---|---|---|---|---|---|"]
        for hname, h in m["heads"].items():
            name = HEAD_NAMES.get(hname, hname) + ("" if hname == "linear" else f" `{esc50.HEAD_MODES.get(hname)}`")
            if not h.get("folds"):
                L.append(f"| {name} | - | - | not run | - | - |")
                continue
            rec = "-" if h["lr"] is None else f"{h['lr']:g}, {h['epochs']}"
            nf = "" if len(h["folds"]) == 5 else f" (folds {', '.join(map(str, h['folds']))} only)"
            L.append(f"| {name} | {rec} | fp32 | {fmt_folds(h['acc32'])}{nf} | {h['mean32']:.2f} | |")
            se = h["diff_std"] / np.sqrt(len(h["folds"]))
            L.append(f"| | | bf16 | {fmt_folds(h['acc16'])}{nf} | {h['mean16']:.2f} | **{h['diff']:+.2f}** "
                     f"(paired per-fold std {h['diff_std']:.2f}, s.e. {se:.2f}) |")
        L += ["", para("Same clips: each fold's **fp32-trained** head applied to the held-out clips' fp32 taps "
                       "and to their bf16 taps (an fp32-trained head served by a bf16 encoder); probabilities are "
                       "the softmax over the 50 classes, differences over every clip and class:"), "",
              "| head | clips | top-1 agreement | max abs prob diff | mean abs prob diff | acc on fp32 taps | "
              "acc on bf16 taps |", "|---|---|---|---|---|---|---|"]
        for hname, h in m["heads"].items():
            if not h.get("same_clips"):
                continue
            s = h["same_clips"]
            L.append(f"| {HEAD_NAMES.get(hname, hname)} | {s['n']} ({s['folds']} folds) | {s['agree_pct']:.2f}% | "
                     f"{s['max_abs']:.4f} | {s['mean_abs']:.2e} | {s['acc32']:.2f} | {s['acc16']:.2f} |")
        rr = m["taps_rel_rms"]
        L += ["", para("Taps, bf16 vs fp32, relative RMS difference ||bf16 - fp32|| / ||fp32|| over all clips, "
                       f"per layer (1..{len(rr)}): " + ", ".join(f"{v:.2e}" for v in rr) + "; worst single clip: " +
                       ", ".join(f"{v:.2e}" for v in m["taps_rel_rms_worst_clip"]) + ". (bf16 keeps 8 "
                       "significant bits: one rounding is up to 3.9e-3 relative; the fp16 storage of both adds "
                       "~3e-4.)"), ""]
        gaps = [h.get("refit_gap", 0.0) for h in m["heads"].values() if h.get("same_clips")]
        if gaps and max(gaps) > 0:
            L += [para(f"(The trainer head's accuracy on fp32 taps above, recomputed here from its saved "
                       f"`final_head.npz`, is within {max(gaps):.2f} points of what the trainer's own eval "
                       "recorded.)"), ""]
    text, over, complete = conclusion(report)
    L += ["### Conclusion", ""]
    if over:
        L.append(para(f"**bf16 taps cost more than {THRESHOLD} points** ({text}). TPU configs should default "
                      "to `encoder_dtype=\"float32\"` (HIGHEST precision, at its MXU price); bf16 remains a "
                      "choice for throughput, at that cost."))
    else:
        L.append(para(f"**bf16 taps cost no more than {THRESHOLD} points** on any measured model and head "
                      f"({text}). TPU configs can default to `encoder_dtype=\"bfloat16\"`, the MXU's native "
                      "input type; fp32 at HIGHEST stays available for parity with the CPU/GPU numbers."))
    if not complete:
        L.append("")
        L.append(para("Not every model and head ran on all five folds (see the fold lists above): the "
                      "conclusion rests on the folds shown."))
    L += ["", para("How it was made (the fp32 rows are a rerun of docs/results.md's recipe with this commit's "
                   "code, so they may differ from that table in the last digits):"), "", "```", command, "```", "",
          para(f"It runs, per model and dtype, `scripts/esc50.py --shared SHARED --model MODEL --encoder_dtype DTYPE "
          f"--heads linear` and `--heads {head} --lr {args.lr:g} --epochs {args.epochs} --folds K` into "
          f"`runs/bf16_taps/MODEL_DTYPE`, then compares; `--report_only` rewrites this section from those folders. "
          "Seeds: trainer `config.seed=0` (init, data order, augmentation), sklearn `random_state=0`."), "", END]
    return "\n".join(L)


def parse_head_folds(s: str) -> dict[str, list[int]]:
    out = {}
    for part in filter(None, (p.strip() for p in s.split(";"))):
        model, _, folds = part.partition(":")
        out[model.strip()] = [int(f) for f in folds.split(",") if f.strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="", help="folder holding data/esc50 (needed for a first extraction)")
    ap.add_argument("--models", default="tiny.en,base")
    ap.add_argument("--head", default="tl_down_tr", help="the trainer head (scripts/esc50.py name)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--folds", default="1,2,3,4,5")
    ap.add_argument("--head_folds", default="", help="per-model folds of the trainer head, e.g. 'base:1,2' "
                    "(default: --folds)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bf16_taps"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "tpu.md"))
    ap.add_argument("--report_only", action="store_true", help="no training: report from the results folders")
    ap.add_argument("--json", default="", help="also write the report's numbers here (default RUNS/report.json)")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.folds = [int(f) for f in args.folds.split(",") if f.strip()]
    args.head_folds = parse_head_folds(args.head_folds)
    runs = Path(args.runs)
    if not args.report_only:
        run_study(args, runs)
    report = analyse(args, runs)
    cmd = "python benchmarks/bf16_taps.py --shared /work/shared"
    if args.head_folds:
        cmd += " --head_folds '" + ";".join(f"{k}:" + ",".join(map(str, v)) for k, v in args.head_folds.items()) + "'"
    if args.models != ["tiny.en", "base"]:
        cmd += f" --models {','.join(args.models)}"
    text = section(report, args, cmd)
    write_section(args.doc, BEGIN, END, text, title="TPU")
    Path(args.json or runs / "report.json").write_text(json.dumps(report, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
