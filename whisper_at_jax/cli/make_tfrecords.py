"""Write a split of audio clips + labels as sharded TFRecords with TFDS metadata (for head training).

    python scripts/make_tfrecords.py --format audioset --csv balanced_train_segments.csv --audio-dir audio/ \\
        --out data/audioset --split train --num-shards 64
    python scripts/make_tfrecords.py --format esc50 --csv esc50/meta/esc50.csv --audio-dir esc50/audio \\
        --out data/esc50 --split fold1 --folds 1
    python scripts/make_tfrecords.py --format csv --csv clips.csv --out data/mine --split train

Formats: ``audioset`` (YTID, start_seconds, end_seconds, "mid,mid"; '#' lines skipped; MIDs mapped through AudioSet's
527 classes or ``--labels``), ``esc50`` (filename, fold, target, category, ...), ``csv`` (path,labels with labels
separated by ';' as names or indices; optional start,end,id columns). Clips missing on disk are listed in
OUT/missing.txt; undecodable clips are skipped and counted; ``--strict`` makes either an error.
Exit status: 0 written, 2 bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def _parse_folds(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds must be comma-separated integers, got {text!r}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--format", required=True, choices=["audioset", "esc50", "csv"], help="label file format")
    ap.add_argument("--csv", required=True, help="the label / metadata CSV")
    ap.add_argument("--audio-dir", help="audio folder (required for audioset and esc50; csv: base of relative paths)")
    ap.add_argument("--out", required=True, help="dataset folder to write into (other splits in it are kept)")
    ap.add_argument("--split", default="train", help="split name (default train)")
    ap.add_argument("--num-shards", type=int, default=1, help="shard count: a multiple of the reading host count")
    ap.add_argument("--encoding", default="flac", choices=["flac", "pcm16"], help="stored audio (default flac)")
    ap.add_argument("--strict", action="store_true", help="fail on any missing/undecodable clip or unknown label")
    ap.add_argument("--labels", help="class list (CSV index,mid,display_name / JSON / one name per line); "
                                     "audioset default: AudioSet's 527; csv: labels are names, MIDs or indices of it")
    ap.add_argument("--folds", help="esc50: comma-separated folds to include (default all)")
    ap.add_argument("--full-videos", action="store_true",
                    help="audioset: files hold whole videos; cut each to [start_seconds, end_seconds]")
    ap.add_argument("--clip-seconds", type=float, default=10.0, help="longest clip stored (0 = no limit)")
    ap.add_argument("--sample-rate", type=int, help="rate the audio is resampled to (default: Whisper's 16000)")
    ap.add_argument("--name", default="audio_clips", help="dataset name in shard file names")
    ap.add_argument("--num-workers", type=int, default=1, help="processes writing shards in parallel")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from whisper_at_jax.audio import SAMPLE_RATE
    from whisper_at_jax.data import DataError, read_audioset_csv, read_esc50_csv, read_label_csv, write_tfrecords

    try:
        label_list = None
        if args.labels:
            from whisper_at_jax.labels import LabelListError, load_label_list

            try:
                label_list = load_label_list(args.labels)
            except LabelListError as e:
                raise DataError(str(e)) from None
        if args.format in ("audioset", "esc50") and not args.audio_dir:
            raise DataError(f"--audio-dir is required for --format {args.format}")
        if args.format == "audioset":
            mids = names = None
            if label_list is not None:
                mids = {lab.mid: lab.index for lab in label_list if lab.mid}
                names = [lab.display_name for lab in label_list]
                if not mids:
                    raise DataError(f"{args.labels}: no MIDs in the label list (AudioSet CSVs label clips by MID)")
            source = read_audioset_csv(args.csv, args.audio_dir, mids, names,
                                       audio_is_segment=not args.full_videos, strict=args.strict)
        elif args.format == "esc50":
            source = read_esc50_csv(args.csv, args.audio_dir, _parse_folds(args.folds), strict=args.strict)
        else:
            labels = None
            if label_list is not None:
                # A token may be the class's display name or its MID.
                labels = {lab.display_name: lab.index for lab in label_list}
                labels.update({lab.mid: lab.index for lab in label_list if lab.mid})
            source = read_label_csv(args.csv, args.audio_dir, labels, strict=args.strict)
            if label_list is not None:
                source.label_names = [lab.display_name for lab in label_list]
        print(f"{args.csv}: {source.report.summary()}", file=sys.stderr)
        report = write_tfrecords(
            source, args.out, args.split, args.num_shards, clip_seconds=args.clip_seconds or None,
            sample_rate=SAMPLE_RATE if args.sample_rate is None else args.sample_rate, encoding=args.encoding,
            strict=args.strict, name=args.name, num_workers=args.num_workers, progress=not args.quiet,
        )
    except (DataError, argparse.ArgumentTypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
