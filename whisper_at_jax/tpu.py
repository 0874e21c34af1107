"""Compile for a TPU slice on a machine without one (deviceless AOT) and report what the compiler says.

``topology_mesh("v5e:16x16")`` gives the project's ``("data",)`` mesh over the abstract devices of a real slice
(libtpu's topology description, ``pip install -e ".[tpu]"``), usable by every program builder that takes a mesh
(``train.build_steps``, ...). :func:`compile_report` lowers and compiles one program over abstract inputs and returns
per-chip memory, FLOPs and bytes accessed with a roofline bound from the chip's published peaks (:data:`CHIPS`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from . import parallel


class TPUError(ValueError):
    """A bad topology name, a missing libtpu, or a program that cannot be compiled as asked (named in the message)."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip peaks."""

    bf16_flops: float  # FLOP/s, bf16 matmul peak
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: int


#: Per-chip peaks (bf16 matmul FLOP/s, HBM bandwidth, HBM capacity), from :data:`CHIPS_SOURCE`.
CHIPS_SOURCE = ("Google Cloud TPU documentation, the system architecture tables of cloud.google.com/tpu/docs/v4, "
                "/v5e, /v5p and /v6e (v4: 275 TFLOP/s, 32 GiB, 1200 GB/s; v5e: 197, 16 GB, 819; v5p: 459, 95 GB, "
                "2765; v6e: 918, 32 GB, 1638)")
CHIPS = {
    "v4": Chip(275e12, 1200e9, 32 * 2**30),
    "v5e": Chip(197e12, 819e9, 16 * 2**30),
    "v5p": Chip(459e12, 2765e9, 95 * 2**30),
    "v6e": Chip(918e12, 1638e9, 32 * 2**30),
}
#: v4 and v5p chips hold two TensorCores that their runtime drives as one device.
_MEGACORE = ("v4", "v5p")
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """``"v5e:16x16"`` -> ``("v5e", (16, 16))``; :class:`TPUError` for anything else."""
    m = _NAME.match(str(name).strip())
    if not m:
        raise TPUError(f"unknown or malformed TPU topology {name!r}: expected GENERATION:AxB[xC] with GENERATION one "
                       f"of {sorted(CHIPS)}, e.g. v5e:2x4, v5e:16x16, v4:2x2x1, v5p:2x2x1, v6e:4x4")
    dims = tuple(int(d) for d in m.group(2).split("x"))
    gen = m.group(1)
    if gen in _MEGACORE and len(dims) != 3 or gen not in _MEGACORE and len(dims) != 2:
        raise TPUError(f"TPU topology {name!r}: {gen} slices have {3 if gen in _MEGACORE else 2} dimensions")
    if min(dims) < 1:
        raise TPUError(f"TPU topology {name!r}: every dimension must be >= 1")
    return gen, dims


def topology_devices(name: str) -> list[Any]:
    """The abstract devices (one per chip) of a TPU slice, for compiling without a TPU."""
    gen, dims = parse_topology(name)
    try:
        from jax.experimental import topologies
        import libtpu  # noqa: F401
    except ImportError as e:
        raise TPUError(f"compiling for {name} needs libtpu: pip install -e \".[tpu]\" ({e})") from e
    # Compiling needs no TPU: without this, a second process (a test's subprocess, a parallel compile) is refused
    # by libtpu's one-process-per-host lock, which guards the chips this program never touches.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs: dict[str, Any] = {}
    if gen in _MEGACORE:
        kwargs["chip_config_name"] = "megacore"
    elif gen in ("v5e", "v6e") and dims[0] * dims[1] <= 8:
        # single-host slices up to 8 chips (v5e-8 / v6e-8 is one host of 2x4 chips); libtpu's default is 4 per host
        kwargs["chips_per_host_bounds"] = (dims[0], dims[1], 1)
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices)
    except Exception as e:  # libtpu's own message says what is wrong with the layout
        raise TPUError(f"libtpu refused TPU topology {name!r}: {e}") from e


