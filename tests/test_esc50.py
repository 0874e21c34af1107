"""The experiments (whisper_at_jax.experiments) and their scripts: mixing and scoring helpers (core), the
scripts/esc50.py command line in-process, and one real cross-validation fold through the training code on ESC-50
(needs ../shared/data/esc50; skipped without it)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from whisper_at_jax.cli import esc50 as esc50_cli
from whisper_at_jax.experiments import default_head, esc50, noise, sounds

ROOT = Path(__file__).resolve().parent.parent

SHARED = ROOT.parent / "shared"
HAS_ESC50 = (SHARED / "data" / "esc50" / "meta" / "esc50.csv").is_file()


def _snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    return 20 * math.log10(np.sqrt(np.mean(signal.astype(np.float64) ** 2)) /
                           np.sqrt(np.mean(noise.astype(np.float64) ** 2)))


@pytest.mark.parametrize("snr", [-20.0, 0.0, 15.0])
def test_mix_at_snr_tiles_and_scales(snr: float) -> None:
    rng = np.random.default_rng(0)
    speech = (0.005 * rng.standard_normal(16000 * 3)).astype(np.float32)  # quiet: no peak limiting at -20 dB
    noise = (0.3 * rng.standard_normal(16000)).astype(np.float32)  # shorter than the speech: must be tiled
    mix = sounds.mix_at_snr(speech, noise, snr)
    assert mix.shape == speech.shape
    residual = mix - speech
    # the residual is the tiled noise: 3 copies of one scaled clip, at the level that gives the requested SNR
    assert np.allclose(residual[:16000], residual[16000:32000], atol=1e-6)
    assert np.allclose(residual[:16000] / noise, residual[0] / noise[0], rtol=1e-3)
    # 1e-3 dB: float32 rounding of the mixture only
    assert abs(_snr_db(speech, residual) - snr) < 1e-3


def test_mix_at_snr_limits_the_peak_without_changing_the_snr() -> None:
    rng = np.random.default_rng(2)
    speech = (0.2 * rng.standard_normal(16000)).astype(np.float64)
    noise = rng.standard_normal(16000 * 2)  # longer than the speech: cropped
    mix = sounds.mix_at_snr(speech.astype(np.float32), noise.astype(np.float32), -10.0)
    # the unlimited sum, derived here: noise cropped and scaled to 10 dB above the speech's RMS
    crop = noise[:16000]
    full = speech + crop * np.sqrt(np.mean(speech ** 2) / np.mean(crop ** 2)) * 10 ** 0.5
    assert np.abs(full).max() > 1  # the case under test
    assert np.abs(mix).max() == pytest.approx(0.99, abs=1e-6)
    assert np.allclose(mix, full * 0.99 / np.abs(full).max(), atol=1e-5)


def test_speech_under_sets_the_speech_to_sound_ratio() -> None:
    rng = np.random.default_rng(1)
    clip = (0.05 * rng.standard_normal(80000)).astype(np.float32)
    utt = (0.2 * rng.standard_normal(16000 * 2)).astype(np.float32)  # shorter than the clip: placed, not tiled
    mixed, snr = default_head.speech_under(clip, [utt], np.random.default_rng(3))
    assert default_head.AUG_SNR_DB[0] <= snr <= default_head.AUG_SNR_DB[1]
    added = mixed - clip
    active = np.abs(added) > 0
    assert 31000 < active.sum() <= 32000  # the whole utterance, once
    assert abs(_snr_db(added[active], clip) - snr) < 1e-3


def test_wer_normalisation_matches_jiwer() -> None:
    import jiwer

    ref = "And so, my fellow Americans: ask not what your country can do for you!"
    hyp = "and so my fellow americans ask what your country can do for you"
    # one deletion ("not") out of 14 reference words, punctuation and case ignored
    assert noise.corpus_wer([ref], [hyp]) == pytest.approx(100 / 14)
    assert noise.corpus_wer([ref], [hyp]) == pytest.approx(
        100 * jiwer.wer(noise.normalise(ref), noise.normalise(hyp)))
    assert noise.corpus_wer([ref], [""]) == pytest.approx(100.0)  # nothing heard: all deleted


def test_at_time_res_gives_one_row() -> None:
    from whisper_at_jax.tagging import at_time_res_steps

    for n in (16000 * 11, 80000, 80001, 1234567 % 480000):
        res = noise.at_res_for(n)
        steps = at_time_res_steps(res)  # a valid multiple of 0.4 s
        assert steps * 0.4 * 16000 >= n > (steps - 1) * 0.4 * 16000


def test_esc50_labels_and_bad_folder(tmp_path: Path) -> None:
    labels = esc50.esc50_labels(["dog", "chirping_birds"])
    assert labels == [[0, "dog", "Dog"], [1, "chirping_birds", "Chirping birds"]]
    with pytest.raises(esc50.ESC50Error, match="no ESC-50"):
        esc50.find_esc50(tmp_path)


def _separable_features(path: Path, model: str = "tiny.en") -> Path:
    """A features folder like scripts/esc50.py's, of made-up taps: 2 classes x 2 folds x 10 clips, each class
    shifted along its own feature, so a working probe separates them and a broken fold split or label join does not."""
    from whisper_at_jax.data import FeatureWriter

    rng = np.random.default_rng(0)
    writer = FeatureWriter(path, "train", {"model": model, "n_layers": 4, "width": 8, "steps": 5, "pool": 10,
                                           "clip_seconds": 5.0, "labels": ["dog", "rain"], "source": "ESC-50"})
    for fold in (1, 2):
        target = np.repeat([0, 1], 10)
        taps = rng.standard_normal((20, 4, 5, 8)).astype(np.float32)
        taps[np.arange(20), :, :, target] += 3.0
        writer.add(taps, np.eye(2, dtype=np.float32)[target], [f"{fold}-{i}" for i in range(20)], [fold] * 20)
    writer.close()
    return path


def test_training_from_complete_features_needs_no_dataset(tmp_path: Path, capsys) -> None:
    """Without --shared, scripts/esc50.py trains and probes from a complete features folder alone (how the GPU runs
    of docs/results.md were made: the taps travel, the audio does not); what it cannot do is named."""
    feats = _separable_features(tmp_path / "feats")
    out = tmp_path / "out"
    assert esc50_cli.main(["--model", "tiny.en", "--features", str(feats), "--heads", "linear", "--folds", "1,2",
                           "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["fold"] for r in runs) == [1, 2] and all(r["accuracy"] > 0.9 for r in runs), runs
    for argv, message in ((["--model", "base"], "holds tiny.en features, not --model base's"),
                          (["--model", "tiny.en", "--folds", "3"], "ESC-50 has folds [1, 2]"),
                          (["--model", "tiny.en", "--default_head", str(tmp_path / "h")], "needs --shared")):
        assert esc50_cli.main(argv + ["--features", str(feats), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert esc50_cli.main(["--features", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "--shared is needed" in capsys.readouterr().err


def test_encoder_dtype_has_its_own_features_and_results(tmp_path: Path, capsys, monkeypatch) -> None:
    """--encoder_dtype: bf16 taps get their own default folder, reach the trainer's extraction as its dtype, are
    recorded in meta.json and results.json, and are never mixed with fp32 taps or fp32 results (no encoding here:
    the extraction is replaced by a recorder)."""
    import whisper_at_jax.data as wdata

    assert esc50.default_features("tiny.en") == Path("/tmp/esc50_feats_tiny.en")  # the historical name
    assert esc50.default_features("base", "bfloat16") == Path("/tmp/esc50_feats_base_bfloat16")
    assert esc50.default_features("base", "bfloat16", "_speech") == Path("/tmp/esc50_feats_base_bfloat16_speech")

    seen = []

    def fake_extract(model, batches, writer, *, pool, dtype="float32", batch_size=None, progress=False, mesh=None):
        seen.append(dtype)
        n = 0
        for b in batches:
            keep = b["mask"] > 0.5
            taps = np.zeros((len(b["audio"]), model.dims.n_audio_layer, 25, model.dims.n_audio_state), np.float32)
            writer.add(taps[keep], b["labels"][keep], [i for i, k in zip(b["id"], keep) if k], b["fold"][keep])
            n += int(keep.sum())
        return n

    monkeypatch.setattr(wdata, "extract_features", fake_extract)
    rows = [{"id": f"c{i}", "path": "", "fold": 1 + i % 2, "target": i % 2, "category": "x"} for i in range(4)]
    feats = esc50.write_features("tiny.en", rows, ["a", "b"], tmp_path / "f", 4, "test",
                                 lambda _, chunk: np.zeros((len(chunk), 80000), np.float32), "features",
                                 "--features", encoder_dtype="bfloat16")
    assert seen == ["bfloat16"]
    assert json.loads((feats / "meta.json").read_text())["encoder_dtype"] == "bfloat16"
    with pytest.raises(esc50.ESC50Error, match="encoder bfloat16; wanted tiny.en, 4 clips, encoder float32"):
        esc50.extract("tiny.en", rows, ["a", "b"], feats)  # fp32 asked, bf16 folder: refused, not reused

    fp32 = _separable_features(tmp_path / "fp32")  # a folder without the key: float32
    out = tmp_path / "out"
    base = ["--model", "tiny.en", "--heads", "linear", "--folds", "1,2", "--out", str(out)]
    assert esc50_cli.main(base + ["--features", str(fp32), "--encoder_dtype", "bfloat16"]) == 2
    assert "holds taps of a float32 encoder, not --encoder_dtype bfloat16's" in capsys.readouterr().err
    assert esc50_cli.main(base + ["--features", str(fp32)]) == 0
    assert json.loads((out / "results.json").read_text())["encoder_dtype"] == "float32"
    bf16 = _separable_features(tmp_path / "bf16")
    meta = json.loads((bf16 / "meta.json").read_text())
    (bf16 / "meta.json").write_text(json.dumps({**meta, "encoder_dtype": "bfloat16"}))
    assert esc50_cli.main(base + ["--features", str(bf16), "--encoder_dtype", "bfloat16"]) == 2  # fp32 results there
    assert "holds runs on float32 taps" in capsys.readouterr().err


@pytest.mark.slow  # ~50 s alone on this CPU (160 clips encoded), ~100 s under the team's load
@pytest.mark.skipif(not HAS_ESC50, reason="needs ../shared/data/esc50")
def test_one_fold_through_the_trainer_is_well_above_chance(tmp_path: Path) -> None:
    """ESC-10 (10 classes), train on fold 2, test on fold 1: real tiny.en taps through scripts/esc50.py's
    extraction and configs/esc50.py + whisper_at_jax.train (WA-MLP, lr 1e-2, 40 epochs of 2 steps). Chance is
    10%; the full 50-class 5-fold WA-MLP reaches ~82% (docs/results.md) and this test measured 90%, so 60% on the
    10-class subset with a quarter of the training data is a loose floor (the tiny training set makes a few
    points of seed/CPU variation plausible) that a broken extraction, fold split or trainer would miss by far."""
    rows, names = esc50.read_meta(esc50.find_esc50(SHARED))
    keep = {n for n in ("dog", "rain", "sea_waves", "crying_baby", "clock_tick", "sneezing", "helicopter",
                        "chainsaw", "rooster", "crackling_fire")}
    rows = [r for r in rows if r["category"] in keep and r["fold"] in (1, 2)]
    assert len(rows) == 160
    feats = esc50.extract("tiny.en", rows, names, tmp_path / "feats")
    r = esc50.train_fold("tiny.en", "wa_mlp", feats, 1, 1e-2, tmp_path / "work", epochs=40)
    print(f"ESC-10 fold 1 accuracy: {r['accuracy']:.3f}")
    assert r["accuracy"] > 0.6, r
    shutil.rmtree(tmp_path / "feats")


def test_tag_only_summary_scores_top1_and_top5_without_wer() -> None:
    """--tag_only records carry no transcript: the table has tag accuracies only. Three mixtures at 0 dB with the
    target first, third (top-5 hit, top-1 miss) and absent from the top 5 -> top-1 1/3, top-5 2/3."""
    setup = noise.Setup("m", "h", fold=1, tag_only=True)
    recs = [{"snr": 0.0, "target": 7, "pred": 7, "top5": [7, 1, 2, 3, 4], "utterance": "jfk", "text": None},
            {"snr": 0.0, "target": 7, "pred": 1, "top5": [1, 2, 7, 3, 4], "utterance": "jfk", "text": None},
            {"snr": 0.0, "target": 7, "pred": 1, "top5": [1, 2, 3, 4, 5], "utterance": "jfk", "text": None},
            {"snr": None, "target": 3, "pred": 3, "top5": [3, 0, 1, 2, 4]}]

    class _Model:
        head_config = {"mode": "wa_mlp"}

    res = noise.summary(setup, _Model(), ["x"] * 10, [{"name": "jfk", "text": "a b"}], {}, recs, 0.0)
    row = next(r for r in res["table"] if r["snr"] == 0.0)
    assert "wer_known" not in row and res["clean_wer_known"] is None
    assert row["tag_acc"] == pytest.approx(100 / 3) and row["tag_top5"] == pytest.approx(200 / 3)
    md = noise.markdown(res)
    assert "| +0 | - | - | 33 | 67 |" in md and "| noise alone | - | - | 100 | 100 |" in md
