"""The paper's AudioSet-2M recipe: ``--config configs/audioset2m.py:SIZE[,512]``.

SIZE is a Whisper name (tiny, tiny.en, ..., large-v1, large-v2); ``,512`` selects TL-TR-512 (down-projection to
512 before the Transformers, ``lw_down_tr_512_1_8``) instead of TL-TR (``lw_tr_1_8``). Values per size are the
reference's (whisper_at_reference.md section 5 table): batch 48, Adam(0.95, 0.999) + L2 5e-7, balanced sampling,
mixup 0.5 / Beta(10, 10), label smoothing 0.1, time mask 10, BCE, "epoch" = 10% of the data, x0.75 every 5 epochs
from epoch 15, weight average over the last epochs. Online mode by default (cached large-v2 taps for AS-2M would
be ~4 TB); the data are the TFRecords written by the data writer, splits "train" (unbalanced + balanced) and "eval".
"""

from whisper_at_jax.configs import common


def get_config(arg: str = "large-v1"):
    parts = [p.strip() for p in (arg or "large-v1").split(",") if p.strip()]
    model, down512 = parts[0], "512" in parts[1:]
    c = common.paper_recipe(common.base_config(), model, down512)
    c.workdir = f"runs/as2m_{model}_{'tltr512' if down512 else 'tltr'}"
    c.data.tfrecords = "data/audioset"
    c.data.features = f"features/audioset_{model}"
    return c
