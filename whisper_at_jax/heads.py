"""Whisper-AT tagging heads in Flax Linen, their PyTorch-format checkpoints, and tap pooling.

Every head of the paper is selected by the reference's mode string (``src/whisper_at_train/models.py`` class
``TLTR``; inference copy ``whisper_at.model.ATModel``):

============================  =============  ==========================================================
mode                          paper name     computation on taps [B, L, T, D]
============================  =============  ==========================================================
``mean_mlp``                  -              mean over layers and time -> mlp_layer
``last_mlp``                  Last-MLP       last layer, mean over time -> mlp_layer
``wa_mlp``                    WA-MLP         mean over time, layer average weighted by ``layer_weight``
``mean_tr_H`` / ``last_tr_H`` - / Last-Tr    layer mean / last layer -> time_tr (H heads) -> time mean
``wa_tr_H``                   WA-Tr          weighted layer average -> time_tr -> time mean
``wa_down_tr_d_H``            WA-Tr (proj)   weighted average -> down_layer (LN + Linear D->d) -> time_tr(d)
``tl_tr_Ht_Hl``               TL-TR          time_tr per layer (shared) -> time mean -> layer_tr -> layer mean
``tl_down_tr_d_Ht_Hl``        TL-TR-d        down_layer per token, then TL-TR at width d
============================  =============  ==========================================================

``lw_tr_*`` / ``lw_down_tr_*`` (the training code's names) are accepted as aliases of ``tl_tr_*`` /
``tl_down_tr_*``. Every head ends in ``mlp_layer`` = LayerNorm + Linear(d, n_classes). There are no positional
embeddings, CLS tokens or dropout; the Transformer blocks are Whisper's pre-LN ``ResidualAttentionBlock`` (exact
GELU, key projection without bias, LayerNorm eps 1e-5). ``layer_weight`` mixing divides by the raw sum of the
weights (no softmax), as the reference does.

Param names mirror the reference state dict: ``time_tr``, ``layer_tr``, ``mlp_layer_0`` (LayerNorm),
``mlp_layer_1`` (Dense), ``down_layer_0`` (LayerNorm), ``down_layer_1`` (Dense), ``layer_weight``;
``at_model.time_tr.mlp.0.weight`` <-> ``params["time_tr"]["mlp_0"]["kernel"]`` (transposed).

Initialisation is PyTorch's default (Linear weight and bias ~ U(+-1/sqrt(fan_in)), LayerNorm 1/0,
``layer_weight`` = 1/L), so a head trained here starts where the reference's does.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from .model import LayerNorm, ResidualAttentionBlock, matmul_precision

Array = jax.Array
Params = dict[str, Any]

#: Whisper-AT pools 20 encoder frames (20 ms each) into one 0.4-s step (the one pool constant: tagging reads it).
POOL_FACTOR = 20
#: AudioSet's class count: the released heads' output size.
AUDIOSET_CLASSES = 527


class HeadCheckpointError(ValueError):
    """A head state dict does not fit the requested (or any known) head: names the tensor and shapes."""


# --------------------------------------------------------------------------------------------------------------
# Taps


def pool_taps(layers: Array, factor: int = POOL_FACTOR, *, truncate: bool = False) -> Array:
    """Mean-pool encoder block outputs over non-overlapping blocks of ``factor`` frames.

    layers [B, L, T, d] -> [B, L, T // factor, d]. Every batch item is pooled (whisper-at 0.5's encoder keeps only
    item 0). The mean accumulates in fp32 and is returned in the input dtype.

    ``T`` must be a multiple of ``factor``; with ``truncate=True`` the trailing ``T % factor`` frames are dropped
    instead, which is what ``torch.nn.functional.avg_pool2d`` (whisper-at's pooling) does.
    """
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"pool factor must be a positive integer, got {factor!r}")
    if layers.ndim != 4:
        raise ValueError(f"taps must be [batch, n_layers, frames, d], got shape {tuple(layers.shape)}")
    b, n_layers, t, d = layers.shape
    steps, rest = divmod(t, int(factor))
    if rest and not truncate:
        raise ValueError(f"{t} frames is not a multiple of the pool factor {factor} "
                         f"(pass truncate=True to drop the last {rest} frames as avg_pool2d does)")
    if steps == 0:
        raise ValueError(f"{t} frames is fewer than one pool window of {factor}")
    x = layers[:, :, : steps * factor].reshape(b, n_layers, steps, int(factor), d)
    return jnp.mean(x, axis=3, dtype=jnp.float32).astype(layers.dtype)


# --------------------------------------------------------------------------------------------------------------
# Modes

_MODE_PATTERNS = (
    (re.compile(r"^(mean|last|wa)_mlp$"), "mlp"),
    (re.compile(r"^(mean|last|wa)_tr_(\d+)$"), "tr"),
    (re.compile(r"^wa_down_tr_(\d+)_(\d+)$"), "wa_down_tr"),
    (re.compile(r"^(?:tl|lw)_tr_(\d+)_(\d+)$"), "tl_tr"),
    (re.compile(r"^(?:tl|lw)_down_tr_(\d+)_(\d+)_(\d+)$"), "tl_down_tr"),
)

KNOWN_MODES = ("mean_mlp", "last_mlp", "wa_mlp", "mean_tr_H", "last_tr_H", "wa_tr_H", "wa_down_tr_d_H",
               "tl_tr_Ht_Hl", "tl_down_tr_d_Ht_Hl")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """A parsed mode string.

    ``layers``: how the L taps are combined before the time stage: ``mean``, ``last``, ``wa`` (weighted by
    ``layer_weight``) or ``tl`` (kept apart for the layer Transformer). ``inter_dim``: width of ``down_layer``
    (None: no projection). ``time_heads`` / ``layer_heads``: heads of ``time_tr`` / ``layer_tr`` (None: absent).
    """

    layers: str
    inter_dim: int | None = None
    time_heads: int | None = None
    layer_heads: int | None = None

    @property
    def mode(self) -> str:
        """Canonical mode string (the package's ``tl_*`` names for TL-TR)."""
        if self.time_heads is None:
            return f"{self.layers}_mlp"
        if self.layers == "tl":
            down = f"down_tr_{self.inter_dim}" if self.inter_dim else "tr"
            return f"tl_{down}_{self.time_heads}_{self.layer_heads}"
        down = f"down_tr_{self.inter_dim}" if self.inter_dim else "tr"
        return f"{self.layers}_{down}_{self.time_heads}"

    @property
    def uses_layer_weight(self) -> bool:
        return self.layers == "wa"

    def head_width(self, width: int) -> int:
        """Width of the Transformer blocks and classifier for Whisper width ``width``."""
        return self.inter_dim or width


def parse_mode(mode: str) -> HeadSpec:
    """Parse a reference mode string (``tl_tr_1_8``, ``lw_down_tr_512_1_8``, ``wa_mlp``, ...)."""
    if not isinstance(mode, str):
        raise ValueError(f"head mode must be a string, got {mode!r}")
    for pattern, kind in _MODE_PATTERNS:
        m = pattern.match(mode)
        if not m:
            continue
        g = m.groups()
        if kind == "mlp":
            spec = HeadSpec(g[0])
        elif kind == "tr":
            spec = HeadSpec(g[0], time_heads=int(g[1]))
        elif kind == "wa_down_tr":
            spec = HeadSpec("wa", inter_dim=int(g[0]), time_heads=int(g[1]))
        elif kind == "tl_tr":
            spec = HeadSpec("tl", time_heads=int(g[0]), layer_heads=int(g[1]))
        else:
            spec = HeadSpec("tl", inter_dim=int(g[0]), time_heads=int(g[1]), layer_heads=int(g[2]))
        for name in ("inter_dim", "time_heads", "layer_heads"):
            v = getattr(spec, name)
            if v is not None and v < 1:
                raise ValueError(f"head mode {mode!r}: {name} must be >= 1, got {v}")
        return spec
    raise ValueError(f"unknown head mode {mode!r}; known: {', '.join(KNOWN_MODES)} "
                     "(H, Ht, Hl: head counts; d: projection width; lw_ is accepted for tl_)")


# --------------------------------------------------------------------------------------------------------------
# PyTorch default initialisation


def _torch_uniform(fan_in: int) -> Callable[..., Array]:
    """nn.Linear's default for weight (kaiming_uniform with a=sqrt(5)) and bias: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _torch_kernel_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    return _torch_uniform(shape[0])(key, shape, dtype)  # Flax kernels are [in, out]: fan_in is shape[0]


def torch_default_init(params: Params, key: Array) -> Params:
    """Re-draw every Dense kernel and bias of ``params`` with PyTorch's nn.Linear default.

    LayerNorm params (scale/bias under a LayerNorm, already 1/0) and ``layer_weight`` are left as they are. Used
    for the Whisper blocks inside a head, whose Dense layers Flax would otherwise initialise lecun-normal.
    """
    counter = [0]

    def walk(tree: Any) -> Any:
        if not isinstance(tree, Mapping):
            return tree
        out = {k: walk(v) for k, v in tree.items()}
        kernel = tree.get("kernel")
        if kernel is not None and getattr(kernel, "ndim", 0) == 2:
            fan_in = kernel.shape[0]
            k_key = jax.random.fold_in(key, counter[0])
            counter[0] += 1
            out["kernel"] = _torch_uniform(fan_in)(k_key, kernel.shape, kernel.dtype)
            if "bias" in tree:
                b_key = jax.random.fold_in(key, counter[0])
                counter[0] += 1
                out["bias"] = _torch_uniform(fan_in)(b_key, tree["bias"].shape, tree["bias"].dtype)
        return out

    return walk(params)


# --------------------------------------------------------------------------------------------------------------
# The head module


def _layer_mix(x: Array, weight: Array, axis: int) -> Array:
    """Weighted layer average: sum_l w_l x_l / sum_l w_l (raw weights, as the reference), in fp32."""
    w = weight.astype(jnp.float32)
    x = jnp.moveaxis(x.astype(jnp.float32), axis, -1)
    return jnp.matmul(x, w, precision=matmul_precision(jnp.float32)) / jnp.sum(w)


class ATHead(nn.Module):
    """A Whisper-AT head: taps [B, L, steps, width] -> logits [B, n_classes] (fp32).

    Build it with :func:`make_head`. The Transformer blocks compute in ``dtype``; pooling means, layer mixing,
    LayerNorms, ``down_layer`` and the classifier run in fp32 (whisper-at casts to fp32 before ``down_layer`` and
    ``mlp_layer`` too). ``init`` gives PyTorch's default initialisation (see :func:`torch_default_init`); when this
    module is a submodule of another, the parent's ``init`` does not pass through that override, so apply
    :func:`torch_default_init` to the head's subtree there (or init the head on its own with :func:`init_head`).
    """

    mode: str
    n_layers: int
    width: int
    n_classes: int = AUDIOSET_CLASSES
    dtype: Any = jnp.float32

    def setup(self):
        spec = parse_mode(self.mode)
        d = spec.head_width(self.width)
        if spec.uses_layer_weight:
            self.layer_weight = self.param(
                "layer_weight", lambda _, shape: jnp.full(shape, 1.0 / self.n_layers, jnp.float32), (self.n_layers,))
        if spec.inter_dim:
            self.down_layer_0 = LayerNorm()
            self.down_layer_1 = nn.Dense(d, dtype=jnp.float32, precision=matmul_precision(jnp.float32),
                                         kernel_init=_torch_kernel_init,
                                         bias_init=_torch_uniform(self.width))
        if spec.time_heads:
            self.time_tr = ResidualAttentionBlock(d, spec.time_heads, dtype=self.dtype)
        if spec.layer_heads:
            self.layer_tr = ResidualAttentionBlock(d, spec.layer_heads, dtype=self.dtype)
        self.mlp_layer_0 = LayerNorm()
        self.mlp_layer_1 = nn.Dense(self.n_classes, dtype=jnp.float32, precision=matmul_precision(jnp.float32),
                                    kernel_init=_torch_kernel_init,
                                    bias_init=_torch_uniform(d))
        self.spec = spec

    def _down(self, x: Array) -> Array:
        return self.down_layer_1(self.down_layer_0(x.astype(jnp.float32)))

    def _classify(self, x: Array) -> Array:
        return self.mlp_layer_1(self.mlp_layer_0(x.astype(jnp.float32)))

    def _time_stage(self, x: Array) -> Array:
        """[N, T, d] -> time_tr -> mean over time -> [N, d] (fp32)."""
        y = self.time_tr(x.astype(self.dtype))
        return jnp.mean(y, axis=1, dtype=jnp.float32)

    def __call__(self, taps: Array) -> Array:
        if taps.ndim != 4 or taps.shape[1] != self.n_layers or taps.shape[3] != self.width:
            raise ValueError(f"head {self.mode!r} takes taps [batch, {self.n_layers}, steps, {self.width}], "
                             f"got shape {tuple(taps.shape)}")
        if taps.shape[2] < 1:
            raise ValueError("head input has no time steps")
        spec = self.spec
        b, n_layers, t, _ = taps.shape

        if spec.time_heads is None:  # *_mlp
            if spec.layers == "mean":
                h = jnp.mean(taps, axis=(1, 2), dtype=jnp.float32)
            elif spec.layers == "last":
                h = jnp.mean(taps[:, -1], axis=1, dtype=jnp.float32)
            else:
                h = _layer_mix(jnp.mean(taps, axis=2, dtype=jnp.float32), self.layer_weight, axis=1)
            return self._classify(h)

        if spec.layers != "tl":  # one time Transformer over a single combined sequence [B, T, D]
            if spec.layers == "mean":
                x = jnp.mean(taps, axis=1, dtype=jnp.float32)
            elif spec.layers == "last":
                x = taps[:, -1]
            else:
                x = _layer_mix(taps, self.layer_weight, axis=1)
            if spec.inter_dim:
                x = self._down(x)
            return self._classify(self._time_stage(x))

        # TL-TR: the time Transformer is shared by all layers, then a Transformer across the L layer vectors.
        x = self._down(taps) if spec.inter_dim else taps
        d = x.shape[-1]
        per_layer = self._time_stage(x.reshape(b * n_layers, t, d)).reshape(b, n_layers, d)
        y = self.layer_tr(per_layer.astype(self.dtype))
        return self._classify(jnp.mean(y, axis=1, dtype=jnp.float32))

    def init_with_output(self, rngs, *args, **kwargs):  # noqa: D102 (Module API)
        # Flax initialises the Whisper blocks' Dense layers lecun-normal; re-draw them the PyTorch way so training
        # starts from the reference's distribution. Everything else already has PyTorch's init.
        out, variables = super().init_with_output(rngs, *args, **kwargs)
        key = rngs["params"] if isinstance(rngs, Mapping) else rngs
        if "params" in variables:
            variables = dict(variables)
            variables["params"] = torch_default_init(variables["params"], jax.random.fold_in(key, 0x7A3))
        return out, variables


def make_head(mode: str, n_layers: int, width: int, n_classes: int = AUDIOSET_CLASSES,
              dtype: Any = jnp.float32) -> ATHead:
    """The head for ``mode`` on a Whisper encoder with ``n_layers`` blocks of width ``width``.

    Returns a Linen module: ``head.apply({"params": p}, taps)`` with taps [B, n_layers, steps, width] -> fp32
    logits [B, n_classes]; ``head.init(key, taps)`` gives PyTorch-default-initialised params.
    """
    spec = parse_mode(mode)
    for name, v in (("n_layers", n_layers), ("width", width), ("n_classes", n_classes)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    d = spec.head_width(width)
    for name, heads in (("time", spec.time_heads), ("layer", spec.layer_heads)):
        if heads is not None and d % heads:
            raise ValueError(f"head mode {mode!r}: width {d} is not divisible by {heads} {name} heads")
    return ATHead(mode=mode, n_layers=int(n_layers), width=int(width), n_classes=int(n_classes), dtype=dtype)


def init_head(head: ATHead, key: Array, steps: int = 25) -> Params:
    """PyTorch-default-initialised params of ``head`` (taps of ``steps`` pooled steps; the shapes do not depend
    on it)."""
    taps = jnp.zeros((1, head.n_layers, steps, head.width), jnp.float32)
    return jax.jit(head.init)(key, taps)["params"]


def head_param_shapes(head: ATHead) -> Params:
    """Param shapes/dtypes of ``head`` without allocating them."""
    taps = jax.ShapeDtypeStruct((1, head.n_layers, 1, head.width), jnp.float32)
    return jax.eval_shape(head.init, jax.random.PRNGKey(0), taps)["params"]


def head_segments(head_apply: Callable[[Array], Array], taps: Array, steps_per_segment: int) -> Array:
    """Run a head on consecutive segments of ``steps_per_segment`` pooled steps: whisper-at's
    ``ATModel.forward(audio_rep, time_resolution)`` for a batch.

    taps [B, L, T, d] -> logits [B, ceil(T / steps_per_segment), C]. As the reference does, the last segment is
    zero-padded to full length and the padding rows take part in the head (attention, time means): a short last
    segment does not give the logits of the head run on the shorter segment alone. All segments of all batch items
    go through ``head_apply`` (taps [N, L, steps, d] -> [N, C]) in one call.
    """
    if not isinstance(steps_per_segment, (int, np.integer)) or isinstance(steps_per_segment, bool) \
            or steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be a positive integer, got {steps_per_segment!r}")
    if taps.ndim != 4:
        raise ValueError(f"taps must be [batch, n_layers, steps, d], got shape {tuple(taps.shape)}")
    b, n_layers, t, d = taps.shape
    if t < 1:
        raise ValueError("taps have no time steps")
    s = int(steps_per_segment)
    n_seg = -(-t // s)
    x = jnp.pad(taps, ((0, 0), (0, 0), (0, n_seg * s - t), (0, 0)))
    x = x.reshape(b, n_layers, n_seg, s, d).transpose(0, 2, 1, 3, 4).reshape(b * n_seg, n_layers, s, d)
    logits = head_apply(x)
    return logits.reshape(b, n_seg, logits.shape[-1])


# --------------------------------------------------------------------------------------------------------------
# PyTorch-format (official whisper-at) state dicts

_PREFIXES = ("at_model.", "module.")
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def _torch_key(path: tuple[str, ...]) -> tuple[str, bool]:
    """Our param path -> (official key, transpose?). ``("time_tr", "mlp_0", "kernel")`` -> ``time_tr.mlp.0.weight``."""
    *mods, leaf = path
    parts = [_INDEXED.sub(r"\1.\2", m) for m in mods]
    if leaf == "kernel":
        return ".".join(parts + ["weight"]), True
    if leaf == "scale":
        return ".".join(parts + ["weight"]), False
    return ".".join(parts + [leaf]), False


def strip_head_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The head's own keys: ``at_model.*`` keys with the prefix removed when any key has it (other keys, e.g. a
    merged whisper-at model's Whisper weights, are dropped); else ``module.`` (training checkpoints) stripped."""
    keys = list(state_dict)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            if prefix == "at_model.":
                return {k[len(prefix):]: state_dict[k] for k in keys if k.startswith(prefix)}
            return {(k[len(prefix):] if k.startswith(prefix) else k): state_dict[k] for k in keys}
    return dict(state_dict)


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in np.shape(v))


def _dims_from_state_dict(sd: Mapping[str, Any], spec: HeadSpec, mode: str) -> tuple[int, int, int]:
    """(width, n_classes, n_layers-or-0) read off the classifier / projection / layer_weight tensors."""
    width_key = "down_layer.0.weight" if spec.inter_dim else "mlp_layer.0.weight"
    for key in (width_key, "mlp_layer.1.weight"):
        if key not in sd:
            raise HeadCheckpointError(f"head checkpoint for mode {mode!r}: missing tensor {key!r}")
    if len(_shape(sd[width_key])) != 1:
        raise HeadCheckpointError(f"head checkpoint: tensor {width_key!r} has shape {_shape(sd[width_key])}, "
                                  "expected a 1-D LayerNorm weight")
    if len(_shape(sd["mlp_layer.1.weight"])) != 2:
        raise HeadCheckpointError(f"head checkpoint: tensor 'mlp_layer.1.weight' has shape "
                                  f"{_shape(sd['mlp_layer.1.weight'])}, expected [n_classes, d]")
    n_layers = 0
    if spec.uses_layer_weight and "layer_weight" in sd:
        lw = _shape(sd["layer_weight"])
        if len(lw) != 1:
            raise HeadCheckpointError(f"head checkpoint: tensor 'layer_weight' has shape {lw}, expected [n_layers]")
        n_layers = lw[0]
    return _shape(sd[width_key])[0], _shape(sd["mlp_layer.1.weight"])[0], n_layers


def head_params_from_torch(state_dict: Mapping[str, Any], mode: str, *, n_layers: int | None = None,
                           width: int | None = None, n_classes: int | None = None) -> Params:
    """Convert an official-format head state dict (``at_model.*`` keys, or bare / ``module.*`` keys) to our params.

    Linear ``weight`` [out, in] becomes ``kernel`` [in, out]; LayerNorm ``weight`` becomes ``scale``; values are
    fp32 numpy arrays. ``width`` (Whisper width), ``n_classes`` and ``n_layers`` are read off the tensors unless
    given (then they are checked). Any missing, unexpected or misshapen tensor raises :class:`HeadCheckpointError`
    naming it with the expected and actual shapes.
    """
    spec = parse_mode(mode)
    sd = strip_head_prefix(state_dict)
    sd_width, sd_classes, sd_layers = _dims_from_state_dict(sd, spec, mode)
    width = sd_width if width is None else width
    n_classes = sd_classes if n_classes is None else n_classes
    if n_layers is None:
        if spec.uses_layer_weight and not sd_layers:
            raise HeadCheckpointError(f"head checkpoint for mode {mode!r}: missing tensor 'layer_weight' "
                                      "(expected shape (n_layers,))")
        n_layers = sd_layers or 1  # only layer_weight's shape depends on n_layers
    head = make_head(mode, n_layers, width, n_classes)
    expected = {}
    for path, leaf in flatten_dict(head_param_shapes(head)).items():
        key, transpose = _torch_key(path)
        shape = tuple(leaf.shape)
        expected[key] = (path, shape[::-1] if transpose else shape, transpose)

    problems = []
    for key, (_, shape, _) in expected.items():
        if key not in sd:
            problems.append(f"missing tensor {key!r} (expected shape {shape})")
        elif _shape(sd[key]) != shape:
            problems.append(f"tensor {key!r} has shape {_shape(sd[key])}, expected {shape}")
    for key in sd:
        if key not in expected:
            problems.append(f"unexpected tensor {key!r} (shape {_shape(sd[key])})")
    if problems:
        raise HeadCheckpointError(
            f"head checkpoint does not fit mode {mode!r} (n_layers={n_layers}, width={width}, "
            f"n_classes={n_classes}): " + "; ".join(problems))

    flat = {}
    for key, (path, _, transpose) in expected.items():
        v = np.asarray(sd[key], dtype=np.float32)
        flat[path] = np.ascontiguousarray(v.T) if transpose else v
    return unflatten_dict(flat)


def head_params_to_torch(params: Params, prefix: str = "at_model.") -> dict[str, np.ndarray]:
    """Our head params -> the official state-dict format (inverse of :func:`head_params_from_torch`), fp32 numpy;
    save with ``torch.save({k: torch.from_numpy(v) ...})`` for whisper-at."""
    out = {}
    for path, v in flatten_dict(params).items():
        key, transpose = _torch_key(path)
        a = np.asarray(v, dtype=np.float32)
        out[prefix + key] = np.ascontiguousarray(a.T) if transpose else a
    return out


def infer_head_mode(state_dict: Mapping[str, Any], n_layers: int | None = None, *, time_heads: int = 1,
                    layer_heads: int = 8) -> str:
    """The mode of an official-format head state dict, from which tensors it has and their shapes.

    Tells TL-TR (``tl_tr``) from TL-TR-d (``tl_down_tr_d``, d from ``down_layer.1.weight``), WA-Tr, WA-Tr (proj)
    and WA-MLP. Head counts do not change any tensor shape, so they cannot be read off the weights: they come from
    ``time_heads`` / ``layer_heads`` (the released checkpoints use 1 and 8). ``mean_*`` and ``last_*`` heads have
    identical tensors: those raise :class:`HeadCheckpointError` asking for the mode. ``n_layers``, when given, is
    checked against ``layer_weight``.
    """
    sd = strip_head_prefix(state_dict)
    has = {name: any(k.startswith(name + ".") for k in sd) for name in ("time_tr", "layer_tr", "down_layer",
                                                                           "mlp_layer")}
    has_lw = "layer_weight" in sd
    if not has["mlp_layer"]:
        raise HeadCheckpointError("not a Whisper-AT head state dict: no 'mlp_layer.*' tensors "
                                  f"(keys: {sorted(sd)[:8]}{'...' if len(sd) > 8 else ''})")
    if has_lw and n_layers is not None and _shape(sd["layer_weight"]) != (n_layers,):
        raise HeadCheckpointError(f"tensor 'layer_weight' has shape {_shape(sd['layer_weight'])}, "
                                  f"expected ({n_layers},) for a {n_layers}-layer encoder")
    inter = None
    if has["down_layer"]:
        if "down_layer.1.weight" not in sd:
            raise HeadCheckpointError("head state dict has down_layer tensors but no 'down_layer.1.weight'")
        inter = _shape(sd["down_layer.1.weight"])[0]
    layout = (has["time_tr"], has["layer_tr"], has["down_layer"], has_lw)
    if layout == (True, True, True, False):
        return f"tl_down_tr_{inter}_{time_heads}_{layer_heads}"
    if layout == (True, True, False, False):
        return f"tl_tr_{time_heads}_{layer_heads}"
    if layout == (True, False, True, True):
        return f"wa_down_tr_{inter}_{time_heads}"
    if layout == (True, False, False, True):
        return f"wa_tr_{time_heads}"
    if layout == (False, False, False, True):
        return "wa_mlp"
    if layout == (True, False, False, False):
        raise HeadCheckpointError("head state dict fits both 'mean_tr_H' and 'last_tr_H' (same tensors): "
                                  "give the mode explicitly")
    if layout == (False, False, False, False):
        raise HeadCheckpointError("head state dict fits both 'mean_mlp' and 'last_mlp' (same tensors): "
                                  "give the mode explicitly")
    raise HeadCheckpointError(
        "head state dict matches no known mode: time_tr={}, layer_tr={}, down_layer={}, layer_weight={}".format(
            *layout))


def head_param_count(params: Params) -> int:
    """Total number of scalars in a head's params (the reference logs print this as 'Total parameter number')."""
    return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(params)))
