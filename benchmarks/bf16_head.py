#!/usr/bin/env python3
"""What a bf16 head costs in accuracy and what it saves on a TPU; writes the ``bf16_head`` section of docs/tpu.md.

    python benchmarks/bf16_head.py --shared /work/shared           # runs whatever is missing, then the report
    python benchmarks/bf16_head.py --report_only                    # the report from --results

Accuracy: ESC-50, five folds, the TL-TR-d head of docs/tpu.md's bf16-taps study (``tl_down_tr_256_1_8``, lr 5e-4, 12
epochs, seed 0) trained and evaluated on the same fp32 taps of the model (``--model``, default tiny.en; extracted
once into ``esc50.default_features``) with the head's Transformer blocks computing in fp32 (``Precision.HIGHEST``)
and in bf16 (``config.head.dtype``); its down projection, pooling means and classifier stay fp32 either way
(``whisper_at_jax.heads``). The same data order and augmentation draws for both, so the difference is the dtype's.

Cost: the cached train step (the head's forward and backward, the encoder out of it) of ``--tpu_model`` (default
large-v2) with the paper's TL-TR head, compiled for ``--topology`` (default v5e:2x2) at 16 clips per chip with each
head dtype: per-chip memory, MXU passes, roofline. Every run is kept in ``--results`` as it finishes, so a stopped
study resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import markdown_table, write_json, write_section

BEGIN, END = "<!-- BEGIN bf16_head -->", "<!-- END bf16_head -->"
DTYPES = ("float32", "bfloat16")
HEAD, LR, EPOCHS = "tl_down_tr", 5e-4, 12
ROOT = Path(__file__).resolve().parent.parent
ACC_COLUMNS = ["model", "head blocks", "fold accuracies (%)", "mean", "bf16 - fp32 (points)"]
COST_COLUMNS = ["model", "slice", "head blocks", "GiB per chip", "MXU passes", "roofline ms", "clips/s on the slice (bound)"]


def accuracy_runs(res: dict, shared: str, model: str, folds: list[int], save) -> None:
    from whisper_at_jax.experiments import esc50

    features = esc50.default_features(model, "float32")
    rows, names = esc50.read_meta(esc50.find_esc50(shared))
    esc50.extract(model, rows, names, features)
    mode = esc50.HEAD_MODES[HEAD]
    for dtype in DTYPES:
        for fold in folds:
            key = f"{model}|{dtype}|{fold}"
            if key in res["accuracy"]:
                continue
            work = Path(f"/tmp/bf16_head_{Path(model).name}_{dtype}_fold{fold}")
            res["accuracy"][key] = esc50.train_fold(model, mode, features, fold, LR, work, EPOCHS, 0, dtype)
            save()
            print(f"{key}: {res['accuracy'][key]['accuracy'] * 100:.2f}%", flush=True)


def cost_runs(res: dict, model: str, topology: str, save) -> None:
    from whisper_at_jax import tpu
    from whisper_at_jax.configs import audioset2m
    from whisper_at_jax.model import dims_for

    for dtype in DTYPES:
        key = f"{model}|{topology}|{dtype}"
        if key in res["cost"]:
            continue
        c = audioset2m.get_config(model)
        c.head.dtype = dtype
        gb = 16 * len(tpu.topology_devices(topology))
        c.batch_size = c.eval_batch_size = gb
        t0 = time.time()
        res["cost"][key] = tpu.TrainPrograms(c, topology, dims_for(model)).report("cached_train_step", gb)
        save()
        print(f"[{time.time() - t0:.0f} s] {key}", flush=True)


def render(res: dict, command: str) -> str:
    import numpy as np

    out = [BEGIN, "", "## A bf16 head: accuracy and TPU cost", "",
           f"Written by `{command}` from `benchmarks/results/bf16_head.json`. The TL-TR-d head (`tl_down_tr_256_1_8`, "
           f"lr {LR:g}, {EPOCHS} epochs, seed 0) on the same fp32 taps of the same clips (ESC-50, five folds), its "
           "Transformer blocks computing in fp32 at HIGHEST or in bf16 (`config.head.dtype`; the down projection, "
           "means and classifier stay fp32). Accuracies are measured on this CPU; TPU times are roofline estimates "
           "from the compiler, not measurements.", ""]
    models = sorted({k.split("|")[0] for k in res.get("accuracy", {})})
    rows = []
    for m in models:
        keys = sorted(res["accuracy"], key=lambda k: int(k.split("|")[2]))
        accs = {d: [res["accuracy"][k]["accuracy"] * 100 for k in keys if k.startswith(f"{m}|{d}|")] for d in DTYPES}
        if not all(len(a) == len(accs[DTYPES[0]]) and a for a in accs.values()):
            continue
        diff = np.asarray(accs["bfloat16"]) - np.asarray(accs["float32"])
        for d in DTYPES:
            rows.append(dict(zip(ACC_COLUMNS, [
                m if d == DTYPES[0] else "", d, " / ".join(f"{a:.2f}" for a in accs[d]), f"{np.mean(accs[d]):.2f}",
                "" if d == DTYPES[0] else f"**{diff.mean():+.2f}** (paired per-fold std "
                f"{diff.std(ddof=1) if len(diff) > 1 else 0:.2f})"])))
    if rows:
        out += [markdown_table(rows, ACC_COLUMNS), ""]
    cost = []
    for k, r in sorted(res.get("cost", {}).items()):
        m, topo, d = k.split("|")
        if not r.get("compiled"):
            cost.append(dict(zip(COST_COLUMNS, [m, topo, d, "refused: " + r.get("error", "")[:80]])))
            continue
        cost.append(dict(zip(COST_COLUMNS, [
            m, topo, d, f"{r['total_bytes'] / 2**30:.2f}", f"{r['mxu_passes']:.1f}", f"{r['roofline_s'] * 1e3:.1f}",
            f"{r['global_batch'] / r['roofline_s']:,.0f}"])))
    if cost:
        out += ["The cached train step (the head alone: taps in, gradients of the head out), 16 clips per chip:", "",
                markdown_table(cost, COST_COLUMNS), ""]
    return "\n".join(out + [END])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="", help="folder holding data/esc50")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--folds", default="1,2,3,4,5")
    ap.add_argument("--tpu_model", default="large-v2")
    ap.add_argument("--topology", default="v5e:2x2")
    ap.add_argument("--report_only", action="store_true")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "bf16_head.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "tpu.md"))
    args = ap.parse_args(argv)
    path = Path(args.results)
    res = json.loads(path.read_text()) if path.is_file() else {}
    res.setdefault("accuracy", {}), res.setdefault("cost", {})

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(str(path), res)

    if not args.report_only:
        if not args.shared:
            ap.error("--shared is needed to run the accuracy study (or --report_only)")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        cost_runs(res, args.tpu_model, args.topology, save)
        accuracy_runs(res, args.shared, args.model, [int(f) for f in args.folds.split(",")], save)
    write_section(args.doc, BEGIN, END, render(res, "python benchmarks/bf16_head.py"), title="TPU")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
