"""Training checkpoints: Orbax saves, resuming from the newest intact one, and saving on a preemption notice.

A checkpoint is a step directory of Orbax's ``CheckpointManager`` with two items: ``state`` (params, optimizer
state, step, base RNG key, weight average) and ``data`` (the data position of every host and the run's identity:
head mode, class count, taps shape). Orbax writes a step to a temporary directory and renames it when complete, so
an unfinished save is never taken for a checkpoint; a step directory whose files were later lost or truncated is
found by reading it, set aside as ``<step>.broken``, and the run resumes from the newest intact one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_collections

from .data.examples import TrainError
from .jobs import StopRequest

logger = logging.getLogger("whisper_at_jax.checkpoints")

#: Orbax's marker of a finalized step directory (written last, after every item's own marker).
COMMIT_MARKER = "commit_success.txt"


class Preempted(Exception):
    """The run stopped on a preemption notice after saving a complete checkpoint at ``step`` (resumable there)."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"preempted, resumable at step {step} (checkpoint {checkpoint})")
        self.step, self.checkpoint = int(step), checkpoint


class PreemptionWatch:
    """Whether the run should stop at step ``n`` for a preemption notice.

    With the JAX distributed client, JAX's preemption service (which catches SIGTERM, and Cloud TPU's maintenance
    notice) propagates a notice on any host to all of them and ``reached_preemption_sync_point`` names one step that
    every host reaches; it must be asked at every step. A single process catches SIGTERM itself; the handler is
    one-shot, so a second SIGTERM kills the process the default way (an unfinished Orbax save is a temporary
    directory that is never mistaken for a checkpoint).
    """

    def __init__(self) -> None:
        from jax._src import distributed

        self.distributed = distributed.global_state.client is not None
        self.stop = None if self.distributed else StopRequest()

    def reached(self, step: int) -> bool:
        if self.distributed:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self.stop.requested

    def close(self) -> None:
        if self.stop is not None:
            self.stop.close()


def step_problem(step_dir: Path) -> str | None:
    """Why a step directory is not a complete checkpoint, or None (the full check is reading it)."""
    if not (step_dir / COMMIT_MARKER).is_file():
        return f"it has no {COMMIT_MARKER} (a save that never finished)"
    for item in ("state", "data"):
        if not (step_dir / item / COMMIT_MARKER).is_file():
            return f"its {item!r} item has no {COMMIT_MARKER}"
    return None


def intact_steps(root: Path) -> list[int]:
    """The steps under ``root`` whose directories look complete (:func:`step_problem`)."""
    return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit() and step_problem(d) is None)


