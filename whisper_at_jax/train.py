"""Frozen-backbone Whisper-AT head training: one readable trainer (big_vision style), config-driven.

Sections, in the order ``train()`` runs them:

1. mesh: a 1-D ``("data",)`` mesh over every device of every host (``parallel.py``);
2. data: batches of audio (online mode) or of pooled taps written once by ``scripts/extract_features.py``
   (cached mode), read in a deterministic order that is a pure function of (seed, batch position), so a resumed
   run reads exactly the batches an uninterrupted one would (:class:`IndexStream`);
3. head and optimizer: shapes by ``jax.eval_shape``, params initialised replicated; Adam(0.95, 0.999) with coupled
   L2 (``add_decayed_weights`` before ``scale_by_adam``, as ``torch.optim.Adam(weight_decay=...)``) and the
   reference's step decay;
4. the train step: ONE function ``step(state, taps, labels)`` (augment -> head -> loss -> grad w.r.t. the head
   params only -> update), jitted with explicit ``NamedSharding`` (batch on ``"data"``, state replicated) and the
   state donated. Online mode jits ``step(state, encode(encoder_params, audio), labels)``: the Whisper encoder
   runs inside the same compiled step under ``jax.lax.stop_gradient``; cached mode jits the step on stored taps.
   Same code, so the same loss for the same examples (tested);
5. checkpoints: Orbax ``CheckpointManager``, async saves every N steps, keep-last-N; the state holds params,
   optimizer state, step (= batches consumed = data position), base RNG key and the running weight average;
6. loop: progress bar with examples/s, metrics to TensorBoard event files and ``metrics.jsonl``, periodic eval
   (mAP / AUC / d' or accuracy, logits gathered across hosts), weight averaging at epoch ends, export.

Differences from the reference (stated so results can be compared): mixup partners come from the global batch
(see ``augment.py``); an "epoch" is ``epoch_fraction`` of the training set rounded to whole steps
(``steps_per_epoch`` overrides); eval pads the last batch and masks it instead of dropping it; short clips are
zero-padded in audio (the reference pads the normalised log-mel with zeros).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from . import augment as aug
from . import parallel
from .audio import HOP_LENGTH, SAMPLE_RATE
from .data.reader import label_balanced_weights
from .evaluate import compute_metrics
from .io_utils import atomic_path, atomic_write_bytes
from .jobs import EXIT_RESUMABLE, StopRequest
from .heads import make_head, pool_taps

logger = logging.getLogger("whisper_at_jax.train")

Array = jax.Array
PyTree = Any
FEATURES_FORMAT = "whisper-at-jax-features"


class TrainError(ValueError):
    """A bad training configuration or input (names the config key or file)."""


#: ``scripts/train.py``'s exit status after a preemption checkpoint (sysexits' EX_TEMPFAIL: "retry later").
EXIT_PREEMPTED = EXIT_RESUMABLE


class NonFiniteError(TrainError):
    """A train step's loss or gradient norm was NaN or inf (names the step, the batch's example ids and the last
    good checkpoint)."""


class Preempted(Exception):
    """The run stopped on a preemption notice after saving a complete checkpoint at ``step`` (resumable there)."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"preempted, resumable at step {step} (checkpoint {checkpoint})")
        self.step, self.checkpoint = int(step), checkpoint


# ----------------------------------------------------------------------------------------------------------------
# Data: a deterministic index stream and in-memory / memory-mapped example sources


class IndexStream:
    """Global example indices of batch ``i`` as a pure function of (seed, i).

    The stream is the concatenation of passes; pass ``p`` is a permutation of ``range(n)`` (or, with ``weights``, ``n``
    draws with replacement in proportion to them: PyTorch's ``WeightedRandomSampler(num_samples=len(data))``), drawn
    from ``np.random.default_rng([seed, p])``. Batch ``i`` is stream[i*B : (i+1)*B]. Resuming at batch ``i`` needs only
    ``i``; every host computes the same global indices and reads its own slice.
    """

    def __init__(self, n: int, global_batch: int, seed: int, weights: np.ndarray | None = None):
        if n <= 0:
            raise TrainError("the training split is empty")
        if global_batch <= 0:
            raise TrainError(f"batch_size must be positive, got {global_batch}")
        self.n, self.batch, self.seed = int(n), int(global_batch), int(seed)
        self.p = None
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise TrainError(f"sampling weights must be {n} finite non-negative numbers with a positive sum")
            self.p = w / w.sum()
        self._cache: dict[int, np.ndarray] = {}

    def _pass(self, p: int) -> np.ndarray:
        if p not in self._cache:
            rng = np.random.default_rng([self.seed, p])
            idx = rng.permutation(self.n) if self.p is None else rng.choice(self.n, self.n, replace=True, p=self.p)
            self._cache = {p: idx}  # keep one pass: passes are read in order
        return self._cache[p]

    def batch_indices(self, i: int) -> np.ndarray:
        start, out = i * self.batch, []
        while len(out) < self.batch:
            p, off = divmod(start, self.n)
            take = self._pass(p)[off: off + self.batch - len(out)]
            out.extend(take.tolist())
            start += len(take)
        return np.asarray(out, np.int64)


class ExampleSource:
    """Examples as array-likes indexed by row: ``x`` [N, ...] (audio [N, samples] or taps [N, L, S, D], a numpy
    array or memory map, or a :class:`ShardedArray`), multi-hot ``labels`` [N, C], ``ids`` [N]."""

    def __init__(self, x: Any, labels: np.ndarray, ids: Sequence[str] | None = None, *, kind: str,
                 weights: np.ndarray | None = None):
        if kind not in ("audio", "taps"):
            raise TrainError(f"source kind must be 'audio' or 'taps', got {kind!r}")
        labels = np.asarray(labels)
        if labels.ndim != 2 or len(x) != labels.shape[0]:
            raise TrainError(f"examples ({len(x)}) and labels {labels.shape} do not match")
        self.x, self.labels, self.kind = x, labels, kind
        self.ids = [str(i) for i in (ids if ids is not None else range(len(x)))]
        self.weights = weights

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return self.labels.shape[1]

    def subset(self, rows: np.ndarray) -> "ExampleSource":
        rows = np.asarray(rows, np.int64)
        x = self.x.subset(rows) if isinstance(self.x, ShardedArray) else self.x[rows]
        return ExampleSource(x, self.labels[rows], [self.ids[r] for r in rows], kind=self.kind,
                             weights=None if self.weights is None else np.asarray(self.weights)[rows])

    def rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        x = self.x.take(idx) if isinstance(self.x, ShardedArray) else np.asarray(self.x[idx])
        return {"x": np.asarray(x, np.float32), "labels": self.labels[idx].astype(np.float32)}


