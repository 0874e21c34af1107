"""Broken checkpoints at start-up: a missing file, a truncated file and a step directory without its commit marker
are skipped (with a warning naming them) for the newest intact checkpoint, and the resumed run ends on the
uninterrupted run's head bit for bit; a checkpoint of another run and an unreadable checkpoint folder are clear
errors before any training."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_train import random_features, small_config  # noqa: F401

from whisper_at_jax import train as T

OVER = {"checkpoint.every_steps": 4, "checkpoint.async_save": False, "data.fold": -1, "data.eval_split": "",
        "eval_every_epochs": 0, "aug.mixup_p": 0.5}


@pytest.fixture(scope="module")
def finished_run(random_features, tmp_path_factory):  # noqa: F811
    """A 12-step run with checkpoints at steps 4, 8 and 12, and its final head."""
    work = tmp_path_factory.mktemp("run")
    r = T.train(small_config(work, **{"data.features": str(random_features), **OVER}))
    assert sorted(int(p.name) for p in (work / "ckpt").iterdir()) == [4, 8, 12]
    return work, r["head_params"]


def _break_missing(step: Path) -> str:
    # The merged OCDBT database's data files (state/d/*; the per-process copies are not read after the merge).
    f = max((step / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)
    f.unlink()
    return "state is unreadable"


def _break_truncated(step: Path) -> str:
    f = max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "state is unreadable"


def _break_uncommitted(step: Path) -> str:
    (step / T.COMMIT_MARKER).unlink()
    return f"no {T.COMMIT_MARKER}"


@pytest.mark.parametrize("corrupt", [_break_missing, _break_truncated, _break_uncommitted],
                         ids=["missing_file", "truncated_file", "no_commit_marker"])
def test_broken_latest_checkpoint_resumes_from_the_previous(finished_run, random_features, tmp_path, caplog,
                                                            corrupt):  # noqa: F811
    src, head = finished_run
    work = tmp_path / "run"
    shutil.copytree(src, work)
    (work / "final_head.npz").unlink()
    why = corrupt(work / "ckpt" / "12")
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.train"):
        r = T.train(small_config(work, **{"data.features": str(random_features), **OVER}))
    warned = [m.getMessage() for m in caplog.records if "skipping checkpoint" in m.getMessage()]
    assert len(warned) == 1 and str(work / "ckpt" / "12") in warned[0] and why in warned[0], warned
    assert r["start_step"] == 8
    assert (work / "ckpt" / "12.broken").is_dir()  # kept for inspection, out of the new save's way
    assert (work / "ckpt" / "12" / T.COMMIT_MARKER).is_file()  # step 12 saved anew
    got, want = T.flat_params(r["head_params"]), T.flat_params(head)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k  # bit for bit: same steps 9-12 from the same checkpoint 8


def test_all_checkpoints_broken_is_an_error_not_step_0(finished_run, random_features, tmp_path):  # noqa: F811
    src, _ = finished_run
    work = tmp_path / "run"
    shutil.copytree(src, work)
    for s in (4, 8, 12):
        _break_uncommitted(work / "ckpt" / str(s))
    with pytest.raises(T.TrainError, match="none is intact; not starting from step 0"):
        T.train(small_config(work, **{"data.features": str(random_features), **OVER}))


def test_checkpoint_of_another_run_is_an_error(finished_run, random_features, tmp_path):  # noqa: F811
    src, _ = finished_run
    work = tmp_path / "run"
    shutil.copytree(src, work)
    with pytest.raises(T.TrainError, match=r"is of another run: head_mode 'wa_mlp' there, 'tl_tr_1_8'"):
        T.train(small_config(work, **{"data.features": str(random_features), "head.mode": "tl_tr_1_8", **OVER}))
    assert sorted(p.name for p in (work / "ckpt").iterdir()) == ["12", "4", "8"]  # nothing touched


def test_unreadable_checkpoint_folder_is_an_error(random_features, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    work.mkdir()
    (work / "ckpt").write_text("not a folder")
    with pytest.raises(T.TrainError, match="checkpoint folder .*ckpt"):
        T.train(small_config(work, **{"data.features": str(random_features), **OVER}))
