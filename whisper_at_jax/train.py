"""Frozen-backbone Whisper-AT head training: one readable trainer (big_vision style), config-driven.

Sections, in the order ``train()`` runs them:

1. mesh: a 1-D ``("data",)`` mesh over every device of every host (``parallel.py``);
2. data: one feed (:func:`whisper_at_jax.data.feed.open_feed`) for in-memory examples, cached pooled taps written
   once by ``scripts/extract_features.py`` (``data/features.py``) and TFRecords; its batches come from an iterator
   with ``next()`` and ``state()``, in a deterministic order, so a resumed run reads exactly the batches an
   uninterrupted one would;
3. head and optimizer: shapes by ``jax.eval_shape``, params initialised replicated; Adam(0.95, 0.999) with coupled
   L2 (``add_decayed_weights`` before ``scale_by_adam``, as ``torch.optim.Adam(weight_decay=...)``) and the
   reference's step decay;
4. the train step: ONE function ``step(state, taps, labels)`` (augment -> head -> loss -> grad w.r.t. the head
   params only -> update), jitted with explicit ``NamedSharding`` (batch on ``"data"``, state replicated) and the
   state donated. Online mode jits ``step(state, encode(encoder_params, audio), labels)``: the Whisper encoder
   runs inside the same compiled step under ``jax.lax.stop_gradient``; cached mode jits the step on stored taps.
   Same code, so the same loss for the same examples (tested). The compiled programs are memoised on the config
   itself (every key but :data:`RUN_ONLY_KEYS`);
5. checkpoints (``checkpoints.py``): Orbax, async saves every N steps, keep-last-N, resume from the newest intact
   one, a complete save on a preemption notice; the state holds params, optimizer state, step (= batches consumed
   = data position), base RNG key and the running weight average;
6. loop: one step per batch, then the periodic actions (:func:`every`): metrics to TensorBoard event files and
   ``metrics.jsonl``, weight averaging and eval (mAP / AUC / d' or accuracy, logits gathered across hosts) at epoch
   ends, checkpoints; then the final head and the export.

Differences from the reference (stated so results can be compared): mixup partners come from the global batch
(see ``augment.py``); an "epoch" is ``epoch_fraction`` of the training set rounded to whole steps
(``steps_per_epoch`` overrides); eval pads the last batch and masks it instead of dropping it; short clips are
zero-padded in audio (the reference pads the normalised log-mel with zeros).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from . import augment as aug
from . import parallel
from .audio import HOP_LENGTH, SAMPLE_RATE
from .data.examples import ExampleSource, TrainError
from .data.features import make_encode_fn, write_output
from .data.features import open_features  # noqa: F401 - public here too (scripts, tests)
from .data.feed import BatchIterator, Feed, gather_states, open_feed
from .checkpoints import Checkpoints, PreemptionWatch
from .checkpoints import Preempted  # noqa: F401 - public here too (scripts/train.py)
from .evaluate import compute_metrics
from .io_utils import atomic_path, atomic_write_bytes
from .jobs import EXIT_RESUMABLE
from .heads import make_head

logger = logging.getLogger("whisper_at_jax.train")

Array = jax.Array
PyTree = Any

#: ``scripts/train.py``'s exit status after a preemption checkpoint (sysexits' EX_TEMPFAIL: "retry later").
EXIT_PREEMPTED = EXIT_RESUMABLE


class NonFiniteError(TrainError):
    """A train step's loss or gradient norm was NaN or inf (names the step, the batch's example ids and the last
    good checkpoint)."""


# ----------------------------------------------------------------------------------------------------------------
# Optimizer


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable[[Array], Array]:
    """lr0 * factor ** k, k = number of milestones passed; milestones at epochs start, start+every, ...
    (MultiStepLR stepped per epoch: with start 15, epochs 1-15 at lr0, 16-20 at 0.75 lr0, ...)."""
    lr0, d = float(config.lr), config.lr_decay
    start, every, factor = int(d.start_epoch), int(d.every_epochs), float(d.factor)

    def schedule(count: Array) -> Array:
        epoch = count // steps_per_epoch  # 0-based epoch of this update
        k = jnp.where(epoch >= start, (epoch - start) // every + 1, 0)
        return lr0 * jnp.power(factor, k.astype(jnp.float32))

    return schedule


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(b1, b2) with coupled L2: ``torch.optim.Adam(weight_decay=wd)`` adds wd * param to the gradient
    before the moments, which in optax is ``add_decayed_weights`` BEFORE ``scale_by_adam`` (not AdamW)."""
    return optax.chain(
        optax.add_decayed_weights(float(config.weight_decay)),
        optax.scale_by_adam(b1=float(config.b1), b2=float(config.b2), eps=float(config.adam_eps)),
        optax.scale_by_learning_rate(lr_schedule(config, steps_per_epoch)),
    )


