"""AudioSet-20K (the balanced subset): ``--config configs/audioset20k.py:SIZE[,512]``.

The reference releases no AS-20K recipe or logs (its ``run.py`` only supports ``--dataset as-bal``); these values
are ours, following AST's AS-20K schedule shape: full passes as epochs (20K clips are few), 25 epochs, lr decay
x0.5 every 5 epochs from epoch 10, weight average over epochs 6-25, no balanced sampling (the subset is balanced by
construction). The rest (head, optimizer, mixup, smoothing, masking, BCE, batch 48) is the AS-2M recipe. The
lr is the AS-2M one for the size; cached mode by default (20K clips of taps fit on disk for any size).
"""

from whisper_at_jax.configs import common


def get_config(arg: str = "tiny.en"):
    parts = [p.strip() for p in (arg or "tiny.en").split(",") if p.strip()]
    model, down512 = parts[0], "512" in parts[1:]
    c = common.paper_recipe(common.base_config(), model, down512)
    c.mode = "cached"
    c.workdir = f"runs/as20k_{model}_{'tltr512' if down512 else 'tltr'}"
    c.data.tfrecords = "data/audioset20k"
    c.data.features = f"features/audioset20k_{model}"
    c.data.balanced = False
    c.epoch_fraction = 1.0
    c.epochs = 25
    c.lr_decay.start_epoch, c.lr_decay.every_epochs, c.lr_decay.factor = 10, 5, 0.5
    c.wa.start_epoch, c.wa.end_epoch = 6, 25
    return c
