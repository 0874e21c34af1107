#!/usr/bin/env python3
"""Compile the project's programs for real TPU slices on a machine without a TPU and write ``docs/tpu.md``'s tables.

    pip install -e ".[tpu]"
    JAX_PLATFORMS=cpu python benchmarks/tpu_aot.py                      # the default grid (hours on 2 cores)
    JAX_PLATFORMS=cpu python benchmarks/tpu_aot.py --sizes large-v2 --slices v5e:16x16 --dtypes bfloat16

Grid: Whisper sizes x heads (TL-TR, TL-TR-512) x slices x encoder dtype (fp32 at HIGHEST precision, bf16) for the
online and cached train steps at ``--per_chip_batch`` rows per chip, inference programs (:func:`tpu.inference_programs`)
on single-host slices, and the pod-scale check: large-v2's cached step on v5e:16x16 at global batches 256, 1024 and
4096. Every cell is kept in ``--results`` (JSON) as soon as it compiles, so an interrupted run continues where it
stopped and a partial grid is still reported. Numbers are the TPU compiler's (per-chip memory, FLOPs, bytes) and
roofline bounds from published chip peaks: estimates, not measurements.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import markdown_table, write_json, write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN tpu_aot -->", "<!-- END tpu_aot -->"
HEADS = {"tl_tr": "tl_tr_1_8", "tl_tr_512": "tl_down_tr_512_1_8"}
SIZES = ("tiny", "base", "small", "medium", "large-v2", "large-v3", "turbo")
TRAIN_SLICES = ("v4:2x2x1", "v5e:16x16", "v5p:2x2x1", "v6e:4x4", "v4:2x2x4", "v5e:4x4", "v5p:2x2x2", "v6e:4x8")
INFERENCE_SLICES = ("v5e:2x4", "v6e:2x2")
INFERENCE_SIZES = ("tiny.en", "large-v2", "large-v3", "turbo")
SCALING = ("large-v2", "tl_tr", "v5e:16x16", (256, 1024, 4096))


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def train_cell(size: str, head: str, topology: str, dtype: str, per_chip: int, programs: tuple[str, ...],
               global_batch: int | None = None) -> list[dict]:
    from whisper_at_jax.configs import audioset2m
    from whisper_at_jax import tpu
    from whisper_at_jax.model import dims_for

    c = audioset2m.get_config(size + (",512" if head == "tl_tr_512" else ""))
    gb = global_batch or per_chip * len(tpu.topology_devices(topology))
    c.encoder_dtype = dtype
    c.batch_size = c.eval_batch_size = gb
    tp = tpu.TrainPrograms(c, topology, dims_for(size))
    return [tp.report(p, gb) for p in programs]


def inference_cell(size: str, topology: str, dtype: str, per_chip: int, programs: tuple[str, ...] = (),
                   kept: list[dict] | None = None) -> list[dict]:
    """The inference programs of one cell; with ``programs`` and ``kept`` (the cell's earlier rows), only those
    programs are compiled again and their rows replaced."""
    from whisper_at_jax import tpu
    from whisper_at_jax.model import dims_for

    only = programs if programs and kept is not None else tpu.INFERENCE_PROGRAMS
    fresh = tpu.inference_programs(dims_for(size), topology, per_chip_batch=per_chip, dtype=dtype, programs=only)
    if only is tpu.INFERENCE_PROGRAMS:
        return fresh
    by = {r["program"]: r for r in fresh}
    return [by.get(r["program"], r) for r in kept]


def run(args: argparse.Namespace) -> dict:
    results_path = Path(args.results)
    res = _load(results_path)
    res.setdefault("train", {}), res.setdefault("inference", {}), res.setdefault("scaling", {})

    def cell(section: str, key: str, compute, redo: bool = False) -> None:
        """Compile one cell unless --results holds it; keep it at once so a stopped grid resumes here."""
        if key in res[section] and not (args.redo or redo):
            return
        t0 = time.time()
        res[section][key] = compute()
        results_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(str(results_path), res)
        print(f"[{time.time() - t0:.0f} s] {section} {key}", flush=True)

    if not args.skip_scaling:
        size, head, topo, batches = SCALING
        for gb in batches:
            cell("scaling", f"{size}|{head}|{topo}|{gb}",
                 lambda gb=gb: train_cell(size, head, topo, "bfloat16", 0, ("cached_train_step",), gb)[0])
    for size, head, topo, dtype in itertools.product(args.sizes, args.heads, args.slices, args.dtypes):
        cell("train", f"{size}|{head}|{topo}|{dtype}|{args.per_chip_batch}",
             lambda: train_cell(size, head, topo, dtype, args.per_chip_batch, tuple(args.train_programs)))
    for size, topo, dtype in itertools.product(args.inference_sizes, args.inference_slices, args.dtypes):
        key = f"{size}|{topo}|{dtype}|{args.inference_per_chip}"
        kept = res["inference"].get(key)
        cell("inference", key, lambda: inference_cell(size, topo, dtype, args.inference_per_chip,
                                                      tuple(args.redo_inference_programs), kept),
             redo=bool(args.redo_inference_programs and kept))
    return res


def _gib(r: dict) -> str:
    if not r.get("compiled"):
        return "refused: " + r.get("error", "")[:80]
    return f"{r['total_bytes'] / 2**30:.2f}" + ("" if r["fits"] else " (over HBM)")


def render(res: dict, command: str) -> str:
    from whisper_at_jax import tpu

    L = [BEGIN, "", "## Compiled for TPU slices (deviceless AOT)", "",
         f"Written by `{command}` from `{os.path.relpath(RESULTS_DEFAULT)}`: every program compiled by the TPU compiler "
         "(libtpu, `jax[tpu]` of the jax we pin) for the slice's abstract devices on a CPU-only machine. Per-chip "
         f"memory, FLOPs and bytes are the compiler's; times are roofline lower bounds (max of FLOPs x MXU passes / bf16 "
         f"peak and bytes / HBM bandwidth per chip; {tpu.CHIPS_SOURCE}). The compiler's own `optimal_seconds` is reported "
         "where positive; for the training programs it is negative, so unusable. Nothing here is a measurement.", "",
         f"The tables hold the cells compiled so far ({len(res.get('train', {}))} training, "
         f"{len(res.get('inference', {}))} inference, {len(res.get('scaling', {}))} pod-scale): the default grid "
         f"({len(SIZES)} sizes x {len(HEADS)} heads x {len(TRAIN_SLICES)} slices x 2 dtypes, minutes per program "
         "on a 2-core CPU) takes days there, so a run names the cells it compiles (`--sizes`, `--slices`, ...) and "
         "every run adds to the same results file; a cell that is not in a table has not been compiled.", ""]
    rows = []
    for key, r in sorted(res.get("scaling", {}).items(), key=lambda kv: int(kv[0].split("|")[-1])):
        size, head, topo, gb = key.split("|")
        m = r.get("memory_bytes", {})
        rows.append({"model": size, "head": head, "slice": topo, "global batch": gb,
                     "per-chip batch": r.get("per_chip_batch", ""), "GiB per chip": _gib(r),
                     "temporaries GiB": f"{m.get('temporaries', 0) / 2**30:.2f}" if m else "",
                     "batch all-gathers": r.get("batch_all_gathers", "")})
    if rows:
        L += ["### Pod scale: per-chip memory at a fixed per-chip share of the work", "",
              "The cached train step of large-v2 + TL-TR on a v5e-256 (64 hosts); it takes fp32 taps, so the encoder dtype does not enter it. "
              "Per-chip memory must not grow with the global batch beyond the chip's own rows; a batch gathered "
              "onto every chip (mixup's old permutation partner) made it 1.0 / 7.5 / refused at these batches.", "",
              markdown_table(rows, list(rows[0])), ""]
    rows = []
    for key, reps in sorted(res.get("train", {}).items()):
        size, head, topo, dtype, per_chip = key.split("|")
        for r in reps:
            chips = r.get("chips", 1)
            gb = r.get("global_batch", 0)
            row = {"model": size, "head": head, "slice": f"{topo} ({chips} chips)", "dtype": dtype,
                   "program": r["program"].replace("_train_step", ""), "per-chip batch": per_chip,
                   "GiB per chip": _gib(r)}
            if r.get("compiled"):
                row["GFLOP per clip"] = f"{r['flops'] * chips / gb / 1e9:.1f}" if gb else ""
                row["MXU passes"] = f"{r['mxu_passes']:.2g}" if "mxu_passes" in r else "?"
                row["roofline ms per step"] = f"{r['roofline_s'] * 1e3:.1f}"
                row["clips/s (bound)"] = f"{gb / r['roofline_s']:,.0f}" if r["roofline_s"] else ""
                row["compile s"] = f"{r.get('compile_s', 0):.0f}"
            rows.append(row)
    if rows:
        cols = ["model", "head", "slice", "dtype", "program", "per-chip batch", "GiB per chip", "GFLOP per clip",
                "MXU passes", "roofline ms per step", "clips/s (bound)", "compile s"]
        L += ["### Training steps", "", "10-s clips, the config's recipe (`configs/audioset2m.py:SIZE[,512]`), "
              "global batch = per-chip batch x chips. `online` runs the frozen encoder inside the step; `cached` "
              "trains on stored taps.", "", markdown_table(rows, cols), ""]
    rows = []
    for key, reps in sorted(res.get("inference", {}).items()):
        size, topo, dtype, per_chip = key.split("|")
        est = tpu.inference_estimate(reps)
        by = {r["program"]: r for r in reps}
        enc = by.get("encode_layers", {})
        opt = enc.get("compiler_optimal_seconds")
        rows.append({"model": size, "slice": topo, "dtype": dtype, "windows per chip": per_chip,
                     "encoder GiB per chip": _gib(enc) if enc else "",
                     "all programs fit": all(r.get("compiled") and r.get("fits") for r in reps),
                     "encoder MXU passes": f"{enc['mxu_passes']:.2g}" if "mxu_passes" in enc else "?",
                     "encoder roofline ms": f"{enc['roofline_s'] * 1e3:.1f}" if enc.get("compiled") else "",
                     "encoder optimal_seconds ms": f"{opt * 1e3:.1f}" if opt and opt > 0 else "unusable",
                     "tags only: audio h per h": f"{est.get('tags_only_audio_hours_per_hour', 0):,.0f}",
                     "transcript + tags: audio h per h":
                         f"{est.get('transcript_and_tags_audio_hours_per_hour', 0):,.0f}"})
    if rows:
        L += ["### Inference (`scripts/infer.py`'s programs)", "",
              f"30-s windows, batched over the chips; transcript + tags assumes {tpu.TOKENS_PER_WINDOW} sampled "
              "tokens per window and no temperature fallback (`tpu.inference_estimate`).", "",
              markdown_table(rows, list(rows[0])), ""]
    L += price_of_fp32(res)
    return "\n".join(L + [END])


def price_of_fp32(res: dict) -> list[str]:
    """fp32 at HIGHEST against bf16 for every cell compiled at both dtypes: per-chip memory and roofline time."""
    rows = []
    for section in ("train", "inference"):
        for key, reps in sorted(res.get(section, {}).items()):
            parts = key.split("|")
            if parts[-2] != "bfloat16":
                continue
            other = res[section].get("|".join(parts[:-2] + ["float32", parts[-1]]))
            if not other:
                continue
            fp32 = {r["program"]: r for r in other}
            for r in reps:
                f = fp32.get(r["program"], {})
                if not (r.get("compiled") and f.get("compiled") and "mxu_passes" in r and "mxu_passes" in f):
                    continue
                rows.append({"model": parts[0], "slice": parts[-3], "program": r["program"],
                             "GiB per chip bf16 / fp32": f"{r['total_bytes'] / 2**30:.2f} / "
                                                         f"{f['total_bytes'] / 2**30:.2f}",
                             "MXU passes bf16 / fp32": f"{r['mxu_passes']:.2g} / {f['mxu_passes']:.2g}",
                             "roofline ms bf16 / fp32": f"{r['roofline_s'] * 1e3:.1f} / {f['roofline_s'] * 1e3:.1f}",
                             "fp32 time / bf16 time": f"{f['roofline_s'] / r['roofline_s']:.1f}x"})
    if not rows:
        return []
    return ["### The price of fp32 at HIGHEST", "",
            "The same programs with the encoder computing in fp32 at `Precision.HIGHEST` (our CPU/GPU parity setting) "
            "and in bf16. A TPU runs an fp32 matmul at HIGHEST as 6 bf16 MXU passes (`jax.lax.Precision`); the "
            "compiler's FLOP count and `optimal_seconds` do not show it (a 4096x4096 matmul on v5e reports the same "
            "FLOPs at DEFAULT and HIGHEST), so the roofline weights each program's FLOPs by the MXU passes of its "
            "matmuls, parsed from the lowered program (`tpu.matmul_flops`). The heads keep fp32 at HIGHEST in both "
            "columns.", "", markdown_table(rows, list(rows[0])), ""]


RESULTS_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tpu_aot.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--sizes", type=split, default=list(SIZES))
    ap.add_argument("--heads", type=split, default=list(HEADS))
    ap.add_argument("--slices", type=split, default=list(TRAIN_SLICES))
    ap.add_argument("--dtypes", type=split, default=["bfloat16", "float32"])
    ap.add_argument("--per_chip_batch", type=int, default=16)
    ap.add_argument("--train_programs", type=split, default=["online_train_step", "cached_train_step"])
    ap.add_argument("--inference_sizes", type=split, default=list(INFERENCE_SIZES))
    ap.add_argument("--inference_slices", type=split, default=list(INFERENCE_SLICES))
    ap.add_argument("--inference_per_chip", type=int, default=8)
    ap.add_argument("--skip_scaling", action="store_true")
    ap.add_argument("--redo", action="store_true", help="recompile cells already in --results")
    ap.add_argument("--redo_inference_programs", type=split, default=[],
                    help="recompile only these programs (e.g. step_sums) of the inference cells already in --results")
    ap.add_argument("--report_only", action="store_true", help="rewrite the doc from --results, compile nothing")
    ap.add_argument("--results", default=RESULTS_DEFAULT)
    ap.add_argument("--doc", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "docs", "tpu.md"))
    args = ap.parse_args(argv)
    res = _load(Path(args.results)) if args.report_only else run(args)
    write_section(args.doc, BEGIN, END, render(res, "python benchmarks/tpu_aot.py"), title="TPU")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
