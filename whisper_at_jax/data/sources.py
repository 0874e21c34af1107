"""Readers for the label files people train with: AudioSet segment CSVs, ESC-50 metadata, a generic path/labels CSV.

Each reader turns a CSV plus an audio folder into a :class:`Source`: a list of :class:`ClipRecord` (id, audio path,
label indices, optional crop), the class names, and a :class:`SourceReport` that counts what could not be used.
Nothing is dropped silently: clips whose audio file is missing and labels nobody can map are counted, the first few
named, and (with ``strict=True``) turned into a :class:`DataError`.

How audio files are found (documented here because every AudioSet download tool names files differently):

* AudioSet (:func:`read_audioset_csv`): the audio folder is searched recursively once; a row
  ``YTID, start, end, labels`` matches the first file (any of :data:`AUDIO_EXTENSIONS`) whose name without the
  extension is, in this order: ``{YTID}_{start}_{end}`` or ``{YTID}_{start}`` with the seconds written as in the
  CSV (``30.000``) or as whole seconds (``30``); then ``{YTID}``; then ``Y{YTID}`` (the PANNs download scripts).
  By default (``audio_is_segment=True``) a file is taken to hold only the 10-s segment, which is what every
  downloader writes; pass ``audio_is_segment=False`` when the files hold whole videos' audio and the records should
  be cut to ``[start, end]``.
* ESC-50 (:func:`read_esc50_csv`): ``{audio_dir}/{filename}``; if absent, a file with the same stem and another
  audio extension (re-encoded copies, e.g. ``1-100032-A-0.flac`` for ``1-100032-A-0.wav``).
* Generic (:func:`read_label_csv`): the ``path`` column, relative paths resolved against ``audio_dir`` (default:
  the CSV's folder).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import os
from typing import Iterable, Mapping, Optional, Sequence, Union

logger = logging.getLogger("whisper_at_jax.data")

PathLike = Union[str, os.PathLike]

#: File extensions taken as audio when searching a folder (what libsndfile decodes).
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif")

#: How many offending names a report or error message lists before "...".
SHOW_FIRST = 5


class DataError(ValueError):
    """Bad training data or bad input to the data tools: the message names the file, row or record."""


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One clip to write: ``id`` (unique within a split), ``path`` of its audio file, ``labels`` (class indices),
    and an optional crop ``[start, end]`` in seconds within the file (``None``: from the start / to the end)."""

    id: str
    path: str
    labels: tuple[int, ...]
    start: Optional[float] = None
    end: Optional[float] = None


@dataclasses.dataclass
class SourceReport:
    """What a source reader could not use. ``missing``: ids of clips whose audio file was not found (with the
    paths tried in ``missing_paths``); ``unknown_labels``: label strings with no class index and how often they
    appeared; ``dropped_no_labels``: ids of rows left with no label at all once unknown labels were removed
    (dropped, since writing them would make them negatives of every class)."""

    rows: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)
    missing_paths: list[str] = dataclasses.field(default_factory=list)
    unknown_labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    dropped_no_labels: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unknown_labels or self.dropped_no_labels)

    def summary(self) -> str:
        """One human-readable paragraph: counts and the first few names of each problem."""
        parts = [f"{self.rows} row(s) read"]
        if self.missing:
            parts.append(f"{len(self.missing)} clip(s) missing on disk (first: {_first(self.missing)})")
        if self.unknown_labels:
            n = sum(self.unknown_labels.values())
            parts.append(
                f"{n} unknown label occurrence(s) of {len(self.unknown_labels)} distinct label(s) "
                f"(first: {_first(list(self.unknown_labels))})"
            )
        if self.dropped_no_labels:
            parts.append(
                f"{len(self.dropped_no_labels)} clip(s) dropped with no known label left "
                f"(first: {_first(self.dropped_no_labels)})"
            )
        return "; ".join(parts)


@dataclasses.dataclass
class Source:
    """Records ready for :func:`whisper_at_jax.data.write_tfrecords`, their class names, and the report."""

    records: list[ClipRecord]
    label_names: list[str]
    report: SourceReport


def _first(names: Sequence[str], n: int = SHOW_FIRST) -> str:
    shown = ", ".join(str(x) for x in list(names)[:n])
    return shown + (", ..." if len(names) > n else "")


