"""Head training: optimizer vs PyTorch, augmentations vs the reference formulas, the frozen backbone checked on the
compiled step, online == cached, the head learning real tiny.en features of sounds made here, 4 devices == 1,
2 processes == 1, and SIGKILL + resume == uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

REPO = Path(__file__).resolve().parents[1]

from whisper_at_jax.configs import common  # noqa: E402
from whisper_at_jax import augment as aug  # noqa: E402
from whisper_at_jax import parallel  # noqa: E402
from whisper_at_jax import train as T  # noqa: E402
from whisper_at_jax.audio import SAMPLE_RATE as SR  # noqa: E402
from whisper_at_jax.data import (FeatureWriter, IndexStream, gather_states, label_balanced_weights,  # noqa: E402
                                 open_feed)
from whisper_at_jax.heads import make_head  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# Fixtures: sounds made here, their real tiny.en taps, and small random taps for the mechanics tests


def make_sounds(n_per_class: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four classes of 16-kHz clips: low tone (150-300 Hz), high tone (1.5-3 kHz), white noise, 4-8 Hz clicks;
    random level, phase and a little background noise so no two clips are alike."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    clips, labels = [], []
    for c in range(4):
        for _ in range(n_per_class):
            if c == 0:
                x = np.sin(2 * np.pi * rng.uniform(150, 300) * t + rng.uniform(0, 2 * np.pi))
            elif c == 1:
                x = np.sin(2 * np.pi * rng.uniform(1500, 3000) * t + rng.uniform(0, 2 * np.pi))
            elif c == 2:
                x = rng.normal(size=t.size)
            else:
                x = np.zeros(t.size)
                period = int(SR / rng.uniform(4, 8))
                x[rng.integers(0, period)::period] = 1.0
                x = np.convolve(x, np.hanning(64), mode="same")
            x = x / np.max(np.abs(x)) * rng.uniform(0.05, 0.5) + 0.003 * rng.normal(size=t.size)
            clips.append(x.astype(np.float32))
            labels.append(c)
    return np.stack(clips), np.eye(4, dtype=np.float32)[labels]


def small_config(workdir: Path, **over) -> "object":
    c = common.base_config()
    c.workdir = str(workdir)
    c.mode = "cached"
    c.head.mode = "wa_mlp"
    c.batch_size = c.eval_batch_size = 8
    c.steps_per_epoch = 4
    c.epochs = 3
    c.wa.start_epoch, c.wa.end_epoch = 2, 3
    c.lr_decay.start_epoch = 1
    c.checkpoint.every_steps = 0
    c.log_every_steps = 1
    c.progress = False
    c.export = False
    c.data.balanced = False
    for k, v in over.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


@pytest.fixture(scope="module")
def random_features(tmp_path_factory) -> Path:
    """Random taps (2 layers x 5 steps x 32) with a class-dependent offset, 5 folds, train + eval splits."""
    d = tmp_path_factory.mktemp("feat")
    rng = np.random.default_rng(0)
    meta = {"model": "none", "n_layers": 2, "width": 32, "steps": 5, "pool": 20, "labels": list("abcd")}
    for split, n in (("train", 80), ("eval", 24)):
        y = np.eye(4)[rng.integers(0, 4, n)]
        x = rng.normal(size=(n, 2, 5, 32)) + 0.5 * np.repeat(y, 8, axis=1)[:, None, None, :]
        w = FeatureWriter(d, split, meta, shard_size=30, dtype="float16")
        w.add(x, y, [f"{split}{i}" for i in range(n)], folds=np.arange(n) % 5 + 1)
        w.close()
    return d


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    """A persistent XLA cache shared by this file's subprocesses (their programs repeat across runs)."""
    return tmp_path_factory.mktemp("xla_cache")


def sub_env(cache: Path, devices: int) -> dict:
    env = dict(os.environ)
    env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
                "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return env


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and schedule: against torch.optim.Adam(weight_decay) + MultiStepLR, the reference's own


