"""The transcription CLI (``whisper_at_jax.cli.infer``, run as ``whisper-at-jax`` or ``scripts/infer.py``): several
files in one call (one model load), a bad file among them, tags from a head given with --head, every output format,
--tags-only, the decoding options and the checks that refuse bad ones. ``main(argv)`` runs in-process; one run per exit status (0, 1) goes through
``scripts/infer.py`` in a subprocess (exit 2: tests/test_cli_ux.py; 75, SIGTERM: tests/test_failures.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from whisper_at_jax.cli.infer import main

ROOT = Path(__file__).resolve().parents[1]


def run_infer(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # cwd: a scratch folder, since the CLI writes its outputs to "." by default (openai-whisper's convention)
    cwd = tempfile.mkdtemp(prefix="wat_infer_cwd_")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "infer.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@dataclasses.dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


_MODELS: dict = {}  # one model per load_model arguments for the in-process runs of this session


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path) -> Callable[..., Run]:
    """``cli(*argv)`` runs the CLI's main in this process -> Run(exit status, stdout, stderr). Outputs go to a scratch
    folder by default; no persistent compilation cache is switched on in the test process; help text is wrapped at
    80 columns; a model with the same load_model arguments is loaded once per session (the one-load-per-call
    contract is checked in a subprocess)."""
    import whisper_at_jax as wat

    load = wat.load_model

    def load_once(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in _MODELS:
            _MODELS[key] = load(*args, **kwargs)
        return _MODELS[key]

    monkeypatch.setattr(wat, "load_model", load_once)
    monkeypatch.setenv("WHISPER_AT_JAX_CACHE", "")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> Run:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory, speech, tiny_en):
    """Two speech files (wav, flac), a non-audio file, and a random TL-TR head in whisper-at's .pth format."""
    import soundfile as sf
    import torch

    import jax

    from whisper_at_jax.heads import head_params_to_torch, init_head, make_head

    d = tmp_path_factory.mktemp("infer")
    sf.write(d / "one.wav", speech, 16000)
    sf.write(d / "two.flac", np.concatenate([np.zeros(16000, np.float32), 0.7 * speech]), 16000)
    (d / "broken.mp3").write_text("not audio at all\n")
    head = make_head("tl_tr_1_8", tiny_en.dims.n_audio_layer, tiny_en.dims.n_audio_state)
    params = init_head(head, jax.random.PRNGKey(0))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in head_params_to_torch(params).items()}, d / "head.pth")
    return d


@pytest.mark.slow
def test_many_files_one_call(files, tmp_path, tiny_en):
    """In a subprocess: the exit status 1 (a file failed), one model load for every file."""
    from whisper_at_jax.transcribe import transcribe

    out = tmp_path / "out"
    p = run_infer(str(files / "one.wav"), str(files / "broken.mp3"), str(files / "two.flac"),
                  "--head", str(files / "head.pth"), "--at-time-res", "2", "--top-k", "3",
                  "--output-format", "all", "--output-dir", str(out))
    print(p.stdout[-3000:], p.stderr[-3000:])
    assert p.returncode == 1  # one file failed
    assert "broken.mp3" in p.stderr and "Traceback" not in p.stderr
    assert "1 of 3 file(s) failed" in p.stderr
    assert p.stderr.count("loaded in") == 1  # one model load for all files
    for stem in ("one", "two"):
        names = sorted(f.name for f in out.glob(stem + ".*"))
        assert names == [f"{stem}.{e}" for e in ("json", "srt", "tsv", "txt", "vtt")]
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["text"].strip() and len(data["audio_tag"][0]) == 527 and data["at_time_res"] == 2.0
        assert len(data["audio_tags"]) == len(data["audio_tag"])
    assert not list(out.glob("broken.*"))
    # the printed transcript is the library's
    ref = transcribe(tiny_en, str(files / "one.wav"))
    for seg in ref["segments"]:
        assert seg["text"].strip() in p.stdout
    assert "== " + str(files / "one.wav") in p.stdout
    assert p.stdout.count("tags: ") == 7 + 8  # ceil(13.85 / 2) + ceil(14.85 / 2) rows
    assert "(0." in p.stdout or "(1.00)" in p.stdout  # probabilities printed


@pytest.mark.slow
def test_tags_only(files, tmp_path):
    """In a subprocess: the exit status 0."""
    out = tmp_path / "tags"
    p = run_infer(str(files / "one.wav"), "--head", str(files / "head.pth"), "--tags-only",
                  "--output-format", "json", "--output-dir", str(out), "--threshold", "0.2")
    assert p.returncode == 0, p.stderr
    data = json.loads((out / "one.json").read_text())
    assert data["segments"] == [] and len(data["audio_tag"]) == 2  # ceil(13.85 / 10)
    assert p.stdout.count("tags: ") == 2