# ----------------------------------------------------------------------------------------------------------------
# The step


def loss_fn_for(kind: str) -> Callable[[Array, Array], Array]:
    if kind == "bce":  # BCEWithLogitsLoss(mean): mean over batch and classes
        return lambda logits, t: optax.sigmoid_binary_cross_entropy(logits, t).mean()
    if kind == "softmax":
        return lambda logits, t: optax.softmax_cross_entropy(logits, t).mean()
    raise TrainError(f"config.loss must be 'bce' (multi-label) or 'softmax' (single-label), got {kind!r}")


def make_train_step(head: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict
                    ) -> Callable[[dict, Array, Array], tuple[dict, dict]]:
    """The ONE train step on pooled taps: augment -> head -> loss -> grad (head params only) -> update."""
    loss_of = loss_fn_for(config.loss)
    a = config.aug

    def step(state: dict, taps: Array, labels: Array) -> tuple[dict, dict]:
        key = jax.random.fold_in(state["rng"], state["step"])
        taps = taps.astype(jnp.float32)
        x, targets = aug.augment(key, taps, labels, mixup_p=float(a.mixup_p), mixup_alpha=float(a.mixup_alpha),
                                 label_smoothing=float(a.label_smoothing), time_mask_width=int(a.time_mask))

        def loss(params):
            return loss_of(head.apply({"params": params}, x), targets)

        value, grads = jax.value_and_grad(loss)(state["params"])
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A non-finite loss or gradient leaves params and optimizer state as they were (the data position moves
        # on); the host then stops or counts the skipped batch (config.on_nonfinite).
        finite = jnp.isfinite(value) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new = dict(state, params=keep(params, state["params"]), opt_state=keep(opt_state, state["opt_state"]),
                   step=state["step"] + 1)
        return new, {"loss": value, "grad_norm": gnorm, "finite": finite}

    return step


def average_update(state: dict) -> dict:
    """Add the current head params to the running mean (one call per epoch in the averaging range)."""
    n = state["avg_count"].astype(jnp.float32)
    avg = jax.tree.map(lambda m, p: m + (p - m) / (n + 1.0), state["avg"], state["params"])
    return dict(state, avg=avg, avg_count=state["avg_count"] + 1)


def init_state(head: Any, tx: optax.GradientTransformation, seed: int, taps_shape: Sequence[int]) -> dict:
    """Fresh train state: head params (PyTorch-default init), optimizer state, step 0, base RNG key, average."""
    key = jax.random.PRNGKey(seed)
    k_init, k_train = jax.random.split(key)
    params = head.init(k_init, jnp.zeros((1,) + tuple(taps_shape[1:]), jnp.float32))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": k_train,
            "avg": jax.tree.map(jnp.zeros_like, params), "avg_count": jnp.zeros((), jnp.int32)}


@dataclasses.dataclass
class Steps:
    """The compiled functions of a run (built by :func:`build_steps`)."""

    mesh: Any
    state_sharding: Any
    init: Callable[[], dict]
    cached: Callable[[dict, Array, Array], tuple[dict, dict]]
    online: Callable[[dict, PyTree, Array, Array], tuple[dict, dict]] | None
    eval_cached: Callable[[PyTree, Array], Array]
    eval_online: Callable[[PyTree, PyTree, Array], Array] | None
    encode: Callable[[PyTree, Array], Array] | None
    average: Callable[[dict], dict]
    raw_step: Callable
    raw_encode: Callable | None

    def train_step(self, state: dict, x: Array, labels: Array, encoder_params: PyTree = None
                   ) -> tuple[dict, dict]:
        """One update: on audio through the encoder when ``encoder_params`` are given (online), else on taps."""
        if encoder_params is None:
            return self.cached(state, x, labels)
        return self.online(state, encoder_params, x, labels)


