"""ESC-50, one fold held out: ``--config configs/esc50.py:SIZE[,HEAD_MODE] --config.data.fold=K`` (K = 1..5).

Single-label (50 classes): softmax cross-entropy, accuracy. 5-s clips pooled by 10 encoder frames (0.2 s per
step), as the reference's ESC-50 feature extraction did, so the head sees 25 steps as on AudioSet. The reference
does not release its ESC-50 hyper-parameters (only the lr was tuned per model, its issue #29); ours: full passes
as epochs, 30 epochs, the AS-2M decay shape (x0.75 every 5 from 15), weight average over epochs 16-30, no mixup
(single-label softmax targets; AST's ESC-50 recipe also uses none), label smoothing 0.1, time mask 10, no balanced
sampling (ESC-50 is balanced), batch 48. Cached mode: the taps of all 2,000 clips are extracted once with their
folds (``scripts/extract_features.py``), and each fold's run selects by ``config.data.fold``.
"""

from whisper_at_jax.configs import common


def get_config(arg: str = "tiny.en"):
    parts = [p.strip() for p in (arg or "tiny.en").split(",") if p.strip()]
    model = parts[0]
    c = common.paper_recipe(common.base_config(), model)
    if len(parts) > 1:
        c.head.mode = parts[1]
    c.mode = "cached"
    c.workdir = f"runs/esc50_{model}_{c.head.mode}"
    c.data.tfrecords = "data/esc50"
    c.data.features = f"features/esc50_{model}"
    c.data.train_split = "train"  # all 2,000 clips with their folds
    c.data.eval_split = ""
    c.data.fold = 1
    c.data.clip_seconds = 5.0
    c.data.pool = 10
    c.data.balanced = False
    c.data.multilabel = False
    c.loss = "softmax"
    c.aug.mixup_p = 0.0
    c.epoch_fraction = 1.0
    c.epochs = 30
    c.wa.start_epoch, c.wa.end_epoch = 16, 30
    c.checkpoint.every_steps = 200
    c.log_every_steps = 10
    return c
