r"""Evaluate a trained Whisper-AT head: mAP / mean AUC / d' (multi-label) or accuracy (single-label).

    python scripts/evaluate.py --checkpoint runs/esc50/export --features features/esc50_tiny.en --split train \
        --fold 1 --single_label
    python scripts/evaluate.py --checkpoint runs/as2m/export --tfrecords data/audioset --split eval

``--checkpoint`` is our checkpoint with a head (``scripts/train.py`` writes one to ``WORKDIR/export``). Cached
features (``--features``) must come from the same Whisper model; ``--tfrecords`` runs the encoder (online).
Multi-host: start one process per host as for training; logits are gathered across hosts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="our checkpoint folder with a head (WORKDIR/export)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="cached taps folder (scripts/extract_features.py)")
    src.add_argument("--tfrecords", help="dataset folder written by the data writer (online: runs the encoder)")
    ap.add_argument("--split", default="eval")
    ap.add_argument("--fold", type=int, default=-1, help="evaluate only this fold of the split (cached)")
    ap.add_argument("--clip_seconds", type=float, default=10.0, help="online: clip length")
    ap.add_argument("--pool", type=int, default=20, help="online: encoder frames per pooled step")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--encoder_dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--single_label", action="store_true", help="also report top-1 accuracy (ESC-50)")
    ap.add_argument("--out", help="write the metrics as JSON here (atomically)")
    ap.add_argument("--coordinator_address")
    ap.add_argument("--num_processes", type=int)
    ap.add_argument("--process_id", type=int)
    args = ap.parse_args(argv)

    from whisper_at_jax import parallel

    parallel.maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    import jax
    import numpy as np
    import optax

    from whisper_at_jax.configs import common
    from whisper_at_jax import load_model
    from whisper_at_jax.convert import CheckpointError
    from whisper_at_jax.heads import make_head
    from whisper_at_jax.io_utils import atomic_write_bytes
    from whisper_at_jax.data import TFRecordData, TrainError, eval_batches, open_features
    from whisper_at_jax.train import build_steps, evaluate

    try:
        model = load_model(args.checkpoint, dtype=args.encoder_dtype)
        if model.head_params is None or not model.head_config:
            raise TrainError(f"{args.checkpoint}: checkpoint has no head (train one with scripts/train.py)")
        hc = model.head_config
        d = model.dims
        cfg = common.base_config()
        cfg.encoder_dtype = args.encoder_dtype
        cfg.eval_batch_size = cfg.batch_size = args.batch_size
        cfg.data.pool, cfg.data.clip_seconds = args.pool, args.clip_seconds
        mesh = parallel.make_mesh()
        head = make_head(hc["mode"], d.n_audio_layer, d.n_audio_state, int(hc["n_classes"]))
        if args.features:
            source, meta, folds = open_features(args.features, args.split)
            if (meta["n_layers"], meta["width"]) != (d.n_audio_layer, d.n_audio_state):
                raise TrainError(f"{args.features}: taps of {meta['n_layers']} x {meta['width']} do not fit "
                                 f"this model ({d.n_audio_layer} x {d.n_audio_state})")
            if args.fold >= 0:
                if folds is None:
                    raise TrainError(f"--fold {args.fold}: split {args.split!r} has no folds")
                source = source.subset(np.nonzero(folds == args.fold)[0])
            taps_shape = (1,) + tuple(source.x.shape[1:])
            steps = build_steps(cfg, mesh, head, optax.identity(), taps_shape)
            batches, kind = eval_batches(source, args.batch_size), "taps"
            enc = None
        else:
            cfg.data.tfrecords, cfg.data.eval_split, cfg.data.train_split = args.tfrecords, args.split, args.split
            tf = TFRecordData(cfg)
            taps_shape = (1, d.n_audio_layer, int(args.clip_seconds * 50) // args.pool, d.n_audio_state)
            steps = build_steps(cfg, mesh, head, optax.identity(), taps_shape, d)
            batches, kind = tf.eval_iter(), "audio"
            enc = jax.device_put(model.params["encoder"], parallel.replicated(mesh))
        params = jax.device_put(model.head_params, parallel.replicated(mesh))
        metrics = evaluate(steps, params, batches, kind, not args.single_label, enc)
    except (TrainError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=1)
    if args.out and jax.process_index() == 0:
        atomic_write_bytes(Path(args.out), text.encode())
    print(text)
    return 0
