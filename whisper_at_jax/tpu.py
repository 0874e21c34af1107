"""Compile for a TPU slice on a machine without one (deviceless AOT) and report what the compiler says.

``topology_mesh("v5e:16x16")`` gives the project's ``("data",)`` mesh over the abstract devices of a real slice
(libtpu's topology description, ``pip install -e ".[tpu]"``), usable by every program builder that takes a mesh
(``train.build_steps``, ...). :func:`compile_report` lowers and compiles one program over abstract inputs and returns
per-chip memory, FLOPs and bytes accessed with a roofline bound from the chip's published peaks (:data:`CHIPS`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax

from . import parallel


class TPUError(ValueError):
    """A bad topology name, a missing libtpu, or a program that cannot be compiled as asked (named in the message)."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip peaks."""

    bf16_flops: float  # FLOP/s, bf16 matmul peak
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: int


#: Per-chip peaks from the Google Cloud TPU documentation (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e: "System
#: architecture" tables): bf16 peak compute, HBM bandwidth and HBM capacity per chip.
CHIPS = {
    "v4": Chip(275e12, 1228e9, 32 * 2**30),
    "v5e": Chip(197e12, 819e9, 16 * 2**30),
    "v5p": Chip(459e12, 2765e9, 95 * 2**30),
    "v6e": Chip(918e12, 1640e9, 32 * 2**30),
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


def compile_report(name: str, fn: Callable, args: Sequence[Any], topology: str) -> dict[str, Any]:
    """Lower and compile ``fn`` (a jitted function) on abstract ``args`` (``jax.ShapeDtypeStruct`` with shardings)
    and report per chip: memory (arguments, outputs, temporaries, generated code) against the chip's HBM, FLOPs,
    bytes accessed, the compiler's ``optimal_seconds`` and the roofline bound max(FLOPs / peak, bytes / bandwidth).

    A compiler refusal (e.g. "exceeds available HBM") is a result, ``compiled: False`` with the error."""
    chip = chip_of(topology)
    rep: dict[str, Any] = {"program": name, "topology": topology}
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # the compiler's refusal is the finding
        rep.update(compiled=False, error=str(e).splitlines()[0][:500])
        return rep
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
               fits=total <= chip.hbm_bytes, flops=flops, bytes_accessed=nbytes,
               roofline_s=max(flops / chip.bf16_flops, nbytes / chip.hbm_bandwidth),
               compiler_optimal_seconds=None if opt is None else float(opt),
               compiler_estimate_usable=opt is not None and float(opt) > 0)
    return rep


def format_report(rep: dict[str, Any]) -> str:
    """One line per program (estimates, from the compiler's analysis; nothing here is measured on a TPU)."""
    if not rep.get("compiled"):
        return f"{rep['program']} on {rep['topology']}: compiler error: {rep['error']}"
    m = {k: v / 2**30 for k, v in rep["memory_bytes"].items()}
    opt = rep["compiler_optimal_seconds"]
    return (f"{rep['program']} on {rep['topology']}: per chip {rep['total_bytes'] / 2**30:.2f} GiB of "
            f"{rep['hbm_bytes'] / 2**30:.0f} (args {m['arguments']:.2f}, out {m['outputs']:.2f}, temp "
            f"{m['temporaries']:.2f}, code {m['generated_code']:.3f}){'' if rep['fits'] else ' DOES NOT FIT'}; "
            f"{rep['flops'] / 1e9:.1f} GFLOP, {rep['bytes_accessed'] / 2**30:.2f} GiB accessed per chip; roofline "
            f"estimate {rep['roofline_s'] * 1e3:.2f} ms; compiler's optimal_seconds "
            f"{opt if opt is None else f'{opt:.3g}'}{'' if rep['compiler_estimate_usable'] else ' (unusable)'}")


def train_programs(config: Any, topology: str, dims: Any, n_classes: int = 527) -> list[dict[str, Any]]:
    """Compile a config's online and cached train steps, eval and weight averaging for a slice, with the
    config's global batch over every chip and the state placed as :func:`train.build_steps` places it."""
    import jax.numpy as jnp

    from . import train as T
    from .api import compute_dtype
    from .heads import make_head
    from .model import param_shapes

    mesh = topology_mesh(topology)
    gb = int(config.batch_size)
    check_batch(gb, mesh, "config.batch_size")
    check_batch(int(config.eval_batch_size), mesh, "config.eval_batch_size")
    frames = int(round(float(config.data.clip_seconds) * T.SAMPLE_RATE)) // 160
    taps_shape = (1, dims.n_audio_layer, frames // 2 // int(config.data.pool), dims.n_audio_state)
    head = make_head(config.head.mode, taps_shape[1], taps_shape[3], n_classes, dtype=compute_dtype(config.head.dtype))
    steps = T.build_steps(config, mesh, head, T.make_optimizer(config, 1000), taps_shape, dims)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(steps.init),
                         steps.state_sharding)
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)

    def sds(shape, sharding, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    enc = jax.tree.map(lambda a: sds(a.shape, rep, a.dtype), param_shapes(dims)["encoder"])
    samples = frames * 160
    labels = sds((gb, n_classes), data)
    taps = sds((gb,) + taps_shape[1:], data)
    eb = int(config.eval_batch_size)
    out = [compile_report("online_train_step", steps.online, (state, enc, sds((gb, samples), data), labels), topology),
           compile_report("cached_train_step", steps.cached, (state, taps, labels), topology),
           compile_report("eval_online", steps.eval_online, (state["params"], enc, sds((eb, samples), data)), topology),
           compile_report("eval_cached", steps.eval_cached, (state["params"], sds((eb,) + taps_shape[1:], data)),
                          topology),
           compile_report("weight_average", steps.average, (state,), topology)]
    for r in out:
        r["global_batch"] = eb if r["program"].startswith("eval") else gb
        r["chips"] = mesh.devices.size
    return out
