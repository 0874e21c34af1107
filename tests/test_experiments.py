"""The code layout of the command lines: scripts are thin wrappers over whisper_at_jax.cli, configs and scripts need
no sys.path edits, the option rules are the library's (whisper_at_jax.options) in both spellings, and the
``whisper-at-jax`` console script is ``scripts/infer.py``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", SCRIPTS + sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_no_sys_path_edits_and_no_script_imports_another(path: Path) -> None:
    assert "sys.path" not in path.read_text()
    assert not _imports(path) & {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_only_call_their_cli_module(path: Path) -> None:
    """Every script runs ``whisper_at_jax.cli.NAME.main``."""
    import importlib

    assert f"whisper_at_jax.cli.{path.stem}" in _imports(path)
    assert callable(importlib.import_module(f"whisper_at_jax.cli.{path.stem}").main)
    assert len(path.read_text().splitlines()) < 30


@pytest.mark.parametrize("options,library,cli", [
    ({"batch_size": 0}, "batch_size must be >= 1", "--batch-size must be >= 1"),
    ({"patience": 1.0}, "patience needs beam_size", "--patience needs --beam-size"),
    ({"beam_size": 2, "patience": 0.1}, "patience times beam_size must be >= 1",
     "--patience times --beam-size must be >= 1"),
    ({"clip_timestamps": "2", "mode": "batched"}, "clip_timestamps needs mode sequential",
     "--clip-timestamps needs --mode sequential"),
    ({"max_line_width": 42}, "max_line_width needs word_timestamps", "--max-line-width needs --word-timestamps"),
    ({"word_timestamps": True, "max_line_count": 0}, "max_line_count must be >= 1", "--max-line-count must be >= 1"),
    ({"threshold": 1.0}, "threshold is a probability in (0, 1)", "--threshold is a probability in (0, 1)"),
])
def test_one_rule_two_spellings(options: dict, library: str, cli: str) -> None:
    from whisper_at_jax.options import OptionError, TranscribeError, check_options, flag

    with pytest.raises(OptionError) as e:
        check_options(**options)
    assert str(e.value) == library and isinstance(e.value, TranscribeError)
    with pytest.raises(OptionError) as e:
        check_options(flag, **options)
    assert str(e.value) == cli
    check_options()  # the defaults pass
    check_options(flag, mode="batched", word_timestamps=True, max_line_width=42, beam_size=2, patience=1.0)


def test_console_script_is_the_infer_command(tmp_path: Path) -> None:
    """``whisper-at-jax`` (setup.py's console script) refuses a missing file as ``scripts/infer.py`` does, before
    any model loads: the same message and exit status 2."""
    exe = shutil.which("whisper-at-jax")
    if exe is None:
        pytest.skip("the package is not installed with its console script (pip install -e .)")
    missing = str(tmp_path / "missing.flac")
    runs = [subprocess.run(cmd + [missing], capture_output=True, text=True, timeout=300, cwd=tmp_path)
            for cmd in ([exe], [sys.executable, str(ROOT / "scripts" / "infer.py")])]
    assert [r.returncode for r in runs] == [2, 2]
    assert runs[0].stderr == runs[1].stderr and f"{missing}: no such file" in runs[0].stderr


@pytest.mark.parametrize("name", [p.stem for p in SCRIPTS])
def test_every_cli_module_gives_help(name: str, capsys) -> None:
    """In process, as the scripts and the console script call them: ``--help`` prints the usage and exits 0."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"whisper_at_jax.cli.{name}").main(["--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out.lower()