def test_usage_errors(files, tmp_path, cli):
    # the embedded name gets the shipped default head; a model path without a head refuses --tags-only with a
    # message; a bad resolution likewise
    from whisper_at_jax.convert import embedded_model_dir

    p = cli(str(files / "one.wav"), "--model", str(embedded_model_dir("tiny.en")[0]), "--tags-only")
    assert p.returncode == 2 and "--tags-only needs" in p.stderr
    p = cli(str(files / "one.wav"), "--head", str(files / "head.pth"), "--at-time-res", "1.0")
    assert p.returncode == 2 and "multiple of 0.4" in p.stderr
    p = cli(str(files / "one.wav"), "--language", "klingon")
    assert p.returncode == 2 and "unknown --language" in p.stderr
    p = cli(str(files / "missing.wav"), "--output-dir", str(tmp_path / "x"))
    # a missing input is a usage error, refused before the model loads (files that fail while decoding exit 1)
    assert p.returncode == 2 and "missing.wav: no such file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_word_timestamps(files, tmp_path, cli):
    """--word-timestamps: words in the json, subtitle cues from the words (--max-line-width / --max-line-count);
    combinations that cannot work are refused before the model loads."""
    out = tmp_path / "words"
    p = cli(str(files / "one.wav"), "--word-timestamps", "--max-line-width", "30", "--max-line-count", "1",
            "--no-tags", "-f", "all", "-o", str(out))
    assert p.returncode == 0, p.stderr
    data = json.loads((out / "one.json").read_text())
    words = [w for s in data["segments"] for w in s["words"]]
    assert len(words) > 30 and all(0 <= w["start"] <= w["end"] <= 14.0 for w in words)
    cues = (out / "one.srt").read_text().strip().split("\n\n")
    assert len(cues) > len(data["segments"]) and all(len(c.split("\n")[2]) <= 30 for c in cues)
    for bad, message in ((["--highlight-words"], "--highlight-words needs --word-timestamps"),
                         (["--word-timestamps", "--mode", "batched", "--hallucination-silence-threshold", "2"],
                          "--hallucination-silence-threshold needs --mode sequential"),
                         (["--word-timestamps", "--max-line-width", "0"], "--max-line-width must be >= 1")):
        p = cli(str(files / "one.wav"), *bad)
        assert p.returncode == 2 and message in p.stderr and "loaded in" not in p.stderr, (bad, p.stderr)


@pytest.mark.slow
def test_decoding_options(files, tmp_path, tiny_en, cli):
    """openai-whisper's CLI decoding options reach transcribe: the json equals the library's result with the same
    options, in runs where the options change the transcript (a prompt and clips; beam search with suppressed
    commas). Patience and the length penalty do not change this clip's beams; they travel in the same dict as
    the beam size and the suppressed tokens, which do."""
    from whisper_at_jax.transcribe import transcribe

    path = str(files / "one.wav")
    runs = [(["--initial-prompt", "Quick brown fox.", "--condition-on-previous-text", "False",
              "--no-speech-threshold", "none", "--compression-ratio-threshold", "3", "--logprob-threshold", "none",
              "--clip-timestamps", "1,9"],
             dict(initial_prompt="Quick brown fox.", condition_on_previous_text=False, no_speech_threshold=None,
                  compression_ratio_threshold=3.0, logprob_threshold=None, clip_timestamps="1,9")),
            (["--beam-size", "2", "--patience", "2", "--length-penalty", "0.5", "--suppress-tokens=-1,11",
              "--clip-timestamps", "0,6"],
             dict(beam_size=2, patience=2.0, length_penalty=0.5, suppress_tokens="-1,11", clip_timestamps="0,6"))]
    default = transcribe(tiny_en, path, temperature=(0.0,))
    for i, (flags, options) in enumerate(runs):
        out = tmp_path / str(i)
        p = cli(path, *flags, "--temperature-increment-on-fallback", "0", "--no-tags", "-f", "json", "-o", str(out))
        assert p.returncode == 0, p.stderr
        got = json.loads((out / "one.json").read_text())
        want = transcribe(tiny_en, path, temperature=(0.0,), **options)
        assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in want["segments"]]
        assert [(s["start"], s["end"]) for s in got["segments"]] == [(s["start"], s["end"]) for s in want["segments"]]
        assert [s["tokens"] for s in want["segments"]] != [s["tokens"] for s in default["segments"]]
        assert all(s["start"] >= float(options["clip_timestamps"].split(",")[0]) for s in got["segments"])


@pytest.mark.parametrize("flags, message", [
    (["--patience", "2"], "--patience needs --beam-size"),
    (["--beam-size", "2", "--patience", "0.1"], "--patience times --beam-size must be >= 1"),
    (["--length-penalty", "2"], "--length-penalty must be in [0, 1]"),
    (["--suppress-tokens", "1,a"], "--suppress-tokens must be comma-separated integers"),
    (["--clip-timestamps", "5,3"], "each clip's end must come after its start"),
    (["--clip-timestamps", "x"], "--clip-timestamps: clip_timestamps must be comma-separated seconds"),
    (["--clip-timestamps", "2", "--mode", "batched"], "--clip-timestamps needs --mode sequential"),
    (["--carry-initial-prompt"], "--carry-initial-prompt needs --initial-prompt"),
    (["--append-punctuations", "."], "--append-punctuations needs --word-timestamps"),
    (["--condition-on-previous-text", "maybe"], "expected True or False"),
    (["--no-speech-threshold", "high"], "expected a number or none"),
])
def test_bad_decoding_options_are_refused(flags, message, cli):
    """Refused by the parser with exit status 2, before any model loads."""
    p = cli("a.wav", *flags)
    assert p.returncode == 2 and message in p.stderr and "loaded in" not in p.stderr
