"""Broken checkpoints at start-up: a missing file, a truncated file and a step directory without its commit marker
are skipped (with a warning naming them) for the newest intact checkpoint, and the resumed run ends on the
uninterrupted run's head bit for bit; a checkpoint of another run and an unreadable checkpoint folder are clear
errors before any training."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from test_infer import files, run_infer  # noqa: F401
from test_train import random_features, small_config  # noqa: F401

from whisper_at_jax import train as T
from whisper_at_jax.checkpoints import COMMIT_MARKER
from whisper_at_jax.data import FeatureWriter, IndexStream

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
    (step / COMMIT_MARKER).unlink()
    return f"no {COMMIT_MARKER}"


@pytest.mark.parametrize("corrupt", [_break_missing, _break_truncated, _break_uncommitted],
                         ids=["missing_file", "truncated_file", "no_commit_marker"])
@pytest.mark.slow
def test_broken_latest_checkpoint_resumes_from_the_previous(finished_run, random_features, tmp_path, caplog,
                                                            corrupt):  # noqa: F811
    src, head = finished_run
    work = tmp_path / "run"
    shutil.copytree(src, work)
    (work / "final_head.npz").unlink()
    why = corrupt(work / "ckpt" / "12")
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax"):
        r = T.train(small_config(work, **{"data.features": str(random_features), **OVER}))
    warned = [m.getMessage() for m in caplog.records if "skipping checkpoint" in m.getMessage()]
    assert len(warned) == 1 and str(work / "ckpt" / "12") in warned[0] and why in warned[0], warned
    assert r["start_step"] == 8
    assert (work / "ckpt" / "12.broken").is_dir()  # kept for inspection, out of the new save's way
    assert (work / "ckpt" / "12" / COMMIT_MARKER).is_file()  # step 12 saved anew
    got, want = flatten_dict(r["head_params"], sep="/"), flatten_dict(head, sep="/")
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


# ----------------------------------------------------------------------------------------------------------------
# Non-finite values


@pytest.fixture(scope="module")
def nan_features(tmp_path_factory) -> tuple[Path, int]:
    """The random taps of ``random_features``' recipe with one NaN written into example 'bad' (row 37)'s shard."""
    d = tmp_path_factory.mktemp("nanfeat")
    rng = np.random.default_rng(0)
    meta = {"model": "none", "n_layers": 2, "width": 32, "steps": 5, "pool": 20, "labels": list("abcd")}
    y = np.eye(4)[rng.integers(0, 4, 80)]
    x = rng.normal(size=(80, 2, 5, 32)) + 0.5 * np.repeat(y, 8, axis=1)[:, None, None, :]
    ids = [f"train{i}" for i in range(80)]
    ids[37] = "bad"
    w = FeatureWriter(d, "train", meta, shard_size=30, dtype="float16")
    w.add(x, y, ids, folds=np.arange(80) % 5 + 1)
    w.close()
    shard = np.load(d / "train-00001.npy", mmap_mode="r+")  # rows 30-59; the writer refuses NaN, the disk does not
    shard[37 - 30, 1, 2, 3] = np.nan
    shard.flush()
    del shard
    return d, 37


def _steps_with(row: int, n: int = 80, steps: int = 12) -> list[int]:
    """1-based steps whose batch holds ``row`` (the trainer's own index stream: batch 8, seed 0, unbalanced)."""
    stream = IndexStream(n, 8, 0)
    return [i + 1 for i in range(steps) if row in stream.batch_indices(i)]


def test_nan_in_a_batch_stops_with_step_ids_and_last_checkpoint(nan_features, tmp_path):
    d, row = nan_features
    bad = _steps_with(row)
    assert bad and bad[0] > 4  # the first checkpoint (step 4) comes before it
    work = tmp_path / "run"
    with pytest.raises(T.NonFiniteError) as e:
        T.train(small_config(work, **{"data.features": str(d), **OVER}))
    msg = str(e.value)
    print(msg)
    last = (bad[0] - 1) // 4 * 4
    assert f"step {bad[0]}: loss nan" in msg and "bad" in msg.split("Example ids")[1]
    assert f"Last good checkpoint: {(work / 'ckpt' / str(last)).absolute()}" in msg
    assert not (work / "final_head.npz").exists()


def test_nan_batches_skipped_when_asked(nan_features, tmp_path, caplog):
    d, row = nan_features
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax"):
        r = T.train(small_config(tmp_path / "run", **{"data.features": str(d), "on_nonfinite": "skip", **OVER}))
    assert r["skipped_batches"] == len(_steps_with(row)) > 0
    assert sum("batch skipped" in m.getMessage() for m in caplog.records) == r["skipped_batches"]
    assert all(np.all(np.isfinite(v)) for v in flatten_dict(r["head_params"], sep="/").values())


def test_infinite_metrics_reach_jsonl_not_tensorboard(tmp_path, recwarn, caplog):
    pytest.importorskip("tensorboardX")
    w = T.MetricWriter(tmp_path, True)
    with caplog.at_level(logging.WARNING):
        w.write(5, {"d_prime": float("inf"), "mAP": 1.0}, prefix="eval/")
    w.close()
    said = [m.getMessage() for m in caplog.records] + [str(x.message) for x in recwarn]
    assert not any("NaN or Inf" in m for m in said), said
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert rec == {"step": 5, "eval/d_prime": float("inf"), "eval/mAP": 1.0}
    from tensorboardX.proto import event_pb2

    tags = []
    for f in (tmp_path / "tb").iterdir():  # TFRecord framing: u64 length, u32 crc, data, u32 crc
        buf, i = f.read_bytes(), 0
        while i < len(buf):
            n = int.from_bytes(buf[i:i + 8], "little")
            ev = event_pb2.Event.FromString(buf[i + 12:i + 12 + n])
            tags += [v.tag for v in ev.summary.value]
            i += 12 + n + 4
    assert tags == ["eval/mAP"]


# ----------------------------------------------------------------------------------------------------------------
# A full disk and a read-only work directory. A full disk is RLIMIT_FSIZE in a subprocess (writes past the limit
# fail with EFBIG, as on a full disk with ENOSPC; needs no root, unlike a small tmpfs). A read-only folder is a
# read-only bind mount in a private mount namespace (`unshare --map-root-user --mount`: no privilege needed where
# user namespaces are allowed, and it stops root, whom chmod does not), else chmod for a non-root user.

TRAIN = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from test_train import small_config
from whisper_at_jax import train as T
from whisper_at_jax.checkpoints import COMMIT_MARKER
config = small_config({work!r}, **{over!r})
model = None
if config.export:  # loaded (and cached, on a first load) before any limit
    from whisper_at_jax.api import load_model
    model = load_model(config.model, at_head=False)
fsize = {fsize!r}
if fsize is not None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by SIGXFSZ
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
try:
    T.train(config, model=model)
except T.TrainError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""

#: unshare's sh -c script: $0 (the folder) becomes a read-only bind mount of itself, then the command runs.
_RO_SCRIPT = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'


@contextlib.contextmanager
def _blocked(how: str, folder: Path, fsize: int = 4096) -> Iterator[dict]:
    """``_train_subprocess`` keywords under which writes fail: ``"disk_full"`` (files past ``fsize`` bytes) or
    ``"read_only"`` (``folder`` is read-only)."""
    if how == "disk_full":
        yield {"fsize": fsize}
        return
    prefix = ["unshare", "--map-root-user", "--mount", "sh", "-c", _RO_SCRIPT, str(folder)]
    try:
        probe = subprocess.run(prefix + ["sh", "-c", 'test -d "$0" && ! touch "$0/.probe"', str(folder)],
                               capture_output=True, text=True, timeout=60)
        mounted = probe.returncode == 0
    except FileNotFoundError:  # no unshare
        mounted = False
    if mounted:
        yield {"prefix": prefix}
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount namespaces (unshare --map-root-user --mount fails here): chmod does not "
                    "stop root, so a read-only folder cannot be made")
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        yield {}
    finally:
        folder.chmod(mode)


