"""Encode a dataset split once and write its pooled Whisper taps for cached-mode training.

    python scripts/extract_features.py --model tiny.en --tfrecords data/esc50 --split train \
        --out features/esc50_tiny.en --clip_seconds 5 --pool 10 --fold_regex '^(\\d+)-'

Reads the TFRecords written by the data writer (``whisper_at_jax.data.write_tfrecords``) in file order, runs the
same jitted encoder + pooling as the online train step, and writes float16 ``.npy`` shards (memory-mapped at
training time, so batches read single rows) with labels, ids and (``--fold_regex`` on the ids) folds. Each file is
written atomically; ``meta.json`` is updated last. The size is n_clips x layers x steps x width x 2 bytes
(tiny, 10-s clips: 77 KB per clip; large-v2: 2 MB per clip, ~4 TB for AudioSet-2M).
"""

from __future__ import annotations

import argparse
import re
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en", help="Whisper name or checkpoint path")
    ap.add_argument("--tfrecords", required=True, help="dataset folder written by the data writer")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", required=True, help="features folder (created; other splits in it are kept)")
    ap.add_argument("--clip_seconds", type=float, default=10.0)
    ap.add_argument("--pool", type=int, default=20, help="encoder frames per pooled step (20: 0.4 s)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                    help="stored dtype of the taps")
    ap.add_argument("--encoder_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="encoder compute dtype (auto: bf16 on TPU, fp32 elsewhere)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--shard_size", type=int, default=2048, help="clips per .npy shard")
    ap.add_argument("--fold_regex", default=None,
                    help="regex whose first group, matched on each id, is its integer fold (ESC-50: '^(\\d+)-')")
    ap.add_argument("--strict", action="store_true", help="fail on a corrupt record instead of skipping it")
    args = ap.parse_args(argv)

    import numpy as np

    from whisper_at_jax import load_model
    from whisper_at_jax.audio import HOP_LENGTH, SAMPLE_RATE
    from whisper_at_jax.data import (DataError, FeatureWriter, TrainError, extract_features, make_dataset,
                                     read_metadata)

    try:
        meta = read_metadata(args.tfrecords)
        if meta is None:
            raise TrainError(f"{args.tfrecords}: no dataset metadata (not written by the data writer?)")
        model = load_model(args.model, at_head=False)
        clip_samples = int(round(args.clip_seconds * SAMPLE_RATE))
        frames = clip_samples // HOP_LENGTH
        if frames % 2 or (frames // 2) % args.pool:
            raise TrainError(f"--clip_seconds {args.clip_seconds} gives {frames // 2} encoder frames, not a multiple "
                             f"of --pool {args.pool}")
        ds = make_dataset(args.tfrecords, args.split, batch_size=args.batch_size, clip_samples=clip_samples,
                          training=False, repeat=False, process_index=0, process_count=1, strict=args.strict)
        fold_re = re.compile(args.fold_regex) if args.fold_regex else None

        def batches():
            for b in ds:
                if fold_re is not None:
                    folds = []
                    for i, m in zip(b["id"], b["mask"]):
                        hit = fold_re.search(str(i)) if m > 0.5 else None
                        if m > 0.5 and hit is None:
                            raise TrainError(f"--fold_regex {args.fold_regex!r} does not match id {i!r}")
                        folds.append(int(hit.group(1)) if hit else -1)
                    b = dict(b, fold=np.asarray(folds))
                yield b

        d = model.dims
        writer = FeatureWriter(args.out, args.split, {
            "model": args.model, "n_layers": d.n_audio_layer, "width": d.n_audio_state,
            "steps": frames // 2 // args.pool, "pool": args.pool, "clip_seconds": args.clip_seconds,
            "labels": list(meta.get("label_names") or []), "source": str(args.tfrecords),
        }, shard_size=args.shard_size, dtype=args.dtype)
        n = extract_features(model, batches(), writer, pool=args.pool, dtype=args.encoder_dtype,
                             batch_size=args.batch_size, progress=True)
        writer.close()
        if ds.stats.bad_records:
            print(f"warning: skipped {ds.stats.bad_records} corrupt record(s)", file=sys.stderr)
    except (TrainError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} clips of split {args.split!r} to {args.out}")
    return 0
