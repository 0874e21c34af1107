"""ESC-50 five-fold cross-validation of Whisper-AT heads on a frozen Whisper encoder (the paper's ESC-50 protocol).

    python scripts/esc50.py --shared /work/shared --model tiny.en \
        --heads tl_tr,tl_down_tr,wa_mlp,last_mlp,linear --lr 1e-4,5e-4,1e-3 --out runs/esc50_tiny.en
    python scripts/esc50.py --shared /work/shared --model tiny.en --default_head whisper_at_jax/assets/heads/tiny.en \
        --out runs/esc50_tiny.en

Features once per model (into ``--features``, default ``/tmp/esc50_feats_MODEL``, reused by a later call), then
per fold held out the trainer heads (``tl_tr``, ``tl_down_tr``, ``wa_mlp``, ``last_mlp`` or any mode string) through
the ESC-50 config and the real trainer, and the ``linear`` / ``linear_layers`` probes; ``--default_head`` instead
trains the shipped head's recipe (ESC-50 clean + with speech mixed under every clip). The protocol:
``whisper_at_jax.experiments.esc50`` and ``.default_head``.

Writes ``OUT/results.json`` (every run: head, mode, lr, fold, accuracy, seconds) and prints a markdown table.
The ESC-50 folder is found as ``SHARED/data/esc50`` or ``SHARED`` itself (holding ``meta/esc50.csv``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisper_at_jax.experiments import esc50
from whisper_at_jax.experiments.esc50 import ENCODER_DTYPES, HEAD_MODES, SKLEARN_HEADS, ESC50Error


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="", help="folder holding data/esc50 (or the ESC-50 folder itself); may be "
                    "left out when --features is already complete (head training and probes need only the taps)")
    ap.add_argument("--model", default="tiny.en", help="Whisper name or checkpoint path")
    ap.add_argument("--heads", default="tl_tr,tl_down_tr,wa_mlp,last_mlp,linear",
                    help=f"comma list of {sorted(HEAD_MODES)} + {list(SKLEARN_HEADS)} or head mode strings")
    ap.add_argument("--lr", default="", help="comma list of learning rates for the trainer heads "
                                             "(default: the config's, i.e. the paper's per-size value)")
    ap.add_argument("--folds", default="1,2,3,4,5")
    ap.add_argument("--epochs", type=int, default=0, help="override configs/esc50.py's 30 epochs (0: keep)")
    ap.add_argument("--features", default="", help="features folder (default /tmp/esc50_feats_MODEL, with "
                    "_bfloat16 appended for --encoder_dtype bfloat16)")
    ap.add_argument("--encoder_dtype", default="", choices=["", *ENCODER_DTYPES],
                    help="encoder compute dtype of the feature extraction (default: configs/esc50.py's "
                    "encoder_dtype, auto: float32 off TPU)")
    ap.add_argument("--out", required=True, help="results folder (results.json, per-run workdirs)")
    ap.add_argument("--default_head", default="", help="train the speech-augmented head (mode --head_mode, lr: the "
                    "first of --lr) on all folds but --hold_out (0: all folds) and save it here")
    ap.add_argument("--head_mode", default="tl_down_tr", help="head of --default_head")
    ap.add_argument("--hold_out", type=int, default=0, help="--default_head: fold left out and measured (0: none)")
    ap.add_argument("--loss", default="bce", choices=["bce", "softmax"], help="--default_head's loss")
    ap.add_argument("--speech_features", default="", help="speech-mixed features folder "
                    "(default /tmp/esc50_feats_MODEL[_bfloat16]_speech)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        enc_dtype = args.encoder_dtype or esc50.default_encoder_dtype(args.model)
        features = Path(args.features) if args.features else esc50.default_features(args.model, enc_dtype)
        if args.shared:
            rows, names = esc50.read_meta(esc50.find_esc50(args.shared))
            esc50.extract(args.model, rows, names, features, encoder_dtype=enc_dtype)
            have_folds = {r["fold"] for r in rows}
        elif args.default_head:
            raise ESC50Error("--default_head needs --shared (it mixes speech into the ESC-50 audio)")
        else:
            have_folds = esc50.feature_folds(features, args.model, enc_dtype)
        folds = esc50.parse_folds(args.folds, have_folds)
        heads = [h.strip() for h in args.heads.split(",") if h.strip()]
        lrs = [float(v) for v in args.lr.split(",") if v.strip()] or [None]
        out = Path(args.out)
    except (ESC50Error, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.default_head:
        from whisper_at_jax.experiments.default_head import make_default_head

        make_default_head(args.model, rows, names, features, Path(args.default_head), out, head_mode=args.head_mode,
                          lr=lrs[0], hold_out=args.hold_out, loss=args.loss, epochs=args.epochs or None,
                          speech_features=Path(args.speech_features) if args.speech_features else None,
                          encoder_dtype=enc_dtype)
        return 0
    try:
        results = esc50.Results(out, args.model, features, enc_dtype)
    except ESC50Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = esc50.cross_validate(results, heads, lrs, folds, args.epochs or None)
    print(esc50.markdown(esc50.summarise(runs)))
    return 0