def build_steps(config: ml_collections.ConfigDict, mesh: Any, head: Any, tx: optax.GradientTransformation,
                taps_shape: Sequence[int], dims: Any = None) -> Steps:
    """jit everything with explicit shardings: batch on ``"data"``, state and encoder params replicated."""
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    abstract = jax.eval_shape(lambda: init_state(head, tx, int(config.seed), taps_shape))
    state_sh = jax.tree.map(lambda _: repl, abstract)
    step = make_train_step(head, tx, config)
    init = jax.jit(lambda: init_state(head, tx, int(config.seed), taps_shape), out_shardings=state_sh)
    cached = jax.jit(step, in_shardings=(state_sh, data, data), out_shardings=(state_sh, repl), donate_argnums=0)

    def logits(params, taps):
        return head.apply({"params": params}, taps.astype(jnp.float32))

    eval_cached = jax.jit(logits, in_shardings=(repl, data), out_shardings=data)
    online = eval_online = encode_jit = encode = None
    if dims is not None:
        from .api import compute_dtype

        encode = make_encode_fn(dims, dims.n_mels, int(config.data.pool), compute_dtype(config.encoder_dtype,
                                                                                           mesh.devices.flat))
        online = jax.jit(lambda s, e, audio, y: step(s, encode(e, audio), y),
                         in_shardings=(state_sh, repl, data, data), out_shardings=(state_sh, repl), donate_argnums=0)
        eval_online = jax.jit(lambda p, e, audio: logits(p, encode(e, audio)), in_shardings=(repl, repl, data),
                              out_shardings=data)
        encode_jit = jax.jit(encode, in_shardings=(repl, data), out_shardings=data)
    average = jax.jit(average_update, in_shardings=(state_sh,), out_shardings=state_sh, donate_argnums=0)
    return Steps(mesh, state_sh, init, cached, online, eval_cached, eval_online, encode_jit, average, step, encode)



#: Config keys no compiled program reads (files, data selection, the host loop's schedule, logging and outputs):
#: left out of the memo key of :func:`cached_steps`, so the folds of a cross-validation and a resumed run share
#: one program. Every other key, a new hyper-parameter included, is part of the key.
RUN_ONLY_KEYS = ("workdir", "data.features", "data.tfrecords", "data.train_split", "data.eval_split", "data.fold",
                 "data.labels", "data.strict", "data.balanced", "data.multilabel", "epochs", "wa", "checkpoint",
                 "on_nonfinite", "heartbeat_timeout_s", "log_every_steps", "eval_every_epochs", "log_example_ids",
                 "progress", "export")


def steps_key(config: ml_collections.ConfigDict, mesh: Any, head: Any, steps_per_epoch: int,
              taps_shape: Sequence[int], dims: Any = None) -> str:
    """The memo key of :func:`cached_steps`: the whole config but :data:`RUN_ONLY_KEYS`, and the arguments."""
    c = config.to_dict()
    for key in RUN_ONLY_KEYS:
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps({"config": c, "head": repr(head), "taps_shape": [int(i) for i in taps_shape],
                       "steps_per_epoch": int(steps_per_epoch), "dims": None if dims is None else str(dims),
                       "devices": [int(i) for i in mesh.device_ids.flat]}, sort_keys=True, default=repr)


_STEPS_MEMO: dict[str, Steps] = {}


