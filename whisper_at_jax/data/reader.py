"""Reader: TFRecord shards -> per-host numpy batches (and global ``jax.Array`` s) for head training and evaluation.

Design (why it looks like this):

* **Per-host files.** Host ``i`` of ``n`` reads shards ``i, i + n, i + 2n, ...`` (``files.shard(n, i)``), so hosts
  never read the same record and no coordination is needed; with fewer shards than hosts that is impossible and
  is an error. Write a shard count that is a multiple of the host count.
* **Epochs are built one at a time, from (seed, epoch, host) alone.** Each epoch is its own ``tf.data`` pipeline:
  the host's shards in an order drawn from ``(seed, epoch, host)``, read by a deterministic interleave, optionally
  replicated by the balanced sampler's draw counts, shuffled through a buffer seeded the same way, then numbered.
  That number (the record's *offset* in the epoch's stream) is what positions a run: resuming at
  ``(epoch, offset)`` rebuilds that epoch's pipeline and ``skip`` s ``offset`` records *before* decoding, which
  yields exactly the stream an uninterrupted run would have seen (same shuffle, and random crops that are a hash of
  ``(seed, epoch, host, offset)``, not of a stateful RNG). ``tf.train.Checkpoint(iterator=...)`` was the
  alternative; it was not chosen because it stores the shuffle buffer (hundreds of MB of audio per host), does not
  checkpoint the Python decode step, and would need one TF checkpoint per host beside Orbax's.
  ``AudioBatchIterator.state()`` gives the position as three integers; ``skip_batches=k`` turns a step count into
  a position arithmetically (exact as long as no record in the skipped range failed to decode: such a record
  shifts batch boundaries, which ``state()`` records and arithmetic cannot know; the iterator warns if one occurs).
* **Balanced sampling** (whisper-at's ``WeightedRandomSampler(weights, len(data), replacement=True)``): for each
  epoch the host draws as many records as it holds, with replacement, with probability proportional to the
  weights of :func:`label_balanced_weights` (computed over the whole split, from the labels file the writer
  stores beside the shards); each record then enters the stream as many times as it was drawn, and the shuffle
  buffer spreads the copies. The draw is a numpy function of (seed, epoch, host): deterministic, restartable.
  Each host normalises over its own records, which equals the global sampler in expectation when shards are
  a random partition (the writer shuffles before sharding).
* **Bad records are skipped and counted, never zero-filled.** Shards whose size differs from the metadata (cut
  short) are scanned once at start-up and only their complete records are read (the loss is logged with counts).
  Each record is parsed and decoded in one Python function; a record that fails (bad protobuf, undecodable or
  empty audio, wrong sample rate, label out of range) is flagged, filtered out, counted in
  :attr:`AudioBatchIterator.stats` and logged; with ``strict=True`` it raises :class:`DataError` instead.
  Zero-padding happens only for clips shorter than ``clip_samples`` and for the eval tail, whose padded rows have
  ``mask == 0``.

Batches are dicts of numpy arrays: ``audio`` [B, clip_samples] float32 in [-1, 1), ``labels`` [B, C] float32
multi-hot, ``id`` [B] str, ``mask`` [B] float32 (1 = real example). :func:`whisper_at_jax.parallel.to_global` makes
global ``jax.Array`` s.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from whisper_at_jax.audio import SAMPLE_RATE
from whisper_at_jax.data.shards import ReaderStats, Shard, find_shards, split_labels
from whisper_at_jax.data.sources import DataError, _first
from whisper_at_jax.data.tfrecords import decode_audio_bytes

logger = logging.getLogger("whisper_at_jax.data")

_M64 = (1 << 64) - 1


def _mix64(*xs: int) -> int:
    """SplitMix64-style hash of integers: a stateless, platform-independent source for crop offsets."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & _M64)) & _M64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
        h ^= h >> 31
    return h


# ---------------------------------------------------------------------------------------------------------------
# Balanced sampling weights


