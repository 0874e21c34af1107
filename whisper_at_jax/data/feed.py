"""The trainer's data behind one interface, for its three kinds: in-memory examples, cached features, TFRecords.

:func:`open_feed` turns a config (and optional in-memory sources) into a feed with

* ``kind``: ``"audio"`` (online mode: the encoder runs in the step) or ``"taps"`` (cached mode: pooled taps);
  ``n_train``, ``n_classes``, ``labels`` (class names, or empty), ``has_eval``; a source feed's ``example_shape``
  is one row's shape (cached mode's taps [L, S, D]);
* ``train_batches(start, saved)``: the training batches from batch ``start`` (``saved``: the data item of the
  checkpoint resumed from, or None), an iterator whose ``next()`` is (example ids, this host's rows
  {"x", "labels"}) and whose ``state()`` is this host's resumable position (a dict of integers);
* ``eval_iter()``: the eval set once, as this host's rows {"x", "labels", "mask"} (padded rows have mask 0).

In-memory examples and cached features are :class:`~whisper_at_jax.data.examples.ExampleSource` s read in
:class:`~whisper_at_jax.data.examples.IndexStream` order (the position is the batch count); TFRecords are read by
the per-host ``tf.data`` reader (:func:`~whisper_at_jax.data.reader.make_dataset`), whose position is its own
``state()``. :func:`gather_states` collects every host's position for the checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Protocol

import jax
import ml_collections
import numpy as np

from ..audio import SAMPLE_RATE
from .examples import ExampleSource, IndexStream, SourceIterator, TrainError, eval_batches
from .features import open_features
from .reader import label_balanced_weights, make_dataset
from .shards import host_example_counts
from .tfrecords import read_metadata

logger = logging.getLogger("whisper_at_jax.data")


class BatchIterator(Protocol):
    """Training batches: ``next(it)`` -> (ids, this host's rows {"x", "labels"}); ``state()`` -> its position."""

    def __next__(self) -> tuple[list[str], dict]: ...

    def state(self) -> dict[str, int]: ...


class Feed(Protocol):
    """What the trainer reads (see the module docstring)."""

    kind: str
    labels: list[str]
    n_train: int
    n_classes: int
    has_eval: bool

    def train_batches(self, start: int, saved: Mapping[str, Any] | None) -> BatchIterator: ...

    def eval_iter(self) -> Iterator[dict]: ...


class SourceFeed:
    """In-memory examples or cached features: :class:`ExampleSource` s, balanced by the sources' own weights or by
    :func:`label_balanced_weights` when ``config.data.balanced``."""

    def __init__(self, config: ml_collections.ConfigDict, train: ExampleSource, eval_: ExampleSource | None,
                 labels: list[str] | None = None):
        self.config, self.train, self.eval = config, train, eval_
        self.kind, self.labels = train.kind, list(labels or [])
        self.n_train, self.n_classes, self.has_eval = len(train), train.n_classes, eval_ is not None
        self.example_shape = tuple(train.x.shape[1:])

    def train_batches(self, start: int, saved: Mapping[str, Any] | None = None) -> SourceIterator:
        weights = None
        if self.config.data.balanced:
            weights = (np.asarray(self.train.weights) if self.train.weights is not None
                       else label_balanced_weights(np.asarray(self.train.labels)))
        stream = IndexStream(self.n_train, int(self.config.batch_size), int(self.config.seed), weights)
        return SourceIterator(self.train, stream, start)  # the position is the batch count alone

    def eval_iter(self) -> Iterator[dict]:
        return eval_batches(self.eval, int(self.config.eval_batch_size))


class TFRecordData:
    """Online-mode data from TFRecords written by ``whisper_at_jax.data.write_tfrecords`` (the data team's
    per-host, resumable tf.data reader). Batches are per host; the position is the reader's exact ``state()``."""

    kind = "audio"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
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
        meta = read_metadata(self.path)
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

    def train_batches(self, start: int, saved: Mapping[str, Any] | None) -> "TFRecordIterator":
        """From the reader's saved position when this run has as many processes as the one that saved it, else
        from batch ``start`` by arithmetic."""
        host_state = None
        if saved is not None:
            hosts = saved.get("hosts") or []
            if len(hosts) == jax.process_count():
                host_state = hosts[jax.process_index()]
            else:
                logger.warning("checkpoint was written by %d processes, this run has %d: resuming the data by "
                               "batch count (the per-host order differs)", len(hosts), jax.process_count())
        d = self.config.data
        it = make_dataset(
            self.path, d.train_split, batch_size=self.local_batch, clip_samples=self.clip_samples, training=True,
            seed=int(self.config.seed), sampling="balanced" if d.balanced else "uniform", strict=bool(d.strict),
            state=host_state, skip_batches=0 if host_state is not None else int(start))
        return TFRecordIterator(it)

    def eval_iter(self) -> Iterator[dict]:
        d = self.config.data
        local = int(self.config.eval_batch_size) // jax.process_count()
        counts = host_example_counts(self.path, d.eval_split, jax.process_count())
        it = make_dataset(
            self.path, d.eval_split, batch_size=local, clip_samples=self.clip_samples, training=False, repeat=False,
            seed=int(self.config.seed), pad_to_batches=-(-max(counts) // local), strict=bool(d.strict))
        for b in it:
            yield {"x": b["audio"], "labels": b["labels"], "mask": b["mask"]}


class TFRecordIterator:
    """The reader's batches as (host-local ids, rows); ``state()`` is the reader's exact position."""

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


def load_sources(config: ml_collections.ConfigDict) -> tuple[ExampleSource, ExampleSource | None, dict]:
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


def open_feed(config: ml_collections.ConfigDict, train_source: ExampleSource | None = None,
              eval_source: ExampleSource | None = None) -> SourceFeed | TFRecordData:
    """The feed of ``config.mode``: the in-memory ``train_source`` / ``eval_source`` when given, else cached mode's
    features folder (``config.data.features``) or online mode's TFRecords (``config.data.tfrecords``)."""
    mode = config.mode
    if train_source is None and mode == "online":
        return TFRecordData(config)
    meta: dict = {}
    if train_source is None:
        train_source, ev, meta = load_sources(config)
        eval_source = eval_source if eval_source is not None else ev
    expected = "audio" if mode == "online" else "taps"
    for name, src in (("train", train_source), ("eval", eval_source)):
        if src is not None and src.kind != expected:
            raise TrainError(f"{mode} mode needs {expected} examples, the {name} source holds {src.kind}")
    return SourceFeed(config, train_source, eval_source, meta.get("labels"))


def gather_states(it: BatchIterator) -> list[dict]:
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
