"""The shipped default head (whisper_at_jax/assets/heads/tiny.en) and the demo file: the head loads through the
public loader, carries ESC-50's labels and its license, and tags the project-made demo (speech over a synthesised
background) with that background's class."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "whisper_at_jax" / "assets"
HEAD = ASSETS / "heads" / "tiny.en"
DEMO = ASSETS / "demo.flac"
sys.path.insert(0, str(ROOT / "scripts"))

SHARED_META = ROOT.parent / "shared" / "data" / "esc50" / "meta" / "esc50.csv"


@pytest.fixture(scope="module")
def head_and_config():
    from whisper_at_jax.convert.at_head import load_at_head
    from whisper_at_jax.model import dims_for

    return load_at_head(HEAD, dims_for("tiny.en"))


@pytest.fixture(scope="module")
def model():
    from whisper_at_jax import load_model

    return load_model("tiny.en", at_head=HEAD)


def test_head_is_a_small_head_only_checkpoint(head_and_config) -> None:
    from whisper_at_jax.heads import head_param_count

    params, cfg = head_and_config
    assert cfg["n_classes"] == 50 and len(cfg["labels"]) == 50
    assert cfg["mode"].startswith(("tl_", "wa_", "last_"))
    files = {p.name for p in HEAD.iterdir()}
    assert {"config.json", "params.safetensors", "LICENSE"} <= files
    # head-only: no Whisper tensor in the file, and small enough to ship in the wheel
    assert set(params) <= {"time_tr", "layer_tr", "down_layer_0", "down_layer_1", "mlp_layer_0", "mlp_layer_1",
                           "layer_weight"}
    assert (HEAD / "params.safetensors").stat().st_size < 8 * 2**20
    assert head_param_count(params) < 2_000_000
    lic = (HEAD / "LICENSE").read_text()
    assert "CC BY-NC 3.0" in lic and "ESC-50" in lic
    assert "CC BY-NC" in json.loads((HEAD / "config.json").read_text())["head"]["license"]


def test_labels_are_esc50_categories(head_and_config) -> None:
    _, cfg = head_and_config
    cats = [row[1] for row in sorted(cfg["labels"], key=lambda r: r[0])]
    assert len(set(cats)) == 50
    if SHARED_META.is_file():  # the dataset's own names, in target order
        import csv

        with open(SHARED_META, newline="") as f:
            by_target = {int(r["target"]): r["category"] for r in csv.DictReader(f)}
        assert cats == [by_target[i] for i in range(50)]


def test_demo_is_small_and_tagged_as_its_background(model) -> None:
    import make_demo

    from whisper_at_jax.audio import load_audio
    from whisper_at_jax.transcribe import sigmoid

    assert DEMO.stat().st_size < 300 * 1024
    audio = load_audio(str(DEMO))
    assert 5 < len(audio) / 16000 < 15
    res = model.tag(str(DEMO), at_time_res=10, verbose=False)
    logits = np.asarray(res["audio_tag"])
    names = [row[1] for row in sorted(model.head_config["labels"], key=lambda r: r[0])]
    # every 10-s row's top class is the synthesised background make_demo.py put under the speech
    for row in logits:
        assert names[int(np.argmax(row))] == make_demo.DEMO_BACKGROUND, [names[i] for i in np.argsort(-row)[:5]]
    assert float(sigmoid(logits.max(1)).min()) > 0.3  # a confident tag (BCE head: sigmoid is its probability)
