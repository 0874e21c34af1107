"""Class label lists: AudioSet's 527 classes (shipped) and a head's own label list.

``assets/audioset_labels.csv`` holds AudioSet's (index, mid, display_name) rows in the format of whisper-at's
``class_labels_indices.csv`` (header ``index,mid,display_name``; display names always double-quoted). It was
written from whisper-at 0.5's installed copy by ``python -m whisper_at_jax.labels``; the tests check it against
that file byte for byte.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import NamedTuple

from .io_utils import atomic_write_bytes

AUDIOSET_CSV = "audioset_labels.csv"


class Label(NamedTuple):
    """One output class of a head. ``mid`` is the ontology id (AudioSet ``/m/...``) or "" when there is none."""

    index: int
    mid: str
    display_name: str


class LabelListError(ValueError):
    """A label list that cannot be used: names the file/row and the problem."""


def _asset_path() -> str:
    return str(resources.files("whisper_at_jax") / "assets" / AUDIOSET_CSV)


@functools.lru_cache(maxsize=1)
def _audioset() -> tuple[Label, ...]:
    return tuple(load_label_list(_asset_path()))


def audioset_labels() -> list[Label]:
    """AudioSet's 527 classes in head-output order (index 0 "Speech" ... 526 "Field recording")."""
    return list(_audioset())


def mid_to_index(labels: Sequence[Label] | None = None) -> dict[str, int]:
    """MID -> class index for ``labels`` (default AudioSet's); labels without a MID are left out."""
    return {lab.mid: lab.index for lab in (_audioset() if labels is None else labels) if lab.mid}


def labels_from_records(records: Iterable[str | Mapping[str, object]], source: str = "label list") -> list[Label]:
    """Validate and normalise label records: plain names, or mappings with ``display_name`` (or ``name``) and
    optional ``mid`` and ``index``. Indices, when given, must be exactly 0..n-1 (any order); names must be
    non-empty; MIDs and indices unique."""
    rows: list[tuple[int | None, str, str]] = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            rows.append((None, "", rec))
            continue
        if not isinstance(rec, Mapping):
            raise LabelListError(f"{source}: entry {i} is {type(rec).__name__}, expected a name or a mapping")
        name = rec.get("display_name", rec.get("name"))
        if not isinstance(name, str):
            raise LabelListError(f"{source}: entry {i} has no display_name")
        idx = rec.get("index")
        if idx is not None and idx != "":
            try:
                idx = int(idx)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise LabelListError(f"{source}: entry {i} has a non-integer index {rec.get('index')!r}") from None
        else:
            idx = None
        rows.append((idx, str(rec.get("mid") or ""), name))
    if not rows:
        raise LabelListError(f"{source}: no labels")
    given = [r[0] for r in rows]
    if any(g is not None for g in given):
        if any(g is None for g in given):
            raise LabelListError(f"{source}: some entries have an index and some do not")
        if sorted(given) != list(range(len(rows))):  # type: ignore[type-var]
            raise LabelListError(f"{source}: indices must be 0..{len(rows) - 1} with no gaps or repeats")
        rows.sort(key=lambda r: r[0])  # type: ignore[arg-type, return-value]
    labels = [Label(i, mid.strip(), name.strip()) for i, (_, mid, name) in enumerate(rows)]
    seen: dict[str, int] = {}
    for lab in labels:
        if not lab.display_name:
            raise LabelListError(f"{source}: label {lab.index} has an empty name")
        if lab.mid:
            if lab.mid in seen:
                raise LabelListError(f"{source}: MID {lab.mid!r} appears at {seen[lab.mid]} and {lab.index}")
            seen[lab.mid] = lab.index
    return labels


def load_label_list(path: str | os.PathLike) -> list[Label]:
    """Read a head's label list.

    Accepted: a CSV whose header has ``display_name`` (or ``name``) and optionally ``index`` and ``mid`` (the
    AudioSet ``class_labels_indices.csv`` format); a JSON list of names or of such records; or a text file with one
    name per line (blank lines ignored).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise LabelListError(f"cannot read label list {path!r}: {e}") from None
    except UnicodeDecodeError:
        raise LabelListError(f"label list {path!r} is not UTF-8 text") from None
    if path.lower().endswith(".json"):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelListError(f"label list {path!r} is not valid JSON: {e}") from None
        if not isinstance(records, list):
            raise LabelListError(f"label list {path!r}: expected a JSON list")
        return labels_from_records(records, path)
    first = text.lstrip("\ufeff").split("\n", 1)[0]
    header = [h.strip().lower() for h in next(csv.reader([first]), [])] if first else []
    if path.lower().endswith(".csv") or "display_name" in header:
        if "display_name" not in header and "name" not in header:
            raise LabelListError(f"label list {path!r}: CSV header {first!r} has no 'display_name' column")
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        reader.fieldnames = [h.strip().lower() for h in (reader.fieldnames or [])]
        return labels_from_records(list(reader), path)
    return labels_from_records([line for line in text.splitlines() if line.strip()], path)


def _csv_field(value: str, always_quote: bool) -> str:
    if always_quote or any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def format_label_csv(labels: Sequence[Label]) -> str:
    """``labels`` in the ``class_labels_indices.csv`` layout (header, index and MID bare, name quoted)."""
    lines = ["index,mid,display_name"]
    lines += [f"{lab.index},{_csv_field(lab.mid, False)},{_csv_field(lab.display_name, True)}" for lab in labels]
    return "\n".join(lines) + "\n"


def write_label_csv(labels: Sequence[Label], path: str | os.PathLike) -> None:
    """Write ``labels`` as CSV atomically (temp file in the same folder, then rename)."""
    labels = labels_from_records([lab._asdict() for lab in labels], "labels to write")
    atomic_write_bytes(path, format_label_csv(labels).encode("utf-8"))


def _installed_whisper_at_csv() -> str:
    import whisper_at  # reference package (test extra); only needed to regenerate the asset

    return os.path.join(os.path.dirname(whisper_at.__file__), "assets", "class_labels_indices.csv")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m whisper_at_jax.labels [SRC [OUT]]``: (re)write the AudioSet asset from whisper-at's CSV."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("src", nargs="?", help="class_labels_indices.csv (default: installed whisper-at's)")
    p.add_argument("out", nargs="?", help=f"output CSV (default: the package's assets/{AUDIOSET_CSV})")
    args = p.parse_args(argv)
    src = args.src or _installed_whisper_at_csv()
    labels = load_label_list(src)
    if len(labels) != 527:
        print(f"error: {src} has {len(labels)} labels, expected AudioSet's 527", file=sys.stderr)
        return 1
    out = args.out or _asset_path()
    write_label_csv(labels, out)
    print(f"wrote {len(labels)} labels to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
