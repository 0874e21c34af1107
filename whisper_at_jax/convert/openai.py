"""openai-whisper state dicts <-> our Flax param tree, and safe reading of OpenAI ``.pt`` checkpoints.

The openai-whisper state dict is the interchange format inside the converters: CTranslate2 and Hugging Face readers
produce it, and one generic rule maps it to Flax (``blocks.3`` -> ``blocks_3``, ``mlp.0`` -> ``mlp_0``; Linear weight
[out, in] -> kernel [in, out]; Conv1d weight [out, in, k] -> kernel [k, in, out]; 1-D ``weight`` -> LayerNorm
``scale``; ``token_embedding.weight`` -> ``embedding``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ..model import ModelDimensions, param_shapes
from .errors import CheckpointError

Params = dict[str, Any]


def _flax_path(key: str, ndim: int) -> tuple[tuple[str, ...], str]:
    """openai key -> (Flax path, how the array is laid out: 'T', 'conv', or '')."""
    parts: list[str] = []
    for p in key.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    leaf = parts[-1]
    if leaf == "weight":
        if ndim == 1:
            return tuple(parts[:-1]) + ("scale",), ""
        if parts[-2] == "token_embedding":
            return tuple(parts[:-1]) + ("embedding",), ""
        if ndim == 3:
            return tuple(parts[:-1]) + ("kernel",), "conv"
        return tuple(parts[:-1]) + ("kernel",), "T"
    return tuple(parts), ""


def _openai_key(path: tuple[str, ...]) -> tuple[str, str]:
    """Inverse of ``_flax_path``: Flax path -> (openai key, layout)."""
    out: list[str] = []
    for p in path[:-1]:
        head, _, tail = p.rpartition("_")
        out.extend([head, tail] if tail.isdigit() and head else [p])
    leaf = path[-1]
    layout = ""
    if leaf in ("scale", "embedding"):
        leaf = "weight"
    elif leaf == "kernel":
        leaf, layout = "weight", "kernel"
    return ".".join(out + [leaf]), layout


def torch_to_flax(state_dict: Mapping[str, Any], expected: Params, what: str = "checkpoint",
                  prefix: str = "") -> Params:
    """Map a PyTorch-style state dict onto a Flax tree shaped like ``expected`` (a tree of shapes or arrays).

    Every expected param must be present with the right shape, and no tensor may be left over: the error names the
    tensor with expected and actual shapes.
    """
    want = {path: tuple(leaf.shape) for path, leaf in flatten_dict(expected).items()}
    got: dict[tuple[str, ...], np.ndarray] = {}
    names: dict[tuple[str, ...], str] = {}
    unexpected = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        arr = np.asarray(value, dtype=np.float32)
        path, layout = _flax_path(key[len(prefix):], arr.ndim)
        if path not in want:
            unexpected.append(key)
            continue
        if layout == "T":
            arr = arr.T
        elif layout == "conv":
            arr = arr.transpose(2, 1, 0)
        if arr.shape != want[path]:
            src_shape = tuple(np.shape(value))
            raise CheckpointError(f"{what}: tensor {key} has shape {src_shape}; the model expects "
                                  f"{_torch_shape(want[path], layout)} (Flax {'/'.join(path)} {want[path]})")
        got[path] = np.ascontiguousarray(arr)
        names[path] = key
    missing = [path for path in want if path not in got]
    if missing:
        keys = [_openai_key(p)[0] for p in missing]
        raise CheckpointError(f"{what}: missing tensor {prefix}{keys[0]} (expected shape "
                              f"{_torch_shape(want[missing[0]], _openai_key(missing[0])[1] and 'T')})"
                              + (f" and {len(keys) - 1} more" if len(keys) > 1 else ""))
    if unexpected:
        raise CheckpointError(f"{what}: unexpected tensor {unexpected[0]}"
                              + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    return unflatten_dict(got)


def _torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "T" and len(flax_shape) == 2:
        return flax_shape[::-1]
    if layout in ("T", "conv") and len(flax_shape) == 3:
        return (flax_shape[2], flax_shape[1], flax_shape[0])
    return flax_shape


def state_dict_to_params(state_dict: Mapping[str, Any], dims: ModelDimensions, what: str = "checkpoint") -> Params:
    """openai-whisper state dict -> Whisper params ({"encoder": ..., "decoder": ...}) checked against ``dims``."""
    return torch_to_flax(state_dict, param_shapes(dims), what)


def params_to_state_dict(params: Params, prefix: str = "") -> dict[str, np.ndarray]:
    """Our Flax params -> openai-whisper state dict (numpy float32)."""
    out = {}
    for path, leaf in flatten_dict(jax.device_get(params)).items():
        key, layout = _openai_key(path)
        arr = np.asarray(leaf, np.float32)
        if layout == "kernel":
            arr = arr.T if arr.ndim == 2 else arr.transpose(2, 1, 0)
        out[prefix + key] = np.ascontiguousarray(arr)
    return out


def to_openai_whisper(params: Params, dims: ModelDimensions) -> Any:
    """openai-whisper's PyTorch ``Whisper`` holding exactly these weights (fp32, eval mode, CPU): the reference the
    tests and benchmarks compare against. Needs torch and openai-whisper (the ``test`` extra)."""
    import torch
    from whisper.model import ModelDimensions as OpenAIDims
    from whisper.model import Whisper

    ref = Whisper(OpenAIDims(**dims.to_dict()))
    # copies: the arrays may be read-only views of JAX buffers, which torch.from_numpy warns about
    state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_state_dict(params).items()}
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def openai_encoder_layers(ref: Any, mel: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """openai-whisper's encoder forward on a torch ``mel``, unrolled to expose each block output: (block outputs,
    final states). The position table is sliced to the input length, as Whisper-AT's training features were."""
    import torch

    enc = ref.encoder
    with torch.no_grad():
        x = torch.nn.functional.gelu(enc.conv1(mel))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.positional_embedding[: x.shape[1]]
        layers = []
        for block in enc.blocks:
            x = block(x)
            layers.append(x.numpy())
        return layers, enc.ln_post(x).numpy()


