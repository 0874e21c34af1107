"""Writer: clips -> sharded TFRecords of ``tf.train.Example`` plus TFDS metadata.

Layout of ``out_dir`` after ``write_tfrecords(..., split="train", num_shards=4)``::

    {name}-train.tfrecord-00000-of-00004 ... -00003-of-00004   the shards (TFDS file naming)
    {name}-train.labels.npz        every record's label indices in shard order (for balanced sampling)
    dataset_info.json, features.json, metadata.json, labels.labels.txt   TFDS metadata
    missing.txt                    clips listed in the CSV but not found on disk (one "split<TAB>id<TAB>path" per line)

Each example holds ``audio`` (bytes: a 16-bit FLAC file, or raw little-endian int16 PCM), ``labels`` (int64 list of
class indices), ``id`` (bytes), ``duration`` (float seconds) and ``sample_rate`` (int64). FLAC is the default: about
half the bytes of PCM for the same samples, and decoding 10 s of it costs ~1 ms, far below the encoder's cost.
Samples are quantised once to int16 (``round(x * 32768)``, clipped), so FLAC and PCM shards decode to identical
float arrays (``int16 / 32768``) and a 16-bit source file survives bit-exactly when no resampling is needed.

``tfds.builder_from_directory(out_dir)`` reads the shards back: ``audio`` is the FLAC bytes (TFDS's own FLAC decoding
needs ffmpeg or tensorflow-io, so it is declared as bytes) or, for PCM, the int16 waveform; ``labels`` is a
``Sequence(ClassLabel)`` with the class names. ``metadata.json`` carries what our reader needs (encoding, sample
rate, class names, per-shard record counts and sizes).

Every shard is written under a temporary name and renamed when complete; shards of an earlier write of the same
split that the new one does not replace are removed afterwards, and the metadata is written last.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from typing import Optional, Sequence, Union

import numpy as np

from whisper_at_jax.audio import SAMPLE_RATE
from whisper_at_jax.io_utils import atomic_path, atomic_write_bytes
from whisper_at_jax.data.sources import SHOW_FIRST, ClipRecord, DataError, Source, _first

logger = logging.getLogger("whisper_at_jax.data")

ENCODINGS = ("flac", "pcm16")
METADATA_FORMAT = "whisper_at_jax.audio_clips/1"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclasses.dataclass
class WriteReport:
    """What :func:`write_tfrecords` wrote and skipped."""

    out_dir: str
    split: str
    shard_files: list[str]
    shard_lengths: list[int]
    shard_bytes: list[int]
    failed: list[tuple[str, str]]  # (id, reason): undecodable or empty clips, skipped
    missing: list[str]  # ids listed by the source but absent on disk
    truncated: int  # clips longer than clip_seconds, cut to it

    @property
    def num_examples(self) -> int:
        return int(sum(self.shard_lengths))

    def summary(self) -> str:
        s = f"{self.split}: {self.num_examples} example(s) in {len(self.shard_files)} shard(s) under {self.out_dir}"
        if self.failed:
            s += f"; {len(self.failed)} undecodable clip(s) skipped (first: {_first([i for i, _ in self.failed])})"
        if self.missing:
            s += f"; {len(self.missing)} clip(s) missing on disk (listed in missing.txt; first: {_first(self.missing)})"
        if self.truncated:
            s += f"; {self.truncated} clip(s) longer than the clip length were cut to it"
        return s


# ---------------------------------------------------------------------------------------------------------------
# Per-clip work


def _read_clip(path: str, sr: int, start: Optional[float], end: Optional[float]) -> np.ndarray:
    """Float32 mono at ``sr`` for ``path`` cut to ``[start, end]`` seconds (None = file start / end)."""
    if start is None and end is None:
        try:
            from whisper_at_jax.audio import load_audio  # the package's decoder, when present
        except ImportError:
            load_audio = None
        if load_audio is not None:
            return load_audio(path, sr=sr)
    import soundfile as sf

    # Read only the frames wanted: AudioSet "full video" files are minutes long and we want 10 s of them.
    info = sf.info(path)
    first = int(round((start or 0.0) * info.samplerate))
    last = info.frames if end is None else min(info.frames, int(round(end * info.samplerate)))
    if first >= info.frames:
        raise DataError(f"start {start} s is past the end of the file ({info.frames / info.samplerate:.3f} s)")
    audio, file_sr = sf.read(path, start=first, stop=last, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if not np.isfinite(audio).all():
        raise DataError("NaN or infinite samples")
    if file_sr != sr:
        import soxr

        audio = soxr.resample(audio, file_sr, sr, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32)


def quantize_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples -> int16 the way the reader inverts it (``int16 / 32768``): round half to even, clip."""
    return np.clip(np.rint(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode_audio(pcm: np.ndarray, sample_rate: int, encoding: str) -> bytes:
    """int16 samples -> the stored bytes: a 16-bit FLAC file, or raw little-endian PCM."""
    if encoding == "pcm16":
        return pcm.astype("<i2").tobytes()
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio_bytes(data: bytes, encoding: str) -> tuple[np.ndarray, Optional[int]]:
    """Stored bytes -> (int16 samples, sample rate found in the bytes or None for raw PCM).

    ``encoding`` "auto" takes bytes starting with the FLAC magic ``fLaC`` as FLAC and anything else as PCM."""
    if encoding == "auto":
        encoding = "flac" if data[:4] == b"fLaC" else "pcm16"
    if encoding == "pcm16":
        if len(data) % 2:
            raise DataError(f"raw PCM16 audio has an odd byte count ({len(data)})")
        return np.frombuffer(data, dtype="<i2").astype(np.int16), None
    if encoding != "flac":
        raise DataError(f"unknown audio encoding {encoding!r}; expected one of {ENCODINGS}")
    import soundfile as sf

    pcm, sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    if pcm.shape[1] != 1:
        raise DataError(f"stored FLAC has {pcm.shape[1]} channels; expected mono")
    return pcm[:, 0], int(sr)


def _example(clip_id: str, pcm: np.ndarray, labels: Sequence[int], sample_rate: int, encoding: str) -> bytes:
    import tensorflow as tf

    feat = tf.train.Feature
    feature = {
        "audio": feat(bytes_list=tf.train.BytesList(value=[encode_audio(pcm, sample_rate, encoding)])),
        "labels": feat(int64_list=tf.train.Int64List(value=[int(x) for x in labels])),
        "id": feat(bytes_list=tf.train.BytesList(value=[clip_id.encode("utf-8")])),
        "duration": feat(float_list=tf.train.FloatList(value=[len(pcm) / sample_rate])),
        "sample_rate": feat(int64_list=tf.train.Int64List(value=[sample_rate])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@dataclasses.dataclass
class _ShardResult:
    path: str
    length: int
    num_bytes: int
    labels: list[tuple[int, ...]]
    failed: list[tuple[str, str]]
    missing: list[str]
    truncated: int


def _write_shard(
    path: str, records: Sequence[ClipRecord], sample_rate: int, encoding: str, max_samples: Optional[int],
    strict: bool,
) -> _ShardResult:
    """Write one shard under a temporary name in its folder, then rename it: a crash leaves no partial shard."""
    import tensorflow as tf

    res = _ShardResult(path, 0, 0, [], [], [], 0)
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for rec in records:
            if not os.path.isfile(rec.path):
                if strict:
                    raise DataError(f"clip {rec.id!r}: audio file not found: {rec.path}")
                res.missing.append(rec.id)
                continue
            try:
                audio = _read_clip(rec.path, sample_rate, rec.start, rec.end)
                if audio.size == 0:
                    raise DataError("no samples")
            except Exception as e:  # any decoder failure: libsndfile, soxr, our own checks
                reason = f"{type(e).__name__}: {e}"
                if strict:
                    raise DataError(f"clip {rec.id!r} ({rec.path}) cannot be decoded: {reason}") from e
                res.failed.append((rec.id, reason))
                continue
            if max_samples is not None and audio.size > max_samples:
                audio = audio[:max_samples]
                res.truncated += 1
            writer.write(_example(rec.id, quantize_int16(audio), rec.labels, sample_rate, encoding))
            res.labels.append(tuple(rec.labels))
            res.length += 1
    res.num_bytes = os.path.getsize(path)
    return res


def _write_shard_star(args) -> _ShardResult:
    return _write_shard(*args)


# ---------------------------------------------------------------------------------------------------------------
# Metadata


def shard_name(name: str, split: str, index: int, count: int) -> str:
    """TFDS's file name for shard ``index`` of ``count``: ``{name}-{split}.tfrecord-00000-of-00004``."""
    return f"{name}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def read_metadata(data_dir: str) -> Optional[dict]:
    """Our part of the TFDS ``metadata.json`` in ``data_dir`` (None when absent or not written by us)."""
    path = os.path.join(data_dir, "metadata.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable metadata ({e})") from e
    if meta.get("format") != METADATA_FORMAT:
        return None
    return meta


def _tfds_features(encoding: str, sample_rate: int, label_names: Sequence[str]):
    import tensorflow_datasets as tfds

    if encoding == "pcm16":
        audio = tfds.features.Audio(
            shape=(None,), dtype=np.int16, sample_rate=sample_rate, encoding=tfds.features.Encoding.BYTES,
            doc="16-bit PCM samples (divide by 32768 for [-1, 1) floats)",
        )
    else:
        audio = tfds.features.Tensor(
            shape=(), dtype=np.object_, doc="a 16-bit mono FLAC file (decode with soundfile: sf.read(BytesIO(b)))"
        )
    if len(set(label_names)) == len(label_names):
        label = tfds.features.ClassLabel(names=list(label_names))
    else:  # ClassLabel refuses duplicate names; the names stay in metadata.json
        label = tfds.features.ClassLabel(num_classes=len(label_names))
    return tfds.features.FeaturesDict(
        {
            "audio": audio,
            "labels": tfds.features.Sequence(label),
            "id": tfds.features.Text(),
            "duration": tfds.features.Scalar(np.float32, doc="seconds"),
            "sample_rate": tfds.features.Scalar(np.int64),
        }
    )


def _write_tfds_metadata(out_dir: str, name: str, meta: dict) -> None:
    import tensorflow_datasets as tfds

    split_infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[int(x) for x in info["shard_lengths"]],
            num_bytes=int(sum(info["shard_bytes"])),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=tfds.core.Path(out_dir), template=FILENAME_TEMPLATE, dataset_name=name, split=split,
                filetype_suffix="tfrecord",
            ),
        )
        for split, info in sorted(meta["splits"].items())
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=out_dir,
        features=_tfds_features(meta["encoding"], meta["sample_rate"], meta["label_names"]),
        split_infos=split_infos,
        filename_template=FILENAME_TEMPLATE,
        check_data=False,  # the caller's tests read it back; checking here would decode a shard per call
        description="Audio clips with multi-label class indices, written by whisper_at_jax.data.write_tfrecords.",
        metadata=tfds.core.MetadataDict(meta),
    )


def _update_missing_file(out_dir: str, split: str, missing: Sequence[tuple[str, str]]) -> None:
    path = os.path.join(out_dir, "missing.txt")
    keep = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            keep = [ln for ln in f.read().splitlines() if ln and ln.split("\t", 1)[0] != split]
    lines = keep + [f"{split}\t{i}\t{p}" for i, p in missing]
    if lines:
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    elif os.path.exists(path):
        os.remove(path)


# ---------------------------------------------------------------------------------------------------------------
# Public entry point


def _check_write_args(records: Sequence[ClipRecord], split: str, num_shards: int, clip_seconds: Optional[float],
                      sample_rate: int, encoding: str, label_names: Optional[Sequence[str]], strict: bool, name: str,
                      missing_pairs: Sequence[tuple[str, str]]) -> list[str]:
    """:func:`write_tfrecords`' argument checks (a :class:`DataError` naming the argument); the class names."""
    if encoding not in ENCODINGS:
        raise DataError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if not _NAME_RE.match(name):
        raise DataError(f"dataset name must be lower-case letters, digits and underscores, got {name!r}")
    if not _SPLIT_RE.match(split):
        raise DataError(f"split name must be letters, digits and underscores, got {split!r}")
    if int(num_shards) < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    if sample_rate <= 0:
        raise DataError(f"sample_rate must be positive, got {sample_rate}")
    if clip_seconds is not None and clip_seconds <= 0:
        raise DataError(f"clip_seconds must be positive or None, got {clip_seconds}")
    if label_names is None:
        raise DataError("label_names is required (the class list the label indices refer to)")
    label_names = [str(x) for x in label_names]
    if not records:
        raise DataError(f"no clips to write for split {split!r}" + (
            f" ({len(missing_pairs)} listed clip(s) missing on disk, first: {_first([m for m, _ in missing_pairs])})"
            if missing_pairs else ""))
    if strict and missing_pairs:
        shown = _first([m for m, _ in missing_pairs])
        raise DataError(f"{len(missing_pairs)} clip(s) missing on disk (first: {shown})")
    for rec in records:
        bad = [x for x in rec.labels if not 0 <= int(x) < len(label_names)]
        if bad:
            raise DataError(f"clip {rec.id!r}: label index {bad[0]} outside the {len(label_names)} classes")
    return label_names


def _dataset_metadata(out_dir: str, name: str, encoding: str, sample_rate: int, label_names: list[str]) -> dict:
    """The folder's metadata (fresh for a new folder); a folder written with another name, encoding, rate or class
    list is a :class:`DataError` (one dataset = one of each)."""
    meta = read_metadata(out_dir) or {
        "format": METADATA_FORMAT, "name": name, "encoding": encoding, "sample_rate": int(sample_rate),
        "label_names": label_names, "splits": {},
    }
    for key, want in (("name", name), ("encoding", encoding), ("sample_rate", int(sample_rate)),
                      ("label_names", label_names)):
        if meta.get(key) != want:
            shown = want if key != "label_names" else f"{len(want)} classes"
            had = meta.get(key) if key != "label_names" else f"{len(meta.get(key) or [])} classes"
            raise DataError(
                f"{out_dir} already holds splits {sorted(meta['splits'])} written with {key}={had}; "
                f"this write asks for {shown}. Use another folder (one dataset = one encoding, rate, class list)."
            )
    return meta


def _write_shards(jobs: list[tuple], num_workers: int, progress: bool) -> list:
    """Each job's shard written, in ``num_workers`` processes (1: in this one)."""
    if num_workers > 1 and len(jobs) > 1:
        import concurrent.futures
        import multiprocessing

        # spawn, not fork: the parent may already hold TensorFlow's threads, which do not survive a fork.
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            it = ex.map(_write_shard_star, jobs)
            return list(_progress(it, len(jobs), progress))
    return [_write_shard(*job) for job in _progress(jobs, len(jobs), progress)]


def _write_labels_file(out_dir: str, name: str, split: str, results: Sequence) -> str:
    """Every written record's labels (offsets + values, in shard order) beside the shards; returns its name."""
    labels = [lab for r in results for lab in r.labels]
    offsets = np.zeros(len(labels) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x) for x in labels])
    values = np.asarray([v for lab in labels for v in lab], np.int32)
    buf = io.BytesIO()
    np.savez(buf, offsets=offsets, values=values, shard_lengths=np.asarray([r.length for r in results], np.int64))
    labels_file = f"{name}-{split}.labels.npz"
    atomic_write_bytes(os.path.join(out_dir, labels_file), buf.getvalue())
    return labels_file