def topology_mesh(name: str):
    """The project's 1-D ``("data",)`` mesh (:func:`parallel.make_mesh`) over a TPU slice's abstract devices."""
    return parallel.make_mesh(topology_devices(name))


def chip_of(name: str) -> Chip:
    return CHIPS[parse_topology(name)[0]]


def check_batch(global_batch: int, mesh: Any, what: str = "batch") -> int:
    """Per-chip rows of ``global_batch``; :class:`TPUError` if it does not split over the mesh's chips."""
    n = mesh.devices.size
    if global_batch <= 0 or global_batch % n:
        raise TPUError(f"{what} {global_batch} does not split over the {n} chips of the slice "
                       f"(use a multiple of {n})")
    return global_batch // n


def compile_report(name: str, fn: Callable, args: Sequence[Any], topology: str,
                   global_batch: int | None = None, static: dict[str, Any] | None = None) -> dict[str, Any]:
    """Lower and compile ``fn`` (a jitted function) on abstract ``args`` (``jax.ShapeDtypeStruct`` with shardings)
    (and ``static``, its static keyword arguments) and report per chip: memory (arguments, outputs, temporaries,
    generated code) against the chip's HBM, FLOPs, bytes accessed, the compiler's ``optimal_seconds`` and the
    roofline bound max(FLOPs x MXU passes / bf16 peak, bytes / bandwidth), the passes weighted by the program's
    matmul FLOPs (:func:`matmul_flops`): the compiler counts an fp32 matmul at HIGHEST as one pass, a TPU runs six.

    With ``global_batch``, ``batch_all_gathers`` counts the program's all-gathers whose result holds the whole
    global batch (a sharded batch gathered onto every chip: per-chip memory and traffic then grow with the slice).
    A compiler refusal (e.g. "exceeds available HBM") is a result, ``compiled: False`` with the error."""
    chip = chip_of(topology)
    rep: dict[str, Any] = {"program": name, "topology": topology}
    if global_batch is not None:
        rep["global_batch"] = int(global_batch)
    t0 = time.perf_counter()
    try:
        lowered = fn.lower(*args, **(static or {}))
        mm = matmul_flops(lowered.as_text())
        passes = _weighted_passes(mm)
        compiled = lowered.compile()
    except Exception as e:  # the compiler's refusal is the finding
        rep.update(compiled=False, error=str(e).strip().splitlines()[0][:500] if str(e).strip() else repr(e),
                   compile_s=time.perf_counter() - t0)
        return rep
    rep["compile_s"] = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    mem = {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
           "temporaries": ma.temp_size_in_bytes, "generated_code": ma.generated_code_size_in_bytes}
    # donated arguments alias outputs: count that memory once
    total = sum(mem.values()) - getattr(ma, "alias_size_in_bytes", 0)
    ca = compiled.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    flops, nbytes = float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))
    opt = ca.get("optimal_seconds")
    rep.update(compiled=True, memory_bytes=mem, total_bytes=total, hbm_bytes=chip.hbm_bytes,
               fits=total <= chip.hbm_bytes, flops=flops, bytes_accessed=nbytes, matmul_flops=mm,
               mxu_passes=passes,
               roofline_s=max(flops * passes / chip.bf16_flops, nbytes / chip.hbm_bandwidth),
               compiler_optimal_seconds=None if opt is None else float(opt),
               compiler_estimate_usable=opt is not None and float(opt) > 0)
    if global_batch is not None:
        rep["batch_all_gathers"] = len(batch_all_gathers(compiled.as_text(), int(global_batch)))
    return rep


#: bf16 MXU passes per matmul on a TPU by operand precision when an operand is fp32 (``jax.lax.Precision``: DEFAULT
#: computes in bf16, HIGH in 3 bf16 passes, HIGHEST in 6); bf16 operands take one pass at any precision.
MXU_PASSES = {"DEFAULT": 1, "HIGH": 3, "HIGHEST": 6}
_DOT = re.compile(r"stablehlo\.(dot_general|convolution)\b(.*?):\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)\s*->\s*"
                  r"(tensor<[^>]*>)")
