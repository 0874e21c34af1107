"""Our checkpoint format: a directory written atomically.

```
config.json          {"format": "whisper-at-jax", "version": 1, "dims": {...}, "source": ..., "dtype": "float32",
                      "whisper": {suppress/lang/alignment metadata}, "head": {"mode", "n_classes", "labels"} | absent}
params.safetensors   flat keys "encoder/blocks_0/attn/query/kernel", ..., "head/time_tr/..." (float32 or bfloat16)
tokenizer.json       Hugging Face tokenizers file with Whisper's special tokens
```
Why safetensors and not orbax for the model: a released model is one immutable set of named tensors that users
copy around; safetensors is a single file, memory-mappable, readable without JAX (numpy, torch, Rust), and cannot
carry code. Orbax stays the format of training state (optimizer, step, RNG, data position: see train.py), where
async multi-host saves matter.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ..io_utils import atomic_directory
from ..model import ModelDimensions
from .errors import CheckpointError

FORMAT = "whisper-at-jax"
VERSION = 1


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def _to_flat(params: dict, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_dict(params, sep="/").items()}


def check_params(params: dict, dims: ModelDimensions, what: str) -> None:
    """Every Whisper param present with the shape ``dims`` implies, and nothing else (names as stored in our
    ``params.safetensors``, e.g. ``encoder/blocks_0/attn/query/kernel``)."""
    from ..model import param_shapes

    want = {k: tuple(v.shape) for k, v in flatten_dict(param_shapes(dims), sep="/").items()}
    got = {k: tuple(np.shape(v)) for k, v in flatten_dict(params, sep="/").items()}
    for key, shape in want.items():
        if key not in got:
            raise CheckpointError(f"{what}: missing tensor {key} (expected shape {shape})")
        if got[key] != shape:
            raise CheckpointError(f"{what}: tensor {key} has shape {got[key]}, expected {shape} for dims {dims}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise CheckpointError(f"{what}: unexpected tensor {extra[0]}"
                              + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))


def _write_atomically(out: Path, overwrite: bool, fill) -> Path:
    """Build the directory in a temporary sibling with ``fill(tmp)``, then rename it into place."""
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    with atomic_directory(out) as tmp:
        fill(tmp)
    return out


def _save_flat(flat: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    from safetensors.numpy import save_file

    from .progress import track

    if dtype not in ("float32", "bfloat16", "float16"):
        raise CheckpointError(f"unsupported checkpoint dtype {dtype!r} (float32, bfloat16 or float16)")
    if dtype != "float32":
        import ml_dtypes  # installed with jax

        target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
        with track(len(flat), f"casting to {dtype}") as step:
            cast = {}
            for k, v in flat.items():
                cast[k] = v.astype(target)
                step()
        flat = cast
    save_file(flat, str(path))


def save_head_checkpoint(out_dir: str | os.PathLike, dims: ModelDimensions, head_params: dict, head_config: dict,
                         *, source: str = "", overwrite: bool = False) -> Path:
    """A head-only checkpoint (no Whisper weights) for ``load_model(..., at_head=DIR)`` / ``--head DIR``.

    ``dims`` are those of the Whisper the head was trained on (its width and layer count are checked on load).
    """
    out = Path(out_dir)

    def fill(tmp: Path) -> None:
        _save_flat(_to_flat(head_params, "head/"), tmp / "params.safetensors", "float32")
        config = {"format": FORMAT, "version": VERSION, "kind": "head", "dims": dims.to_dict(), "source": source,
                  "dtype": "float32", "head": head_config}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))

    return _write_atomically(out, overwrite, fill)


def save_checkpoint(out_dir: str | os.PathLike, dims: ModelDimensions, params: dict, tokenizer_file: str | os.PathLike,
                    *, source: str = "", dtype: str = "float32", whisper_meta: dict | None = None,
                    head_params: dict | None = None, head_config: dict | None = None, overwrite: bool = False) -> Path:
    """Write a checkpoint directory atomically (temporary sibling directory, renamed when complete).

    ``overwrite`` replaces an existing ``out_dir`` only once the new one is complete.
    """
    out = Path(out_dir)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise CheckpointError(f"unsupported checkpoint dtype {dtype!r} (float32, bfloat16 or float16)")
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        raise CheckpointError(f"tokenizer file {tokenizer_file} not found (a checkpoint needs a tokenizer.json)")
    check_params(params, dims, "params to save")

    def fill(tmp: Path) -> None:
        flat = _to_flat(params, "")
        if head_params is not None:
            flat.update(_to_flat(head_params, "head/"))
        _save_flat(flat, tmp / "params.safetensors", dtype)
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        config: dict[str, Any] = {"format": FORMAT, "version": VERSION, "dims": dims.to_dict(), "source": source,
                                  "dtype": dtype, "whisper": whisper_meta or {}}
        if head_params is not None:
            config["head"] = head_config or {}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))

    return _write_atomically(out, overwrite, fill)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict | None]:
    """-> (config, whisper params, head params or None), float32 numpy arrays."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = Path(path)
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}/config.json: unreadable: {e}") from e
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{p}: config.json is not a {FORMAT} checkpoint")
    if not isinstance(config.get("dims"), dict):
        raise CheckpointError(f"{p}/config.json: no 'dims' entry")
    try:
        flat = load_file(str(p / "params.safetensors"))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{p}/params.safetensors: unreadable: {e}") from e
    whisper, head = {}, {}
    for key, arr in flat.items():
        arr = np.asarray(arr, np.float32)
        if key.startswith("head/"):
            head[tuple(key[5:].split("/"))] = arr
        else:
            whisper[tuple(key.split("/"))] = arr
    return config, unflatten_dict(whisper), (unflatten_dict(head) if head else None)