def cached_steps(config: ml_collections.ConfigDict, mesh: Any, head: Any, steps_per_epoch: int,
                 taps_shape: Sequence[int], dims: Any = None) -> Steps:
    """:func:`build_steps` memoised on the config (:func:`steps_key`), so runs in one process with the same shapes
    and hyper-parameters (the folds of a cross-validation, a resumed run) compile once."""
    key = steps_key(config, mesh, head, steps_per_epoch, taps_shape, dims)
    if key not in _STEPS_MEMO:
        if len(_STEPS_MEMO) >= 8:
            _STEPS_MEMO.pop(next(iter(_STEPS_MEMO)))
        _STEPS_MEMO[key] = build_steps(config, mesh, head, make_optimizer(config, steps_per_epoch), taps_shape, dims)
    return _STEPS_MEMO[key]


# ----------------------------------------------------------------------------------------------------------------
# Logging


class MetricWriter:
    """JSONL log + TensorBoard event files, written by process 0 only."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(workdir / "metrics.jsonl", "a")
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:  # optional: the JSONL log has everything
                logger.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        rec = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, (int, float, np.floating, np.integer)) or (hasattr(v, "ndim") and v.ndim == 0):
                rec[prefix + k] = float(v)
                # TensorBoard cannot plot inf / NaN (tensorboardX warns on them): those values (d' of a perfectly
                # separated class is +inf) go to metrics.jsonl only, as JSON's Infinity / NaN.
                if self.tb is not None and np.isfinite(float(v)):
                    self.tb.add_scalar(prefix + k, float(v), int(step))
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


# ----------------------------------------------------------------------------------------------------------------
# Eval and checkpoints


def evaluate(steps: Steps, params: PyTree, batches: Iterator[dict], kind: str, multilabel: bool,
             encoder_params: PyTree = None) -> dict[str, float]:
    """Logits over eval batches ({"x", "labels", "mask"} per host), gathered across hosts, then metrics."""
    data_sh = parallel.data_sharding(steps.mesh)
    outs, labels, masks = [], [], []
    for rows in batches:
        x, y, m = (parallel.to_global(rows[k], data_sh) for k in ("x", "labels", "mask"))
        logits = steps.eval_online(params, encoder_params, x) if kind == "audio" else steps.eval_cached(params, x)
        outs.append(parallel.process_allgather(logits))
        labels.append(parallel.process_allgather(y))
        masks.append(parallel.process_allgather(m))
    if not outs:
        raise TrainError("the eval set is empty")
    keep = np.concatenate(masks) > 0.5
    return compute_metrics(np.concatenate(outs)[keep], np.concatenate(labels)[keep], multilabel=multilabel)


def label_rows(labels: Sequence[str], n_classes: int) -> list[list[Any]]:
    """Class names -> the checkpoint's ``[[index, mid, display_name], ...]``: AudioSet names or MIDs get both from
    the AudioSet ontology; other names get an empty MID; no names at all get the checkpoint's defaults."""
    from .convert.at_head import default_labels

    labels = [str(x) for x in labels]
    if not labels:
        return default_labels(n_classes)
    if len(labels) != n_classes:
        raise TrainError(f"{len(labels)} class names for {n_classes} classes")
    if n_classes == 527:
        ref = default_labels(527)
        known = {r[2]: r for r in ref} | {r[1]: r for r in ref if r[1]}
        if all(x in known for x in labels):
            return [[i, known[x][1], known[x][2]] for i, x in enumerate(labels)]
    return [[i, "", x] for i, x in enumerate(labels)]


# ----------------------------------------------------------------------------------------------------------------
# The trainer


def steps_per_epoch_for(config: ml_collections.ConfigDict, n_train: int) -> int:
    if int(config.get("steps_per_epoch", 0) or 0) > 0:
        return int(config.steps_per_epoch)
    return max(1, int(round(float(config.epoch_fraction) * n_train / int(config.batch_size))))


def every(period: int, n: int, last: int | None = None) -> bool:
    """Whether a periodic action falls after count ``n``: at each multiple of ``period`` (0: never), and at ``last``."""
    return (period > 0 and n % period == 0) or n == last