_PRECISION = re.compile(r"precision(?:_config)? = \[(?:#stablehlo<precision )?(HIGHEST|HIGH|DEFAULT)")


def _tensor(t: str) -> tuple[list[int], str]:
    *dims, dtype = t[len("tensor<"):-1].split("x")
    return [int(d) for d in dims], dtype


def matmul_flops(stablehlo_text: str) -> dict[str, float]:
    """FLOPs of a lowered program's matmuls and convolutions (2 x multiply-adds) by MXU passes on a TPU
    (:data:`MXU_PASSES`): ``{"1": ..., "6": ...}``, global (before partitioning) and counted once per op in the
    text, so a loop body counts once; use the shares, not the totals, for a program with loops."""
    out: dict[str, float] = {}
    for line in stablehlo_text.splitlines():
        m = _DOT.search(line)
        if not m:
            continue
        kind, attrs, lhs, rhs, res = m.groups()
        (ld, lt), (rd, rt), (od, _) = _tensor(lhs), _tensor(rhs), _tensor(res)
        if kind == "dot_general":
            contracting = re.search(r"contracting_dims = \[([\d, ]*)\]", attrs)
            k = math.prod(ld[int(i)] for i in contracting.group(1).split(",") if i.strip()) if contracting else 1
        else:  # kernel elements per output feature; dim_numbers name the kernel's output-feature axis "o"
            spec = re.search(r"\]x\[([^\]]*)\]->", attrs).group(1).replace(" ", "").split(",")
            k = math.prod(rd) // rd[spec.index("o")]
        p = _PRECISION.search(attrs)
        passes = MXU_PASSES[p.group(1) if p else "DEFAULT"] if "f32" in (lt, rt) else 1
        out[str(passes)] = out.get(str(passes), 0.0) + 2.0 * math.prod(od) * k
    return out


def _weighted_passes(by: dict[str, float]) -> float:
    """The matmul-FLOP-weighted mean MXU passes (1 for all-bf16 matmuls, 6 for all fp32 at HIGHEST)."""
    total = sum(by.values())
    return sum(int(p) * f for p, f in by.items()) / total if total else 1.0


_ALL_GATHER = re.compile(r"=\s*(.*?)\s+all-gather(?:-start)?\(")
_LEADING_DIM = re.compile(r"\w+\[(\d+)")


def batch_all_gathers(hlo_text: str, global_batch: int) -> list[str]:
    """The all-gather instructions of a compiled program whose result's leading axis is the global batch."""
    out = []
    for line in hlo_text.splitlines():
        m = _ALL_GATHER.search(line)
        if m and any(int(d) == global_batch for d in _LEADING_DIM.findall(m.group(1))):
            out.append(line.strip())
    return out


def format_report(rep: dict[str, Any]) -> str:
    """One line per program (estimates, from the compiler's analysis; nothing here is measured on a TPU)."""
    if not rep.get("compiled"):
        return f"{rep['program']} on {rep['topology']}: compiler error: {rep['error']}"
    m = {k: v / 2**30 for k, v in rep["memory_bytes"].items()}
    opt = rep["compiler_optimal_seconds"]
    return (f"{rep['program']} on {rep['topology']}: per chip {rep['total_bytes'] / 2**30:.2f} GiB of "
            f"{rep['hbm_bytes'] / 2**30:.0f} (args {m['arguments']:.2f}, out {m['outputs']:.2f}, temp "
            f"{m['temporaries']:.2f}, code {m['generated_code']:.3f}){'' if rep['fits'] else ' DOES NOT FIT'}; "
            f"{rep['flops'] / 1e9:.1f} GFLOP (x{rep['mxu_passes']:.2g} MXU passes), "
            f"{rep['bytes_accessed'] / 2**30:.2f} GiB accessed per chip; roofline estimate "
            f"{rep['roofline_s'] * 1e3:.2f} ms; compiler's optimal_seconds "
            f"{opt if opt is None else f'{opt:.3g}'}{'' if rep['compiler_estimate_usable'] else ' (unusable)'}")


