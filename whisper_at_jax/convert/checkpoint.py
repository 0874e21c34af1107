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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..model import ModelDimensions
from .errors import CheckpointError
from .openai import flatten, unflatten

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
    return {prefix + "/".join(path): np.ascontiguousarray(np.asarray(v))
            for path, v in flatten(params).items()}


def save_checkpoint(out_dir: str | os.PathLike, dims: ModelDimensions, params: dict, tokenizer_file: str | os.PathLike,
                    *, source: str = "", dtype: str = "float32", whisper_meta: dict | None = None,
                    head_params: dict | None = None, head_config: dict | None = None, overwrite: bool = False) -> Path:
    """Write a checkpoint directory atomically (temporary sibling directory, renamed when complete)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise CheckpointError(f"unsupported checkpoint dtype {dtype!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        flat = _to_flat(params, "")
        if head_params is not None:
            flat.update(_to_flat(head_params, "head/"))
        if dtype != "float32":
            import ml_dtypes  # installed with jax
            target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
            flat = {k: v.astype(target) for k, v in flat.items()}
        save_file(flat, str(tmp / "params.safetensors"))
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        config: dict[str, Any] = {"format": FORMAT, "version": VERSION, "dims": dims.to_dict(), "source": source,
                                  "dtype": dtype, "whisper": whisper_meta or {}}
        if head_params is not None:
            config["head"] = head_config or {}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
    return config, unflatten(whisper), (unflatten(head) if head else None)
