"""A split's shards on disk: the writer's metadata, shard discovery (a folder, a ``a+b`` split expression or a
glob), how many records of each shard can be read (cut-short shards are scanned once), and the split's labels.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import threading
from typing import Optional, Sequence, Union

import numpy as np

from whisper_at_jax.data.sources import SHOW_FIRST, DataError
from whisper_at_jax.data.tfrecords import METADATA_FORMAT, shard_name

logger = logging.getLogger("whisper_at_jax.data")


@dataclasses.dataclass
class Shard:
    """One TFRecord file of a split."""

    path: str
    readable: int  # complete records we will read
    global_base: Optional[int]  # index of its first record in the split's labels file (None: unknown)


@dataclasses.dataclass
class ReaderStats:
    """Counts of what the reader skipped. ``bad_records`` counts occurrences (a bad record recurs every epoch);
    ``bad_ids`` holds the distinct offenders' ids (or ``shard#record`` when the id is unreadable)."""

    records_ok: int = 0
    bad_records: int = 0
    bad_ids: dict = dataclasses.field(default_factory=dict)  # id -> reason
    truncated_shards: list = dataclasses.field(default_factory=list)
    lost_records: int = 0  # records of cut-short shards that cannot be read
    unreadable_records: int = 0  # stream records lost to damaged shard data (CRC errors), counted per epoch
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def _bad(self, clip_id: str, reason: str) -> None:
        with self._lock:
            self.bad_records += 1
            new = clip_id not in self.bad_ids
            self.bad_ids.setdefault(clip_id, reason)
            shown = len(self.bad_ids)
        if new and shown <= SHOW_FIRST:
            logger.warning("skipping corrupt record %s: %s", clip_id, reason)

    def _ok(self, n: int = 1) -> None:
        with self._lock:
            self.records_ok += n


def gfile():
    import tensorflow as tf

    return tf.io.gfile


def load_meta(data_dir: str) -> Optional[dict]:
    gf = gfile()
    path = os.path.join(data_dir, "metadata.json")
    if not gf.exists(path):
        return None
    try:
        with gf.GFile(path, "r") as f:
            meta = json.loads(f.read())
    except Exception as e:
        raise DataError(f"{path}: unreadable metadata ({e})") from e
    return meta if meta.get("format") == METADATA_FORMAT else None


def scan_records(path: str) -> tuple[int, bool]:
    """Count the complete records of a TFRecord file from its length headers; True if it ends mid-record."""
    gf = gfile()
    size = gf.stat(path).length
    n, pos = 0, 0
    with gf.GFile(path, "rb") as f:
        while pos < size:
            head = f.read(12)  # uint64 length + uint32 masked CRC of the length
            if len(head) < 12:
                return n, True
            length = int.from_bytes(head[:8], "little")
            end = pos + 12 + length + 4
            if end > size:
                return n, True
            f.seek(end)
            pos = end
            n += 1
    return n, False


def split_names(split: str) -> list[str]:
    names = [x.strip() for x in split.split("+")]
    if not all(names) or len(set(names)) != len(names):
        raise DataError(f"bad split expression {split!r}: use names joined by '+', each once (e.g. 'fold1+fold2')")
    return names


