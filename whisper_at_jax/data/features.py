"""The feature store of cached mode: pooled taps of the frozen encoder, written once, read memory-mapped.

:func:`make_encode_fn` defines the features (audio -> log-mel -> encoder -> every layer's states pooled over
``pool`` frames, no gradient path); the online train step runs the same function inside its program, and
:func:`extract_features` runs it once over a data set and hands the taps to a :class:`FeatureWriter`.
:func:`open_features` reads a split back as a memory-mapped :class:`~whisper_at_jax.data.examples.ExampleSource`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import parallel
from ..heads import pool_taps
from ..io_utils import atomic_path, atomic_write_bytes
from .examples import ExampleSource, ShardedArray, TrainError

Array = jax.Array
PyTree = Any

FEATURES_FORMAT = "whisper-at-jax-features"


def write_output(path: Path, fn: Callable[[], Any]) -> Any:
    """Run an atomic write (feature files; the trainer's head, export and result), turning a disk error into a
    TrainError naming ``path``. The export's weight writer (safetensors) reports a disk error as its own type."""
    from safetensors import SafetensorError

    try:
        return fn()
    except (OSError, SafetensorError) as e:
        raise TrainError(f"writing {path} failed ({e}); disk full or read-only? a previous {path.name} is kept "
                         "as it was") from e


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save``, atomically."""
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, array)


class FeatureWriter:
    """Writes one split of pooled taps as ``.npy`` shards (memory-mappable, so training reads single rows) plus
    labels, ids and optional folds; ``close()`` records the split in ``meta.json``. Every file is written atomically.

    Layout of a features folder::

        meta.json                 format, model, n_layers, width, steps, pool, clip_seconds, dtype, labels,
                                  multilabel, splits: {name: {n, shards: [{file, n}], folds}}
        {split}-{k:05d}.npy       taps [n_k, L, steps, D] (float16 by default)
        {split}-labels.npy        multi-hot uint8 [N, C]
        {split}-ids.json          ids [N]
        {split}-folds.npy         int32 [N] (optional: ESC-50-style cross-validation folds)
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, meta: Mapping[str, Any], *, shard_size: int = 4096,
                 dtype: str = "float16", max_shard_bytes: int = 1 << 30):
        if dtype not in ("float16", "float32", "bfloat16"):
            raise TrainError(f"feature dtype must be float16, bfloat16 or float32, got {dtype!r}")
        self.dir = Path(out_dir)
        write_output(self.dir, lambda: self.dir.mkdir(parents=True, exist_ok=True))
        self.split, self.meta, self.shard_size, self.dtype = split, dict(meta), int(shard_size), dtype
        # A shard is buffered in memory until full: cap its bytes too (large-v2 taps are ~2 MB per clip).
        self.max_shard_bytes = int(max_shard_bytes)
        self._buf: list[np.ndarray] = []
        self._nbuf = 0
        self.shards: list[dict] = []
        self.labels: list[np.ndarray] = []
        self.ids: list[str] = []
        self.folds: list[int] = []

    def add(self, taps: np.ndarray, labels: np.ndarray, ids: Sequence[str], folds: Sequence[int] | None = None):
        taps = np.asarray(taps)
        if taps.ndim != 4 or len(taps) != len(labels) or len(ids) != len(taps):
            raise TrainError(f"taps {taps.shape}, labels {np.shape(labels)} and {len(ids)} ids do not match")
        target = np.float16 if self.dtype == "float16" else np.float32
        if self.dtype == "bfloat16":
            import ml_dtypes

            target = ml_dtypes.bfloat16
        if not np.all(np.isfinite(taps)):
            raise TrainError(f"non-finite taps for ids {list(ids)[:3]}...")
        if not self._buf:
            per_clip = max(1, int(np.prod(taps.shape[1:])) * np.dtype(target).itemsize)
            self.shard_size = max(1, min(self.shard_size, self.max_shard_bytes // per_clip))
        self._buf.append(taps.astype(target))
        self._nbuf += len(taps)
        self.labels.append(np.asarray(labels) > 0.5)
        self.ids.extend(str(i) for i in ids)
        if folds is not None:
            self.folds.extend(int(f) for f in folds)
        while self._nbuf >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._buf)
        part, rest = data[:n], data[n:]
        name = f"{self.split}-{len(self.shards):05d}.npy"
        write_output(self.dir / name, lambda: atomic_save_npy(self.dir / name, part))
        self.shards.append({"file": name, "n": int(len(part))})
        self._buf, self._nbuf = ([rest] if len(rest) else []), len(rest)

    def close(self) -> Path:
        if self._nbuf:
            self._flush(self._nbuf)
        n = sum(s["n"] for s in self.shards)
        if n == 0:
            raise TrainError(f"split {self.split!r}: no examples were written")
        labels_path, ids_path = self.dir / f"{self.split}-labels.npy", self.dir / f"{self.split}-ids.json"
        write_output(labels_path, lambda: atomic_save_npy(labels_path, np.concatenate(self.labels).astype(np.uint8)))
        write_output(ids_path, lambda: atomic_write_bytes(ids_path, json.dumps(self.ids).encode()))
        entry: dict[str, Any] = {"n": n, "shards": self.shards}
        if self.folds:
            if len(self.folds) != n:
                raise TrainError("folds were given for some batches only")
            folds_path = self.dir / f"{self.split}-folds.npy"
            write_output(folds_path, lambda: atomic_save_npy(folds_path, np.asarray(self.folds, np.int32)))
            entry["folds"] = f"{self.split}-folds.npy"
        meta_path = self.dir / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta and any(meta.get(k) != self.meta.get(k) for k in ("n_layers", "width", "steps", "model")):
            raise TrainError(f"{meta_path}: existing features were made with a different model/shape")
        meta.update(self.meta)
        meta.update({"format": FEATURES_FORMAT, "version": 1, "dtype": self.dtype})
        meta.setdefault("splits", {})[self.split] = entry
        write_output(meta_path, lambda: atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode()))
        return meta_path