@contextlib.contextmanager
def float64_layer_norm() -> Iterator[None]:
    """openai-whisper's LayerNorm casts its input to fp32; inside this block it keeps the input's dtype, so a
    ``.double()`` copy of the reference runs in float64 throughout (the exact answer for its weights)."""
    import torch
    import whisper.model as wm

    original = wm.LayerNorm.forward
    wm.LayerNorm.forward = lambda self, x: torch.nn.LayerNorm.forward(self, x)
    try:
        yield
    finally:
        wm.LayerNorm.forward = original


def torch_load_safely(path: str | os.PathLike) -> Any:
    """``torch.load`` restricted to tensors and plain containers: a pickled callable is refused, never run."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is only needed for .pt/.pth/.bin inputs
        raise CheckpointError(f"{path}: reading PyTorch checkpoints needs torch (pip install torch)") from e
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_first_line(e)}") from e
        # torch's message advises retrying with weights_only=False; we never do. Keep only what it found.
        found = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than tensors and "
                              f"plain containers (possibly code), and checkpoints are only read with "
                              f"torch.load(weights_only=True)" + (f" [{found[0]}]" if found else "")) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/KeyError/EOFError/... on corrupt files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{type(e).__name__}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().to(dtype=__import__("torch").float32).cpu().numpy()
    return np.asarray(value, np.float32)


def load_openai_pt(path: str | os.PathLike) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """An openai-whisper ``.pt`` (``{"dims": ..., "model_state_dict": ...}``) -> (dims, state dict as numpy)."""
    ckpt = torch_load_safely(path)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint (expected a dict with 'dims' and "
                              f"'model_state_dict')")
    if not isinstance(ckpt["dims"], dict) or not isinstance(ckpt["model_state_dict"], dict):
        raise CheckpointError(f"{path}: 'dims' and 'model_state_dict' must be dicts")
    sd = {}
    for k, v in ckpt["model_state_dict"].items():
        if not hasattr(v, "shape"):
            raise CheckpointError(f"{path}: entry {k!r} of model_state_dict is not a tensor ({type(v).__name__})")
        sd[k] = _to_numpy(v)
    return dict(ckpt["dims"]), sd
