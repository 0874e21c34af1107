"""Shared config pieces: every key the trainer reads, with the Whisper-AT paper's defaults.

Values cite ../shared/docs/whisper_at_reference.md section 5 (the released training code and logs).
"""

from __future__ import annotations

import ml_collections

from whisper_at_jax.model import SIZE_ALIASES

#: Per Whisper size: (TL-TR lr, TL-TR-512 lr, epochs, WA start, WA end), from the reference's training logs/scripts.
#: ``.en`` models use their multilingual sibling's values (the reference has no logs for them).
PAPER_RECIPES = {
    "large-v1": (5e-5, 1e-4, 30, 16, 30),
    "large-v2": (5e-5, 1e-4, 30, 16, 30),
    "large-v3": (5e-5, 1e-4, 30, 16, 30),  # not in the paper: large-v2's values
    "turbo": (5e-5, 1e-4, 30, 16, 30),  # not in the paper: large-v2's values (same encoder size)
    "medium": (5e-5, 1e-4, 30, 16, 30),
    "small": (1e-4, 1e-4, 50, 21, 50),
    "base": (1e-4, 1e-4, 50, 21, 50),
    "tiny": (1e-4, 1e-4, 50, 21, 50),
}


def size_of(model: str) -> str:
    """``tiny.en`` -> ``tiny``; ``large`` -> ``large-v2`` (Whisper-AT's alias: ``model.SIZE_ALIASES``)."""
    base = model[:-3] if model.endswith(".en") else model
    base = SIZE_ALIASES.get(base, base)
    if base not in PAPER_RECIPES:
        raise ValueError(f"no recipe for Whisper size {model!r}; known: {sorted(PAPER_RECIPES)} (+ .en)")
    return base


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, set to the AudioSet-2M TL-TR recipe for tiny (override per experiment)."""
    c = ml_collections.ConfigDict()
    c.model = "tiny.en"  # Whisper name or checkpoint path (online mode, export, feature check)
    c.encoder_dtype = "auto"  # encoder compute dtype: auto (bf16 on TPU, fp32 elsewhere) | float32 | bfloat16
    c.mode = "online"  # online: Whisper inside the step; cached: pooled taps from scripts/extract_features.py
    c.workdir = "runs/default"
    c.seed = 0

    c.head = ml_collections.ConfigDict()
    c.head.mode = "tl_tr_1_8"  # TL-TR (training name lw_tr_1_8); "tl_down_tr_512_1_8" for TL-TR-512
    c.head.dtype = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.features = ""  # cached mode: folder written by scripts/extract_features.py
    c.data.tfrecords = ""  # online mode: folder written by the data writer (whisper_at_jax.data)
    c.data.train_split = "train"
    c.data.eval_split = "eval"
    c.data.fold = -1  # >= 0: hold out this fold of the train split for eval (ESC-50 cross-validation)
    c.data.clip_seconds = 10.0  # reference: 10-s clips, positional table sliced to 500 frames
    c.data.pool = 20  # 20 encoder frames (0.4 s) per pooled step -> 25 steps for 10 s
    c.data.balanced = True  # clip weight = sum over labels of 1000 / (count + 0.01), with replacement
    c.data.multilabel = True
    c.data.labels = ml_collections.config_dict.placeholder(list)  # class names (else from the data)
    c.data.strict = False  # data errors: warn and skip (False) or raise (True)

    c.loss = "bce"  # bce (multi-label, BCEWithLogitsLoss mean) | softmax (single-label)
    c.batch_size = 48  # global batch (all devices, all hosts)
    c.eval_batch_size = 48
    c.lr = 1e-4
    c.b1 = 0.95
    c.b2 = 0.999
    c.adam_eps = 1e-8  # torch.optim.Adam's default
    c.weight_decay = 5e-7  # coupled L2 (torch Adam weight_decay), not AdamW
    c.lr_decay = ml_collections.ConfigDict({"start_epoch": 15, "every_epochs": 5, "factor": 0.75})
    c.epoch_fraction = 0.1  # reference: one "epoch" = 10% of an AudioSet-2M pass
    c.steps_per_epoch = 0  # > 0 overrides epoch_fraction
    c.epochs = 50
    c.wa = ml_collections.ConfigDict({"start_epoch": 21, "end_epoch": 50})  # 1-based, inclusive; 0 = off

    c.aug = ml_collections.ConfigDict()
    c.aug.mixup_p = 0.5
    c.aug.mixup_alpha = 10.0  # lambda ~ Beta(10, 10)
    c.aug.label_smoothing = 0.1
    c.aug.time_mask = 10  # width ~ U[0, 10) pooled steps

    c.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "keep": 3, "async_save": True})
    c.on_nonfinite = "stop"  # a NaN/inf loss or grad norm: "stop" (names step, example ids, last checkpoint) or "skip"
    c.heartbeat_timeout_s = 100  # multi-process: a host silent this long is dead; the others stop with an error
    c.log_every_steps = 50
    c.eval_every_epochs = 1
    c.log_example_ids = False  # write examples.jsonl (step -> ids): for checking resume
    c.progress = True
    c.export = True  # write workdir/export: our checkpoint (Whisper + averaged head), load_model-able
    return c


def paper_recipe(c: ml_collections.ConfigDict, model: str, down512: bool = False) -> ml_collections.ConfigDict:
    """Apply the paper's AudioSet-2M recipe for a Whisper size (TL-TR, or TL-TR-512 with ``down512``)."""
    lr_tr, lr_512, epochs, wa0, wa1 = PAPER_RECIPES[size_of(model)]
    c.model = model
    c.head.mode = "tl_down_tr_512_1_8" if down512 else "tl_tr_1_8"
    c.lr = lr_512 if down512 else lr_tr
    c.epochs = epochs
    c.wa.start_epoch, c.wa.end_epoch = wa0, wa1
    return c
