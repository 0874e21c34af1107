"""Preemption: SIGTERM mid-run saves a checkpoint at the step every host agrees on, exits with
``train.EXIT_PREEMPTED``, and the re-run resumes there to the uninterrupted run's final head, bit for bit; with one
process and with two (gloo), where only one process is signalled. The run is frozen with SIGSTOP while the test
reads its step, so no sleep hook is needed in the trainer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_train import (_final, _free_port, _train_cmd, compile_cache, random_features,  # noqa: F401
                        stop_after, sub_env)

from whisper_at_jax.checkpoints import step_problem
from whisper_at_jax.train import EXIT_PREEMPTED

EXTRA = ("--config.steps_per_epoch=40", "--config.epochs=4", "--config.checkpoint.every_steps=25",
         "--config.log_example_ids=True")
TOTAL = 160


def _ckpt_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit())


def _check_preempted(err: str, workdir: Path, seen: int) -> int:
    m = re.search(r"preempted, resumable at step (\d+)", err)
    assert m, err[-3000:]
    n = int(m.group(1))
    assert seen <= n < TOTAL  # not a step the run had not reached, not the end
    assert _ckpt_steps(workdir)[-1] == n, (_ckpt_steps(workdir), n)  # the newest checkpoint is the agreed step
    assert not (workdir / "final_head.npz").exists()
    return n


@pytest.fixture(scope="module")
def uninterrupted(random_features, compile_cache, tmp_path_factory) -> dict:  # noqa: F811
    """The final head of the single-process run without interruption."""
    work = tmp_path_factory.mktemp("full")
    full = subprocess.run(_train_cmd(random_features, work, *EXTRA), env=sub_env(compile_cache, 1),
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    return _final(work)


def _resume_equals(uninterrupted: dict, features: Path, work: Path, env: dict) -> str:  # noqa: F811
    """Re-run the command in ``work``: it finishes on the uninterrupted run's head, bit for bit; returns stderr."""
    resumed = subprocess.run(_train_cmd(features, work, *EXTRA), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = _final(work)
    for k in uninterrupted:
        assert np.array_equal(uninterrupted[k], b[k]), k
    return resumed.stderr


def _sigterm_after_step_30(features: Path, work: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """Start the run, freeze it once it has logged step 30, send SIGTERM, let it go on; -> (process, step seen)."""
    p = subprocess.Popen(_train_cmd(features, work, *EXTRA), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seen = stop_after([p], work, 30)
    os.kill(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGCONT)
    return p, seen


@pytest.mark.slow
def test_sigterm_saves_and_resumes_exactly(uninterrupted, random_features, compile_cache, tmp_path):  # noqa: F811
    env = sub_env(compile_cache, 1)
    work = tmp_path / "pre"
    p, seen = _sigterm_after_step_30(random_features, work, env)
    _, err = p.communicate(timeout=300)
    assert p.returncode == EXIT_PREEMPTED, err[-3000:]
    n = _check_preempted(err, work, seen)
    print(f"SIGTERM after step {seen}: checkpoint at step {n}, checkpoints {_ckpt_steps(work)}")

    _resume_equals(uninterrupted, random_features, work, env)
    assert json.loads((work / "result.json").read_text())["start_step"] == n


@pytest.mark.slow
def test_second_sigterm_during_the_save_leaves_no_false_checkpoint(uninterrupted, random_features, compile_cache,
                                                                    tmp_path):  # noqa: F811
    """A second SIGTERM as soon as the preemption save has begun (its folder appears) kills the run mid-save; what
    it leaves is a temporary folder that the re-run ignores (or, had the save finished, a complete checkpoint),
    never a step folder that looks complete but is not: the re-run resumes from the newest intact checkpoint to the
    uninterrupted run's head."""
    env = sub_env(compile_cache, 1)
    work = tmp_path / "pre"
    ckpt = work / "ckpt"
    p, seen = _sigterm_after_step_30(random_features, work, env)
    deadline, saving = time.time() + 120, []
    while not saving and p.poll() is None and time.time() < deadline:  # the save of step >= seen begins
        saving = [n for n in os.listdir(ckpt) if n.split(".")[0].isdigit() and int(n.split(".")[0]) >= seen]
    if saving:
        os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert saving and p.returncode == -signal.SIGTERM, (saving, p.returncode, err[-3000:])
    assert "preempted, resumable" not in err
    left = sorted(os.listdir(ckpt))
    complete = [int(n) for n in left if n.isdigit() and int(n) >= seen]
    print(f"second SIGTERM while saving {saving} (after step {seen}): left {left}")
    # Every step folder left is complete by Orbax's marker; the one being saved is (unless it finished) a
    # temporary folder, which the re-run names and ignores.
    assert all(step_problem(ckpt / n) is None for n in left if n.isdigit())
    err = _resume_equals(uninterrupted, random_features, work, env)
    start = json.loads((work / "result.json").read_text())["start_step"]
    if complete:
        assert start == complete[-1]
    else:
        assert start == 25 and "a save that never finished" in err, err[-3000:]


def _two(features: Path, workdir: Path, env: dict, *extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen(_train_cmd(features, workdir, *EXTRA, *extra, f"--coordinator_address=127.0.0.1:{port}",
                                        "--num_processes=2", f"--process_id={i}"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes(random_features, compile_cache, tmp_path):
    env = sub_env(compile_cache, 2)
    procs = _two(random_features, tmp_path / "full", env)
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errs]

    work = tmp_path / "pre"
    procs = _two(random_features, work, env)
    seen = stop_after(procs, work, 30)
    os.kill(procs[1].pid, signal.SIGTERM)  # only the second host gets the notice
    for p in procs:
        os.kill(p.pid, signal.SIGCONT)
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, [e[-2000:] for e in errs]
    steps = {_check_preempted(e, work, seen) for e in errs}
    assert len(steps) == 1, steps  # both hosts name the same step
    print(f"2 processes, SIGTERM to process 1 after step {seen}: checkpoint at step {steps}")

    procs = _two(random_features, work, env)
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errs]
    assert json.loads((work / "result.json").read_text())["start_step"] == steps.pop()
    a, b = _final(tmp_path / "full"), _final(work)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_dead_peer_stops_the_survivor_within_the_timeout(random_features, compile_cache, tmp_path):
    timeout = 10
    procs = _two(random_features, tmp_path / "run", sub_env(compile_cache, 2),
                 f"--config.heartbeat_timeout_s={timeout}")
    stop_after(procs, tmp_path / "run", 30)
    os.kill(procs[1].pid, signal.SIGKILL)
    t0 = time.time()
    os.kill(procs[0].pid, signal.SIGCONT)
    try:
        _, err = procs[0].communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail(f"the survivor still runs {timeout + 60} s after its peer died")
    took = time.time() - t0
    said = [line for line in err.splitlines() if re.match(r"[EF]\d{4} ", line) or "error" in line.lower()]
    print(f"peer SIGKILLed: the survivor exited with {procs[0].returncode} after {took:.1f} s:\n" + "\n".join(said[:8]))
    assert procs[0].returncode != 0
    assert took < timeout + 30
    assert said, err[-3000:]  # it says why (JAX's coordination service or the collective names the lost task)