def read_features_meta(features_dir: str | os.PathLike) -> dict:
    p = Path(features_dir) / "meta.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainError(f"{p}: cannot read the features index ({e}); run scripts/extract_features.py first") from e
    if meta.get("format") != FEATURES_FORMAT:
        raise TrainError(f"{p}: not a {FEATURES_FORMAT} folder")
    return meta


def open_features(features_dir: str | os.PathLike, split: str) -> tuple[ExampleSource, dict, np.ndarray | None]:
    """A split of a features folder as a memory-mapped :class:`ExampleSource` (+ meta, + folds or None)."""
    d = Path(features_dir)
    meta = read_features_meta(d)
    if split not in meta.get("splits", {}):
        raise TrainError(f"{d}: no split {split!r} (have {sorted(meta.get('splits', {}))})")
    entry = meta["splits"][split]
    parts = []
    for s in entry["shards"]:
        arr = np.load(d / s["file"], mmap_mode="r")
        if len(arr) != s["n"]:
            raise TrainError(f"{d / s['file']}: {len(arr)} rows, meta.json says {s['n']} (shard cut short?)")
        parts.append(arr)
    labels = np.load(d / f"{split}-labels.npy")
    ids = json.loads((d / f"{split}-ids.json").read_text())
    if len(labels) != entry["n"] or len(ids) != entry["n"]:
        raise TrainError(f"{d}: split {split!r} has {entry['n']} taps, {len(labels)} labels, {len(ids)} ids")
    folds = np.load(d / entry["folds"]) if entry.get("folds") else None
    return ExampleSource(ShardedArray(parts), labels, ids, kind="taps"), meta, folds


def make_encode_fn(dims: Any, n_mels: int, pool: int, dtype: Any) -> Callable[[PyTree, Array], Array]:
    """encoder params, audio [B, samples] -> pooled taps [B, L, S, D] float32, with no gradient path."""
    from ..audio import log_mel_spectrogram
    from ..model import Whisper

    module = Whisper(dims, dtype=dtype)

    def encode(encoder_params: PyTree, audio: Array) -> Array:
        mel = log_mel_spectrogram(audio, n_mels=n_mels)
        _, layers = module.apply({"params": {"encoder": encoder_params}}, mel, True, method="encode")
        # The backbone is frozen: no cotangent may flow into it, whatever the caller differentiates.
        return jax.lax.stop_gradient(pool_taps(layers, pool).astype(jnp.float32))

    return encode


def extract_features(model: Any, batches: Iterator[dict], writer: FeatureWriter, *, pool: int,
                     dtype: str = "float32", mesh: Any = None, batch_size: int | None = None,
                     progress: bool = False) -> int:
    """Encode audio batches once and write their pooled taps.

    ``batches`` yields this host's dicts ``audio`` [B, samples], ``labels`` [B, C], ``id`` [B] and optionally
    ``mask`` [B] (padding rows are not written) and ``fold`` [B]. Every batch must have the same shape (pad the last
    one and mask it) so the encoder compiles once. Runs the same ``encode`` function the online train step runs.
    Returns the number of examples written.
    """
    from ..api import compute_dtype

    mesh = mesh or parallel.make_mesh(jax.local_devices())
    encode = make_encode_fn(model.dims, model.dims.n_mels, int(pool), compute_dtype(dtype, mesh.devices.flat))
    data_sh, repl = parallel.data_sharding(mesh), parallel.replicated(mesh)
    enc = jax.jit(encode, in_shardings=(repl, data_sh), out_shardings=data_sh)
    params = jax.device_put(model.params["encoder"], repl)
    n = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="clip", dynamic_ncols=True)
    for b in batches:
        audio = np.asarray(b["audio"], np.float32)
        if batch_size is not None and len(audio) != batch_size:
            raise TrainError(f"extract_features: batch of {len(audio)} rows, expected {batch_size} (pad and mask)")
        if len(audio) % mesh.devices.size:
            raise TrainError(f"batch of {len(audio)} does not split over {mesh.devices.size} devices")
        taps = np.asarray(jax.device_get(enc(params, jax.device_put(audio, data_sh))))
        keep = np.asarray(b.get("mask", np.ones(len(audio))), np.float32) > 0.5
        if keep.any():
            ids = [str(i) for i, k in zip(b["id"], keep) if k]
            folds = None if b.get("fold") is None else np.asarray(b["fold"])[keep]
            writer.add(taps[keep], np.asarray(b["labels"])[keep], ids, folds)
            n += int(keep.sum())
            if bar is not None:
                bar.update(int(keep.sum()))
    if bar is not None:
        bar.close()
    return n
