"""Whisper-AT tagging heads -> (head params, head config) for our checkpoint.

Accepted inputs:

* the released heads ``{size}_ori.pth`` (TL-TR, mode ``tl_tr_1_8``) and ``{size}_low.pth`` (TL-TR-512, mode
  ``tl_down_tr_512_1_8``): a plain ``torch.save`` of a state dict with ``at_model.*`` keys, read with
  ``torch.load(weights_only=True)``; also a whole whisper-at model state dict (only ``at_model.*`` is kept) and
  training checkpoints with ``module.*`` keys;
* one of our checkpoint directories holding a head (``config.json`` with a ``head`` entry and ``head/...`` tensors in
  ``params.safetensors``), e.g. a head trained with ``scripts/train.py`` or a converted model.

``head_config`` = ``{"mode", "n_classes", "n_layers", "width", "labels": [[index, mid, display_name], ...]}``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..model import ModelDimensions, dims_for
from .errors import CheckpointError

# Released file names: {size}_ori.pth / {size}_low.pth (whisper-at's _MODELS_AT keys, "large" = large-v2).
_RELEASED = re.compile(r"^(tiny|base|small|medium|large-v1|large-v2|large)(\.en)?_(ori|low)\.pth$")


def default_labels(n_classes: int) -> list[list[Any]]:
    """AudioSet's 527 labels when the head has 527 outputs; otherwise placeholder names ``class_i``."""
    if n_classes == 527:
        from ..labels import audioset_labels

        labels = [[int(i), str(mid), str(name)] for i, mid, name in audioset_labels()]
        if len(labels) == 527:
            return labels
    return [[i, "", f"class_{i}"] for i in range(n_classes)]


def _check_labels(labels: Sequence[Sequence[Any]], n_classes: int, what: str) -> list[list[Any]]:
    out = []
    for row in labels:
        if len(row) != 3:
            raise CheckpointError(f"{what}: a label must be [index, mid, display_name], got {row!r}")
        out.append([int(row[0]), str(row[1]), str(row[2])])
    if len(out) != n_classes or sorted(r[0] for r in out) != list(range(n_classes)):
        raise CheckpointError(f"{what}: {len(out)} labels for a head with {n_classes} outputs "
                              f"(indices must be 0..{n_classes - 1})")
    return out


def _width_of(head_params: dict) -> int:
    if "down_layer_0" in head_params:
        return int(np.shape(head_params["down_layer_0"]["scale"])[0])
    return int(np.shape(head_params["mlp_layer_0"]["scale"])[0])


def _check_against_dims(path: Path, mode: str, width: int, n_layers: int | None, dims: ModelDimensions) -> None:
    """A head only fits the encoder it was trained on: same width (read off the tensors) and, where the file
    tells it, the same number of layers. TL-TR's tensors do not depend on the layer count, so for the released
    files it is taken from the name (``small.en_ori.pth`` -> small's 12 layers)."""
    if width != dims.n_audio_state:
        raise CheckpointError(f"{path}: head {mode!r} takes taps of width {width}, but this Whisper's encoder "
                              f"width (n_audio_state) is {dims.n_audio_state}: the head belongs to another model size")
    if n_layers is not None and n_layers != dims.n_audio_layer:
        raise CheckpointError(f"{path}: head {mode!r} was made for a {n_layers}-layer encoder, but this Whisper "
                              f"has n_audio_layer = {dims.n_audio_layer}")