class ShardedArray:
    """Rows of several memory-mapped ``.npy`` shards viewed as one [N, ...] array (read with ``take``)."""

    def __init__(self, parts: Sequence[np.ndarray], rows: np.ndarray | None = None):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.rows = np.arange(self.offsets[-1]) if rows is None else np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + tuple(self.parts[0].shape[1:])

    def take(self, idx: np.ndarray) -> Any:
        return self._read(self.rows[np.asarray(idx, np.int64)])

    def _read(self, global_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(global_rows),) + tuple(self.parts[0].shape[1:]), self.parts[0].dtype)
        shard = np.searchsorted(self.offsets, global_rows, side="right") - 1
        for s in np.unique(shard):
            m = shard == s
            local = global_rows[m] - self.offsets[s]
            order = np.argsort(local)  # sorted reads are sequential on the memory map
            vals = self.parts[s][local[order]]
            out[np.nonzero(m)[0][order]] = vals
        return out

    def subset(self, rows: np.ndarray) -> "ShardedArray":
        return ShardedArray(self.parts, self.rows[np.asarray(rows, np.int64)])


def local_rows(indices: np.ndarray) -> np.ndarray:
    """This process's contiguous slice of a global batch's indices (process i feeds rows i*B/P .. (i+1)*B/P)."""
    n_proc, pid = jax.process_count(), jax.process_index()
    if len(indices) % n_proc:
        raise TrainError(f"global batch {len(indices)} does not split over {n_proc} processes")
    k = len(indices) // n_proc
    return indices[pid * k:(pid + 1) * k]


class SourceIterator:
    """Training batches of an :class:`ExampleSource` from batch ``start``: ``next()`` -> (global ids, this host's
    rows {"x", "labels"}); ``state()`` is the data position (batches consumed)."""

    def __init__(self, source: ExampleSource, stream: IndexStream, start: int):
        self.source, self.stream, self.i = source, stream, int(start)

    def __iter__(self) -> "SourceIterator":
        return self

    def __next__(self) -> tuple[list[str], dict]:
        idx = self.stream.batch_indices(self.i)
        self.i += 1
        return [self.source.ids[k] for k in idx], self.source.rows(local_rows(idx))

    def state(self) -> dict:
        return {"batches": self.i}


def eval_batches(source: ExampleSource, global_batch: int) -> Iterator[dict]:
    """The eval set once, in order, as full global batches; the last one padded (``mask`` marks real rows)."""
    n = len(source)
    for start in range(0, n, global_batch):
        idx = np.arange(start, start + global_batch)
        mask = idx < n
        idx = np.where(mask, idx, 0)
        mine = local_rows(np.arange(global_batch))
        rows = source.rows(idx[mine])
        rows["mask"] = mask[mine].astype(np.float32)
        yield rows


