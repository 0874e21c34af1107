"""What a new user meets first: output files and their modes, tags-only output in every format, help exit codes,
bad inputs refused before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import whisper_at_jax as wat
from whisper_at_jax.io_utils import atomic_write_bytes
from whisper_at_jax.outputs import get_writer

from test_infer import cli  # noqa: F401  (the CLI's main in-process)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "whisper_at_jax" / "assets" / "demo.flac"


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # what open() gives under that umask


@pytest.fixture(scope="module")
def demo_tags():
    """Tags only on the demo file (speech over a siren, 9.32 s) with the shipped tiny.en head."""
    model = wat.load_model("tiny.en")
    return model.tag(str(DEMO), at_time_res=2)


def test_tags_only_output_carries_the_tags_in_every_format(demo_tags, tmp_path):
    result = {**demo_tags, "segments": [], "text": ""}
    (tmp_path / "demo.txt").write_text("an earlier transcript\n")
    get_writer("all", str(tmp_path))(result, str(DEMO), {})
    txt = (tmp_path / "demo.txt").read_text()
    tsv = (tmp_path / "demo.tsv").read_text().splitlines()
    srt = (tmp_path / "demo.srt").read_text()
    assert "Siren" in txt and "-->" in txt, txt
    assert tsv[0] == "start\tend\ttext" and any("[Siren]" in row for row in tsv[1:]), tsv
    assert "[Siren]" in srt
    # The last span ends with the audio (9.32 s), not at the 2-s grid line after it, in every format.
    spans = json.loads((tmp_path / "demo.json").read_text())["audio_tags"]
    assert spans[-1]["end"] == pytest.approx(demo_tags["duration"]) and demo_tags["duration"] < 10.0
    assert int(tsv[-1].split("\t")[1]) == round(1000 * demo_tags["duration"])


def test_train_help_lists_its_flags(capsys):
    """absl's own help exits with status 1; train's --help prints the usage and every flag and exits 0."""
    from whisper_at_jax.cli import train

    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage:")
    assert all(f in out for f in ("--config:", "--compile_only:", "--coordinator_address:", "--[no]batch_search:"))


@pytest.mark.parametrize("command", ["evaluate", "convert"])
def test_help_exits_zero(command, capsys, monkeypatch):
    import importlib

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"whisper_at_jax.cli.{command}").main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage" in out.lower()
    if command == "evaluate":  # the example's continuation line survives
        assert "--split train \\\n" in out


def test_infer_help_explains_every_option(cli):
    p = cli("--help")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage" in p.stdout.lower()
    # every option explained, with its default
    assert "openai-whisper's long-form algorithm" in p.stdout and "(default: sequential)" in p.stdout


def test_bad_inputs_refused_before_the_model_loads(tmp_path):
    """In a subprocess: the CLI's exit status 2 (usage errors; tests/test_infer.py has 0 and 1)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "infer.py"), str(tmp_path / "missing.flac"),
                          str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2
    assert "loaded" not in out.stderr  # the check runs before load_model
    assert out.stderr.count(str(tmp_path / "missing.flac")) == 1 and "no such file" in out.stderr
    assert f"{tmp_path}: is a directory" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_optional_dependency_names_the_extra(tmp_path):
    """Without tensorflow (hidden here: a None entry in sys.modules makes its import fail as if not installed),
    writing TFRecords ends with one line naming the extra to install, not a traceback."""
    import numpy as np
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "1-100-A-0.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n"
                                        "1-100-A-0.wav,1,0,dog,True,100,A\n")
    runner = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", runner, str(ROOT / "scripts" / "make_tfrecords.py"), "--format",
                          "esc50", "--csv", "esc50.csv", "--audio-dir", "audio", "--out", "records", "--split",
                          "train"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "'tensorflow'" in out.stderr and 'pip install -e ".[train]"' in out.stderr
    assert "Traceback" not in out.stderr
