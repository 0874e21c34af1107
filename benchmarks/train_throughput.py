"""Head-training throughput: examples/s of the real trainer (``whisper_at_jax.train.train``), online and cached.

    python benchmarks/train_throughput.py [--size tiny.en] [--modes online,cached] [--batch 48] [--steps 20]
        [--head tl_tr_1_8] [--encoder-dtype float32] [--json out.json]

What runs is exactly what ``scripts/train.py --config configs/audioset2m.py:SIZE`` runs (the paper's recipe:
balanced sampling, mixup, time masking, BCE, Adam + L2, one jitted step over a Mesh of every device), fed from
an in-memory source instead of TFRecords: random weights of the named size (speed does not depend on the values),
10-s clips of random audio (online: log-mel + frozen encoder + pooling inside the step) or random pooled taps
(cached), 527 classes. The data pipeline is left out on purpose: it is tf.data's job to overlap it with the step,
and the device machines have no TensorFlow. The first step (compile) is excluded from examples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_one(size: str, mode: str, head: str, batch: int, steps: int, encoder_dtype: str) -> dict:
    import jax
    import numpy as np

    from whisper_at_jax.configs import common
    from whisper_at_jax.api import WhisperModel
    from whisper_at_jax.audio import HOP_LENGTH, SAMPLE_RATE
    from whisper_at_jax.model import dims_for, param_shapes
    from whisper_at_jax.data import ExampleSource
    from whisper_at_jax.train import train

    dims = dims_for(size)
    model = None
    if mode == "online":
        # numpy-random weights of the right shapes: jitting Flax's init for a 32+32-layer model takes minutes on CPU
        rng_w = np.random.default_rng(1)
        params = jax.tree.map(lambda s: (0.02 * rng_w.standard_normal(s.shape, np.float32)).astype(np.float32),
                              param_shapes(dims))
        model = WhisperModel(dims, params, source=f"random {size}")
    c = common.paper_recipe(common.base_config(), size)
    c.head.mode = head
    c.mode = mode
    c.encoder_dtype = encoder_dtype
    c.batch_size = c.eval_batch_size = batch
    c.epochs, c.steps_per_epoch = 1, steps
    c.log_every_steps = steps  # one window: steps 2..N (the compiling first step is left out)
    c.wa.start_epoch = c.wa.end_epoch = 0
    c.checkpoint.every_steps = 0
    c.export = False
    c.progress = False

    rng = np.random.default_rng(0)
    n = 2 * batch
    labels = (rng.random((n, 527)) < 0.01).astype(np.float32)
    labels[np.arange(n), rng.integers(0, 527, n)] = 1.0
    clip = int(c.data.clip_seconds * SAMPLE_RATE)
    if mode == "online":
        x = (0.1 * rng.standard_normal((n, clip))).astype(np.float32)
    else:
        steps_per_clip = clip // HOP_LENGTH // 2 // int(c.data.pool)
        x = rng.standard_normal((n, dims.n_audio_layer, steps_per_clip, dims.n_audio_state)).astype(np.float16)
    source = ExampleSource(x, labels, kind="audio" if mode == "online" else "taps")
    with tempfile.TemporaryDirectory() as work:
        c.workdir = work
        t0 = time.perf_counter()
        result = train(c, train_source=source, model=model)
        wall = time.perf_counter() - t0
    return {"size": size, "mode": mode, "head": head, "encoder_dtype": encoder_dtype, "batch": batch,
            "steps": steps, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind, "examples_per_s": result["examples_per_s"],
            "wall_s_incl_compile": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny.en")
    ap.add_argument("--modes", default="online,cached")
    ap.add_argument("--head", default="tl_tr_1_8")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--encoder-dtype", default="float32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for mode in args.modes.split(","):
        r = run_one(args.size, mode, args.head, args.batch, args.steps, args.encoder_dtype)
        print(json.dumps(r), flush=True)
        rows.append(r)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