# ---------------------------------------------------------------------------------------------------------------
# Training programs

#: AudioSet-2M as Whisper-AT trains on it (clip counts of the released training logs).
AUDIOSET_2M_TRAIN_CLIPS = 1_953_082
AUDIOSET_EVAL_CLIPS = 19_185
ESTIMATE_KIND = "roofline lower bounds from the compiler's FLOPs and bytes, not measurements"
TRAIN_PROGRAMS = ("online_train_step", "cached_train_step", "eval_online", "eval_cached", "weight_average")


def run_programs(config: Any) -> tuple[str, ...]:
    """The programs a run of ``config`` executes (its ``mode``: online or cached)."""
    mode = str(config.mode)
    if mode not in ("online", "cached"):
        raise TPUError(f"config.mode must be 'online' or 'cached', got {mode!r}")
    return (f"{mode}_train_step", f"eval_{mode}", "weight_average")


class TrainPrograms:
    """A config's train steps (:func:`train.build_steps`) over a slice's mesh, lowerable at any global batch.

    State and encoder parameters are placed as in a real run (replicated), batches sharded over every chip."""

    def __init__(self, config: Any, topology: str, dims: Any, n_classes: int = 527):
        import jax.numpy as jnp

        from . import train as T
        from .api import compute_dtype
        from .audio import HOP_LENGTH, SAMPLE_RATE
        from .heads import make_head
        from .model import param_shapes

        self.config, self.topology, self.n_classes = config, topology, n_classes
        self.mesh = topology_mesh(topology)
        self.chips = self.mesh.devices.size
        self.samples = int(round(float(config.data.clip_seconds) * SAMPLE_RATE))
        frames = self.samples // HOP_LENGTH
        self.taps_shape = (1, dims.n_audio_layer, frames // 2 // int(config.data.pool), dims.n_audio_state)
        head = make_head(config.head.mode, self.taps_shape[1], self.taps_shape[3], n_classes,
                         dtype=compute_dtype(config.head.dtype))
        tx = T.make_optimizer(config, T.steps_per_epoch_for(config, AUDIOSET_2M_TRAIN_CLIPS))
        self.steps = T.build_steps(config, self.mesh, head, tx, self.taps_shape, dims)
        self.state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                  jax.eval_shape(self.steps.init), self.steps.state_sharding)
        self._rep, self._data = parallel.replicated(self.mesh), parallel.data_sharding(self.mesh)
        self.encoder = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self._rep),
                                    param_shapes(dims)["encoder"])
        self._f32 = jnp.float32

    def _batch(self, *shape: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, self._f32, sharding=self._data)

    def global_batch(self, program: str) -> int:
        return int(self.config.eval_batch_size if program.startswith("eval") else self.config.batch_size)

    def report(self, program: str, global_batch: int | None = None) -> dict[str, Any]:
        """Compile ``program`` (one of :data:`TRAIN_PROGRAMS`) at ``global_batch`` (default: the config's)."""
        gb = self.global_batch(program) if global_batch is None else int(global_batch)
        check_batch(gb, self.mesh, "eval batch" if program.startswith("eval") else "batch")
        s = self.steps
        taps, audio, labels = (self._batch(gb, *self.taps_shape[1:]), self._batch(gb, self.samples),
                               self._batch(gb, self.n_classes))
        fn, args = {
            "online_train_step": (s.online, (self.state, self.encoder, audio, labels)),
            "cached_train_step": (s.cached, (self.state, taps, labels)),
            "eval_online": (s.eval_online, (self.state["params"], self.encoder, audio)),
            "eval_cached": (s.eval_cached, (self.state["params"], taps)),
            "weight_average": (s.average, (self.state,)),
        }[program]
        rep = compile_report(program, fn, args, self.topology, None if program == "weight_average" else gb)
        rep.update(chips=self.chips, per_chip_batch=gb // self.chips)
        return rep


def train_programs(config: Any, topology: str, dims: Any, n_classes: int = 527,
                   programs: Sequence[str] = TRAIN_PROGRAMS) -> list[dict[str, Any]]:
    """Compile a config's online and cached train steps, eval and weight averaging for a slice, with the
    config's global batch over every chip and the state placed as :func:`train.build_steps` places it."""
    tp = TrainPrograms(config, topology, dims, n_classes)
    check_batch(int(config.batch_size), tp.mesh, "config.batch_size")
    check_batch(int(config.eval_batch_size), tp.mesh, "config.eval_batch_size")
    return [tp.report(p) for p in programs]


#: The batch search stops here: past it a step is long enough that a bigger batch only costs optimisation steps.
MAX_PER_CHIP_BATCH = 256


def largest_per_chip_batch(report_at: Callable[[int], dict[str, Any]], start: int,
                           limit: int = MAX_PER_CHIP_BATCH, known: dict[int, dict[str, Any]] | None = None
                           ) -> dict[str, Any]:
    """The largest per-chip batch up to ``limit`` whose program fits in the chip's HBM (``report_at(per_chip)``
    compiles it; ``known``: reports already compiled, by per-chip batch).

    Two compiles give the compiler's per-chip memory as ``fixed + per_row * batch``; the batch that line puts at
    the HBM size (rounded down to a multiple of 8) is then compiled to check it, stepping down 10% until it fits."""
    tried: dict[int, dict[str, Any]] = dict(known or {})

    def at(b: int) -> dict[str, Any]:
        if b not in tried:
            tried[b] = report_at(b)
        return tried[b]

    def ok(b: int) -> bool:
        r = at(b)
        return bool(r.get("compiled") and r["fits"])

    b0 = max(1, min(int(start), limit))
    while not ok(b0) and b0 > 1:
        b0 //= 2
    fit = None
    if ok(b0) and 2 * b0 <= limit and at(2 * b0).get("compiled"):
        r0, r1 = at(b0), at(2 * b0)
        per_row = (r1["total_bytes"] - r0["total_bytes"]) / b0
        fixed = r0["total_bytes"] - per_row * b0
        fit = {"fixed": fixed, "per_row": per_row}
        pred = limit if per_row <= 0 else min(limit, int((r0["hbm_bytes"] - fixed) / per_row))
        for _ in range(4):
            pred = pred // 8 * 8 if pred >= 16 else pred
            if pred <= 2 * b0 or ok(pred):
                break
            pred = int(pred * 0.9)
    fitting = [b for b in tried if ok(b)]
    best = max(fitting) if fitting else 0
    return {"per_chip_batch": best, "limit": limit, "at_limit": best >= limit, "linear_fit_bytes": fit,
            "tried": _tried(tried)}


def _tried(tried: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"per_chip_batch": b, "compiled": r.get("compiled"), "fits": r.get("fits"),
             "total_bytes": r.get("total_bytes"), "error": r.get("error")} for b, r in sorted(tried.items())]