class Checkpoints:
    """One run's checkpoint folder (``WORKDIR/ckpt``): saves every ``checkpoint.every_steps`` steps (async unless
    ``checkpoint.async_save`` is off), keeps the last ``checkpoint.keep``; ``run`` is the run's identity, saved with
    every checkpoint and checked on resume."""

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, run: Mapping[str, Any]):
        import orbax.checkpoint as ocp

        c = config.checkpoint
        opts = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, int(c.every_steps)),
            preservation_policy=ocp.checkpoint_managers.LatestN(int(c.keep)),
            enable_async_checkpointing=bool(c.get("async_save", True)),
        )
        self.root, self.run = (workdir / "ckpt").absolute(), dict(run)
        try:
            self.mngr = ocp.CheckpointManager(self.root, options=opts)
        except OSError as e:
            raise TrainError(f"checkpoint folder {self.root} cannot be opened: {e}") from e

    @contextlib.contextmanager
    def _io(self, step: int | None = None) -> Iterator[None]:
        """A failed (or failed async) save -> TrainError naming the folder and the checkpoints that stay intact."""
        try:
            yield
        except TrainError:
            raise
        except Exception as e:  # noqa: BLE001 - tensorstore / orbax raise several types for the same disk error
            what = f"saving checkpoint {step}" if step is not None else "finishing a checkpoint save"
            raise TrainError(f"{what} in {self.root} failed ({type(e).__name__}: {str(e)[:300]}); disk full or "
                             f"read-only? intact checkpoints there: {intact_steps(self.root) or 'none'}") from e

    def save(self, state: dict, step: int, data_state: list[dict], force: bool = False) -> None:
        """Save ``state`` at ``step`` with every host's data position (asynchronously unless configured off)."""
        import orbax.checkpoint as ocp

        with self._io(step):
            self.mngr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"batches_consumed": int(step), "hosts": data_state, "run": self.run})),
                force=force)

    def wait(self) -> None:
        """Block until the pending save is final (its failure -> TrainError)."""
        with self._io():
            self.mngr.wait_until_finished()

    def last_good(self) -> str:
        """The newest finished checkpoint's path, for error messages."""
        self.mngr.wait_until_finished()
        last = self.mngr.latest_step()
        return str(self.root / str(last)) if last is not None else "none (no checkpoint saved)"

    def save_and_stop(self, state: dict, step: int, data_state: Callable[[], list[dict]]) -> None:
        """On a preemption notice: save (unless this step's periodic save is already under way), wait until it is
        final, then raise :class:`Preempted`."""
        if self.mngr.latest_step() != step:
            self.save(state, step, data_state(), force=True)
        with self._io(step):
            self.mngr.wait_until_finished()
        self.mngr.close()
        path = self.root / str(step)
        logger.warning("preempted, resumable at step %d (%s)", step, path)
        raise Preempted(step, path)

    def restore(self, abstract: dict, state_sharding: Any) -> tuple[dict, int, dict] | None:
        """(state, step, data item) of the newest intact checkpoint, or None when there is none.

        Broken ones (unfinished, a file missing or truncated) are skipped with a warning naming them and set aside
        as ``<step>.broken``; a checkpoint of another run (head mode, classes, taps shape) is a :class:`TrainError`,
        and so is a folder whose checkpoints are all broken (never a silent start from step 0)."""
        restored, broken = self._newest_intact(abstract, state_sharding)
        self._set_aside(broken)
        return restored

    def _newest_intact(self, abstract: dict, state_sharding: Any) -> tuple[tuple[dict, int, dict] | None, list[Path]]:
        try:
            names = [p.name for p in self.root.iterdir()]
        except OSError as e:
            raise TrainError(f"checkpoint folder {self.root} is unreadable: {e}") from e
        for name in names:
            if ".orbax-checkpoint-tmp" in name:
                logger.warning("checkpoint folder %s: ignoring %s, a save that never finished", self.root, name)
        finished = set(int(s) for s in self.mngr.all_steps())
        candidates = sorted(finished | {int(n) for n in names if n.isdigit()}, reverse=True)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                              state_sharding)
        skipped = []
        for step in candidates:
            step_dir = self.root / str(step)
            state, data, why = self._read(step, target)
            if why is not None:
                logger.warning("skipping checkpoint %s: %s", step_dir, why)
                skipped.append((step_dir, why))
                continue
            if int(data["batches_consumed"]) != int(state["step"]):
                raise TrainError(f"checkpoint {step_dir}: data position {data['batches_consumed']} and step "
                                 f"{int(state['step'])} disagree")
            if skipped:
                logger.warning("resuming from checkpoint %d, the newest intact one", step)
            return (state, int(step), data), [d for d, _ in skipped]
        if skipped:
            raise TrainError(f"checkpoint folder {self.root} holds checkpoints but none is intact; not starting from "
                             "step 0 (move the folder away to start afresh): " +
                             "; ".join(f"{d}: {w}" for d, w in skipped))
        return None, []

    def _read(self, step: int, target: dict) -> tuple[dict | None, dict | None, str | None]:
        """(state, data, None) of one step, or (.., .., why it is broken); another run's checkpoint raises."""
        import orbax.checkpoint as ocp

        step_dir = self.root / str(step)
        why = step_problem(step_dir)
        if why is not None:
            return None, None, why
        try:
            data = dict(self.mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"])
        except Exception as e:  # noqa: BLE001 - any read failure means this step is broken
            return None, None, f"its data item is unreadable ({type(e).__name__}: {str(e)[:200]})"
        saved = data.get("run")
        if saved is not None and dict(saved) != self.run:
            diff = {k: (saved.get(k), self.run.get(k)) for k in set(saved) | set(self.run)
                    if saved.get(k) != self.run.get(k)}
            raise TrainError(f"checkpoint {step_dir} is of another run: " + ", ".join(
                f"{k} {a!r} there, {b!r} in this config" for k, (a, b) in sorted(diff.items())) +
                " (use another workdir, or the config it was trained with)")
        try:
            state = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except Exception as e:  # noqa: BLE001
            return None, None, f"its state is unreadable ({type(e).__name__}: {str(e)[:200]})"
        return state, data, None

    def _set_aside(self, broken: Sequence[Path]) -> None:
        """Rename broken step directories to ``<step>.broken`` (kept for inspection) so new saves can take their
        steps; process 0 renames, every host waits for it, then the manager re-reads the folder."""
        if not broken:
            return
        if jax.process_index() == 0:
            for d in broken:
                dest = d.with_name(d.name + ".broken")
                k = 1
                while dest.exists():
                    dest, k = d.with_name(f"{d.name}.broken{k}"), k + 1
                os.replace(d, dest)
                logger.warning("moved the broken checkpoint %s to %s", d, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("whisper_at_jax: broken checkpoints set aside")
        self.mngr.reload()

    def close(self) -> None:
        self.mngr.close()