def find_shards(data: str, split: str, strict: bool, stats: ReaderStats) -> tuple[list[Shard], Optional[dict]]:
    """All shards of the split (or of ``a+b+...``, concatenated in that order), with how many records of each can
    be read. ``global_base`` indexes the concatenation of the splits' labels files (None without metadata)."""
    gf = gfile()
    data = os.fspath(data)
    meta = None
    entries: list[tuple[str, Optional[int], Optional[int]]] = []  # (path, expected records, expected bytes)
    if gf.isdir(data):
        meta = load_meta(data)
        if meta is not None:
            for sp in split_names(split):
                if sp not in meta["splits"]:
                    raise DataError(f"split {sp!r} not in {data}; it has {sorted(meta['splits'])}")
                info = meta["splits"][sp]
                n = len(info["shard_lengths"])
                entries += [(os.path.join(data, shard_name(meta["name"], sp, i, n)), int(info["shard_lengths"][i]),
                             int(info["shard_bytes"][i])) for i in range(n)]
        else:
            for sp in split_names(split):
                paths = sorted(gf.glob(os.path.join(data, f"*-{sp}.tfrecord*")))
                if not paths:
                    raise DataError(f"no TFRecord shards of split {sp!r} in {data} (expected *-{sp}.tfrecord-*)")
                entries += [(p, None, None) for p in paths]
    else:
        paths = sorted(gf.glob(data))
        if not paths:
            raise DataError(f"no files match {data!r}")
        entries = [(p, None, None) for p in paths]
        folder = os.path.dirname(paths[0])
        cand = load_meta(folder) if all(os.path.dirname(p) == folder for p in paths) else None
        if cand is not None and split in cand["splits"]:
            info = cand["splits"][split]
            n = len(info["shard_lengths"])
            if paths == [os.path.join(folder, shard_name(cand["name"], split, i, n)) for i in range(n)]:
                meta = cand
                entries = [(p, int(info["shard_lengths"][i]), int(info["shard_bytes"][i])) for i, p in enumerate(paths)]
    shards: list[Shard] = []
    base = 0
    for p, expected, expected_bytes in entries:
        if not gf.exists(p):
            msg = f"shard {p} is missing" + (f" ({expected} records lost)" if expected is not None else "")
            if strict:
                raise DataError(msg)
            logger.warning("%s", msg)
            stats.truncated_shards.append(p)
            stats.lost_records += expected or 0
            base += expected or 0
            continue
        if expected is not None and gf.stat(p).length == expected_bytes:
            readable = expected  # the common case: one stat per shard, no scan
        else:
            readable, cut = scan_records(p)
            if expected is not None and readable != expected or cut:
                lost = (expected - readable) if expected is not None else None
                tail = (f" of {expected}; {lost} lost" if expected is not None
                        else "; its partial last record is skipped")
                msg = f"shard {p} is cut short or damaged: {readable} complete record(s) readable{tail}"
                if strict:
                    raise DataError(msg)
                logger.warning("%s", msg)
                stats.truncated_shards.append(p)
                stats.lost_records += max(lost or 1, 0)
                if expected is not None:
                    readable = min(readable, expected)
        shards.append(Shard(p, readable, base if meta is not None else None))
        base += expected if expected is not None else readable
    if sum(s.readable for s in shards) == 0:
        raise DataError(f"split {split!r} of {data} is empty: no readable record in {len(entries)} shard(s)")
    return shards, meta


def load_split_labels(data_dir: str, meta: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of every record's labels, in shard order, from the writer's labels file."""
    gf = gfile()
    path = os.path.join(data_dir, meta["splits"][split]["labels_file"])
    if not gf.exists(path):
        raise DataError(f"{path} is missing; balanced sampling needs each record's labels (rewrite the split)")
    with gf.GFile(path, "rb") as f:
        z = np.load(io.BytesIO(f.read()))
        return z["offsets"], z["values"]


def scan_labels(paths: Sequence[str], counts: Sequence[int]) -> list[list[int]]:
    """Labels of every readable record, read from the shards themselves (for data without our labels file)."""
    import tensorflow as tf

    out = []
    for p, n in zip(paths, counts):
        for raw in tf.data.TFRecordDataset(p).take(n).as_numpy_iterator():
            out.append(list(tf.train.Example.FromString(raw).features.feature["labels"].int64_list.value))
    return out


def split_labels(data: str, split: str, meta: Optional[dict], shards: Sequence[Shard]) -> list:
    """Every record's class indices over the whole split, in shard order (for balanced weights): from the writer's
    labels files, else read from the shards themselves (then each shard's ``global_base`` is set)."""
    if meta is not None:
        folder = data if os.path.isdir(data) else os.path.dirname(data)
        lists = []
        for sp in split_names(split):
            offsets, values = load_split_labels(folder, meta, sp)
            lists += [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        return lists
    logger.info("no labels file: reading the labels of all %d shard(s) for balanced weights", len(shards))
    lists = scan_labels([s.path for s in shards], [s.readable for s in shards])
    base = 0
    for s in shards:
        s.global_base, base = base, base + s.readable
    return lists


def host_example_counts(data: Union[str, os.PathLike], split: str, process_count: int) -> list[int]:
    """Records each host will read (from the metadata, no scan): for sizing evaluation so that every host runs
    ``ceil(max(counts) / batch_size)`` steps (pass it as ``pad_to_batches``)."""
    meta = load_meta(os.fspath(data))
    lengths: list[int] = []
    for sp in split_names(split):
        if meta is None or sp not in meta["splits"]:
            raise DataError(f"no metadata for split {sp!r} in {data}")
        lengths += meta["splits"][sp]["shard_lengths"]
    return [int(sum(lengths[i::process_count])) for i in range(process_count)]