def _check_file(path: PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    return path


def _check_dir(path: PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DataError(f"{what} is not a directory: {path}")
    return path


def _audio_index(audio_dir: str) -> dict[str, str]:
    """stem -> path of every audio file under ``audio_dir`` (recursive), the first in sorted walk order winning:
    one directory listing instead of a stat per candidate name per row (AudioSet has 2M rows)."""
    index: dict[str, str] = {}
    for root, dirs, files in os.walk(audio_dir):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in AUDIO_EXTENSIONS and stem not in index:
                index[stem] = os.path.join(root, name)
    return index


def _finish(report: SourceReport, strict: bool, what: str) -> None:
    if report.ok:
        return
    if strict:
        raise DataError(f"{what}: {report.summary()} (strict mode)")
    logger.warning("%s: %s", what, report.summary())


def _resolve_mid_map(mid_to_index: Optional[Mapping[str, int]]) -> tuple[Mapping[str, int], Optional[list[str]]]:
    """The caller's MID map, or the package's AudioSet label list (``whisper_at_jax.labels``) when it exists."""
    if mid_to_index is not None:
        return mid_to_index, None
    try:
        from whisper_at_jax import labels as _labels  # written by a teammate; optional here
    except ImportError as e:
        raise DataError(
            "no MID -> index map given and whisper_at_jax.labels is not available; pass mid_to_index= "
            "(e.g. read from AudioSet's class_labels_indices.csv)"
        ) from e
    mapping = dict(_labels.mid_to_index())
    names = None
    try:
        rows = _labels.audioset_labels()
        names = [_display_name(r) for r in rows]
    except Exception:  # the names are a nicety; the map is what matters
        names = None
    return mapping, names


def _display_name(row) -> str:
    for attr in ("display_name", "name"):
        if hasattr(row, attr):
            return str(getattr(row, attr))
    if isinstance(row, Mapping):
        return str(row.get("display_name", row.get("name")))
    if isinstance(row, (tuple, list)):
        return str(row[-1])
    return str(row)


def _names_from_mid_map(mapping: Mapping[str, int]) -> list[str]:
    n = max(mapping.values()) + 1 if mapping else 0
    names = [str(i) for i in range(n)]
    for mid, i in mapping.items():
        names[i] = mid
    return names


# ---------------------------------------------------------------------------------------------------------------
# AudioSet


def _audioset_row(csv_path: str, lineno: int, row: Sequence[str]) -> tuple[str, str, str, str, float, float]:
    """One AudioSet CSV row -> (YTID, start and end as written, the MIDs cell, start and end seconds); a malformed
    row is a :class:`DataError` naming the file and line."""
    if len(row) != 4:
        raise DataError(
            f"{csv_path}:{lineno}: expected 4 fields (YTID, start_seconds, end_seconds, positive_labels), "
            f"got {len(row)}: {row!r}"
        )
    ytid, start_s, end_s, mids = (x.strip() for x in row)
    try:
        start, end = float(start_s), float(end_s)
    except ValueError:
        raise DataError(
            f"{csv_path}:{lineno}: start/end seconds are not numbers: {start_s!r}, {end_s!r}"
        ) from None
    if not end > start >= 0:
        raise DataError(f"{csv_path}:{lineno}: need 0 <= start < end, got {start_s}, {end_s}")
    return ytid, start_s, end_s, mids, start, end


def read_audioset_csv(
    csv_path: PathLike,
    audio_dir: PathLike,
    mid_to_index: Optional[Mapping[str, int]] = None,
    label_names: Optional[Sequence[str]] = None,
    *,
    audio_is_segment: bool = True,
    strict: bool = False,
) -> Source:
    """Read an AudioSet segment CSV (``balanced_train_segments.csv`` etc.) against a folder of downloaded audio.

    Args:
        csv_path: the CSV: ``YTID, start_seconds, end_seconds, "mid1,mid2,..."``; lines starting with ``#`` (the
            three header lines of the official files) are skipped.
        audio_dir: where the audio files are (searched recursively; naming conventions in the module docstring).
        mid_to_index: MID -> class index. Default: AudioSet's 527 classes from ``whisper_at_jax.labels``.
        label_names: class names (default: the display names of ``whisper_at_jax.labels``, or the MIDs).
        audio_is_segment: files hold just the segment (default); ``False``: crop each to ``[start, end]``.
        strict: raise :class:`DataError` on any missing clip or unknown MID instead of reporting it.

    Returns:
        :class:`Source`. Unknown MIDs are removed from a clip's labels (and counted); a clip left with no known
        label is dropped (and listed), since it would otherwise be a negative for every class.

    Raises:
        DataError: the CSV or folder does not exist, a row is malformed (file and line named), or ``strict`` and
            something was missing or unknown.
    """
    csv_path = _check_file(csv_path, "AudioSet CSV")
    audio_dir = _check_dir(audio_dir, "audio folder")
    mapping, default_names = _resolve_mid_map(mid_to_index)
    if label_names is None:
        label_names = default_names if default_names is not None else _names_from_mid_map(mapping)
    index = _audio_index(audio_dir)
    report = SourceReport()
    records: list[ClipRecord] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=True)
        for lineno, row in enumerate(reader, start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if row[0].strip() == "YTID":  # an uncommented header line
                continue
            ytid, start_s, end_s, mids, start, end = _audioset_row(csv_path, lineno, row)
            report.rows += 1
            labels = []
            for mid in (m.strip() for m in mids.split(",")):
                if not mid:
                    continue
                if mid in mapping:
                    labels.append(int(mapping[mid]))
                else:
                    report.unknown_labels[mid] += 1
            cands = [
                f"{ytid}_{start_s}_{end_s}",
                f"{ytid}_{int(start)}_{int(end)}",
                f"{ytid}_{start_s}",
                f"{ytid}_{int(start)}",
                ytid,
                f"Y{ytid}",
            ]
            path = next((index[c] for c in cands if c in index), None)
            if path is None:
                report.missing.append(ytid)
                report.missing_paths.append(os.path.join(audio_dir, f"{ytid}.*"))
                continue
            if not labels:
                report.dropped_no_labels.append(ytid)
                continue
            crop = (None, None) if audio_is_segment else (start, end)
            records.append(ClipRecord(ytid, path, tuple(sorted(set(labels))), *crop))
    _finish(report, strict, csv_path)
    return Source(records, list(label_names), report)


# ---------------------------------------------------------------------------------------------------------------
# ESC-50


def read_esc50_csv(
    csv_path: PathLike,
    audio_dir: PathLike,
    folds: Optional[Iterable[int]] = None,
    *,
    strict: bool = False,
) -> Source:
    """Read ESC-50's ``meta/esc50.csv`` (``filename, fold, target, category, ...``) against its audio folder.

    Args:
        csv_path: the metadata CSV (header row required; extra columns ignored).
        audio_dir: the ``audio/`` folder (file lookup in the module docstring).
        folds: keep only these folds (e.g. ``[1, 2, 3, 4]`` to train with fold 5 held out); default all.
        strict: raise on a missing clip instead of reporting it.

    Returns:
        :class:`Source` with one label (``target``) per clip and the class names taken from ``category``
        (indexed by ``target``, from all rows, so every fold selection gets the same class list).
    """
    csv_path = _check_file(csv_path, "ESC-50 CSV")
    audio_dir = _check_dir(audio_dir, "audio folder")
    keep = None if folds is None else {int(x) for x in folds}
    index = _audio_index(audio_dir)
    report = SourceReport()
    names: dict[int, str] = {}
    records: list[ClipRecord] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"filename", "fold", "target", "category"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: ESC-50 CSV needs columns {sorted(need)}, got {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            try:
                fold, target = int(row["fold"]), int(row["target"])
            except (TypeError, ValueError):
                raise DataError(
                    f"{csv_path}:{lineno}: fold/target are not integers: {row['fold']!r}, {row['target']!r}"
                ) from None
            if target < 0:
                raise DataError(f"{csv_path}:{lineno}: negative target {target}")
            category = row["category"]
            if names.setdefault(target, category) != category:
                raise DataError(
                    f"{csv_path}:{lineno}: target {target} is {category!r} here but {names[target]!r} earlier"
                )
            if keep is not None and fold not in keep:
                continue
            report.rows += 1
            filename = row["filename"]
            path = os.path.join(audio_dir, filename)
            if not os.path.isfile(path):
                path = index.get(os.path.splitext(os.path.basename(filename))[0])
            if path is None:
                report.missing.append(filename)
                report.missing_paths.append(os.path.join(audio_dir, filename))
                continue
            records.append(ClipRecord(os.path.splitext(filename)[0], path, (target,)))
    if not names:
        raise DataError(f"{csv_path}: no rows")
    label_names = [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
    _finish(report, strict, csv_path)
    return Source(records, label_names, report)


# ---------------------------------------------------------------------------------------------------------------
# Generic path,labels CSV


def _label_csv_classes(labels: Union[None, Sequence[str], Mapping[str, int]], cells: Sequence[Sequence[str]]
                       ) -> tuple[list[str], Mapping[str, int]]:
    """:func:`read_label_csv`'s class names and token -> index mapping, from ``labels`` or the cells' tokens."""
    if labels is None:
        all_tokens = sorted({t for cell in cells for t in cell})
        if all(t.lstrip("-").isdigit() for t in all_tokens):
            n = max((int(t) for t in all_tokens), default=-1) + 1
            label_names = [str(i) for i in range(n)]
            mapping: Mapping[str, int] = {}
        else:
            label_names = all_tokens
            mapping = {t: i for i, t in enumerate(all_tokens)}
    elif isinstance(labels, Mapping):
        mapping = {str(k): int(v) for k, v in labels.items()}
        label_names = _names_from_mid_map(mapping)
    else:
        label_names = [str(x) for x in labels]
        mapping = {name: i for i, name in enumerate(label_names)}
    return label_names, mapping


def read_label_csv(
    csv_path: PathLike,
    audio_dir: Optional[PathLike] = None,
    labels: Union[None, Sequence[str], Mapping[str, int]] = None,
    *,
    sep: str = ";",
    strict: bool = False,
) -> Source:
    """Read a generic CSV with columns ``path,labels`` (and optionally ``start,end`` in seconds, and ``id``).

    ``labels`` cells hold labels separated by ``sep`` (default ``;``); each is a class name, a key of the
    ``labels`` mapping (e.g. an AudioSet MID), or an integer class index. An empty cell is a clip with no label
    (a negative for every class: allowed here, since a generic set may mean it).

    Args:
        csv_path: the CSV; a header row is required (``path`` and ``labels`` columns).
        audio_dir: base for relative paths (default: the CSV's folder).
        labels: the class list (names, index = position) or a token -> index mapping. Default: integer tokens are
            indices (class count = largest + 1, names "0".."n-1"); otherwise the sorted distinct tokens become
            the classes.
        sep: the separator inside a labels cell.
        strict: raise on a missing clip or an unknown label instead of reporting it.
    """
    csv_path = _check_file(csv_path, "label CSV")
    if audio_dir is not None:
        base = _check_dir(audio_dir, "audio folder")
    else:
        base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "labels"} <= {c.strip() for c in reader.fieldnames}:
            raise DataError(f"{csv_path}: needs a header with columns 'path' and 'labels', got {reader.fieldnames}")
        rows = [(lineno, {k.strip(): (v or "").strip() for k, v in r.items() if k is not None})
                for lineno, r in enumerate(reader, start=2)]

    def tokens(cell: str) -> list[str]:
        return [t.strip() for t in cell.split(sep) if t.strip()]

    label_names, mapping = _label_csv_classes(labels, [tokens(r["labels"]) for _, r in rows])
    n_classes = len(label_names)

    report = SourceReport()
    records: list[ClipRecord] = []
    for lineno, r in rows:
        report.rows += 1
        rel = r["path"]
        if not rel:
            raise DataError(f"{csv_path}:{lineno}: empty path")
        idx = []
        for t in tokens(r["labels"]):
            if t in mapping:
                idx.append(mapping[t])
            elif t.lstrip("-").isdigit() and 0 <= int(t) < n_classes:
                idx.append(int(t))
            else:
                report.unknown_labels[t] += 1
        start = end = None
        try:
            if r.get("start"):
                start = float(r["start"])
            if r.get("end"):
                end = float(r["end"])
        except ValueError:
            raise DataError(
                f"{csv_path}:{lineno}: start/end are not numbers: {r.get('start')!r}, {r.get('end')!r}"
            ) from None
        if start is not None and end is not None and not end > start:
            raise DataError(f"{csv_path}:{lineno}: end {end} is not after start {start}")
        clip_id = r.get("id") or rel
        path = rel if os.path.isabs(rel) else os.path.join(base, rel)
        if not os.path.isfile(path):
            report.missing.append(clip_id)
            report.missing_paths.append(path)
            continue
        if tokens(r["labels"]) and not idx:
            report.dropped_no_labels.append(clip_id)
            continue
        records.append(ClipRecord(clip_id, path, tuple(sorted(set(idx))), start, end))
    _finish(report, strict, csv_path)
    return Source(records, label_names, report)