def test_optimizer_matches_torch_adam_coupled_l2_and_step_decay():
    torch = pytest.importorskip("torch")
    c = common.base_config()
    c.lr, c.weight_decay = 1e-2, 1e-2  # large enough that the L2 term and the decay visibly matter
    c.lr_decay.start_epoch, c.lr_decay.every_epochs, c.lr_decay.factor = 2, 2, 0.75
    spe, n_steps = 3, 24  # epochs 1-2 at lr, 3-4 at 0.75 lr, 5-6 at 0.5625 lr, 7-8 ...
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 7)).astype(np.float32)
    grads = rng.normal(size=(n_steps, 5, 7)).astype(np.float32)

    tx = T.make_optimizer(c, spe)
    params = {"w": jnp.asarray(p0)}
    opt = tx.init(params)
    for g in grads:
        upd, opt = tx.update({"w": jnp.asarray(g)}, opt, params)
        params = jax.tree.map(lambda p, u: p + u, params, upd)

    w = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    topt = torch.optim.Adam([w], lr=c.lr, betas=(c.b1, c.b2), eps=c.adam_eps, weight_decay=c.weight_decay)
    milestones = list(range(c.lr_decay.start_epoch, n_steps // spe + 1, c.lr_decay.every_epochs))
    sched = torch.optim.lr_scheduler.MultiStepLR(topt, milestones=milestones, gamma=c.lr_decay.factor)
    for i, g in enumerate(grads):
        w.grad = torch.from_numpy(g.copy())
        topt.step()
        if (i + 1) % spe == 0:
            sched.step()
    # fp32 on both sides, 24 Adam steps moving params by up to 0.11: differences are accumulated rounding
    # (measured 9.5e-7, i.e. 1e-5 of the movement); a wrong coupling/decay/schedule would differ by >= 1e-3.
    np.testing.assert_allclose(np.asarray(params["w"]), w.detach().numpy(), rtol=0, atol=5e-6)
    lr = T.lr_schedule(c, spe)
    assert [float(lr(jnp.asarray(s))) for s in (0, 5, 6, 11, 12, 18)] == pytest.approx(
        [1e-2, 1e-2, 7.5e-3, 7.5e-3, 5.625e-3, 4.21875e-3])


# ----------------------------------------------------------------------------------------------------------------
# Data order and sampling


def test_index_stream_is_a_function_of_position_and_balanced_weights():
    s1 = IndexStream(10, 4, seed=3)
    seq = [s1.batch_indices(i) for i in range(8)]  # crosses pass boundaries (10 is not a multiple of 4)
    flat = np.concatenate(seq)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    s2 = IndexStream(10, 4, seed=3)
    assert np.array_equal(s2.batch_indices(5), seq[5])  # a fresh stream resumes at any position
    assert not np.array_equal(IndexStream(10, 4, seed=4).batch_indices(0), seq[0])

    labels = np.zeros((6, 3))
    labels[[0, 1, 2, 3], 0] = 1
    labels[[3, 4], 1] = 1
    labels[5, 2] = 1
    # The reference's gen_weight_file.py loop: weight = sum over the clip's labels of 1000 / (count + 0.01).
    counts = labels.sum(0)
    want = [sum(1000.0 / (counts[k] + 0.01) for k in np.nonzero(row)[0]) for row in labels]
    np.testing.assert_allclose(label_balanced_weights(labels), want, rtol=1e-12)
    stream = IndexStream(6, 6, 0, label_balanced_weights(labels))
    draws = np.concatenate([stream.batch_indices(i) for i in range(500)])
    freq = np.bincount(draws, minlength=6) / draws.size
    np.testing.assert_allclose(freq, np.asarray(want) / np.sum(want), atol=0.01)  # 3000 draws: ~0.006 s.d.


def test_feed_resumes_from_its_position(random_features, tmp_path):
    """Cached features through the feed: fold 2 held out for eval; batches from position k equal the uninterrupted
    iterator's k-th on, and ``state()`` is the position."""
    c = small_config(tmp_path, **{"data.features": str(random_features), "data.fold": 2, "data.balanced": True})
    feed = open_feed(c)
    assert (feed.kind, feed.n_train, feed.n_classes, feed.labels, feed.has_eval) == ("taps", 64, 4, list("abcd"), True)
    it = feed.train_batches(0, None)
    run = [next(it) for _ in range(12)]  # 96 rows: past the first pass of 64
    assert it.state() == {"batches": 12} and gather_states(it) == [{"batches": 12}]
    resumed = feed.train_batches(7, {"hosts": [{"batches": 7}]})
    for ids, rows in run[7:]:
        ids2, rows2 = next(resumed)
        assert ids2 == ids and np.array_equal(rows2["x"], rows["x"]) and np.array_equal(rows2["labels"], rows["labels"])
    ev = list(feed.eval_iter())
    assert sum(int(b["mask"].sum()) for b in ev) == 16 and all(len(b["x"]) == 8 for b in ev)


# ----------------------------------------------------------------------------------------------------------------
# The compiled programs: memoised on the config


def test_compiled_steps_are_keyed_on_the_config(tmp_path, monkeypatch):
    """Run-only keys (workdir, the fold, logging, checkpoints) reuse the compiled steps; any other key, a
    hyper-parameter no code knows of yet included, gets new ones."""
    monkeypatch.setattr(T, "_STEPS_MEMO", {})
    base = common.base_config()
    for key in T.RUN_ONLY_KEYS:  # every excluded key is a real one (a typo would exclude nothing)
        node = base
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    mesh, shape = parallel.make_mesh(), (1, 2, 5, 32)
    c = small_config(tmp_path / "a")
    head = make_head(c.head.mode, 2, 32, 4)
    steps = T.cached_steps(c, mesh, head, 4, shape)
    run_only = {"data.fold": 3, "data.features": "/elsewhere", "log_every_steps": 7, "checkpoint.every_steps": 9,
                "epochs": 11, "wa.start_epoch": 5, "progress": True}
    assert T.cached_steps(small_config(tmp_path / "b", **run_only), mesh, head, 4, shape) is steps
    changed = {"aug.mixup_alpha": 3.0, "aug.time_mask": 2, "lr": 2e-4, "b2": 0.99, "lr_decay.factor": 0.5,
               "seed": 1, "loss": "softmax", "encoder_dtype": "bfloat16", "data.pool": 10}
    for key, value in changed.items():
        assert T.cached_steps(small_config(tmp_path / "a", **{key: value}), mesh, head, 4, shape) is not steps, key
    new = small_config(tmp_path / "a")
    new.new_hyper_parameter = 0.5
    assert T.cached_steps(new, mesh, head, 4, shape) is not steps
    assert T.cached_steps(c, mesh, head, 5, shape) is not steps  # steps per epoch (the lr schedule)
    assert T.cached_steps(c, mesh, make_head("tl_tr_1_8", 2, 32, 4), 4, shape) is not steps


# ----------------------------------------------------------------------------------------------------------------
# Augmentations


def _reference_targets(y_a, y_b, lam, mixed, eps):
    """The AST/Whisper-AT dataloader's label loop, literally (per example, with label indices)."""
    c = len(y_a)
    out = np.zeros(c) + eps / c
    if mixed:
        for k in np.nonzero(y_a)[0]:
            out[k] += lam * (1.0 - eps)
        for k in np.nonzero(y_b)[0]:
            out[k] += (1.0 - lam) * (1.0 - eps)
    else:
        for k in np.nonzero(y_a)[0]:
            out[k] = 1.0 - eps
    return out


@pytest.mark.slow
def test_mixup_and_label_smoothing_follow_the_reference():
    rng = np.random.default_rng(0)
    b, c = 64, 7
    x = jnp.asarray(rng.normal(size=(b, 3, 5, 4)), jnp.float32)
    y = (rng.random((b, c)) < 0.3).astype(np.float32)
    key = jax.random.PRNGKey(1)
    xm, t = aug.mixup(key, x, jnp.asarray(y), p=0.5, alpha=10.0, eps=0.1)
    # Recover each example's partner and lambda from the output, then check the targets against the reference.
    _, k_use, k_lam = jax.random.split(key, 3)
    perm = (np.arange(b) + 1) % b  # the partner: the next example of the batch (augment.partner)
    use = np.asarray(jax.random.uniform(k_use, (b,))) < 0.5
    lam = np.asarray(aug.sample_beta(k_lam, 10.0, (b,)))
    assert 10 < use.sum() < 54
    for i in range(b):
        li = lam[i] if use[i] else 1.0
        np.testing.assert_allclose(np.asarray(xm[i]), li * np.asarray(x[i]) + (1 - li) * np.asarray(x[perm[i]]),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(t[i]), _reference_targets(y[i], y[perm[i]], lam[i], use[i], 0.1),
                                   rtol=1e-6, atol=1e-7)
    x0, t0 = aug.mixup(key, x, jnp.asarray(y), p=0.0, eps=0.1)
    assert np.array_equal(np.asarray(x0), np.asarray(x))
    np.testing.assert_allclose(np.asarray(t0), np.where(y > 0, 0.9, 0.1 / c), rtol=1e-6)
    # Beta(10, 10): mean 1/2, s.d. sqrt(1/84) = 0.109 (20000 draws: s.e. of the mean 0.0008, of the s.d. ~0.0006).
    lam = np.asarray(aug.sample_beta(jax.random.PRNGKey(5), 10.0, (20000,)))
    assert abs(lam.mean() - 0.5) < 0.004 and abs(lam.std() - np.sqrt(1 / 84)) < 0.003


def test_time_mask_zeroes_one_span_shared_by_layers_and_channels():
    b, L, s, d = 4000, 2, 25, 3
    x = jnp.ones((b, L, s, d))
    m = np.asarray(aug.time_mask(jax.random.PRNGKey(0), x, 10))
    zero = m[:, 0, :, 0] == 0
    assert np.all((m == 0) == zero[:, None, :, None])  # the same steps for every layer and channel
    widths = zero.sum(1)
    for row, w in zip(zero[:200], widths[:200]):  # one contiguous span
        if w:
            first = int(np.argmax(row))
            assert row[first:first + w].all()
    # width = floor(U * 10): uniform on 0..9, mean 4.5 (4000 draws: s.e. 0.045).
    assert widths.max() == 9 and widths.min() == 0 and abs(widths.mean() - 4.5) < 0.2
    assert np.array_equal(np.asarray(aug.time_mask(jax.random.PRNGKey(0), x, 0)), np.asarray(x))


# ----------------------------------------------------------------------------------------------------------------
# Real tiny.en: the frozen backbone, online == cached, and learning


@pytest.fixture(scope="module")
def tone_data(tiny_en, tmp_path_factory):
    """2-s clips of four sound classes -> WAV files -> TFRecords (the data writer) -> tiny.en taps by
    scripts/extract_features.py (float32; and the same taps stored as float16). Returns the clips as the reader
    decodes them (16-bit FLAC round trip), their one-hot labels, ids, the features folder and the TFRecords."""
    import soundfile as sf

    from whisper_at_jax.data import ClipRecord, make_dataset, write_tfrecords

    audio, labels = make_sounds(16, 2.0, seed=0)
    d = tmp_path_factory.mktemp("tones")
    (d / "wav").mkdir()
    records = []
    for i, (x, y) in enumerate(zip(audio, labels)):
        clip_id = f"f{i % 4 + 1}-clip{i:02d}"  # fold 1..4 in the id, as ESC-50 names its files
        sf.write(d / "wav" / f"{clip_id}.wav", x, SR, subtype="PCM_16")
        records.append(ClipRecord(clip_id, str(d / "wav" / f"{clip_id}.wav"), (int(np.argmax(y)),)))
    names = ["low", "high", "noise", "clicks"]
    write_tfrecords(records, d / "tfr", "train", num_shards=2, clip_seconds=2.0, label_names=names)
    write_tfrecords(records[::4], d / "tfr", "eval", num_shards=1, clip_seconds=2.0, label_names=names)

    from whisper_at_jax.cli import extract_features

    assert extract_features.main(["--model", "tiny.en", "--tfrecords", str(d / "tfr"), "--split", "train",
                                  "--out", str(d / "float32"), "--clip_seconds", "2", "--pool", "10", "--dtype",
                                  "float32", "--batch_size", "16", "--fold_regex", r"^f(\d+)-"]) == 0
    src, meta, folds = T.open_features(d / "float32", "train")
    assert meta["steps"] == 10 and meta["labels"] == names and len(src) == 64
    w16 = FeatureWriter(d / "float16", "train", meta, shard_size=40, dtype="float16")
    w16.add(src.x.take(np.arange(len(src))), src.labels, src.ids, folds)
    w16.close()
    # The clips exactly as stored (the online path must see the same samples the features were made from).
    by_id = {}
    for b in make_dataset(d / "tfr", "train", batch_size=16, clip_samples=2 * SR, training=False, repeat=False):
        for i, x, y, m in zip(b["id"], b["audio"], b["labels"], b["mask"]):
            if m > 0.5:
                by_id[str(i)] = (x, y)
    ids = src.ids
    assert sorted(ids) == sorted(by_id) and np.array_equal(folds, [int(i[1]) for i in ids])
    audio = np.stack([by_id[i][0] for i in ids])
    labels = np.stack([by_id[i][1] for i in ids])
    return audio, labels, ids, d


@pytest.fixture(scope="module")
def tiny_steps(tiny_en, tone_data):
    """TL-TR on tiny.en taps of 2-s clips (pool 10 -> 10 steps), batch 8: the online step, the encoder alone and
    the cached step, each compiled once (on a 2-core CPU these compiles are most of this file's time)."""
    audio, labels, _, _ = tone_data
    c = small_config(Path("/unused"), **{"head.mode": "tl_tr_1_8", "data.pool": 10})
    mesh = parallel.make_mesh()
    head = make_head(c.head.mode, 4, 384, 4)
    steps = T.build_steps(c, mesh, head, T.make_optimizer(c, 10), (1, 4, 10, 384), tiny_en.dims)
    enc = jax.device_put(tiny_en.params["encoder"], parallel.replicated(mesh))
    state = steps.init()
    x, y = jnp.asarray(audio[:8]), jnp.asarray(labels[:8])
    taps = steps.raw_encode(enc, x)
    compiled = {"online": steps.online.lower(state, enc, x, y).compile(),
                "encode": steps.encode.lower(enc, x).compile(),
                "cached": steps.cached.lower(state, taps, y).compile()}
    return steps, compiled, enc, (x, y, taps)


def _count_prims(jaxpr, names) -> int:
    """Equations with a primitive in ``names``, counted through nested jaxprs (pjit, custom_jvp, ...)."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            n += 1
        for v in eqn.params.values():
            for j in (v if isinstance(v, (list, tuple)) else [v]):
                inner = getattr(j, "jaxpr", j)
                if hasattr(inner, "eqns"):
                    n += _count_prims(inner, names)
    return n


@pytest.mark.slow
def test_no_gradient_reaches_the_backbone(tiny_steps):
    steps, compiled, enc, (x, y, taps) = tiny_steps
    state = steps.init()

    # 1. What the step differentiates: the grads have exactly the head's leaves, and the encoder params are not
    #    among the step's outputs (the new state is the head state only).
    out_state, _ = jax.eval_shape(steps.raw_step, state, taps, y)
    assert jax.tree.structure(out_state["params"]) == jax.tree.structure(state["params"])
    assert "encoder" not in str(jax.tree.structure(out_state))
    assert len(compiled["online"].out_info[0]["params"]) == len(state["params"])

    # 2. The traced online step: its matmuls/convs are the encoder's forward plus the cached step's (head forward,
    #    backward); any backward pass through the encoder would add its transposed matmuls and convs.
    prims = {"dot_general", "conv_general_dilated"}
    online = jax.make_jaxpr(lambda s, e, a, l: steps.raw_step(s, steps.raw_encode(e, a), l))(state, enc, x, y)
    n_online = _count_prims(online.jaxpr, prims)
    n_encode = _count_prims(jax.make_jaxpr(steps.raw_encode)(enc, x).jaxpr, prims)
    n_cached = _count_prims(jax.make_jaxpr(steps.raw_step)(state, taps, y).jaxpr, prims)
    assert n_encode >= 4 * 8 + 2  # per block q, k, v, out, 2 attention einsums, 2 MLP; plus 2 convs
    assert n_online == n_encode + n_cached, (n_online, n_encode, n_cached)

    # 3. The compiled step's cost: online FLOPs = encoder forward + cached step (a backward pass through the
    #    encoder would add about twice the encoder's forward FLOPs).
    f_online, f_encode, f_cached = (float(compiled[k].cost_analysis()["flops"]) for k in ("online", "encode",
                                                                                           "cached"))
    assert abs(f_online - (f_encode + f_cached)) < 0.05 * f_encode, (f_online, f_encode, f_cached)


@pytest.mark.slow
def test_online_and_cached_give_the_same_loss(tiny_steps, tone_data):
    steps, compiled, enc, _ = tiny_steps
    audio, labels, ids, d = tone_data
    rows = np.arange(20, 28)  # the same 8 examples both ways (two classes)
    s_online, m_online = compiled["online"](steps.init(), enc, jnp.asarray(audio[rows]), jnp.asarray(labels[rows]))
    for dtype, tol in (("float32", 1e-5), ("float16", 2e-3)):
        src, _, _ = T.open_features(d / dtype, "train")
        assert [src.ids[i] for i in rows] == [ids[i] for i in rows]
        r = src.rows(rows)
        s_cached, m_cached = compiled["cached"](steps.init(), jnp.asarray(r["x"]), jnp.asarray(r["labels"]))
        # float32 cache: the same numbers through a separately compiled program (fusion order only: ~1e-7).
        # float16 cache: taps rounded to 11 bits (rel. 5e-4) before the head: the loss moves by ~1e-4.
        print(f"online vs cached ({dtype}): loss {float(m_online['loss']):.7f} vs {float(m_cached['loss']):.7f}")
        assert abs(float(m_online["loss"]) - float(m_cached["loss"])) <= tol * float(m_online["loss"]), dtype
        if dtype == "float32":
            _assert_same_first_adam_step(s_online, s_cached)


def _assert_same_first_adam_step(s_a: dict, s_b: dict) -> None:
    """Two first optimizer steps from the same init agree as far as their gradients do.

    After step 1, Adam's first moment is (1 - b1) g and the update is -lr g / (|g| + eps) (bias-corrected, fp32):
    bounded by lr and with slope at most lr / eps (at g = 0). So two steps whose gradients differ by dg may move a
    parameter apart by up to lr * min(2, |dg| / eps), plus the fp32 rounding of the update (a few ulp of lr) and of
    the parameter (2 ulp). The gradients come through separately compiled programs (fusion order only): equal to
    1e-5 of their largest entry.
    """
    c = small_config(Path("/unused"))
    lr, b1, eps = float(c.lr), float(c.b1), float(c.adam_eps)
    mu = lambda s: next(x.mu for x in s["opt_state"] if hasattr(x, "mu"))  # noqa: E731
    for ga, gb, pa, pb in zip(jax.tree.leaves(mu(s_a)), jax.tree.leaves(mu(s_b)), jax.tree.leaves(s_a["params"]),
                              jax.tree.leaves(s_b["params"])):
        ga, gb = np.asarray(ga, np.float64) / (1 - b1), np.asarray(gb, np.float64) / (1 - b1)
        np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-5 * np.abs(ga).max())
        pa, pb = np.asarray(pa), np.asarray(pb)
        bound = lr * np.minimum(2.0, np.abs(ga - gb) / eps) + 4 * np.spacing(np.float32(lr)) + 2 * np.spacing(np.abs(pa))
        assert np.all(np.abs(pa.astype(np.float64) - pb) <= bound), np.max(np.abs(pa - pb) - bound)


@pytest.mark.slow
def test_head_learns_real_tiny_en_features(tone_data, tmp_path):
    _, _, _, d = tone_data
    c = small_config(tmp_path / "run", **{
        "head.mode": "tl_tr_1_8", "data.features": str(d / "float16"), "data.fold": 1, "data.eval_split": "",
        "loss": "softmax", "data.multilabel": False, "aug.mixup_p": 0.0, "lr": 1e-3, "batch_size": 16,
        "eval_batch_size": 16, "steps_per_epoch": 6, "epochs": 5, "wa.start_epoch": 4, "wa.end_epoch": 5,
        "lr_decay.start_epoch": 4, "eval_every_epochs": 0, "log_every_steps": 1})
    r = T.train(c)
    losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "run" / "metrics.jsonl")
              if "train/loss" in line]
    assert len(losses) == 30
    print(f"learning: loss first 5 {np.mean(losses[:5]):.3f}, last 5 {np.mean(losses[-5:]):.3f}, "
          f"held-out accuracy {r['final_eval']['accuracy']:.3f}")
    # Softmax CE over 4 classes starts near ln 4 = 1.39; it should at least halve over 30 steps.
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    # 16 held-out clips (fold 1), chance 25%.
    assert r["final_eval"]["accuracy"] >= 0.75, r["final_eval"]
    assert r["averaged_epochs"] == 2


@pytest.mark.slow
def test_online_training_from_tfrecords_resumes_exports_and_evaluates(tiny_en, tone_data, tmp_path):
    import whisper_at_jax as wat
    from whisper_at_jax.data import make_dataset
    from whisper_at_jax.evaluate import compute_metrics

    _, _, _, d = tone_data
    work = tmp_path / "run"
    c = small_config(work, **{
        "mode": "online", "data.tfrecords": str(d / "tfr"), "data.clip_seconds": 2.0, "data.pool": 10,
        "data.balanced": True, "steps_per_epoch": 2, "epochs": 2, "checkpoint.every_steps": 2,
        "log_example_ids": True, "export": True, "wa.start_epoch": 1, "wa.end_epoch": 3})
    r1 = T.train(c, model=tiny_en)
    assert r1["start_step"] == 0 and r1["total_steps"] == 4
    c.epochs = 3
    r2 = T.train(c, model=tiny_en)  # resumes at step 4 from the checkpoint, with the reader's saved position
    assert r2["start_step"] == 4 and r2["averaged_epochs"] == 3
    # Steps 1-6 read the batches an uninterrupted reader yields (balanced sampling, seed 0, one host).
    it = make_dataset(d / "tfr", "train", batch_size=8, clip_samples=2 * SR, training=True, seed=0,
                      sampling="balanced")
    want = [[str(i) for i in next(it)["id"]] for _ in range(6)]
    got = _ids_by_step(work)
    assert [got[s][-1] for s in range(1, 7)] == want
    # Eval on the TFRecords' eval split (16 clips, every one scored once).
    assert r2["final_eval"]["n_classes_scored"] == 4

    # The export: our checkpoint (tiny.en + the averaged head) that load_model reads back.
    m = wat.load_model(work / "export")
    assert m.head_config == {"mode": "wa_mlp", "n_classes": 4, "n_layers": 4, "width": 384,
                             "labels": [[0, "", "low"], [1, "", "high"], [2, "", "noise"], [3, "", "clicks"]]}
    got, want = flatten_dict(m.head_params, sep="/"), flatten_dict(r2["head_params"], sep="/")
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k

    # scripts/evaluate.py on the export and cached taps (fold 1) == the head applied here.
    from whisper_at_jax.cli import evaluate as evaluate_script

    out = tmp_path / "metrics.json"
    assert evaluate_script.main(["--checkpoint", str(work / "export"), "--features", str(d / "float32"), "--split",
                                 "train", "--fold", "1", "--batch_size", "8", "--single_label", "--out",
                                 str(out)]) == 0
    src, _, folds = T.open_features(d / "float32", "train")
    rows = np.nonzero(folds == 1)[0]
    head = make_head("wa_mlp", 4, 384, 4)
    logits = head.apply({"params": m.head_params}, jnp.asarray(src.rows(rows)["x"]))
    want_m = compute_metrics(np.asarray(logits), src.labels[rows].astype(np.float32), multilabel=False)
    got_m = json.loads(out.read_text())
    for k in ("mAP", "mAUC", "accuracy"):
        assert abs(got_m[k] - want_m[k]) < 1e-6, k  # batch 8 on the mesh vs batch 16 here: same logits to ~1e-7


# ----------------------------------------------------------------------------------------------------------------
# Data parallelism: 4 devices == 1; 2 processes == 1


FOUR_VS_ONE = r"""
import json, sys
import numpy as np, jax, jax.numpy as jnp
from whisper_at_jax.configs import common
from whisper_at_jax import load_model, parallel, train as T
from whisper_at_jax.heads import make_head
from tests.test_train import make_sounds
assert jax.device_count() == 4
model = load_model("tiny.en", at_head=False)
c = common.base_config(); c.head.mode = "wa_mlp"; c.data.pool = 10; c.lr = 1e-3
audio, labels = make_sounds(2, 1.0, seed=1)  # 8 clips of 1 s -> 50 encoder frames -> 5 steps
out = {}
for n in (4, 1):
    mesh = parallel.make_mesh(jax.devices()[:n])
    head = make_head(c.head.mode, 4, 384, 4)
    steps = T.build_steps(c, mesh, head, T.make_optimizer(c, 10), (1, 4, 5, 384), model.dims)
    enc = jax.device_put(model.params["encoder"], parallel.replicated(mesh))
    x = jax.device_put(audio, parallel.data_sharding(mesh)); y = jax.device_put(labels, parallel.data_sharding(mesh))
    state = steps.init()
    p0 = jax.tree.leaves(jax.device_get(state["params"]))
    losses, gnorms = [], []
    for _ in range(3):
        state, m = steps.online(state, enc, x, y)
        losses.append(float(m["loss"])); gnorms.append(float(m["grad_norm"]))
    assert len(state["params"]["mlp_layer_1"]["kernel"].sharding.device_set) == n
    out[n] = (losses, gnorms, [np.asarray(a) for a in jax.tree.leaves(jax.device_get(state["params"]))], p0)
l4, g4, p4, p0 = out[4]
l1, g1, p1, _ = out[1]
upd = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(p1, p0)))
dupd = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(p4, p1)))
print(json.dumps({"loss_rel": max(abs(a - b) / b for a, b in zip(l4, l1)),
                  "gnorm_rel": max(abs(a - b) / b for a, b in zip(g4, g1)),
                  "param_max": max(float(np.max(np.abs(a - b))) for a, b in zip(p4, p1)),
                  "update_rel": dupd / upd, "lr": c.lr, "loss": l1}))