def _model_and_taps_shape(config: ml_collections.ConfigDict, feed: Feed, model: Any) -> tuple[Any, tuple[int, ...]]:
    """The Whisper model (loaded when online mode or the export needs it and none was given) and the shape
    [1, L, S, D] of one example's pooled taps (checked against the model)."""
    if config.mode == "online" or config.get("export", False):
        if model is None:
            from .api import load_model

            model = load_model(config.model, at_head=False)
    dims = model.dims if model is not None else None
    if config.mode == "online":
        frames = int(round(float(config.data.clip_seconds) * SAMPLE_RATE)) // HOP_LENGTH
        if frames % 2 or frames // 2 % int(config.data.pool) or frames > 2 * dims.n_audio_ctx:
            raise TrainError(f"clip_seconds={config.data.clip_seconds} gives {frames} mel frames: need an even "
                             f"number <= {2 * dims.n_audio_ctx} whose half is a multiple of pool={config.data.pool}")
        return model, (1, dims.n_audio_layer, frames // 2 // int(config.data.pool), dims.n_audio_state)
    taps_shape = (1,) + tuple(feed.example_shape)
    if dims is not None and (taps_shape[1], taps_shape[3]) != (dims.n_audio_layer, dims.n_audio_state):
        raise TrainError(f"features have {taps_shape[1]} layers of width {taps_shape[3]}, but config.model "
                         f"{config.model!r} has {dims.n_audio_layer} of {dims.n_audio_state}")
    return model, taps_shape


class _Run:
    """One run's loop over its batches: a train step per batch, then the periodic actions (log, weight averaging
    and eval at epoch ends, checkpoint); then the final head and the outputs (:meth:`finish`)."""

    def __init__(self, config: ml_collections.ConfigDict, feed: Feed, steps: Steps, encoder_params: PyTree,
                 ckpt: Checkpoints | None, steps_per_epoch: int, state: dict, start: int, batches: BatchIterator):
        self.config, self.feed, self.steps, self.enc, self.ckpt = config, feed, steps, encoder_params, ckpt
        self.spe, self.total, self.start = steps_per_epoch, int(config.epochs) * steps_per_epoch, start
        self.state, self.batches, self.metrics = state, batches, None
        self.workdir, self.is_main = Path(config.workdir), jax.process_index() == 0
        self.schedule = lr_schedule(config, steps_per_epoch)
        self.data_sh = parallel.data_sharding(steps.mesh)
        self.result: dict[str, Any] = {"steps_per_epoch": steps_per_epoch, "total_steps": self.total,
                                       "start_step": start, "skipped_batches": 0}
        self.writer = MetricWriter(self.workdir, self.is_main)
        self.bar, self.t0, self.n0 = None, time.perf_counter(), start
        # Each action runs after the steps that are multiples of its period, and after the last step.
        self.periodic: list[tuple[int, Callable[[int], None]]] = [
            (int(config.log_every_steps), self.log), (steps_per_epoch, self.end_of_epoch)]
        if ckpt is not None:
            self.periodic.append((int(config.checkpoint.every_steps), self.save))

    def loop(self) -> None:
        c = self.config
        ids_log = open(self.workdir / "examples.jsonl", "a") if (self.is_main and c.get("log_example_ids")) else None
        if self.is_main and c.get("progress", True):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.start, unit="step", dynamic_ncols=True)
        self.t0, self.n0 = time.perf_counter(), self.start
        watch = PreemptionWatch()
        pending = None  # the previous step's (step, ids, metrics): checked one step late so the host never waits
        try:
            for step in range(self.start, self.total):
                ids, rows = next(self.batches)
                x, y = (parallel.to_global(rows[k], self.data_sh) for k in ("x", "labels"))
                self.state, self.metrics = self.steps.train_step(self.state, x, y, self.enc)
                done = step + 1
                self.check_finite(pending)
                pending = (done, ids, self.metrics)
                if step == self.start:  # the first step compiles: leave it out of the examples/s windows
                    jax.block_until_ready(self.metrics)
                    self.t0, self.n0 = time.perf_counter(), done
                if ids_log is not None:
                    ids_log.write(json.dumps({"step": done, "ids": ids}) + "\n")
                    ids_log.flush()
                if self.bar is not None:
                    self.bar.update(1)
                for period, action in self.periodic:
                    if every(period, done, self.total):
                        action(done)
                if done < self.total and watch.reached(done):
                    self.preempted(done)
            self.check_finite(pending)
            if self.ckpt is not None:
                self.ckpt.wait()
        finally:
            watch.close()
            if self.bar is not None:
                self.bar.close()
            if ids_log is not None:
                ids_log.close()

    def log(self, done: int) -> None:
        m = {k: float(v) for k, v in jax.device_get(self.metrics).items() if k != "finite"}
        m["lr"] = float(self.schedule(jnp.asarray(done - 1)))
        if done > self.n0:  # examples/s since the last log (the compiling first step excluded)
            m["examples_per_s"] = (done - self.n0) * int(self.config.batch_size) / (time.perf_counter() - self.t0)
            self.result["examples_per_s"] = m["examples_per_s"]
        self.writer.write(done, m, prefix="train/")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", ex_s=f"{m.get('examples_per_s', 0.0):.1f}")
        self.result["loss"] = float(m["loss"])
        self.t0, self.n0 = time.perf_counter(), done

    def end_of_epoch(self, done: int) -> None:
        """Add the params to the weight average in the averaging epochs; eval every ``eval_every_epochs``."""
        epoch, wa = done // self.spe, self.config.wa  # the 1-based epoch just finished
        if 0 < int(wa.start_epoch) <= epoch <= int(wa.end_epoch):
            self.state = self.steps.average(self.state)
        if self.feed.has_eval and every(int(self.config.get("eval_every_epochs", 1) or 0), epoch):
            met = self.evaluate(self.state["params"])
            self.writer.write(done, {**met, "epoch": epoch}, prefix="eval/")
            self.result["eval"] = met
            self.t0, self.n0 = time.perf_counter(), done  # eval time is not training throughput

    def save(self, done: int) -> None:
        self.ckpt.save(self.state, done, gather_states(self.batches), force=done == self.total)

    def preempted(self, done: int) -> None:
        """A preemption notice: a complete checkpoint at ``done``, then :class:`~.checkpoints.Preempted`."""
        if self.ckpt is None:
            logger.error("preempted at step %d with checkpoints off (checkpoint.every_steps=0): nothing saved", done)
            raise TrainError(f"preempted at step {done}; checkpoint.every_steps=0, so the run is not resumable")
        self.ckpt.save_and_stop(self.state, done, lambda: gather_states(self.batches))

    def evaluate(self, params: PyTree) -> dict[str, float]:
        return evaluate(self.steps, params, self.feed.eval_iter(), self.feed.kind, bool(self.config.data.multilabel),
                        self.enc)

    def check_finite(self, pending: tuple[int, list[str], dict] | None) -> None:
        """A step whose loss or gradient norm was not finite: a :class:`NonFiniteError`, or with
        ``config.on_nonfinite="skip"`` a warning and a count."""
        if pending is None or bool(jax.device_get(pending[2]["finite"])):
            return
        s_, ids_, m_ = pending
        loss_, gnorm_ = float(jax.device_get(m_["loss"])), float(jax.device_get(m_["grad_norm"]))
        if str(self.config.get("on_nonfinite", "stop")) == "skip":
            self.result["skipped_batches"] += 1
            logger.warning("step %d: loss %s, grad norm %s: batch skipped (%d so far); example ids: %s", s_, loss_,
                           gnorm_, self.result["skipped_batches"], ", ".join(ids_))
            return
        where = self.ckpt.last_good() if self.ckpt is not None else "none (checkpoints are off)"
        raise NonFiniteError(f"step {s_}: loss {loss_}, gradient norm {gnorm_} (not finite); the step was not "
                             f"applied. Example ids of the batch: {', '.join(ids_)}. Last good checkpoint: {where}. "
                             "Set config.on_nonfinite='skip' to skip such batches.")

    def finish(self, model: Any, taps_shape: Sequence[int]) -> dict[str, Any]:
        """The final head (the weight average when any epoch was averaged): final eval, then (process 0) the head,
        the export and ``result.json``."""
        n_avg = int(jax.device_get(self.state["avg_count"]))
        final = self.state["avg"] if n_avg > 0 else self.state["params"]
        self.result["averaged_epochs"] = n_avg
        if self.feed.has_eval:
            met = self.evaluate(final)
            self.writer.write(self.total, met, prefix="final/")
            self.result["final_eval"] = met
        final_np = jax.tree.map(np.asarray, jax.device_get(final))
        self.result["head_params"] = final_np
        if self.is_main:
            self.write_outputs(final_np, model, taps_shape)
        self.writer.close()
        if self.ckpt is not None:
            self.ckpt.close()
        return self.result

    def write_outputs(self, final_np: PyTree, model: Any, taps_shape: Sequence[int]) -> None:
        c, workdir, n_classes = self.config, self.workdir, self.feed.n_classes

        def write_head() -> None:
            with atomic_path(workdir / "final_head.npz", suffix=".tmp.npz") as tmp:
                np.savez(tmp, **flatten_dict(final_np, sep="/"))

        write_output(workdir / "final_head.npz", write_head)
        if c.get("export", False):
            from .convert import save_checkpoint

            labels = list(c.data.get("labels") or self.feed.labels or [])
            head_config = {"mode": c.head.mode, "n_classes": n_classes, "n_layers": taps_shape[1],
                           "width": taps_shape[3], "labels": label_rows(labels, n_classes)}
            write_output(workdir / "export", lambda: save_checkpoint(
                workdir / "export", model.dims, jax.device_get(model.params), model.tokenizer_file,
                source=model.source, whisper_meta=model.whisper_meta, head_params=final_np, head_config=head_config,
                overwrite=True))
            self.result["export"] = str(workdir / "export")
        write_output(workdir / "result.json", lambda: atomic_write_bytes(workdir / "result.json", json.dumps(
            {k: v for k, v in self.result.items() if k != "head_params"}, indent=1, default=float).encode()))