def recipe_estimate(config: Any, reports: Sequence[dict[str, Any]],
                    train_clips: int = AUDIOSET_2M_TRAIN_CLIPS, eval_clips: int = AUDIOSET_EVAL_CLIPS
                    ) -> dict[str, Any]:
    """Roofline estimates (lower bounds, not measurements) of one "epoch" (``config.epoch_fraction`` of the data),
    one full pass and the config's whole recipe (its epochs, each followed by an eval), online and cached.

    From each program's roofline time: no input pipeline, host overhead, collective latency or compile time."""
    from .train import steps_per_epoch_for

    by = {r["program"]: r for r in reports if r.get("compiled")}
    gb, eb = int(config.batch_size), int(config.eval_batch_size)
    epoch_steps = steps_per_epoch_for(config, train_clips)
    full_steps = -(-train_clips // gb)
    out: dict[str, Any] = {"kind": ESTIMATE_KIND,
                           "train_clips": train_clips, "eval_clips": eval_clips, "global_batch": gb,
                           "steps_per_epoch": epoch_steps, "steps_per_full_pass": full_steps,
                           "epochs": int(config.epochs)}
    for mode in ("online", "cached"):
        step, ev = by.get(f"{mode}_train_step"), by.get(f"eval_{mode}")
        if step is None or ev is None:
            continue
        eval_s = -(-eval_clips // eb) * ev["roofline_s"]
        epoch_s = epoch_steps * step["roofline_s"] + eval_s
        out[mode] = {"step_s": step["roofline_s"], "eval_s": eval_s, "epoch_s": epoch_s,
                     "full_pass_s": full_steps * step["roofline_s"], "recipe_s": int(config.epochs) * epoch_s,
                     "clips_per_s": gb / step["roofline_s"] if step["roofline_s"] else None}
    return out


def format_estimate(est: dict[str, Any]) -> str:
    """:func:`recipe_estimate` as a few lines, every figure labelled as the estimate it is."""
    lines = [f"estimates ({est['kind']}): {est['train_clips']:,} training clips, global batch "
             f"{est['global_batch']}: {est['steps_per_epoch']} steps per epoch, {est['steps_per_full_pass']} per full "
             f"pass, {est['epochs']} epochs, an eval of {est['eval_clips']:,} clips after each"]
    for mode in ("online", "cached"):
        if mode in est:
            m = est[mode]
            lines.append(f"  {mode}: step >= {m['step_s'] * 1e3:.1f} ms ({m['clips_per_s']:,.0f} clips/s), epoch >= "
                         f"{m['epoch_s'] / 3600:.2f} h, full pass >= {m['full_pass_s'] / 3600:.2f} h, recipe >= "
                         f"{m['recipe_s'] / 3600:.1f} h")
    return "\n".join(lines)


def training_plan(config: Any, topology: str, dims: Any, n_classes: int = 527, search_batch: bool = True,
                  programs: Sequence[str] | None = None, train_clips: int = AUDIOSET_2M_TRAIN_CLIPS,
                  eval_clips: int = AUDIOSET_EVAL_CLIPS, log: Callable[[str], None] = lambda _: None
                  ) -> dict[str, Any]:
    """What ``scripts/train.py --compile_only=TOPOLOGY`` reports: the training programs (default: those of the
    config's mode, :func:`run_programs`) compiled for the slice at the config's batch, the largest per-chip batch of
    the train steps that fits, and recipe estimates."""
    from .api import compute_dtype

    programs = run_programs(config) if programs is None else tuple(programs)
    unknown = sorted(set(programs) - set(TRAIN_PROGRAMS))
    if unknown:
        raise TPUError(f"unknown training programs {unknown}; known: {list(TRAIN_PROGRAMS)}")
    tp = TrainPrograms(config, topology, dims, n_classes)
    check_batch(int(config.batch_size), tp.mesh, "config.batch_size")
    check_batch(int(config.eval_batch_size), tp.mesh, "config.eval_batch_size")
    devices = list(tp.mesh.devices.flat)
    plan: dict[str, Any] = {"topology": topology, "chips": tp.chips, "hosts": len({d.process_index for d in devices}),
                            "chip": dataclasses.asdict(chip_of(topology)), "chip_source": CHIPS_SOURCE,
                            "model": str(config.model), "head": str(config.head.mode),
                            "encoder_dtype": np.dtype(compute_dtype(config.encoder_dtype, devices)).name,
                            "programs": []}
    for p in programs:
        rep = tp.report(p)
        log(format_report(rep))
        plan["programs"].append(rep)
    if search_batch:
        plan["largest_per_chip_batch"] = {}
        for p in [p for p in programs if p.endswith("_train_step")]:
            start = int(config.batch_size) // tp.chips
            found = largest_per_chip_batch(lambda b, p=p: tp.report(p, b * tp.chips), start,
                                           known={start: next(r for r in plan["programs"] if r["program"] == p)})
            log(f"{p}: largest per-chip batch that fits {found['per_chip_batch']} "
                f"(global {found['per_chip_batch'] * tp.chips})")
            plan["largest_per_chip_batch"][p] = found
    plan["estimate"] = recipe_estimate(config, plan["programs"], train_clips, eval_clips)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Inference programs (what scripts/infer.py runs on an accelerator)

#: Assumed sampled tokens per 30-s window for the decode estimate (English speech at ~150 words a minute is
#: ~75 words, ~100 tokens, per window; a window of silence or music is a few).
TOKENS_PER_WINDOW = 100
INFERENCE_PROGRAMS = ("encode", "encode_layers", "step_sums", "head", "prefill", "sample_loop", "decode_step",
                      "aligner")


class _ModelShape:
    """What the library's program builders read from a model (its module and dimensions), without weights."""

    def __init__(self, module: Any, dims: Any):
        from .programs import Programs

        self.module, self.dims, self.whisper_meta = module, dims, {}
        self.programs = Programs(module)


def inference_programs(dims: Any, topology: str, per_chip_batch: int = 8, dtype: str = "bfloat16",
                       head_mode: str = "tl_tr_1_8", n_classes: int = 527,
                       programs: Sequence[str] = INFERENCE_PROGRAMS) -> list[dict[str, Any]]:
    """Compile the programs of transcription and tagging (the library's own jitted functions: the encoder with and
    without its block outputs, the 0.4-s step sums, the tagging head, the decoder's prefill, its sampling loop with
    the KV cache and one decode step, and the word aligner) for a slice, 30-s windows sharded over its chips."""
    import jax.numpy as jnp

    from .api import compute_dtype
    from .audio import N_FRAMES
    from .decoding import _SHORT_PREFILL, _Consts, _Rules
    from .heads import make_head
    from .model import Whisper, param_shapes

    mesh = topology_mesh(topology)
    chips = mesh.devices.size
    b = int(per_chip_batch) * chips
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)

    def sds(shape, dtype=jnp.float32, sharding=data):
        return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)

    model = _ModelShape(Whisper(dims, dtype=compute_dtype(dtype)), dims)
    params = jax.tree.map(lambda a: sds(a.shape, a.dtype, rep), param_shapes(dims))
    enc = model.programs
    mel = sds((b, dims.n_mels, N_FRAMES))
    features, layers = jax.eval_shape(enc.encode_layers, params, mel)
    feats = sds(features.shape, features.dtype)
    head = make_head(head_mode, dims.n_audio_layer, dims.n_audio_state, n_classes)
    head_params = jax.tree.map(lambda a: sds(a.shape, a.dtype, rep),
                               jax.eval_shape(lambda: head.init(jax.random.PRNGKey(0), jnp.zeros(
                                   (1, dims.n_audio_layer, 25, dims.n_audio_state)))["params"]))
    head_apply = model.programs.head_for(head_mode, n_classes)
    # token ids only pick rows of the logits: any ids inside the vocabulary give the same programs
    eot = dims.n_vocab - 1600
    progs = model.programs.decoder(_Consts(eot, eot + 8, eot + 6, eot + 5))
    v, n_ctx = dims.n_vocab, dims.n_text_ctx
    scalar = lambda dt=jnp.int32: sds((), dt, rep)  # noqa: E731
    prefill_static = {"n_group": 1, "chunk_len": _SHORT_PREFILL}
    prefill_args = (params, feats, sds((b, n_ctx), jnp.int32), scalar(), scalar())
    out: list[dict[str, Any]] = []

    def add(name, fn, args, batch=b, static=None):
        if name in programs:
            r = compile_report(name, fn, args, topology, batch, static)
            r.update(chips=chips, windows=b)
            out.append(r)
            return r
        return None

    add("encode", enc.encode, (params, mel))
    add("encode_layers", enc.encode_layers, (params, mel))
    add("step_sums", enc.step_sums, (sds(layers.shape, layers.dtype), sds((b,), jnp.int32), sds((b,), jnp.int32)))
    add("head", head_apply, (head_params, sds((16, dims.n_audio_layer, 25, dims.n_audio_state), sharding=rep)), 16)
    add("prefill", progs.prefill, prefill_args, static=prefill_static)
    if {"sample_loop", "decode_step"} & set(programs):
        pre = progs.prefill.lower(*prefill_args, **prefill_static).compile()
        shapes = jax.eval_shape(functools.partial(progs.prefill, **prefill_static), *prefill_args)
        cache, logits0, _ = jax.tree.map(lambda a, sh: sds(a.shape, a.dtype, sh), shapes, pre.output_shardings)
        rules = _Rules(sds((v,), jnp.bool_, rep), sds((v,), jnp.bool_, rep), scalar(jnp.bool_), scalar())
        key = sds((2,), jnp.uint32, rep)
        add("sample_loop", progs.sample_loop, (params, None, *cache, logits0, sds((b,), jnp.int32), scalar(),
                                               scalar(), rules, key, scalar(jnp.float32)),
            static={"buffer_len": n_ctx // 2})
        step = jax.jit(lambda p, tok, c, off: model.module.apply({"params": p}, tok, c, off, method="decode"))
        add("decode_step", step, (params, sds((b, 1), jnp.int32), cache, scalar()))
    if "aligner" in programs:
        out += _aligner_report(model, params, dims, topology, chips)
    return out


def _aligner_report(model: Any, params: Any, dims: Any, topology: str, chips: int) -> list[dict[str, Any]]:
    """The word aligner's forced pass: one window at a time (as transcription runs it), replicated."""
    import jax.numpy as jnp

    from .timing import _ACCELERATOR_FORCED_TOKENS, alignment_heads

    rep = jax.tree.leaves(params)[0].sharding
    heads = np.argwhere(alignment_heads(model))
    sds = lambda shape, dt=jnp.int32: jax.ShapeDtypeStruct(shape, dt, sharding=rep)  # noqa: E731
    args = (params, sds((1, _ACCELERATOR_FORCED_TOKENS)), sds((1, dims.n_audio_ctx, dims.n_audio_state), jnp.float32),
            sds((len(heads),)), sds((len(heads),)), sds(()), sds(()), sds((), jnp.float32))
    r = compile_report("aligner", model.programs.aligner, args, topology,
                       static={"eot": dims.n_vocab - 1600, "medfilt_width": 7})
    r.update(chips=chips, windows=1)
    return [r]


def inference_estimate(reports: Sequence[dict[str, Any]], tokens_per_window: int = TOKENS_PER_WINDOW,
                       at_time_res: float = 10.0) -> dict[str, Any]:
    """Hours of audio per hour of the slice (roofline lower bounds of each program, not measurements): tags only
    (encoder with block outputs + step sums + head) and transcript + tags (+ prefill and ``tokens_per_window``
    decode steps per window; the aligner once per window with word timestamps)."""
    by = {r["program"]: r for r in reports if r.get("compiled")}
    need = ("encode_layers", "step_sums", "head")
    if not all(k in by for k in need):
        return {}
    windows = by["encode_layers"]["windows"]
    rows_per_window = 30.0 / at_time_res
    tag_s = by["encode_layers"]["roofline_s"] + by["step_sums"]["roofline_s"] + \
        by["head"]["roofline_s"] * windows * rows_per_window / 16
    out: dict[str, Any] = {"kind": ESTIMATE_KIND,
                           "windows_per_batch": windows, "tokens_per_window": tokens_per_window,
                           "tags_only_audio_hours_per_hour": windows * 30.0 / tag_s}
    if "prefill" in by and "decode_step" in by:
        asr_s = tag_s + by["prefill"]["roofline_s"] + tokens_per_window * by["decode_step"]["roofline_s"]
        out["transcript_and_tags_audio_hours_per_hour"] = windows * 30.0 / asr_s
        if "aligner" in by:
            out["with_word_timestamps_audio_hours_per_hour"] = windows * 30.0 / (
                asr_s + windows * by["aligner"]["roofline_s"])
    return out