"""


@pytest.mark.slow
def test_four_devices_equal_one_device(compile_cache):
    r = subprocess.run([sys.executable, "-c", FOUR_VS_ONE], cwd=REPO, env=sub_env(compile_cache, 4),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print("4 devices vs 1:", res)
    # Only the order of the gradient all-reduce differs (4 partial sums vs 1): fp32 rounding. Losses and gradient
    # norms agree to ~1e-7 relative (measured 1.8e-7 on the loss). Params after 3 Adam steps: Adam divides by
    # sqrt(v), so where a gradient is near zero a rounding-level change moves m / sqrt(v) by a sizeable fraction of
    # one step (lr); the whole update vector still agrees to ~1e-4 relative. Bounds: loss and grad norm 1e-5
    # relative, update 1e-3 relative, any single param within 0.3 lr (measured with this WA-MLP head: 6e-8 abs,
    # update 5e-7 relative; with TL-TR, whose attention has more near-zero gradients: 0.1 lr in a few elements).
    assert res["loss_rel"] < 1e-5 and res["gnorm_rel"] < 1e-5, res
    assert res["update_rel"] < 1e-3, res
    assert res["param_max"] < 0.3 * res["lr"], res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(features: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train.py"), f"--config={REPO / 'configs' / 'esc50.py'}:tiny.en",
            f"--config.data.features={features}", f"--config.workdir={workdir}", "--config.data.fold=-1",
            "--config.data.eval_split=eval", "--config.data.multilabel=True", "--config.loss=bce",
            "--config.head.mode=wa_mlp", "--config.batch_size=8", "--config.eval_batch_size=8",
            "--config.steps_per_epoch=5", "--config.epochs=4", "--config.wa.start_epoch=3", "--config.wa.end_epoch=4",
            "--config.lr_decay.start_epoch=2", "--config.export=False", "--config.progress=False",
            "--config.log_every_steps=1", "--config.aug.mixup_p=0.5", "--config.data.balanced=True", *extra]


def _final(workdir: Path) -> dict:
    with np.load(workdir / "final_head.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_two_processes_equal_one(random_features, compile_cache, tmp_path):
    one = subprocess.run(_train_cmd(random_features, tmp_path / "one", "--config.checkpoint.every_steps=0"),
                         env=sub_env(compile_cache, 4), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen(_train_cmd(random_features, tmp_path / "two", "--config.checkpoint.every_steps=10",
                                         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                         f"--process_id={i}"),
                              env=sub_env(compile_cache, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert a.keys() == b.keys()
    # Same global mesh size (4 devices), same global batches (every host derives them from (seed, step)); the
    # cross-process all-reduce (gloo) may sum in another order: rounding only.
    print("2 processes vs 1: max param diff", max(float(np.max(np.abs(a[k] - b[k]))) for k in a))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    ra = json.loads((tmp_path / "one" / "result.json").read_text())
    rb = json.loads((tmp_path / "two" / "result.json").read_text())
    # Eval logits gathered from both hosts: the same metrics over all 24 eval clips.
    assert abs(ra["final_eval"]["mAP"] - rb["final_eval"]["mAP"]) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Preemption: SIGKILL mid-run, resume == uninterrupted


def last_logged_step(workdir: Path) -> int:
    """The newest step in the run's examples.jsonl (config.log_example_ids), 0 before the first."""
    log = workdir / "examples.jsonl"
    if not log.exists():
        return 0
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def stop_after(procs: list[subprocess.Popen], workdir: Path, step: int) -> int:
    """SIGSTOP every process once the run has logged ``step`` (the run is frozen from outside, no sleep hook in
    the trainer); returns the last logged step."""
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if last_logged_step(workdir) >= step:
            for p in procs:
                os.kill(p.pid, signal.SIGSTOP)
            return last_logged_step(workdir)
        time.sleep(0.002)
    pytest.fail("the run ended before it could be stopped mid-way")