class TFRecordData:
    """Online-mode data from TFRecords written by ``whisper_at_jax.data.write_tfrecords`` (the data team's
    per-host, resumable tf.data reader). Batches are per host; the position is the reader's exact ``state()``."""

    kind = "audio"

    def __init__(self, config: ml_collections.ConfigDict):
        from . import data as wdata

        self.wdata, self.config = wdata, config
        d = config.data
        self.path = d.tfrecords
        if not self.path:
            raise TrainError("online mode needs config.data.tfrecords (a folder written by the data writer)")
        self.clip_samples = int(round(float(d.clip_seconds) * SAMPLE_RATE))
        n_proc = jax.process_count()
        for key in ("batch_size", "eval_batch_size"):
            if int(config[key]) % n_proc:
                raise TrainError(f"config.{key}={config[key]} does not split over {n_proc} processes")
        self.local_batch = int(config.batch_size) // n_proc
        meta = wdata.read_metadata(self.path)
        if meta is None:
            raise TrainError(f"{self.path}: no dataset metadata (write it with whisper_at_jax.data.write_tfrecords)")
        self.meta = meta
        self.labels = list(meta.get("label_names") or [])
        splits = meta.get("splits", {})
        if d.train_split not in splits:
            raise TrainError(f"{self.path}: no split {d.train_split!r} (have {sorted(splits)})")
        self.n_train = int(sum(splits[d.train_split]["shard_lengths"]))
        self.has_eval = bool(d.get("eval_split")) and d.eval_split in splits

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return self.n_train

    def train_iter(self, start: int, host_state: Mapping[str, int] | None) -> "TFRecordIterator":
        d = self.config.data
        it = self.wdata.make_dataset(
            self.path, d.train_split, batch_size=self.local_batch, clip_samples=self.clip_samples, training=True,
            seed=int(self.config.seed), sampling="balanced" if d.balanced else "uniform", strict=bool(d.strict),
            state=host_state, skip_batches=0 if host_state is not None else int(start))
        return TFRecordIterator(it)

    def eval_iter(self) -> Iterator[dict]:
        d = self.config.data
        local = int(self.config.eval_batch_size) // jax.process_count()
        counts = self.wdata.host_example_counts(self.path, d.eval_split, jax.process_count())
        it = self.wdata.make_dataset(
            self.path, d.eval_split, batch_size=local, clip_samples=self.clip_samples, training=False, repeat=False,
            seed=int(self.config.seed), pad_to_batches=-(-max(counts) // local), strict=bool(d.strict))
        for b in it:
            yield {"x": b["audio"], "labels": b["labels"], "mask": b["mask"]}


class TFRecordIterator:
    def __init__(self, it: Any):
        self.it = it

    def __iter__(self) -> "TFRecordIterator":
        return self

    def __next__(self) -> tuple[list[str], dict]:
        b = next(self.it)
        # Host-local ids only: the reader shards files per host, so no host knows the global batch.
        return list(b["id"]), {"x": b["audio"], "labels": b["labels"]}

    def state(self) -> dict:
        return self.it.state()


# ----------------------------------------------------------------------------------------------------------------
# Cached pooled taps on disk (written by scripts/extract_features.py)


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
        _write_output(self.dir, lambda: self.dir.mkdir(parents=True, exist_ok=True))
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
        _write_output(self.dir / name, lambda: atomic_save_npy(self.dir / name, part))
        self.shards.append({"file": name, "n": int(len(part))})
        self._buf, self._nbuf = ([rest] if len(rest) else []), len(rest)

    def close(self) -> Path:
        if self._nbuf:
            self._flush(self._nbuf)
        n = sum(s["n"] for s in self.shards)
        if n == 0:
            raise TrainError(f"split {self.split!r}: no examples were written")
        labels_path, ids_path = self.dir / f"{self.split}-labels.npy", self.dir / f"{self.split}-ids.json"
        _write_output(labels_path, lambda: atomic_save_npy(labels_path, np.concatenate(self.labels).astype(np.uint8)))
        _write_output(ids_path, lambda: atomic_write_bytes(ids_path, json.dumps(self.ids).encode()))
        entry: dict[str, Any] = {"n": n, "shards": self.shards}
        if self.folds:
            if len(self.folds) != n:
                raise TrainError("folds were given for some batches only")
            folds_path = self.dir / f"{self.split}-folds.npy"
            _write_output(folds_path, lambda: atomic_save_npy(folds_path, np.asarray(self.folds, np.int32)))
            entry["folds"] = f"{self.split}-folds.npy"
        meta_path = self.dir / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta and any(meta.get(k) != self.meta.get(k) for k in ("n_layers", "width", "steps", "model")):
            raise TrainError(f"{meta_path}: existing features were made with a different model/shape")
        meta.update(self.meta)
        meta.update({"format": FEATURES_FORMAT, "version": 1, "dtype": self.dtype})
        meta.setdefault("splits", {})[self.split] = entry
        _write_output(meta_path, lambda: atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode()))
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


# ----------------------------------------------------------------------------------------------------------------
# Optimizer


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable[[Array], Array]:
    """lr0 * factor ** k, k = number of milestones passed; milestones at epochs start, start+every, ...
    (MultiStepLR stepped per epoch: with start 15, epochs 1-15 at lr0, 16-20 at 0.75 lr0, ...)."""
    lr0, d = float(config.lr), config.lr_decay
    start, every, factor = int(d.start_epoch), int(d.every_epochs), float(d.factor)

    def schedule(count: Array) -> Array:
        epoch = count // steps_per_epoch  # 0-based epoch of this update
        k = jnp.where(epoch >= start, (epoch - start) // every + 1, 0)
        return lr0 * jnp.power(factor, k.astype(jnp.float32))

    return schedule


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(b1, b2) with coupled L2: ``torch.optim.Adam(weight_decay=wd)`` adds wd * param to the gradient
    before the moments, which in optax is ``add_decayed_weights`` BEFORE ``scale_by_adam`` (not AdamW)."""
    return optax.chain(
        optax.add_decayed_weights(float(config.weight_decay)),
        optax.scale_by_adam(b1=float(config.b1), b2=float(config.b2), eps=float(config.adam_eps)),
        optax.scale_by_learning_rate(lr_schedule(config, steps_per_epoch)),
    )


# ----------------------------------------------------------------------------------------------------------------
# The step


def loss_fn_for(kind: str) -> Callable[[Array, Array], Array]:
    if kind == "bce":  # BCEWithLogitsLoss(mean): mean over batch and classes
        return lambda logits, t: optax.sigmoid_binary_cross_entropy(logits, t).mean()
    if kind == "softmax":
        return lambda logits, t: optax.softmax_cross_entropy(logits, t).mean()
    raise TrainError(f"config.loss must be 'bce' (multi-label) or 'softmax' (single-label), got {kind!r}")


def make_encode_fn(dims: Any, n_mels: int, pool: int, dtype: Any) -> Callable[[PyTree, Array], Array]:
    """encoder params, audio [B, samples] -> pooled taps [B, L, S, D] float32, with no gradient path."""
    from .audio import log_mel_spectrogram
    from .model import Whisper

    module = Whisper(dims, dtype=dtype)

    def encode(encoder_params: PyTree, audio: Array) -> Array:
        mel = log_mel_spectrogram(audio, n_mels=n_mels)
        _, layers = module.apply({"params": {"encoder": encoder_params}}, mel, True, method="encode")
        # The backbone is frozen: no cotangent may flow into it, whatever the caller differentiates.
        return jax.lax.stop_gradient(pool_taps(layers, pool).astype(jnp.float32))

    return encode


def make_train_step(head: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict
                    ) -> Callable[[dict, Array, Array], tuple[dict, dict]]:
    """The ONE train step on pooled taps: augment -> head -> loss -> grad (head params only) -> update."""
    loss_of = loss_fn_for(config.loss)
    a = config.aug

    def step(state: dict, taps: Array, labels: Array) -> tuple[dict, dict]:
        key = jax.random.fold_in(state["rng"], state["step"])
        taps = taps.astype(jnp.float32)
        x, targets = aug.augment(key, taps, labels, mixup_p=float(a.mixup_p), mixup_alpha=float(a.mixup_alpha),
                                 label_smoothing=float(a.label_smoothing), time_mask_width=int(a.time_mask))

        def loss(params):
            return loss_of(head.apply({"params": params}, x), targets)

        value, grads = jax.value_and_grad(loss)(state["params"])
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A non-finite loss or gradient leaves params and optimizer state as they were (the data position moves
        # on); the host then stops or counts the skipped batch (config.on_nonfinite).
        finite = jnp.isfinite(value) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new = dict(state, params=keep(params, state["params"]), opt_state=keep(opt_state, state["opt_state"]),
                   step=state["step"] + 1)
        return new, {"loss": value, "grad_norm": gnorm, "finite": finite}

    return step


def average_update(state: dict) -> dict:
    """Add the current head params to the running mean (one call per epoch in the averaging range)."""
    n = state["avg_count"].astype(jnp.float32)
    avg = jax.tree.map(lambda m, p: m + (p - m) / (n + 1.0), state["avg"], state["params"])
    return dict(state, avg=avg, avg_count=state["avg_count"] + 1)


def init_state(head: Any, tx: optax.GradientTransformation, seed: int, taps_shape: Sequence[int]) -> dict:
    """Fresh train state: head params (PyTorch-default init), optimizer state, step 0, base RNG key, average."""
    key = jax.random.PRNGKey(seed)
    k_init, k_train = jax.random.split(key)
    params = head.init(k_init, jnp.zeros((1,) + tuple(taps_shape[1:]), jnp.float32))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": k_train,
            "avg": jax.tree.map(jnp.zeros_like, params), "avg_count": jnp.zeros((), jnp.int32)}


@dataclasses.dataclass
class Steps:
    """The compiled functions of a run (built by :func:`build_steps`)."""

    mesh: Any
    state_sharding: Any
    init: Callable[[], dict]
    cached: Callable[[dict, Array, Array], tuple[dict, dict]]
    online: Callable[[dict, PyTree, Array, Array], tuple[dict, dict]] | None
    eval_cached: Callable[[PyTree, Array], Array]
    eval_online: Callable[[PyTree, PyTree, Array], Array] | None
    encode: Callable[[PyTree, Array], Array] | None
    average: Callable[[dict], dict]
    raw_step: Callable
    raw_encode: Callable | None


def build_steps(config: ml_collections.ConfigDict, mesh: Any, head: Any, tx: optax.GradientTransformation,
                taps_shape: Sequence[int], dims: Any = None) -> Steps:
    """jit everything with explicit shardings: batch on ``"data"``, state and encoder params replicated."""
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    abstract = jax.eval_shape(lambda: init_state(head, tx, int(config.seed), taps_shape))
    state_sh = jax.tree.map(lambda _: repl, abstract)
    step = make_train_step(head, tx, config)
    init = jax.jit(lambda: init_state(head, tx, int(config.seed), taps_shape), out_shardings=state_sh)
    cached = jax.jit(step, in_shardings=(state_sh, data, data), out_shardings=(state_sh, repl), donate_argnums=0)

    def logits(params, taps):
        return head.apply({"params": params}, taps.astype(jnp.float32))

    eval_cached = jax.jit(logits, in_shardings=(repl, data), out_shardings=data)
    online = eval_online = encode_jit = encode = None
    if dims is not None:
        from .api import compute_dtype

        encode = make_encode_fn(dims, dims.n_mels, int(config.data.pool), compute_dtype(config.encoder_dtype))
        online = jax.jit(lambda s, e, audio, y: step(s, encode(e, audio), y),
                         in_shardings=(state_sh, repl, data, data), out_shardings=(state_sh, repl), donate_argnums=0)
        eval_online = jax.jit(lambda p, e, audio: logits(p, encode(e, audio)), in_shardings=(repl, repl, data),
                              out_shardings=data)
        encode_jit = jax.jit(encode, in_shardings=(repl, data), out_shardings=data)
    average = jax.jit(average_update, in_shardings=(state_sh,), out_shardings=state_sh, donate_argnums=0)
    return Steps(mesh, state_sh, init, cached, online, eval_cached, eval_online, encode_jit, average, step, encode)


_STEPS_MEMO: dict[Any, Steps] = {}


def cached_steps(config: ml_collections.ConfigDict, mesh: Any, head: Any, steps_per_epoch: int,
                 taps_shape: Sequence[int], dims: Any = None) -> Steps:
    """:func:`build_steps` memoised on everything the compiled programs depend on, so runs in one process with
    the same shapes and hyper-parameters (the folds of a cross-validation, a resumed run) compile once."""
    key = (repr(head), tuple(taps_shape), int(steps_per_epoch), None if dims is None else str(dims),
           tuple(int(i) for i in mesh.device_ids.flat), config.head.to_json(), config.aug.to_json(),
           config.lr_decay.to_json(), str(config.loss), float(config.lr), float(config.b1), float(config.b2),
           float(config.adam_eps), float(config.weight_decay), int(config.seed), str(config.encoder_dtype),
           int(config.data.pool))
    if key not in _STEPS_MEMO:
        if len(_STEPS_MEMO) >= 8:
            _STEPS_MEMO.pop(next(iter(_STEPS_MEMO)))
        _STEPS_MEMO[key] = build_steps(config, mesh, head, make_optimizer(config, steps_per_epoch), taps_shape, dims)
    return _STEPS_MEMO[key]


# ----------------------------------------------------------------------------------------------------------------
# Logging


class MetricWriter:
    """JSONL log + TensorBoard event files, written by process 0 only."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(workdir / "metrics.jsonl", "a")
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:  # optional: the JSONL log has everything
                logger.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        rec = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, (int, float, np.floating, np.integer)) or (hasattr(v, "ndim") and v.ndim == 0):
                rec[prefix + k] = float(v)
                # TensorBoard cannot plot inf / NaN (tensorboardX warns on them): those values (d' of a perfectly
                # separated class is +inf) go to metrics.jsonl only, as JSON's Infinity / NaN.
                if self.tb is not None and np.isfinite(float(v)):
                    self.tb.add_scalar(prefix + k, float(v), int(step))
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


# ----------------------------------------------------------------------------------------------------------------
# The trainer


def steps_per_epoch_for(config: ml_collections.ConfigDict, n_train: int) -> int:
    if int(config.get("steps_per_epoch", 0) or 0) > 0:
        return int(config.steps_per_epoch)
    return max(1, int(round(float(config.epoch_fraction) * n_train / int(config.batch_size))))


def _load_sources(config: ml_collections.ConfigDict) -> tuple[ExampleSource, ExampleSource | None, dict]:
    """Train/eval sources for cached mode (features folder), with ESC-50-style fold selection."""
    d = config.data
    if not d.get("features"):
        raise TrainError("cached mode needs config.data.features (a folder written by scripts/extract_features.py)")
    train_src, meta, folds = open_features(d.features, d.train_split)
    eval_src = None
    fold = d.get("fold", None)
    if fold is not None and int(fold) >= 0:
        if folds is None:
            raise TrainError(f"config.data.fold={fold} but split {d.train_split!r} has no folds")
        if not np.any(folds == int(fold)):
            raise TrainError(f"config.data.fold={fold}: no example has that fold (folds: {sorted(set(folds))})")
        eval_src = train_src.subset(np.nonzero(folds == int(fold))[0])
        train_src = train_src.subset(np.nonzero(folds != int(fold))[0])
    elif d.get("eval_split"):
        if d.eval_split in meta.get("splits", {}):
            eval_src, _, _ = open_features(d.features, d.eval_split)
        else:
            logger.warning("features have no split %r: no evaluation", d.eval_split)
    return train_src, eval_src, meta


def evaluate(steps: Steps, params: PyTree, batches: Iterator[dict], kind: str, multilabel: bool,
             encoder_params: PyTree = None) -> dict[str, float]:
    """Logits over eval batches ({"x", "labels", "mask"} per host), gathered across hosts, then metrics."""
    data_sh = parallel.data_sharding(steps.mesh)
    outs, labels, masks = [], [], []
    for rows in batches:
        x, y, m = (parallel.to_global(rows[k], data_sh) for k in ("x", "labels", "mask"))
        logits = steps.eval_online(params, encoder_params, x) if kind == "audio" else steps.eval_cached(params, x)
        outs.append(parallel.process_allgather(logits))
        labels.append(parallel.process_allgather(y))
        masks.append(parallel.process_allgather(m))
    if not outs:
        raise TrainError("the eval set is empty")
    keep = np.concatenate(masks) > 0.5
    return compute_metrics(np.concatenate(outs)[keep], np.concatenate(labels)[keep], multilabel=multilabel)


class PreemptionWatch:
    """Whether the run should stop at step ``n`` for a preemption notice.

    With the JAX distributed client, JAX's preemption service (which catches SIGTERM, and Cloud TPU's maintenance
    notice) propagates a notice on any host to all of them and ``reached_preemption_sync_point`` names one step that
    every host reaches; it must be asked at every step. A single process catches SIGTERM itself; the handler is
    one-shot, so a second SIGTERM kills the process the default way (an unfinished Orbax save is a temporary
    directory that is never mistaken for a checkpoint).
    """

    def __init__(self) -> None:
        from jax._src import distributed

        self.distributed = distributed.global_state.client is not None
        self.stop = None if self.distributed else StopRequest()

    def reached(self, step: int) -> bool:
        if self.distributed:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self.stop.requested

    def close(self) -> None:
        if self.stop is not None:
            self.stop.close()


def _checkpoint_manager(workdir: Path, config: ml_collections.ConfigDict):
    import orbax.checkpoint as ocp

    c = config.checkpoint
    opts = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(c.every_steps)),
        preservation_policy=ocp.checkpoint_managers.LatestN(int(c.keep)),
        enable_async_checkpointing=bool(c.get("async_save", True)),
    )
    root = (workdir / "ckpt").absolute()
    try:
        return ocp.CheckpointManager(root, options=opts)
    except OSError as e:
        raise TrainError(f"checkpoint folder {root} cannot be opened: {e}") from e