def train(config: ml_collections.ConfigDict, *, train_source: ExampleSource | None = None,
          eval_source: ExampleSource | None = None, model: Any = None) -> dict[str, Any]:
    """Run (or resume) the training run described by ``config``; returns a summary and the final head params.

    ``train_source`` / ``eval_source`` replace the configured data with in-memory examples (``kind="audio"`` for
    online mode, ``"taps"`` for cached); ``model`` is a loaded ``WhisperModel`` (else ``config.model`` is loaded
    when online mode or the export needs it).
    """
    if config.mode not in ("online", "cached"):
        raise TrainError(f"config.mode must be 'online' or 'cached', got {config.mode!r}")
    loss_fn_for(config.loss)  # validate early
    on_nonfinite = str(config.get("on_nonfinite", "stop"))
    if on_nonfinite not in ("stop", "skip"):
        raise TrainError(f"config.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    mesh = parallel.make_mesh()
    for key in ("batch_size", "eval_batch_size"):
        if int(config[key]) % mesh.devices.size:
            raise TrainError(f"config.{key}={config[key]} does not split over {mesh.devices.size} devices")

    feed = open_feed(config, train_source, eval_source)
    spe = steps_per_epoch_for(config, feed.n_train)
    model, taps_shape = _model_and_taps_shape(config, feed, model)

    from .api import compute_dtype

    head = make_head(config.head.mode, taps_shape[1], taps_shape[3], feed.n_classes,
                     dtype=compute_dtype(config.head.dtype))
    online = config.mode == "online"
    steps = cached_steps(config, mesh, head, spe, taps_shape, model.dims if online else None)
    enc_params = jax.device_put(model.params["encoder"], parallel.replicated(mesh)) if online else None

    run_id = {"head_mode": str(config.head.mode), "n_classes": int(feed.n_classes),
              "taps_shape": list(taps_shape[1:])}
    ckpt = Checkpoints(Path(config.workdir), config, run_id) if int(config.checkpoint.every_steps) > 0 else None
    restored = ckpt.restore(jax.eval_shape(steps.init), steps.state_sharding) if ckpt is not None else None
    state, start, saved = restored if restored is not None else (steps.init(), 0, None)
    if restored is not None:
        logger.info("resumed from step %d", start)
    run = _Run(config, feed, steps, enc_params, ckpt, spe, state, start, feed.train_batches(start, saved))
    run.loop()
    return run.finish(model, taps_shape)