def _files(folder: Path, skip: Sequence[str] = ()) -> dict[str, bytes]:
    """Every regular file under ``folder`` (relative path -> bytes), but those under the top-level names ``skip``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.relative_to(folder).parts[0] not in skip and p.is_file() and not p.is_symlink()}


def _train_subprocess(work: Path, over: dict, fsize: int | None = None, prefix: Sequence[str] = ()
                      ) -> subprocess.CompletedProcess:
    """``T.train(small_config(work, **over))`` in a subprocess (a TrainError -> its message on stderr, exit 2)."""
    code = TRAIN.format(tests=str(Path(__file__).parent), work=str(work), over=over, fsize=fsize)
    r = subprocess.run([*prefix, sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=600)
    print(r.stderr[-600:])
    return r


@pytest.mark.parametrize("how", ["disk_full", "read_only"])
@pytest.mark.slow
def test_a_failed_checkpoint_save_is_a_clear_error(finished_run, random_features, tmp_path, how):  # noqa: F811
    src, _ = finished_run
    work = tmp_path / "run"
    shutil.copytree(src, work)
    (work / "metrics.jsonl").unlink()  # appending to a file already over the limit would fail first
    head_before = (work / "final_head.npz").read_bytes()
    ckpt_before = _files(work / "ckpt")
    over = {"data.features": str(random_features), **OVER, "epochs": 4}
    with _blocked(how, work / "ckpt") as blocked:
        r = _train_subprocess(work, over, **blocked)
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"saving checkpoint 16 in {(work / 'ckpt').absolute()} failed" in r.stderr
    assert "intact checkpoints there: [4, 8, 12]" in r.stderr
    assert (work / "final_head.npz").read_bytes() == head_before  # the previous head stays
    after = _files(work / "ckpt")
    assert {k: v for k, v in after.items() if k.split("/")[0] in ("4", "8", "12")} == ckpt_before  # untouched
    # The previous checkpoint is intact: the same run without the limit resumes from it and finishes.
    res = T.train(small_config(work, **over))
    assert res["start_step"] == 12


@pytest.fixture(scope="module")
def tiny_en_features(tmp_path_factory) -> Path:
    """Random taps of tiny.en's shape (4 layers x 5 steps x 384), 16 examples of 4 classes: enough to train for
    the export, which needs the model."""
    d = tmp_path_factory.mktemp("tinyfeat")
    rng = np.random.default_rng(0)
    meta = {"model": "tiny.en", "n_layers": 4, "width": 384, "steps": 5, "pool": 20, "labels": list("abcd")}
    w = FeatureWriter(d, "train", meta, shard_size=16, dtype="float16")
    w.add(rng.normal(size=(16, 4, 5, 384)), np.eye(4)[np.arange(16) % 4], [f"t{i}" for i in range(16)])
    w.close()
    return d


@pytest.mark.parametrize("how", ["disk_full", "read_only"])
@pytest.mark.slow
def test_a_failed_head_or_export_write_keeps_the_previous_ones(tiny_en_features, tmp_path, how):
    """A full disk during the export (the head fits under the limit, tiny.en's weights do not) and a read-only
    work directory at the final head (its first write after training; the logs live elsewhere): the error names
    the file, and the previous final_head.npz and export/ are as they were, with no temporary file left."""
    work = tmp_path / "run"
    (work / "export").mkdir(parents=True)
    before = {"final_head.npz": b"the previous head", "export/config.json": b"the previous export"}
    for name, data in before.items():
        (work / name).write_bytes(data)
    if how == "read_only":  # the logs (opened before training) live on a writable disk
        for name in ("metrics.jsonl", "tb"):
            (tmp_path / name).mkdir() if name == "tb" else (tmp_path / name).touch()
            (work / name).symlink_to(tmp_path / name)
    over = {"data.features": str(tiny_en_features), "data.fold": -1, "data.eval_split": "", "eval_every_epochs": 0,
            "epochs": 1, "steps_per_epoch": 2, "export": True, "model": "tiny.en"}
    with _blocked(how, work, fsize=16 << 20) as blocked:
        r = _train_subprocess(work, over, **blocked)
    assert r.returncode == 2, r.stderr[-3000:]
    failed = work / ("export" if how == "disk_full" else "final_head.npz")
    assert f"writing {failed} failed" in r.stderr and "a previous" in r.stderr, r.stderr[-3000:]
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temporary file or folder
    after = _files(work, skip=("metrics.jsonl", "tb"))
    kept = {"export/config.json": before["export/config.json"]}  # the previous export, as it was
    if how == "read_only":
        assert after == {**kept, "final_head.npz": before["final_head.npz"]}
    else:  # the head was written (it fits) before the export failed
        assert after.keys() == {*kept, "final_head.npz"} and after["export/config.json"] == kept["export/config.json"]
        with np.load(work / "final_head.npz") as z:
            assert z.files


FEATURES_FULL = """
import resource, signal, sys
import numpy as np
from whisper_at_jax import train as T
from whisper_at_jax.checkpoints import COMMIT_MARKER
from whisper_at_jax.data import FeatureWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
w = FeatureWriter({out!r}, "train", {{"model": "none", "n_layers": 2, "width": 32, "steps": 5}}, shard_size=8)
try:
    w.add(np.zeros((8, 2, 5, 32)), np.eye(4)[np.zeros(8, int)], [str(i) for i in range(8)])
except T.TrainError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.slow
def test_disk_full_in_the_feature_store_names_the_file(tmp_path):
    r = subprocess.run([sys.executable, "-c", FEATURES_FULL.format(out=str(tmp_path))], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"writing {tmp_path / 'train-00000.npy'} failed" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no torn shard, no temporary file left


# ----------------------------------------------------------------------------------------------------------------
# infer.py over many files: a re-run skips what is done


@pytest.mark.slow
def test_infer_rerun_skips_files_already_done(files, tmp_path):  # noqa: F811
    out = tmp_path / "tags"
    args = (str(files / "one.wav"), str(files / "two.flac"), "--head", str(files / "head.pth"), "--tags-only",
            "--output-format", "json", "--output-dir", str(out), "--quiet")
    p = run_infer(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    one = (out / "one.json").read_bytes()
    os.utime(out / "one.json", (1, 1))  # a mark a rewrite would clear
    (out / "two.json").unlink()  # as if the job had stopped before this file
    p = run_infer(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"skipping 1 file(s) whose outputs are in {out}" in p.stderr
    assert (out / "one.json").stat().st_mtime == 1 and (out / "one.json").read_bytes() == one
    assert (out / "two.json").is_file()
    p = run_infer(*args, "--overwrite")
    assert p.returncode == 0 and "skipping" not in p.stderr, p.stderr[-3000:]
    assert (out / "one.json").stat().st_mtime > 1 and (out / "one.json").read_bytes() == one


@pytest.mark.slow
def test_infer_sigterm_finishes_the_current_file_and_the_rerun_does_the_rest(files, tmp_path):  # noqa: F811
    """SIGTERM 0.3 s into the second of three files (a 2.8-minute one, seconds of work on any CPU): that file is
    finished, the third is not begun, the job exits 75 with complete outputs only (no partial or temporary file),
    and the re-run skips the finished ones and does the rest."""
    import soundfile as sf

    d = tmp_path / "in"
    d.mkdir()
    speech, sr = sf.read(files / "one.wav", dtype="float32")
    inputs = [d / "a.wav", d / "b.wav", d / "c.wav"]
    for x, clip in zip(inputs, (speech, np.tile(speech, 12), speech)):  # a and c alike, whichever run does them
        sf.write(x, clip, sr)
    out = tmp_path / "tags"
    args = (*map(str, inputs), "--head", str(files / "head.pth"), "--tags-only", "--output-format", "json",
            "--output-dir", str(out), "--quiet")
    p = subprocess.Popen([sys.executable, str(Path(__file__).parents[1] / "scripts" / "infer.py"), *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    said = []
    for line in p.stderr:  # tqdm's \r-separated updates are lines too (universal newlines)
        said.append(line)
        if re.search(rf"{re.escape(str(inputs[0]))}: [\d.]+ s$", line):  # a is done (the line follows the bar's)
            time.sleep(0.3)  # b is under way
            os.kill(p.pid, signal.SIGTERM)
            break
    said.append(p.stderr.read())
    p.wait(timeout=300)
    err = "".join(said)
    assert p.returncode == 75, err[-3000:]
    finished = [x.name for x in inputs if re.search(rf"{re.escape(str(x))}: [\d.]+ s$", err, re.M)]
    assert finished == ["a.wav", "b.wav"], err[-3000:]  # the file under way finished, nothing begun after it
    assert err.index("SIGTERM: stopping") < err.index(f"{inputs[1]}: ")  # the notice came while b was under way
    assert "stopped on SIGTERM; re-run the same command to do the rest" in err
    assert sorted(os.listdir(out)) == ["a.json", "b.json"]  # complete outputs only, no temporary file
    a = (out / "a.json").read_bytes()
    assert len(json.loads((out / "b.json").read_text())["audio_tag"]) == -(-12 * len(speech) // (10 * sr))

    p = run_infer(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"skipping 2 file(s) whose outputs are in {out}" in p.stderr
    assert sorted(os.listdir(out)) == ["a.json", "b.json", "c.json"] and (out / "c.json").read_bytes() == a