def _host_states(it: Any) -> list[dict]:
    """Every host's data position (each host's reader has its own), gathered so process 0 can write them all."""
    st = it.state()
    keys = sorted(k for k, v in st.items() if isinstance(v, (int, np.integer)))
    local = np.asarray([int(st[k]) for k in keys], np.int64)
    if jax.process_count() == 1:
        rows = local[None]
    else:
        from jax.experimental import multihost_utils

        rows = np.asarray(multihost_utils.process_allgather(local))
    return [dict(zip(keys, map(int, r))) for r in rows]


def _save(mngr: Any, state: dict, step: int, data_state: list[dict], run: Mapping[str, Any],
          force: bool = False) -> None:
    import orbax.checkpoint as ocp

    with _checkpoint_io(mngr, step):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"batches_consumed": int(step), "hosts": data_state, "run": dict(run)})),
            force=force)


def _intact_steps(root: Path) -> list[int]:
    return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit() and _step_problem(d) is None)


@contextlib.contextmanager
def _checkpoint_io(mngr: Any, step: int | None = None) -> Iterator[None]:
    """A failed (or failed async) save -> TrainError naming the folder and the checkpoints that stay intact (Orbax
    writes a temporary directory and renames it only when complete)."""
    try:
        yield
    except TrainError:
        raise
    except Exception as e:  # noqa: BLE001 - tensorstore / orbax raise several types for the same disk error
        root = Path(mngr.directory)
        what = f"saving checkpoint {step}" if step is not None else "finishing a checkpoint save"
        raise TrainError(f"{what} in {root} failed ({type(e).__name__}: {str(e)[:300]}); disk full or read-only? "
                         f"intact checkpoints there: {_intact_steps(root) or 'none'}") from e