def write_tfrecords(
    records: Union[Source, Sequence[ClipRecord]],
    out_dir: Union[str, os.PathLike],
    split: str = "train",
    num_shards: int = 1,
    *,
    clip_seconds: Optional[float] = 10.0,
    sample_rate: int = SAMPLE_RATE,
    encoding: str = "flac",
    label_names: Optional[Sequence[str]] = None,
    strict: bool = False,
    name: str = "audio_clips",
    missing: Optional[Sequence[str]] = None,
    shuffle_seed: Optional[int] = 0,
    num_workers: int = 1,
    progress: bool = False,
) -> WriteReport:
    """Decode clips and write them as ``num_shards`` TFRecord shards of split ``split`` with TFDS metadata.

    Args:
        records: a :class:`~whisper_at_jax.data.sources.Source` (its class names and missing-clip list are used)
            or a sequence of :class:`~whisper_at_jax.data.sources.ClipRecord`.
        out_dir: the dataset folder (created). Other splits already in it are kept and stay described.
        split: split name (letters, digits, underscore), e.g. "train", "eval", "fold1".
        num_shards: shard count; make it a multiple of the number of hosts that will read the split.
        clip_seconds: longest clip stored; longer clips (after the ``[start, end]`` crop) keep their first
            ``clip_seconds`` and are counted in the report. ``None`` keeps everything. Clips are not padded:
            the reader pads or crops to its own clip length.
        sample_rate: rate the audio is resampled to (default Whisper's, ``audio.SAMPLE_RATE``).
        encoding: "flac" (16-bit FLAC bytes, default) or "pcm16" (raw little-endian int16).
        label_names: class names (index = position); taken from the Source when one is given.
        strict: raise :class:`DataError` on a missing or undecodable clip instead of skipping and reporting it.
        name: dataset name used in shard names (lower-case letters, digits, underscores).
        missing: ids the source could not find (default: the Source's report), written to ``missing.txt``.
        shuffle_seed: records are shuffled with this seed before being cut into contiguous shards, so that each
            shard (and each host reading a subset of shards) sees a mix of the input order (CSV files are often
            sorted by class or fold). ``None`` keeps the input order.
        num_workers: processes decoding and writing shards in parallel (1 = in this process).
        progress: show a progress bar over shards.

    Returns:
        :class:`WriteReport` (also logged).

    Raises:
        DataError: bad arguments, an empty record list, labels outside the class list, a split already written
            with a different encoding / rate / class list, or (``strict``) a missing or undecodable clip.
    """
    missing_pairs: list[tuple[str, str]] = []
    if isinstance(records, Source):
        if label_names is None:
            label_names = records.label_names
        if missing is None:
            missing_pairs = list(zip(records.report.missing, records.report.missing_paths))
        records = records.records
    if missing is not None:
        missing_pairs = [(m, "") for m in missing]
    records = list(records)
    label_names = _check_write_args(records, split, num_shards, clip_seconds, sample_rate, encoding, label_names,
                                    strict, name, missing_pairs)

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    meta = _dataset_metadata(out_dir, name, encoding, sample_rate, label_names)

    order = np.arange(len(records))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(records))
    chunks = np.array_split(order, int(num_shards))
    max_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
    paths = [os.path.join(out_dir, shard_name(name, split, i, int(num_shards))) for i in range(int(num_shards))]
    jobs = [(p, [records[j] for j in c], int(sample_rate), encoding, max_samples, strict)
            for p, c in zip(paths, chunks)]

    results = _write_shards(jobs, num_workers, progress)

    # Older shards of this split with another shard count would be read as part of it: remove them.
    keep = {os.path.basename(p) for p in paths}
    stale = re.compile(rf"^{re.escape(name)}-{re.escape(split)}\.tfrecord-\d{{5}}-of-\d{{5}}$")
    for fname in os.listdir(out_dir):
        if stale.match(fname) and fname not in keep:
            os.remove(os.path.join(out_dir, fname))

    labels_file = _write_labels_file(out_dir, name, split, results)

    report = WriteReport(
        out_dir=out_dir, split=split, shard_files=paths, shard_lengths=[r.length for r in results],
        shard_bytes=[r.num_bytes for r in results], failed=[f for r in results for f in r.failed],
        missing=[m for m, _ in missing_pairs] + [m for r in results for m in r.missing],
        truncated=sum(r.truncated for r in results),
    )
    late_missing = [(m, "") for r in results for m in r.missing]
    _update_missing_file(out_dir, split, missing_pairs + late_missing)
    for clip_id, reason in report.failed[:SHOW_FIRST]:
        logger.warning("skipped undecodable clip %r: %s", clip_id, reason)
    if report.num_examples == 0:
        # Nothing usable: leave no empty split behind that a reader would take for data.
        for p in paths + [os.path.join(out_dir, labels_file)]:
            if os.path.exists(p):
                os.remove(p)
        if meta["splits"].pop(split, None) is not None and meta["splits"]:
            _write_tfds_metadata(out_dir, name, meta)
        raise DataError(f"split {split!r}: none of the {len(records)} clip(s) could be used; {report.summary()}")

    meta["splits"][split] = {
        "shard_lengths": report.shard_lengths, "shard_bytes": report.shard_bytes,
        "num_examples": report.num_examples, "labels_file": labels_file,
        "clip_seconds": clip_seconds, "skipped_undecodable": len(report.failed), "missing": len(report.missing),
    }
    _write_tfds_metadata(out_dir, name, meta)
    (logger.warning if (report.failed or report.missing) else logger.info)("%s", report.summary())
    return report


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, unit="shard")