def label_balanced_weights(labels: Sequence[Sequence[int]] | np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """whisper-at's sampling weight per clip: the sum over its labels of ``1000 / (count(label) + 0.01)``, where
    ``count`` is how many clips carry the label (``gen_weight_file.py`` of the reference training code).

    Args:
        labels: per clip, its class indices; or a multi-hot ``[clips, classes]`` array (> 0.5: the clip has it).
        n_classes: the class count (labels must lie in ``[0, n_classes)``); a multi-hot array's width by default.

    Returns:
        float64 array [clips]; a clip with no label gets weight 0 (never drawn).
    """
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        owner, flat = np.nonzero(labels > 0.5)  # row-major: each clip's labels in class order
        n_clips, n_classes = len(labels), labels.shape[1] if n_classes is None else n_classes
    else:
        lengths = np.fromiter((len(x) for x in labels), dtype=np.int64, count=len(labels))
        flat = np.fromiter((int(v) for x in labels for v in x), dtype=np.int64, count=int(lengths.sum()))
        n_clips, owner = len(lengths), np.repeat(np.arange(len(lengths)), lengths)
    if n_classes is None:
        raise DataError("n_classes is needed with label index lists")
    if flat.size and (flat.min() < 0 or flat.max() >= n_classes):
        bad = flat[(flat < 0) | (flat >= n_classes)][0]
        raise DataError(f"label index {bad} outside the {n_classes} classes")
    counts = np.bincount(flat, minlength=n_classes).astype(np.float64)
    label_weight = 1000.0 / (counts + 0.01)
    return np.bincount(owner, weights=label_weight[flat], minlength=n_clips)


# ---------------------------------------------------------------------------------------------------------------
# The iterator


class AudioBatchIterator:
    """Iterator of per-host numpy batches; see :func:`make_dataset` (which builds it) and the module docstring."""

    def __init__(
        self, shards: list[Shard], meta: Optional[dict], data: str, split: str, batch_size: int, clip_samples: int,
        training: bool, seed: int, process_index: int, process_count: int, repeat: bool, sampling: str,
        weights: Optional[np.ndarray], n_classes: int, label_names: Optional[list[str]], encoding: str,
        sample_rate: int, shuffle_buffer: int, cycle_length: int, prefetch: int, strict: bool,
        pad_to_batches: Optional[int], stats: ReaderStats,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.clip_samples = clip_samples
        self.training = training
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.repeat = repeat
        self.sampling = sampling
        self.n_classes = n_classes
        self.label_names = label_names
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.shuffle_buffer = shuffle_buffer
        self.cycle_length = cycle_length
        self.prefetch = prefetch
        self.strict = strict
        self.pad_to_batches = pad_to_batches
        self.stats = stats
        self._shards = shards
        self._host_starts = np.concatenate([[0], np.cumsum([s.readable for s in shards])]).astype(np.int64)
        self.num_examples = int(self._host_starts[-1])  # readable records on this host
        self._host_weights = weights
        self._epoch = 0
        self._offset = 0
        self._batches = 0
        self._it: Optional[Iterator] = None
        self._epoch_batches = 0
        self._done = False
        self._bad_at_epoch_start = 0
        self._seen_at_epoch_start = 0
        self._epoch_start_offset = 0
        self._strict_error: Optional[BaseException] = None
        self._warned_skip = False
        self._skip_arithmetic = False

    # -- position ------------------------------------------------------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        """Batches one epoch yields on this host when every record decodes (the stream holds ``num_examples``
        records in both sampling modes; training drops the last partial batch, evaluation pads it)."""
        if self.training:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def state(self) -> dict:
        """The exact position after the last batch returned: JSON-able ints. Pass it back as ``make_dataset(...,
        state=...)`` with the same data, seed and host layout to continue with the very next batch."""
        return {"epoch": self._epoch, "offset": self._offset, "batches": self._batches, "seed": self.seed,
                "process_index": self.process_index, "process_count": self.process_count}

    def _restore(self, state: Mapping[str, int]) -> None:
        for key in ("seed", "process_index", "process_count"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(f"data state was saved with {key}={state[key]}, this reader has {getattr(self, key)}")
        self._epoch, self._offset, self._batches = int(state["epoch"]), int(state["offset"]), int(state["batches"])

    def _skip(self, k: int) -> None:
        bpe = self.batches_per_epoch
        if bpe <= 0:
            raise DataError(
                f"batch_size {self.batch_size} exceeds the {self.num_examples} record(s) this host reads"
            )
        self._epoch, within = divmod(int(k), bpe)
        if not self.repeat and self._epoch > 0:
            raise DataError(f"cannot skip {k} batches: one pass has only {bpe} (repeat=False)")
        self._offset = within * self.batch_size
        self._batches = int(k)
        self._skip_arithmetic = True

    # -- sampling ------------------------------------------------------------------------------------------------

    def epoch_counts(self, epoch: int) -> np.ndarray:
        """How many times each of this host's records enters epoch ``epoch``'s stream (all ones when uniform)."""
        n = self.num_examples
        if self.sampling != "balanced":
            return np.ones(n, np.int64)
        rng = np.random.default_rng([self.seed, epoch, self.process_index, 0xBA1A])
        w = self._host_weights
        draws = rng.choice(n, size=n, replace=True, p=w / w.sum())
        return np.bincount(draws, minlength=n).astype(np.int64)

    # -- the per-epoch pipeline ----------------------------------------------------------------------------------

    def _decode(self, raw: bytes, epoch: int, offset: int):
        """Parse + decode + crop/pad + multi-hot one record; on failure flag it (ok=False) for the filter."""
        import tensorflow as tf

        clip_id = f"record {offset} of epoch {epoch}"
        try:
            feats = tf.train.Example.FromString(raw).features.feature
            if "id" in feats and feats["id"].bytes_list.value:
                clip_id = feats["id"].bytes_list.value[0].decode("utf-8", "replace")
            if "audio" not in feats or not feats["audio"].bytes_list.value:
                raise DataError("no audio feature")
            pcm, found_sr = decode_audio_bytes(feats["audio"].bytes_list.value[0], self.encoding)
            sr = found_sr
            if sr is None and "sample_rate" in feats and feats["sample_rate"].int64_list.value:
                sr = int(feats["sample_rate"].int64_list.value[0])
            if sr is not None and sr != self.sample_rate:
                raise DataError(f"sample rate {sr} Hz, expected {self.sample_rate}")
            n = pcm.shape[0]
            if n == 0:
                raise DataError("no samples")
            labels = np.asarray(feats["labels"].int64_list.value if "labels" in feats else [], np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
                raise DataError(f"label index outside the {self.n_classes} classes: {labels.tolist()}")
            start = 0
            if self.training and n > self.clip_samples:
                # A hash of the stream position, not an RNG's state, so a resumed run crops identically.
                start = _mix64(self.seed, epoch, self.process_index, offset) % (n - self.clip_samples + 1)
            pcm = pcm[start:start + self.clip_samples]
            audio = np.zeros(self.clip_samples, np.float32)
            audio[: pcm.shape[0]] = pcm.astype(np.float32) / 32768.0
            multi_hot = np.zeros(self.n_classes, np.float32)
            multi_hot[labels] = 1.0
            self.stats._ok()
            return audio, multi_hot, clip_id.encode("utf-8"), True
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            if self.strict:
                self._strict_error = DataError(f"corrupt record {clip_id}: {reason}")
                raise
            self.stats._bad(clip_id, reason)
            return (np.zeros(self.clip_samples, np.float32), np.zeros(self.n_classes, np.float32),
                    clip_id.encode("utf-8"), False)

    def epoch_dataset(self, epoch: int, start_offset: int = 0):
        """The ``tf.data.Dataset`` of epoch ``epoch`` from stream offset ``start_offset``: dict batches with an
        extra ``_offset`` (each example's stream offset)."""
        import tensorflow as tf

        shards = self._shards
        order = np.arange(len(shards))
        if self.training:
            order = np.random.default_rng([self.seed, epoch, self.process_index, 0xF11E]).permutation(len(shards))
        paths = [shards[i].path for i in order]
        counts = [shards[i].readable for i in order]
        starts = [int(self._host_starts[i]) for i in order]

        def read_shard(path, n, first):
            ds = tf.data.TFRecordDataset(path)
            if not self.strict:
                # Beyond cut-short files (handled by `n`), a damaged record fails its CRC; TF logs and skips it.
                ds = ds.ignore_errors(log_warning=True)

            def number(i, raw):
                return first + i, raw

            return ds.take(n).enumerate().map(number)

        files = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths), tf.constant(counts, tf.int64), tf.constant(starts, tf.int64))
        )
        cycle = max(1, min(self.cycle_length, len(paths))) if self.training else 1
        if cycle > 1:
            ds = files.interleave(read_shard, cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
                                  deterministic=True)
        else:
            ds = files.interleave(read_shard, cycle_length=1, block_length=1)
        if self.sampling == "balanced":
            reps = tf.constant(self.epoch_counts(epoch))

            def replicate(pos, raw):
                return tf.data.Dataset.from_tensors((pos, raw)).repeat(tf.gather(reps, pos))

            ds = ds.flat_map(replicate)
        if self.training:
            seed = _mix64(self.seed, epoch, self.process_index, 0x5EED) & 0x7FFFFFFF
            ds = ds.shuffle(self.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        ds = ds.enumerate()
        if start_offset:
            ds = ds.skip(start_offset)  # before decoding: skipped records cost reading, not decoding

        def decode(offset, pos_raw):
            _, raw = pos_raw
            audio, labels, clip_id, ok = tf.numpy_function(
                lambda r, o: self._decode(r, epoch, int(o)), [raw, offset],
                [tf.float32, tf.float32, tf.string, tf.bool], stateful=False,
            )
            audio.set_shape([self.clip_samples])
            labels.set_shape([self.n_classes])
            clip_id.set_shape([])
            ok.set_shape([])
            return {"audio": audio, "labels": labels, "id": clip_id, "_offset": offset, "_ok": ok}

        def is_ok(ex):
            return ex["_ok"]

        def drop_flag(ex):
            return {k: v for k, v in ex.items() if k != "_ok"}

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(is_ok).map(drop_flag)
        ds = ds.batch(self.batch_size, drop_remainder=self.training)
        ds = ds.prefetch(self.prefetch)
        opts = tf.data.Options()
        opts.deterministic = True
        return ds.with_options(opts)

    # -- iteration -----------------------------------------------------------------------------------------------

    def __iter__(self) -> "AudioBatchIterator":
        return self

    def _pad_batch(self, b: Optional[dict]) -> dict:
        n = 0 if b is None else len(b["id"])
        out = {
            "audio": np.zeros((self.batch_size, self.clip_samples), np.float32),
            "labels": np.zeros((self.batch_size, self.n_classes), np.float32),
            "id": np.asarray([""] * self.batch_size, dtype=object),
            "mask": np.zeros(self.batch_size, np.float32),
        }
        if b is not None:
            for k in ("audio", "labels", "id"):
                out[k][:n] = b[k]
            out["mask"][:n] = 1.0
        return out

    def __next__(self) -> dict:
        import tensorflow as tf

        while True:
            if self._done:
                if self.pad_to_batches is not None and self._batches < self.pad_to_batches:
                    self._batches += 1
                    return self._pad_batch(None)
                raise StopIteration
            if self._it is None:
                self._it = iter(self.epoch_dataset(self._epoch, self._offset).as_numpy_iterator())
                self._epoch_batches = 0
                self._bad_at_epoch_start = self.stats.bad_records
                self._seen_at_epoch_start = self.stats.bad_records + self.stats.records_ok
                self._epoch_start_offset = self._offset
            try:
                raw = next(self._it)
            except StopIteration:
                self._it = None
                self._end_of_epoch()
                continue
            except tf.errors.OpError as e:
                self._it = None
                if self._strict_error is not None:
                    raise self._strict_error from None
                raise DataError(f"reading split {self.split!r} failed: {e.message}") from e
            ids = np.asarray([x.decode("utf-8") for x in raw["id"]], dtype=object)
            batch = {"audio": raw["audio"], "labels": raw["labels"], "id": ids,
                     "mask": np.ones(len(ids), np.float32)}
            if len(ids) < self.batch_size:  # only in evaluation: the tail of the pass
                batch = self._pad_batch(batch)
            self._offset = int(raw["_offset"][-1]) + 1
            self._batches += 1
            self._epoch_batches += 1
            if self._skip_arithmetic and self.stats.bad_records and not self._warned_skip:
                self._warned_skip = True
                logger.warning(
                    "a record failed to decode after resuming by skip_batches: batch boundaries from here on may "
                    "differ from an uninterrupted run; resume with state=iterator.state() to be exact"
                )
            return batch

    def _end_of_epoch(self) -> None:
        bad = self.stats.bad_records - self._bad_at_epoch_start
        # Every record of the epoch's stream reaches the decoder before the iterator ends, so a shortfall is
        # records TF could not read: a CRC error ends that shard's stream (tf.data cannot resynchronise).
        seen = self.stats.bad_records + self.stats.records_ok - self._seen_at_epoch_start
        expected = int(self.epoch_counts(self._epoch).sum()) - self._epoch_start_offset
        if seen < expected:
            with self.stats._lock:
                self.stats.unreadable_records += expected - seen
            logger.warning(
                "split %r epoch %d: %d record(s) of the stream could not be read (damaged shard data: a record "
                "failed its CRC and the rest of that shard was skipped)", self.split, self._epoch, expected - seen,
            )
        if bad:
            logger.warning(
                "split %r epoch %d: skipped %d corrupt record(s) (distinct so far: %d, first: %s)",
                self.split, self._epoch, bad, len(self.stats.bad_ids), _first(list(self.stats.bad_ids)),
            )
        if self._epoch_batches == 0 and self._offset == 0:
            raise DataError(
                f"split {self.split!r}: an epoch on host {self.process_index} gave no batch ({self.num_examples} "
                f"readable record(s), {self.stats.bad_records} corrupt, batch_size {self.batch_size})"
            )
        if not self.repeat:
            self._done = True
            return
        self._epoch += 1
        self._offset = 0


def _host_weights(data: str, split: str, meta: Optional[dict], shards: Sequence[Shard], host: Sequence[Shard],
                  weights: Optional[np.ndarray], n_classes: int, process_index: int) -> np.ndarray:
    """This host's records' balanced-sampling weights: ``weights`` (over the whole split) or
    :func:`label_balanced_weights` of the split's labels, cut to the host's shards."""
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if any(s.global_base is None for s in shards):
            raise DataError("per-record weights need the split's metadata (record order); use a dataset folder")
    else:
        weights = label_balanced_weights(split_labels(data, split, meta, shards), n_classes)
    host_weights = np.concatenate([weights[s.global_base:s.global_base + s.readable] for s in host]) \
        if host else np.zeros(0)
    if not host_weights.size or host_weights.sum() <= 0:
        raise DataError(f"host {process_index}: all its records have weight 0 (no labels?)")
    return host_weights


def make_dataset(
    data: Union[str, os.PathLike],
    split: str = "train",
    batch_size: int = 32,
    clip_samples: int = 10 * SAMPLE_RATE,
    training: bool = True,
    seed: int = 0,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    repeat: bool = True,
    *,
    sampling: str = "uniform",
    weights: Optional[np.ndarray] = None,
    n_classes: Optional[int] = None,
    encoding: Optional[str] = None,
    sample_rate: int = SAMPLE_RATE,
    skip_batches: int = 0,
    state: Optional[Mapping[str, int]] = None,
    shuffle_buffer: int = 1024,
    cycle_length: int = 8,
    prefetch: int = 2,
    pad_to_batches: Optional[int] = None,
    strict: bool = False,
) -> AudioBatchIterator:
    """Per-host batches of one split of a dataset written by :func:`~whisper_at_jax.data.write_tfrecords`.

    Args:
        data: the dataset folder, or a glob of TFRecord files (then ``encoding`` and ``n_classes`` are needed
            unless the files are a full split of a folder with our metadata).
        split: the split to read, or several joined by ``+`` (e.g. ``"fold1+fold2+fold3+fold4"`` for ESC-50
            cross-validation), read as one.
        batch_size: examples per batch on this host (global batch = ``batch_size * process_count``).
        clip_samples: samples per example: longer clips are cropped (randomly in training, from the start in
            evaluation), shorter ones zero-padded at the end.
        training: shuffle, random crops, drop the last partial batch. ``False``: file order, no shuffle, crop
            from the start, the last partial batch padded (rows with ``mask == 0``).
        seed: the data order and crops are a function of (seed, epoch, host) only.
        process_index, process_count: this host and the host count (default: ``jax.process_index()`` /
            ``jax.process_count()``). Host ``i`` reads shards ``i::process_count``.
        repeat: ``True``: epochs follow each other forever. ``False``: one epoch.
        sampling: "uniform" (every record once per epoch) or "balanced" (whisper-at's label-balanced draw with
            replacement, weights from :func:`label_balanced_weights` unless ``weights`` is given).
        weights: per-record weights over the whole split, in shard order (overrides the balanced default).
        n_classes: class count (default: from the metadata).
        encoding: "flac" | "pcm16" | "auto" (default: from the metadata; "auto" sniffs FLAC's magic bytes).
        sample_rate: the rate records must have (a record at another rate is skipped as corrupt).
        skip_batches: start after this many batches (e.g. the step of a restored checkpoint).
        state: start at a position returned by :meth:`AudioBatchIterator.state` (exact; wins over skip_batches).
        shuffle_buffer: examples in the shuffle buffer (of encoded audio: ~200 KB each for 10-s FLAC).
        cycle_length: shards read concurrently in training.
        prefetch: batches prepared ahead.
        pad_to_batches: evaluation only: after the pass, yield all-padding batches (``mask`` 0) until this many
            batches were yielded, so every host runs the same number of steps.
        strict: raise :class:`DataError` on a corrupt record or cut-short shard instead of skipping it.

    Returns:
        :class:`AudioBatchIterator` yielding dicts ``audio`` [B, clip_samples] f32, ``labels`` [B, C] f32,
        ``id`` [B] str, ``mask`` [B] f32; with ``state()``, ``stats``, ``num_examples``, ``batches_per_epoch``.

    Raises:
        DataError: no such split / files, an empty split, fewer shards than hosts, bad arguments.
    """
    if batch_size < 1 or clip_samples < 1:
        raise DataError(f"batch_size and clip_samples must be positive, got {batch_size}, {clip_samples}")
    if sampling not in ("uniform", "balanced"):
        raise DataError(f"sampling must be 'uniform' or 'balanced', got {sampling!r}")
    if sampling == "balanced" and not training:
        raise DataError("balanced sampling is for training; evaluation reads every record once")
    if pad_to_batches is not None and training:
        raise DataError("pad_to_batches is for evaluation (training=False)")
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} not in [0, {process_count})")

    stats = ReaderStats()
    data = os.fspath(data)
    shards, meta = find_shards(data, split, strict, stats)
    if len(shards) < process_count:
        raise DataError(
            f"split {split!r} has {len(shards)} readable shard(s) for {process_count} hosts: each host needs at "
            f"least one; rewrite it with num_shards a multiple of {process_count}"
        )
    if len(shards) % process_count:
        logger.warning("split %r: %d shards over %d hosts: hosts read unequal amounts", split, len(shards),
                       process_count)
    host = shards[process_index::process_count]

    label_names = meta["label_names"] if meta is not None else None
    if n_classes is None:
        if label_names is None:
            raise DataError(f"{data}: no metadata to take the class count from; pass n_classes=")
        n_classes = len(label_names)
    if encoding is None:
        encoding = meta["encoding"] if meta is not None else "auto"
    if meta is not None and int(meta["sample_rate"]) != sample_rate:
        raise DataError(f"{data} holds {meta['sample_rate']} Hz audio; the reader was asked for {sample_rate} Hz")

    host_weights = _host_weights(data, split, meta, shards, host, weights, n_classes, process_index) \
        if sampling == "balanced" else None

    it = AudioBatchIterator(
        host, meta, data, split, batch_size, clip_samples, training, seed, process_index, process_count, repeat,
        sampling, host_weights, n_classes, label_names, encoding, sample_rate, shuffle_buffer, cycle_length,
        prefetch, strict, pad_to_batches, stats,
    )
    if it.num_examples == 0:
        raise DataError(f"split {split!r}: host {process_index} has no readable record")
    if training and it.num_examples < batch_size:
        raise DataError(
            f"split {split!r}: host {process_index} reads {it.num_examples} record(s), fewer than batch_size "
            f"{batch_size}; training drops partial batches, so no batch could ever be formed"
        )
    if state is not None:
        it._restore(state)
    elif skip_batches:
        it._skip(skip_batches)
    return it