def _write_output(path: Path, fn: Callable[[], Any]) -> Any:
    """Run an atomic write (head, export, result, feature files), turning a disk error into a TrainError naming
    ``path``. The export's weight writer (safetensors) reports a disk error as its own type, not an OSError."""
    from safetensors import SafetensorError

    try:
        return fn()
    except (OSError, SafetensorError) as e:
        raise TrainError(f"writing {path} failed ({e}); disk full or read-only? a previous {path.name} is kept "
                         "as it was") from e


def _save_preemption(mngr: Any, state: dict, step: int, batches: Any, run: Mapping[str, Any]) -> None:
    """Save (unless this step's periodic save is already under way) and wait until it is final, then raise
    :class:`Preempted`."""
    if mngr is None:
        logger.error("preempted at step %d with checkpoints off (checkpoint.every_steps=0): nothing saved", step)
        raise TrainError(f"preempted at step {step}; checkpoint.every_steps=0, so the run is not resumable")
    if mngr.latest_step() != step:
        _save(mngr, state, step, _host_states(batches), run, force=True)
    with _checkpoint_io(mngr, step):
        mngr.wait_until_finished()
    mngr.close()
    path = Path(mngr.directory) / str(step)
    logger.warning("preempted, resumable at step %d (%s)", step, path)
    raise Preempted(step, path)


