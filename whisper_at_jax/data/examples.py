"""Training examples in memory or memory-mapped, and the deterministic order they are read in.

* :class:`ExampleSource`: rows of audio [N, samples] (online mode) or pooled taps [N, L, S, D] (cached mode), a
  numpy array, a memory map or a :class:`ShardedArray` of ``.npy`` shards, with multi-hot labels and ids;
* :class:`IndexStream`: the global example indices of batch ``i`` as a pure function of (seed, i), so a resumed
  run reads exactly the batches an uninterrupted one would;
* :class:`SourceIterator`: training batches of a source from a batch position (``next()``, ``state()``);
  :func:`eval_batches`: the eval set once, padded and masked.

Every host computes the same global indices and reads its own contiguous slice (:func:`local_rows`).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import numpy as np


class TrainError(ValueError):
    """A bad training configuration or input (names the config key or file)."""


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