def _ids_by_step(workdir: Path) -> dict[int, list[str]]:
    out = {}
    for line in open(workdir / "examples.jsonl"):
        rec = json.loads(line)
        out.setdefault(rec["step"], []).append(rec["ids"])
    return out


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(random_features, compile_cache, tmp_path):
    extra = ("--config.checkpoint.every_steps=3", "--config.log_example_ids=True")
    env = sub_env(compile_cache, 1)
    full = subprocess.run(_train_cmd(random_features, tmp_path / "full", *extra), env=env, capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    work = tmp_path / "killed"
    p = subprocess.Popen(_train_cmd(random_features, work, *extra), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    killed_at = stop_after([p], work, 10)  # frozen past checkpoint 9, before the end (step 20)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not (work / "final_head.npz").exists()

    resumed = subprocess.run(_train_cmd(random_features, work, *extra), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = json.loads((work / "result.json").read_text())["start_step"]
    print(f"SIGKILL after step {killed_at}, resumed from step {start}")
    assert 3 <= start <= killed_at and start % 3 == 0  # resumed from a checkpoint, not from scratch

    # Same final params, bit for bit (same program, same device, same data order).
    a, b = _final(tmp_path / "full"), _final(work)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # Same example sequence: every step's batch (including those the killed run did past its last checkpoint and
    # the resumed run redid) equals the uninterrupted run's.
    ref, got = _ids_by_step(tmp_path / "full"), _ids_by_step(work)
    assert sorted(got) == sorted(ref) == list(range(1, 21))
    for s, batches in got.items():
        assert all(ids == ref[s][0] for ids in batches), s
    assert any(len(v) == 2 for v in got.values())  # some steps really were done twice


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_features_are_clear_errors(random_features, tmp_path):
    import shutil

    d = tmp_path / "f"
    shutil.copytree(random_features, d)
    meta = json.loads((d / "meta.json").read_text())
    first = d / meta["splits"]["train"]["shards"][0]["file"]
    arr = np.load(first)
    np.save(first, arr[:-3])  # a shard cut short
    with pytest.raises(T.TrainError, match="cut short"):
        T.open_features(d, "train")
    with pytest.raises(T.TrainError, match="no split 'nope'"):
        T.open_features(random_features, "nope")
    with pytest.raises(T.TrainError, match="extract_features"):
        T.open_features(tmp_path / "missing", "train")
    with pytest.raises(T.TrainError, match="no example has that fold"):
        T.train(small_config(tmp_path / "w", **{"data.features": str(random_features), "data.fold": 9}))
    with pytest.raises(T.TrainError, match="mode"):
        T.train(small_config(tmp_path / "w", mode="both"))
    with pytest.raises(T.TrainError, match="non-finite"):
        FeatureWriter(tmp_path / "g", "train", {}).add(np.full((1, 2, 5, 32), np.nan), np.ones((1, 4)), ["x"])


# ----------------------------------------------------------------------------------------------------------------
# Configs and options


def _load_config(name: str, arg: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize("size,lr_tr,lr_512,epochs,wa", [
    # whisper_at_reference.md section 5 table (the reference's logs): lr, epochs, weight-averaging range.
    ("large-v1", 5e-5, 1e-4, 30, (16, 30)), ("large-v2", 5e-5, 1e-4, 30, (16, 30)),
    ("medium", 5e-5, 1e-4, 30, (16, 30)), ("small", 1e-4, 1e-4, 50, (21, 50)), ("base", 1e-4, 1e-4, 50, (21, 50)),
    ("tiny.en", 1e-4, 1e-4, 50, (21, 50))])
def test_configs_hold_the_paper_recipes(size, lr_tr, lr_512, epochs, wa):
    for arg, mode, lr in ((size, "tl_tr_1_8", lr_tr), (f"{size},512", "tl_down_tr_512_1_8", lr_512)):
        c = _load_config("audioset2m", arg)
        assert (c.model, c.head.mode, c.lr, c.epochs, (c.wa.start_epoch, c.wa.end_epoch)) == (size, mode, lr, epochs,
                                                                                              wa)
        assert (c.batch_size, c.b1, c.b2, c.weight_decay, c.epoch_fraction, c.loss) == (48, 0.95, 0.999, 5e-7, 0.1,
                                                                                        "bce")
        assert (c.lr_decay.start_epoch, c.lr_decay.every_epochs, c.lr_decay.factor) == (15, 5, 0.75)
        assert (c.aug.mixup_p, c.aug.mixup_alpha, c.aug.label_smoothing, c.aug.time_mask) == (0.5, 10.0, 0.1, 10)
        assert c.data.balanced and c.data.clip_seconds == 10.0 and c.data.pool == 20
    esc = _load_config("esc50", "base")
    assert (esc.loss, esc.data.multilabel, esc.data.clip_seconds, esc.data.pool, esc.data.fold) == ("softmax", False,
                                                                                                     5.0, 10, 1)
    assert _load_config("audioset20k", "tiny").data.balanced is False
    with pytest.raises(ValueError, match="no recipe"):
        _load_config("audioset2m", "huge")


@pytest.mark.slow
def test_bf16_encoder_option(tiny_en):
    audio, _ = make_sounds(1, 1.0, seed=2)
    enc = tiny_en.params["encoder"]
    f32 = jax.jit(T.make_encode_fn(tiny_en.dims, 80, 10, jnp.float32))(enc, audio)
    b16 = jax.jit(T.make_encode_fn(tiny_en.dims, 80, 10, jnp.bfloat16))(enc, audio)
    assert b16.dtype == jnp.float32 and b16.shape == f32.shape == (4, 4, 5, 384)
    # bf16 keeps 8 bits of mantissa (rel. 4e-3 per op); through 4 blocks the pooled taps stay within a few percent
    # of fp32 (relative Frobenius norm per layer).
    rel = np.linalg.norm(np.asarray(b16 - f32), axis=(2, 3)) / np.linalg.norm(np.asarray(f32), axis=(2, 3))
    assert rel.max() < 0.05, rel