#: Orbax's marker of a finalized step directory (written last, after every item's own marker).
COMMIT_MARKER = "commit_success.txt"


def _step_problem(step_dir: Path) -> str | None:
    """Why a step directory is not a complete checkpoint, or None (the full check is reading it)."""
    if not (step_dir / COMMIT_MARKER).is_file():
        return f"it has no {COMMIT_MARKER} (a save that never finished)"
    for item in ("state", "data"):
        if not (step_dir / item / COMMIT_MARKER).is_file():
            return f"its {item!r} item has no {COMMIT_MARKER}"
    return None


def _restore(mngr: Any, abstract: dict, state_sh: Any, run: Mapping[str, Any]
             ) -> tuple[tuple[dict, int, dict] | None, list[Path]]:
    """The newest intact checkpoint: broken ones (unfinished, a file missing or truncated) are skipped with a
    warning naming them; a checkpoint of another run (head mode, classes, taps shape) is a :class:`TrainError`, and
    so is a folder whose checkpoints are all broken (never a silent start from step 0). Returns (state, step, data)
    or None, and the broken step directories."""
    import orbax.checkpoint as ocp

    root = Path(mngr.directory)
    try:
        names = [p.name for p in root.iterdir()]
    except OSError as e:
        raise TrainError(f"checkpoint folder {root} is unreadable: {e}") from e
    finished = set(int(s) for s in mngr.all_steps())
    for name in names:
        if ".orbax-checkpoint-tmp" in name:
            logger.warning("checkpoint folder %s: ignoring %s, a save that never finished", root, name)
    candidates = sorted(finished | {int(n) for n in names if n.isdigit()}, reverse=True)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    skipped = []
    for step in candidates:
        step_dir = root / str(step)
        why = _step_problem(step_dir)
        if why is None:
            try:
                data = dict(mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"])
            except Exception as e:  # noqa: BLE001 - any read failure means this step is broken
                why = f"its data item is unreadable ({type(e).__name__}: {str(e)[:200]})"
        if why is None:
            saved = data.get("run")
            if saved is not None and dict(saved) != dict(run):
                diff = {k: (saved.get(k), run.get(k)) for k in set(saved) | set(run) if saved.get(k) != run.get(k)}
                raise TrainError(f"checkpoint {step_dir} is of another run: " + ", ".join(
                    f"{k} {a!r} there, {b!r} in this config" for k, (a, b) in sorted(diff.items())) +
                    " (use another workdir, or the config it was trained with)")
            try:
                state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
            except Exception as e:  # noqa: BLE001
                why = f"its state is unreadable ({type(e).__name__}: {str(e)[:200]})"
        if why is not None:
            logger.warning("skipping checkpoint %s: %s", step_dir, why)
            skipped.append((step_dir, why))
            continue
        if int(data["batches_consumed"]) != int(state["step"]):
            raise TrainError(f"checkpoint {step_dir}: data position {data['batches_consumed']} and step "
                             f"{int(state['step'])} disagree")
        if skipped:
            logger.warning("resuming from checkpoint %d, the newest intact one", step)
        return (state, int(step), data), [d for d, _ in skipped]
    if skipped:
        raise TrainError(f"checkpoint folder {root} holds checkpoints but none is intact; not starting from step 0 "
                         "(move the folder away to start afresh): " + "; ".join(f"{d}: {w}" for d, w in skipped))
    return None, []


def _set_aside(mngr: Any, broken: Sequence[Path]) -> None:
    """Rename broken step directories to ``<step>.broken`` (kept for inspection) so new saves can take their
    steps; process 0 renames, every host waits for it, then the manager re-reads the folder."""
    if not broken:
        return
    if jax.process_index() == 0:
        for d in broken:
            dest = d.with_name(d.name + ".broken")
            k = 1
            while dest.exists():
                dest, k = d.with_name(f"{d.name}.broken{k}"), k + 1
            os.replace(d, dest)
            logger.warning("moved the broken checkpoint %s to %s", d, dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("whisper_at_jax: broken checkpoints set aside")
    mngr.reload()


def label_rows(labels: Sequence[str], n_classes: int) -> list[list[Any]]:
    """Class names -> the checkpoint's ``[[index, mid, display_name], ...]``: AudioSet names or MIDs get both from
    the AudioSet ontology; other names get an empty MID; no names at all get the checkpoint's defaults."""
    from .convert.at_head import default_labels

    labels = [str(x) for x in labels]
    if not labels:
        return default_labels(n_classes)
    if len(labels) != n_classes:
        raise TrainError(f"{len(labels)} class names for {n_classes} classes")
    if n_classes == 527:
        ref = default_labels(527)
        known = {r[2]: r for r in ref} | {r[1]: r for r in ref if r[1]}
        if all(x in known for x in labels):
            return [[i, known[x][1], known[x][2]] for i, x in enumerate(labels)]
    return [[i, "", x] for i, x in enumerate(labels)]


def train(config: ml_collections.ConfigDict, *, train_source: ExampleSource | None = None,
          eval_source: ExampleSource | None = None, model: Any = None) -> dict[str, Any]:
    """Run (or resume) the training run described by ``config``; returns a summary and the final head params.

    ``train_source`` / ``eval_source`` replace the configured data with in-memory examples (``kind="audio"`` for
    online mode, ``"taps"`` for cached); ``model`` is a loaded ``WhisperModel`` (else ``config.model`` is loaded
    when online mode or the export needs it).
    """
    workdir = Path(config.workdir)
    is_main = jax.process_index() == 0
    mode = config.mode
    if mode not in ("online", "cached"):
        raise TrainError(f"config.mode must be 'online' or 'cached', got {mode!r}")
    loss_fn_for(config.loss)  # validate early

    # --- mesh ---------------------------------------------------------------------------------------------------
    mesh = parallel.make_mesh()
    for key in ("batch_size", "eval_batch_size"):
        if int(config[key]) % mesh.devices.size:
            raise TrainError(f"config.{key}={config[key]} does not split over {mesh.devices.size} devices")

    # --- data ---------------------------------------------------------------------------------------------------
    meta: dict = {}
    tfdata = None
    if train_source is None:
        if mode == "cached":
            train_source, ev, meta = _load_sources(config)
            eval_source = eval_source if eval_source is not None else ev
        else:
            tfdata = TFRecordData(config)
            meta = {"labels": tfdata.labels}
    expected_kind = "audio" if mode == "online" else "taps"
    for name, src in (("train", train_source), ("eval", eval_source)):
        if src is not None and src.kind != expected_kind:
            raise TrainError(f"{mode} mode needs {expected_kind} examples, the {name} source holds {src.kind}")
    n_train = len(tfdata) if tfdata is not None else len(train_source)
    n_classes = tfdata.n_classes if tfdata is not None else train_source.n_classes
    labels = list(config.data.get("labels") or meta.get("labels") or [])
    multilabel = bool(config.data.multilabel)
    spe = steps_per_epoch_for(config, n_train)
    total_steps = int(config.epochs) * spe

    if mode == "online" or config.get("export", False):
        if model is None:
            from .api import load_model

            model = load_model(config.model, at_head=False)
    dims = model.dims if model is not None else None
    if mode == "online":
        frames = int(round(float(config.data.clip_seconds) * SAMPLE_RATE)) // HOP_LENGTH
        if frames % 2 or frames // 2 % int(config.data.pool) or frames > 2 * dims.n_audio_ctx:
            raise TrainError(f"clip_seconds={config.data.clip_seconds} gives {frames} mel frames: need an even "
                             f"number <= {2 * dims.n_audio_ctx} whose half is a multiple of pool={config.data.pool}")
        taps_shape = (1, dims.n_audio_layer, frames // 2 // int(config.data.pool), dims.n_audio_state)
    else:
        taps_shape = (1,) + tuple(train_source.x.shape[1:])
        if dims is not None and (taps_shape[1], taps_shape[3]) != (dims.n_audio_layer, dims.n_audio_state):
            raise TrainError(f"features have {taps_shape[1]} layers of width {taps_shape[3]}, but config.model "
                             f"{config.model!r} has {dims.n_audio_layer} of {dims.n_audio_state}")

    # --- head and optimizer -------------------------------------------------------------------------------------
    from .api import compute_dtype

    head = make_head(config.head.mode, taps_shape[1], taps_shape[3], n_classes,
                     dtype=compute_dtype(config.head.dtype))
    steps = cached_steps(config, mesh, head, spe, taps_shape, dims if mode == "online" else None)
    enc_params = None
    if mode == "online":
        enc_params = jax.device_put(model.params["encoder"], parallel.replicated(mesh))

    # --- checkpoint resume --------------------------------------------------------------------------------------
    mngr = _checkpoint_manager(workdir, config) if int(config.checkpoint.every_steps) > 0 else None
    run_id = {"head_mode": str(config.head.mode), "n_classes": int(n_classes), "taps_shape": list(taps_shape[1:])}
    restored, broken = (_restore(mngr, jax.eval_shape(steps.init), steps.state_sharding, run_id)
                        if mngr is not None else (None, []))
    _set_aside(mngr, broken)
    host_state = None
    if restored is not None:
        state, start, data_state = restored
        hosts = data_state.get("hosts") or []
        if tfdata is not None and len(hosts) == jax.process_count():
            host_state = hosts[jax.process_index()]
        elif tfdata is not None:
            logger.warning("checkpoint was written by %d processes, this run has %d: resuming the data by batch "
                           "count (the per-host order differs)", len(hosts), jax.process_count())
        logger.info("resumed from step %d", start)
    else:
        state, start = steps.init(), 0

    if tfdata is not None:
        batches: Any = tfdata.train_iter(start, host_state)
        eval_iter = tfdata.eval_iter if tfdata.has_eval else None
        kind = "audio"
    else:
        weights = None
        if config.data.balanced:
            weights = (np.asarray(train_source.weights) if train_source.weights is not None
                       else label_balanced_weights(np.asarray(train_source.labels)))
        batches = SourceIterator(train_source, IndexStream(n_train, int(config.batch_size), int(config.seed),
                                                           weights), start)
        eval_iter = None
        if eval_source is not None:
            eval_iter = lambda: eval_batches(eval_source, int(config.eval_batch_size))  # noqa: E731
        kind = train_source.kind

    def run_eval(params: PyTree) -> dict[str, float]:
        return evaluate(steps, params, eval_iter(), kind, multilabel, enc_params)

    writer = MetricWriter(workdir, is_main)
    ids_log = open(workdir / "examples.jsonl", "a") if (is_main and config.get("log_example_ids")) else None
    data_sh = parallel.data_sharding(mesh)
    wa_start, wa_end = int(config.wa.start_epoch), int(config.wa.end_epoch)
    schedule = lr_schedule(config, spe)
    result: dict[str, Any] = {"steps_per_epoch": spe, "total_steps": total_steps, "start_step": start}

    bar = None
    if is_main and config.get("progress", True):
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True)
    t0, n0 = time.perf_counter(), start
    watch = PreemptionWatch()
    on_nonfinite = str(config.get("on_nonfinite", "stop"))
    if on_nonfinite not in ("stop", "skip"):
        raise TrainError(f"config.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    result["skipped_batches"] = 0
    pending = None  # the previous step's (step, ids, metrics): checked one step late so the host never waits

    def check_finite(p: tuple[int, list[str], dict] | None) -> None:
        if p is None or bool(jax.device_get(p[2]["finite"])):
            return
        s_, ids_, m_ = p
        loss_, gnorm_ = float(jax.device_get(m_["loss"])), float(jax.device_get(m_["grad_norm"]))
        if on_nonfinite == "skip":
            result["skipped_batches"] += 1
            logger.warning("step %d: loss %s, grad norm %s: batch skipped (%d so far); example ids: %s", s_, loss_,
                           gnorm_, result["skipped_batches"], ", ".join(ids_))
            return
        last = None
        if mngr is not None:
            mngr.wait_until_finished()
            last = mngr.latest_step()
        where = f"{Path(mngr.directory) / str(last)}" if last is not None else "none (no checkpoint saved)"
        raise NonFiniteError(f"step {s_}: loss {loss_}, gradient norm {gnorm_} (not finite); the step was not "
                             f"applied. Example ids of the batch: {', '.join(ids_)}. Last good checkpoint: {where}. "
                             "Set config.on_nonfinite='skip' to skip such batches.")

    try:
        for step in range(start, total_steps):
            ids, rows = next(batches)
            x = parallel.to_global(rows["x"], data_sh)
            y = parallel.to_global(rows["labels"], data_sh)
            if mode == "online":
                state, m = steps.online(state, enc_params, x, y)
            else:
                state, m = steps.cached(state, x, y)
            done = step + 1
            check_finite(pending)
            pending = (done, ids, m)
            if step == start:  # the first step compiles: leave it out of the examples/s windows
                jax.block_until_ready(m)
                t0, n0 = time.perf_counter(), done
            if ids_log is not None:
                ids_log.write(json.dumps({"step": done, "ids": ids}) + "\n")
                ids_log.flush()
            if done % int(config.log_every_steps) == 0 or done == total_steps:
                m = {k: float(v) for k, v in jax.device_get(m).items() if k != "finite"}
                m["lr"] = float(schedule(jnp.asarray(step)))
                if done > n0:  # examples/s since the last log (the compiling first step excluded)
                    m["examples_per_s"] = (done - n0) * int(config.batch_size) / (time.perf_counter() - t0)
                    result["examples_per_s"] = m["examples_per_s"]
                writer.write(done, m, prefix="train/")
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.4f}", ex_s=f"{m.get('examples_per_s', 0.0):.1f}")
                result["loss"] = float(m["loss"])
                t0, n0 = time.perf_counter(), done
            if bar is not None:
                bar.update(1)
            if done % spe == 0:
                epoch = done // spe  # the 1-based epoch just finished
                if wa_start > 0 and wa_start <= epoch <= wa_end:
                    state = steps.average(state)
                ev_every = int(config.get("eval_every_epochs", 1) or 0)
                if eval_iter is not None and ev_every > 0 and epoch % ev_every == 0:
                    met = run_eval(state["params"])
                    writer.write(done, {**met, "epoch": epoch}, prefix="eval/")
                    result["eval"] = met
                    t0, n0 = time.perf_counter(), done  # eval time is not training throughput
            if mngr is not None and (done % int(config.checkpoint.every_steps) == 0 or done == total_steps):
                _save(mngr, state, done, _host_states(batches), run_id, force=done == total_steps)
            if done < total_steps and watch.reached(done):
                _save_preemption(mngr, state, done, batches, run_id)
        check_finite(pending)
        if mngr is not None:
            with _checkpoint_io(mngr):
                mngr.wait_until_finished()
    finally:
        watch.close()
        if bar is not None:
            bar.close()
        if ids_log is not None:
            ids_log.close()

    # --- the final head: the weight average when any epoch was averaged -----------------------------------------
    n_avg = int(jax.device_get(state["avg_count"]))
    final = state["avg"] if n_avg > 0 else state["params"]
    result["averaged_epochs"] = n_avg
    if eval_iter is not None:
        met = run_eval(final)
        writer.write(total_steps, met, prefix="final/")
        result["final_eval"] = met
    final_np = jax.tree.map(np.asarray, jax.device_get(final))
    result["head_params"] = final_np
    if is_main:
        def write_head() -> None:
            with atomic_path(workdir / "final_head.npz", suffix=".tmp.npz") as tmp:
                np.savez(tmp, **flatten_dict(final_np, sep="/"))

        _write_output(workdir / "final_head.npz", write_head)
        if config.get("export", False):
            from .convert import save_checkpoint

            head_config = {"mode": config.head.mode, "n_classes": n_classes, "n_layers": taps_shape[1],
                           "width": taps_shape[3], "labels": label_rows(labels, n_classes)}
            _write_output(workdir / "export", lambda: save_checkpoint(
                workdir / "export", model.dims, jax.device_get(model.params), model.tokenizer_file,
                source=model.source, whisper_meta=model.whisper_meta, head_params=final_np, head_config=head_config,
                overwrite=True))
            result["export"] = str(workdir / "export")
        _write_output(workdir / "result.json", lambda: atomic_write_bytes(workdir / "result.json", json.dumps(
            {k: v for k, v in result.items() if k != "head_params"}, indent=1, default=float).encode()))
    writer.close()
    if mngr is not None:
        mngr.close()
    return result


# ----------------------------------------------------------------------------------------------------------------
# Feature extraction (cached mode)


def extract_features(model: Any, batches: Iterator[dict], writer: FeatureWriter, *, pool: int,
                     dtype: str = "float32", mesh: Any = None, batch_size: int | None = None,
                     progress: bool = False) -> int:
    """Encode audio batches once and write their pooled taps.

    ``batches`` yields this host's dicts ``audio`` [B, samples], ``labels`` [B, C], ``id`` [B] and optionally
    ``mask`` [B] (padding rows are not written) and ``fold`` [B]. Every batch must have the same shape (pad the last
    one and mask it) so the encoder compiles once. Runs the same ``encode`` function the online train step runs.
    Returns the number of examples written.
    """
    from .api import compute_dtype

    mesh = mesh or parallel.make_mesh(jax.local_devices())
    encode = make_encode_fn(model.dims, model.dims.n_mels, int(pool), compute_dtype(dtype))
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
