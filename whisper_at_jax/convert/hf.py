"""Hugging Face Whisper folders -> openai-whisper dims + state dict (numpy), without importing transformers.

A folder holds ``config.json`` (``WhisperConfig``) and the weights as ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json`` + shards), or ``pytorch_model.bin`` (optionally sharded with
``pytorch_model.bin.index.json``), read with ``torch.load(weights_only=True)``.

Names are the inverse of openai-whisper -> transformers' converter map: ``layers`` -> ``blocks``, ``fc1``/``fc2`` ->
``mlp.0``/``mlp.2``, ``self_attn.{q,k,v,out}_proj`` -> ``attn.{query,key,value,out}``, ``encoder_attn`` ->
``cross_attn``, ``*_layer_norm`` -> ``*_ln``, ``encoder.layer_norm`` -> ``encoder.ln_post``, ``decoder.layer_norm`` ->
``decoder.ln``, ``embed_tokens`` -> ``token_embedding``, ``embed_positions.weight`` -> ``positional_embedding``.
``proj_out.weight`` is tied to the token embedding (openai-whisper has no separate output projection), so it is
dropped after checking that it really is the same matrix.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import CheckpointError
from .progress import track

# safetensors dtype names -> numpy; BF16 is widened to float32 by bit shifting (numpy has no bfloat16).
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

# Applied in order to a key without the "model." prefix; the first matching rule per pattern rewrites it.
_RENAMES: list[tuple[str, str]] = [
    (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"^decoder\.embed_tokens\.weight$", "decoder.token_embedding.weight"),
    (r"^(encoder|decoder)\.embed_positions\.weight$", r"\1.positional_embedding"),
]
_RENAMES_RE = [(re.compile(p), r) for p, r in _RENAMES]


def hf_to_openai_key(key: str) -> str:
    """``model.encoder.layers.0.self_attn.q_proj.weight`` -> ``encoder.blocks.0.attn.query.weight``.

    Unknown names come back unchanged (minus ``model.``) so the shape check reports them as unexpected tensors.
    """
    k = key[len("model."):] if key.startswith("model.") else key
    for pattern, repl in _RENAMES_RE:
        k = pattern.sub(repl, k)
    return k


def dims_from_hf_config(config: dict[str, Any], path: str = "config.json") -> dict[str, int]:
    """``WhisperConfig`` fields -> openai-whisper ``ModelDimensions`` fields (checking what openai's model fixes)."""
    if config.get("model_type", "whisper") != "whisper":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, not 'whisper'")
    fields = {"n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions", "n_audio_state": "d_model",
              "n_audio_head": "encoder_attention_heads", "n_audio_layer": "encoder_layers", "n_vocab": "vocab_size",
              "n_text_ctx": "max_target_positions", "n_text_state": "d_model",
              "n_text_head": "decoder_attention_heads", "n_text_layer": "decoder_layers"}
    missing = sorted({hf for hf in fields.values() if hf not in config})
    if missing:
        raise CheckpointError(f"{path}: not a Whisper config (missing {', '.join(missing)})")
    try:
        dims = {ours: int(config[hf]) for ours, hf in fields.items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a Whisper size field is not an integer: {e}") from e
    d = dims["n_audio_state"]
    # openai-whisper's blocks fix the MLP at 4 x width and use exact GELU; other values cannot be represented.
    for key in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if key in config and config[key] != 4 * d:
            raise CheckpointError(f"{path}: {key} = {config[key]}, but Whisper's MLP width is 4 x d_model = {4 * d}")
    act = config.get("activation_function", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path}: activation_function {act!r} is not Whisper's exact 'gelu'")
    if config.get("scale_embedding", False):
        raise CheckpointError(f"{path}: scale_embedding=True is not Whisper (embeddings are not scaled)")
    return dims


# ---------------------------------------------------------------------------------------------------------------
# safetensors, read directly: the format is an 8-byte little-endian header length, a JSON header
# {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the raw bytes. Reading it ourselves gives bf16
# support without torch and errors that name the file and tensor (e.g. a download cut short).


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int, int]:
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise CheckpointError(f"{path}: not a safetensors file or truncated (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + n, size


def _safetensors_items(path: Path, names: set[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    header, start, size = _safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        if names is not None and name not in names:
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors entry for tensor {name}") from e
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if not 0 <= begin <= end or start + end > size:
            raise CheckpointError(f"{path}: truncated: tensor {name} needs bytes {start + begin}..{start + end}, "
                                  f"file has {size}")
        raw = data[start + begin:start + end]
        itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
        if raw.size != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise CheckpointError(f"{path}: tensor {name} has {raw.size} bytes, shape {shape} {dtype} needs "
                                  f"{int(np.prod(shape, dtype=np.int64)) * itemsize}")
        if dtype == "BF16":
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            arr = np.array(raw.view(_ST_DTYPES[dtype]).reshape(shape))  # a copy: never hand out the memmap
        yield name, arr


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as numpy (bf16 widened to float32)."""
    return dict(_safetensors_items(Path(path)))


def _weight_files(folder: Path) -> tuple[list[Path], str]:
    """The weight files of a folder, preferring safetensors (cannot carry code) over pickles."""
    for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index}: unreadable shard index: {e}") from e
            files = []
            for s in shards:
                f = (folder / s).resolve()
                if folder.resolve() not in f.parents:
                    raise CheckpointError(f"{index}: shard {s!r} lies outside the folder")
                if not f.is_file():
                    raise CheckpointError(f"{index}: shard {s} is missing")
                files.append(f)
            return files, kind
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], "safetensors"
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"], "bin"
    raise CheckpointError(f"{folder}: no Hugging Face weights (model.safetensors, pytorch_model.bin or a shard index)")


def _read_weights(files: list[Path], kind: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if kind == "safetensors":
        headers = [(f, _safetensors_header(f)[0]) for f in files]
        total = sum(len(h) for _, h in headers)
        with track(total, "reading safetensors", "tensor") as step:
            for f, _ in headers:
                for name, arr in _safetensors_items(f):
                    out[name] = arr
                    step()
        return out
    from .openai import _to_numpy, torch_load_safely

    for f in files:
        sd = torch_load_safely(f)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise CheckpointError(f"{f}: not a state dict (got {type(sd).__name__})")
        with track(len(sd), f"converting {f.name}", "tensor") as step:
            for name, value in sd.items():
                if not hasattr(value, "shape"):
                    raise CheckpointError(f"{f}: entry {name} is not a tensor ({type(value).__name__})")
                out[name] = _to_numpy(value)
                step()
    return out


def load_hf(folder: str | os.PathLike, progress: Callable[[str], None] | None = None
            ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """A Hugging Face Whisper folder -> (openai dims dict, openai-whisper state dict of float32 numpy arrays)."""
    p = Path(folder)
    cfg_path = p / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    dims = dims_from_hf_config(config, str(cfg_path))
    files, kind = _weight_files(p)
    if progress:
        progress(f"reading {len(files)} {kind} file(s), {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
    raw = _read_weights(files, kind)
    sd: dict[str, np.ndarray] = {}
    proj_out = None
    for key, arr in raw.items():
        if key in ("proj_out.weight", "model.proj_out.weight"):
            proj_out = (key, arr)
            continue
        name = hf_to_openai_key(key)
        if name in sd:
            raise CheckpointError(f"{p}: tensor {key} duplicates {name}")
        sd[name] = np.asarray(arr, np.float32)
    if proj_out is not None:
        emb = sd.get("decoder.token_embedding.weight")
        # openai-whisper ties the output projection to the token embedding; an untied one cannot be represented.
        if emb is None or emb.shape != proj_out[1].shape or not np.array_equal(emb, proj_out[1].astype(np.float32)):
            raise CheckpointError(f"{p}: tensor {proj_out[0]} differs from model.decoder.embed_tokens.weight; "
                                  f"Whisper ties the output projection to the token embedding")
    return dims, sd