def _from_torch(path: Path, dims: ModelDimensions, mode: str | None) -> tuple[dict, dict]:
    from ..heads import HeadCheckpointError, head_params_from_torch, infer_head_mode
    from .openai import _to_numpy, torch_load_safely

    sd = torch_load_safely(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: not a Whisper-AT head (expected a state dict of at_model.* tensors)")
    for k, v in sd.items():
        if not hasattr(v, "shape"):
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
    sd = {k: _to_numpy(v) for k, v in sd.items()}
    released = _RELEASED.match(path.name)
    try:
        assumed = mode is None
        if mode is None:
            mode = infer_head_mode(sd, n_layers=dims.n_audio_layer)
        head_params = head_params_from_torch(sd, mode, n_layers=dims.n_audio_layer)
    except HeadCheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    except ValueError as e:  # a bad mode string
        raise CheckpointError(f"{path}: {e}") from e
    n_classes = int(np.shape(head_params["mlp_layer_1"]["bias"])[0])
    width = _width_of(head_params)
    n_layers = None
    if "layer_weight" in head_params:
        n_layers = int(np.shape(head_params["layer_weight"])[0])
    elif released:
        size = released.group(1)
        n_layers = dims_for(size).n_audio_layer  # "large": large-v2, as whisper-at names its heads
        expect = "tl_down_tr" if released.group(3) == "low" else "tl_tr"
        if not mode.startswith(expect):
            raise CheckpointError(f"{path}: a released '{released.group(3)}' head should be {expect}_*, "
                                  f"but its tensors say {mode!r}")
    _check_against_dims(path, mode, width, n_layers, dims)
    if assumed and not released and "_tr_" in mode:
        # Attention head counts change no tensor shape, so a .pth cannot tell them; a wrong count gives a loadable
        # head that computes something else.
        warnings.warn(f"{path.name}: attention head counts are not stored in a .pth; assuming the released heads' "
                      f"(mode {mode!r}). Pass the mode (--head-mode / mode=) if it was trained with others.",
                      UserWarning, stacklevel=3)
    return head_params, {"mode": mode, "n_classes": n_classes, "n_layers": dims.n_audio_layer, "width": width,
                         "source": str(path)}


def validate_head(path: str | os.PathLike, config: dict, head_params: dict, dims: ModelDimensions
                  ) -> tuple[dict, dict]:
    """Check a head stored in our checkpoint (``config`` = its config.json) against its mode and ``dims``."""
    from ..heads import HeadCheckpointError, head_params_from_torch, head_params_to_torch

    head_config = dict(config.get("head") or {})
    mode = head_config.get("mode")
    if not mode:
        raise CheckpointError(f"{path}/config.json: head entry has no 'mode'")
    saved_dims = config.get("dims") or {}
    n_layers = int(saved_dims.get("n_audio_layer", head_config.get("n_layers", dims.n_audio_layer)))
    try:  # round trip through the reference key format: checks every tensor's presence and shape for the mode
        head_params = head_params_from_torch(head_params_to_torch(head_params), mode, n_layers=n_layers)
    except (HeadCheckpointError, ValueError) as e:
        raise CheckpointError(f"{path}/params.safetensors: {e}") from e
    _check_against_dims(Path(path), mode, _width_of(head_params), n_layers, dims)
    n_classes = int(np.shape(head_params["mlp_layer_1"]["bias"])[0])
    if int(head_config.get("n_classes", n_classes)) != n_classes:
        raise CheckpointError(f"{path}/config.json: head n_classes {head_config['n_classes']} but tensor "
                              f"head/mlp_layer_1/bias has {n_classes} entries")
    head_config.update(n_classes=n_classes, width=dims.n_audio_state, n_layers=dims.n_audio_layer)
    if head_config.get("labels"):
        head_config["labels"] = _check_labels(head_config["labels"], n_classes, f"{path}/config.json")
    else:
        head_config["labels"] = default_labels(n_classes)
    return head_params, head_config


def _from_ours(path: Path, dims: ModelDimensions) -> tuple[dict, dict]:
    from .checkpoint import load_checkpoint

    config, _, head_params = load_checkpoint(path)
    if head_params is None or "head" not in config:
        raise CheckpointError(f"{path}: this checkpoint holds no Whisper-AT head")
    return validate_head(path, config, head_params, dims)


def load_at_head(path: str | os.PathLike, dims: ModelDimensions, *, mode: str | None = None,
                 labels: Sequence[Sequence[Any]] | None = None) -> tuple[dict, dict]:
    """Read a Whisper-AT head for a Whisper of ``dims`` -> ``(head_params, head_config)``.

    ``mode`` overrides the mode inferred from the tensors (needed for ``mean_*`` / ``last_*`` heads, whose tensors
    are identical; head counts are not visible in the tensors, the inferred TL-TR mode uses the released 1 and 8).
    ``labels`` ([[index, mid, display_name], ...]) overrides the label list (default: the checkpoint's own, or
    AudioSet's 527 for a 527-output head). Raises :class:`CheckpointError` naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such Whisper-AT head file or checkpoint")
    if p.is_dir():
        from .checkpoint import is_checkpoint

        if not is_checkpoint(p):
            raise CheckpointError(f"{p}: not a whisper-at-jax checkpoint directory (no config.json with "
                                  f"format 'whisper-at-jax')")
        head_params, head_config = _from_ours(p, dims)
        if mode is not None and mode != head_config["mode"]:
            raise CheckpointError(f"{p}: the checkpoint's head is {head_config['mode']!r}, not {mode!r}")
    else:
        head_params, head_config = _from_torch(p, dims, mode)
    n_classes = int(head_config["n_classes"])
    if labels is not None:
        head_config["labels"] = _check_labels(labels, n_classes, str(p))
    elif head_config.get("labels"):
        head_config["labels"] = _check_labels(head_config["labels"], n_classes, str(p))
    else:
        head_config["labels"] = default_labels(n_classes)
    return head_params, head_config


def read_labels(path: str | os.PathLike) -> list[list[Any]]:
    """A head's label list from a file (CSV ``index,mid,display_name`` as AudioSet's, JSON, or one name per line;
    see :func:`whisper_at_jax.labels.load_label_list`) as ``[[index, mid, display_name], ...]``."""
    from ..labels import load_label_list

    try:
        return [[int(i), str(mid), str(name)] for i, mid, name in load_label_list(path)]
    except ValueError as e:
        raise CheckpointError(str(e)) from e
