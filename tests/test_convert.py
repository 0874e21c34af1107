"""Checkpoint conversion on real tiny.en weights: every input format gives exactly the params of the CTranslate2 path.

The OpenAI ``.pt``, Hugging Face folders and quantized CTranslate2 files are written inside the tests from the real
tiny.en tensors of the embedded CTranslate2 model (fp16, so fp32 copies of them are exact): torch.save for the
``.pt``, transformers' own ``WhisperForConditionalGeneration.save_pretrained`` for Hugging Face, and CTranslate2's own
``TransformersConverter`` for the quantized files. Bad inputs must give a CheckpointError naming the file/tensor and
leave nothing behind; the CLI must exit non-zero with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import whisper_at_jax as wat
from whisper_at_jax.convert import CheckpointError, params_to_state_dict, resolve, save_checkpoint
from flax.traverse_util import flatten_dict

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/nonexistent")  # set by the `work` fixture
CONVERT = ROOT / "scripts" / "convert.py"


def convert_cli():
    """The convert command line (``scripts/convert.py`` calls the same ``main``), to call in process."""
    from whisper_at_jax.cli import convert

    return convert


# --------------------------------------------------------------------------------------------------------------
# Fixtures (session-scoped: the real weights are read once, each format written once)


@pytest.fixture(scope="session")
def ref():
    """Real tiny.en through the CTranslate2 path: the params every other format must reproduce exactly."""
    return resolve("tiny.en")


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    global CACHE
    out = tmp_path_factory.mktemp("convert")
    CACHE = out / "cache"
    return out


@pytest.fixture(scope="session")
def state_dict(ref) -> dict[str, np.ndarray]:
    return params_to_state_dict(ref.params)


def _torch_sd(sd: dict[str, np.ndarray]):
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


@pytest.fixture(scope="session")
def pt_file(ref, state_dict, work) -> Path:
    """openai-whisper's checkpoint layout: torch.save({"dims", "model_state_dict"})."""
    import torch

    path = work / "pt" / "tiny.en.pt"
    path.parent.mkdir()
    torch.save({"dims": ref.dims.to_dict(), "model_state_dict": _torch_sd(state_dict)}, path)
    return path


# openai-whisper -> transformers names (transformers' convert_openai_to_hf WHISPER_MAPPING, written the other way
# round from hf.py on purpose). `test_hf_model_is_whisper` proves the mapping numerically, so the round trip below
# cannot pass with a q/k mix-up that both directions share.
_TO_HF = [(r"\.blocks\.(\d+)\.", r".layers.\1."), (r"\.mlp\.0\.", ".fc1."), (r"\.mlp\.2\.", ".fc2."),
          (r"\.mlp_ln\.", ".final_layer_norm."), (r"\.attn_ln\.", ".self_attn_layer_norm."),
          (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."), (r"\.cross_attn\.", ".encoder_attn."),
          (r"\.attn\.", ".self_attn."), (r"\.query\.", ".q_proj."), (r"\.key\.", ".k_proj."),
          (r"\.value\.", ".v_proj."), (r"\.out\.", ".out_proj."), (r"^encoder\.ln_post\.", "encoder.layer_norm."),
          (r"^decoder\.ln\.", "decoder.layer_norm."), (r"token_embedding", "embed_tokens"),
          (r"positional_embedding$", "embed_positions.weight")]


@pytest.fixture(scope="session")
def hf_model(ref, state_dict):
    """transformers' PyTorch Whisper holding the real tiny.en tensors and, as released Hugging Face Whisper repos,
    the word-timing heads in its generation config (saved as generation_config.json)."""
    model = hf_whisper(state_dict, ref.dims)
    model.generation_config.alignment_heads = ref.whisper_meta["alignment_heads"]
    return model


def hf_whisper(state_dict: dict[str, np.ndarray], d):
    """transformers' ``WhisperForConditionalGeneration`` holding an openai-named state dict, for dims ``d``."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=d.n_vocab, num_mel_bins=d.n_mels, encoder_layers=d.n_audio_layer,
                        encoder_attention_heads=d.n_audio_head, decoder_layers=d.n_text_layer,
                        decoder_attention_heads=d.n_text_head, d_model=d.n_audio_state,
                        encoder_ffn_dim=4 * d.n_audio_state, decoder_ffn_dim=4 * d.n_text_state,
                        max_source_positions=d.n_audio_ctx, max_target_positions=d.n_text_ctx)
    with torch.device("meta"):  # no random init: every tensor is assigned below
        model = WhisperForConditionalGeneration(cfg)
    hsd = {}
    for k, v in _torch_sd(state_dict).items():
        for pattern, repl in _TO_HF:
            k = re.sub(pattern, repl, k)
        hsd["model." + k] = v
    hsd["proj_out.weight"] = hsd["model.decoder.embed_tokens.weight"]
    model.load_state_dict(hsd, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="session")
def hf_dir(hf_model, ref, work) -> Path:
    out = work / "hf"
    hf_model.save_pretrained(out)  # model.safetensors + config.json + generation_config.json (tied proj_out not stored)
    shutil.copyfile(ref.tokenizer_file, out / "tokenizer.json")
    return out


@pytest.fixture(scope="session")
def hf_sharded_dir(hf_model, work) -> Path:
    out = work / "hf_sharded"
    hf_model.save_pretrained(out, max_shard_size="40MB")
    assert (out / "model.safetensors.index.json").is_file()
    return out


@pytest.fixture(scope="session")
def hf_bin_dir(hf_model, hf_dir, work) -> Path:
    """The pickle layout of older Hugging Face repos: torch.save of the state dict as pytorch_model.bin
    (transformers 5 no longer writes it, so the test does what older save_pretrained did)."""
    import torch

    out = work / "hf_bin"
    out.mkdir()
    shutil.copyfile(hf_dir / "config.json", out / "config.json")
    torch.save(hf_model.state_dict(), out / "pytorch_model.bin")  # includes proj_out.weight (tied)
    return out


@pytest.fixture(scope="session")
def ours_dir(ref, work) -> Path:
    """Our checkpoint format, written once by save_checkpoint."""
    return save_checkpoint(work / "ours", ref.dims, ref.params, ref.tokenizer_file, source=ref.source,
                           whisper_meta=ref.whisper_meta)


QUANTIZATIONS = ("float32", "int8", "int8_float16", "int16")


@pytest.fixture(scope="session")
def ct2_dirs(hf_dir, work) -> dict[str, Path]:
    """CTranslate2's own converter applied to the Hugging Face folder, one file per quantization."""
    from ctranslate2.converters import TransformersConverter

    out = {}
    for q in QUANTIZATIONS:
        out[q] = Path(TransformersConverter(str(hf_dir)).convert(str(work / f"ct2_{q}"), quantization=q))
    return out


def assert_params_equal(actual: dict, expected: dict) -> None:
    a, e = flatten_dict(actual), flatten_dict(expected)
    assert set(a) == set(e)
    for k in e:
        assert np.asarray(a[k]).dtype == np.float32, k
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(e[k]), err_msg="/".join(k))


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --------------------------------------------------------------------------------------------------------------
# CTranslate2


def test_embedded_fp16_aliases_and_meta(ref):
    from whisper_at_jax.convert import embedded_model_dir
    from whisper_at_jax.convert.ctranslate2 import read_model_bin

    v = read_model_bin(embedded_model_dir("tiny.en")[1])
    assert v["decoder/embeddings/weight"].dtype == np.float16
    # the tied output projection is stored once and aliased
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]
    np.testing.assert_array_equal(ref.params["decoder"]["token_embedding"]["embedding"],
                                  v["decoder/embeddings/weight"].astype(np.float32))
    # conv weight [out, in, k] -> Flax kernel [k, in, out]
    np.testing.assert_array_equal(ref.params["encoder"]["conv1"]["kernel"],
                                  v["encoder/conv1/weight"].astype(np.float32).transpose(2, 1, 0))
    assert ref.dims == wat.dims_for("tiny.en")
    assert {"suppress_ids", "lang_ids", "alignment_heads"} <= set(ref.whisper_meta)


@pytest.mark.slow  # four CTranslate2 conversions (~3 s each on an idle 2-core CPU) plus a 39M-value check each
def test_ctranslate2_quantized_files(ref, ct2_dirs):
    """fp32 / int8 / int8_float16 / int16 files written by CTranslate2 from the same weights.

    Unquantized values must come back exactly. Quantized weights must equal CTranslate2's own dequantization,
    ``q * (1 / scale)`` in float32 (its CPU Dequantize kernel), bit for bit, which is within 1 ulp of ``q / scale``;
    and lie within half a quantization step (0.5 / scale of their row, plus float32 rounding, see below) of the fp32
    weights, since CTranslate2 quantizes as ``q = rint(w * scale)`` (checked too),
    ``scale = 127 / max|row|`` (int8) or ``2**10 / max|w|`` (int16).
    """
    from whisper_at_jax.convert.ctranslate2 import read_model_bin, to_openai_state_dict
    from whisper_at_jax.convert.openai import state_dict_to_params

    fp32 = read_model_bin(ct2_dirs["float32"] / "model.bin")
    assert_params_equal(resolve(ct2_dirs["float32"]).params, ref.params)
    report: dict = {}
    int8_raw: dict = {}  # filled by the int8 iteration, which comes before int8_float16
    int8_expected: dict = {}
    for q in QUANTIZATIONS[1:]:
        raw = read_model_bin(ct2_dirs[q] / "model.bin")
        quantized = [k for k in raw if k + "_scale" in raw and raw[k].dtype in (np.int8, np.int16)]
        # every Linear weight (4 per encoder block, 7 per decoder block), both convs, the embedding and its alias
        assert len(quantized) == 4 * ref.dims.n_audio_layer + 7 * ref.dims.n_text_layer + 4, (q, len(quantized))
        expected, worst = {}, 0.0
        for name, arr in raw.items():
            if name.endswith("_scale"):
                continue
            if name not in quantized:
                expected[name] = arr
                if arr.ndim:  # unquantized (biases, norms, positions): exact, even when stored as fp16
                    np.testing.assert_array_equal(arr.astype(np.float32), fp32[name], err_msg=f"{q} {name}")
                continue
            if q == "int8_float16":  # the same int8 payload as the int8 file (only the other tensors are fp16)
                np.testing.assert_array_equal(arr, int8_raw[name], err_msg=name)
                np.testing.assert_array_equal(raw[name + "_scale"], int8_raw[name + "_scale"], err_msg=name)
                expected[name] = int8_expected[name]
                continue
            scale = np.asarray(raw[name + "_scale"], np.float32)
            s = scale.reshape(-1, 1) if scale.ndim else scale
            rows = arr.reshape(arr.shape[0], -1).astype(np.float32)
            deq = rows * (np.float32(1) / s)
            div = rows / s
            assert (np.abs(deq - div) <= np.spacing(np.abs(div))).all(), f"{q} {name}: > 1 ulp from q / scale"
            w = fp32[name].reshape(rows.shape)
            assert np.array_equal(np.rint(w * s), rows), f"{q} {name}: stored ints are not rint(w * scale)"
            # |deq - w| in units of half a quantization step, computed in float64; above 1 only by the float32
            # roundings of w * scale (<= 127 * 2**-24 steps) and of q * (1 / scale) (<= 2 * 127 * 2**-24 steps),
            # i.e. <= 4.6e-5 half steps
            half_steps = np.abs(deq.astype(np.float64) - w) * (2 * s.astype(np.float64))
            assert half_steps.max() <= 1 + 4.6e-5, f"{q} {name}: {half_steps.max()} half quantization steps"
            worst = max(worst, float(half_steps.max()))
            expected[name] = deq.reshape(arr.shape)
        if q == "int8":
            int8_raw.update(raw)
            int8_expected.update(expected)
        dims, sd = to_openai_state_dict(expected)
        loaded = resolve(ct2_dirs[q])
        assert loaded.tokenizer_file is not None  # CTranslate2 wrote vocabulary.json only: the embedded one
        assert_params_equal(loaded.params, state_dict_to_params(sd, wat.ModelDimensions(**dims)))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(flatten_dict(loaded.params).values(),
                                                               flatten_dict(ref.params).values()))
        report[q] = (len(quantized), diff, worst if q != "int8_float16" else report["int8"][2])
    print("quantized tensors, max |param - fp32|, max error in half quantization steps:", report)


def test_truncated_model_bin(work):
    from whisper_at_jax.convert import embedded_model_dir

    src = embedded_model_dir("tiny.en")[1]
    bad = work / "truncated_ct2"
    bad.mkdir()
    data = src.read_bytes()
    (bad / "model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"model\.bin: truncated"):
        resolve(bad)


# --------------------------------------------------------------------------------------------------------------
# OpenAI .pt and Hugging Face folders


def test_openai_pt_round_trip(ref, pt_file):
    loaded = resolve(pt_file)
    assert loaded.dims == ref.dims
    assert_params_equal(loaded.params, ref.params)
    assert loaded.tokenizer_file is not None  # the embedded tiny.en tokenizer (same vocabulary)


@pytest.mark.slow
def test_hf_model_is_whisper(hf_model, ref, speech):
    """The Hugging Face model built for the round trips computes what openai-whisper computes with the same
    tensors: encoder states within 1e-4 (fp32, two PyTorch implementations; measured ~1e-6)."""
    import torch
    import whisper

    from whisper_at_jax.convert.openai import to_openai_whisper

    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(speech)))[None]
    with torch.no_grad():
        ours = to_openai_whisper(ref.params, ref.dims).encoder(mel).numpy()
        theirs = hf_model.model.encoder(input_features=mel).last_hidden_state.numpy()
    err = np.abs(ours - theirs).max()
    print("HF vs openai-whisper encoder max abs diff:", err)
    assert err <= 1e-4


@pytest.mark.parametrize("variant", ["hf_dir", "hf_sharded_dir", "hf_bin_dir"])
def test_hf_round_trip(ref, variant, request):
    folder = request.getfixturevalue(variant)
    loaded = resolve(folder)
    assert loaded.dims == ref.dims
    assert_params_equal(loaded.params, ref.params)
    # a folder without tokenizer.json (the pytorch_model.bin one here) gets the embedded one of its vocabulary
    assert loaded.tokenizer_file is not None and bool(loaded.tokenizer_note) == (variant != "hf_dir")
    # generation_config.json's alignment heads (the pytorch_model.bin folder has none: openai-whisper's default)
    heads = loaded.whisper_meta.get("alignment_heads")
    assert heads == (None if variant == "hf_bin_dir" else ref.whisper_meta["alignment_heads"])


def test_hf_bad_alignment_heads(hf_dir, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(dict(gen, alignment_heads=[[4, 0]])))
    with pytest.raises(CheckpointError, match=r"generation_config.json: alignment_heads .* 4 layers x 6 heads"):
        resolve(folder)


def test_read_safetensors_dtypes(work):
    """Our direct safetensors reader against torch's values for bf16 / fp16 / fp32 (bf16 widened exactly)."""
    import torch
    from safetensors.torch import save_file

    from whisper_at_jax.convert.hf import read_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {f"x_{dt}": torch.randn(3, 5, generator=g).to(dt)
               for dt in (torch.bfloat16, torch.float16, torch.float32)}
    path = work / "dtypes.safetensors"
    save_file(tensors, str(path))
    got = read_safetensors(path)
    for k, t in tensors.items():
        np.testing.assert_array_equal(np.asarray(got[k], np.float32), t.float().numpy(), err_msg=k)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match="truncated: tensor"):
        read_safetensors(path)


# --------------------------------------------------------------------------------------------------------------
# Our checkpoint format and load_model


@pytest.mark.slow
def test_checkpoint_round_trip(ref, ours_dir, work):
    import ml_dtypes

    loaded = resolve(ours_dir)
    assert loaded.dims == ref.dims and loaded.whisper_meta == ref.whisper_meta and not loaded.tokenizer_note
    assert_params_equal(loaded.params, ref.params)
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(ours_dir, ref.dims, ref.params, ref.tokenizer_file)
    # bf16 storage, replacing an existing directory: the values are the bf16 roundings of the fp32 params
    out = work / "ours_bf16"
    out.mkdir()
    (out / "stale.txt").write_text("replaced")
    save_checkpoint(out, ref.dims, ref.params, ref.tokenizer_file, dtype="bfloat16", overwrite=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    flat = flatten_dict(resolve(out).params)
    for k, v in flatten_dict(ref.params).items():
        np.testing.assert_array_equal(flat[k], np.asarray(v).astype(ml_dtypes.bfloat16).astype(np.float32))
    assert not [p.name for p in work.iterdir() if p.name.startswith((".ours.", ".ours_bf16."))]


def test_failed_write_leaves_nothing(ref, work, monkeypatch):
    """A failure while writing leaves no output, no temp dir, and an existing output untouched."""
    from whisper_at_jax.convert import checkpoint

    out = work / "fails"

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.shutil, "copyfile", boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(out, ref.dims, ref.params, ref.tokenizer_file)
    _no_leftovers(out)
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(out, ref.dims, ref.params, ref.tokenizer_file, overwrite=True)
    assert (out / "keep.txt").read_text() == "old"
    assert not [p.name for p in work.iterdir() if p.name.startswith(".fails.")]


@pytest.mark.slow
def test_load_model_formats(ref, pt_file, ours_dir):
    """load_model takes the formats directly (the params equalities of every format are the round-trip tests
    above); an OpenAI .pt has no tokenizer.json and gets the embedded one of the same vocabulary."""
    mel = np.random.default_rng(0).standard_normal((1, 80, 200)).astype(np.float32)
    for path in (pt_file, ours_dir):
        model = wat.load_model(path, at_head=False)
        assert model.dims == ref.dims and model.tokenizer_file is not None and model.head_params is None
        assert_params_equal(model.params, ref.params)
    out = np.asarray(model.encode(mel))  # a loaded model runs (equal params give equal outputs)
    assert out.shape == (1, 100, 384) and np.isfinite(out).all()


def test_load_model_takes_tokenizer_beside_pt(ref, pt_file, tmp_path):
    """A tokenizer.json next to a .pt is the checkpoint's own: load_model uses it before any other."""
    import shutil

    pt = tmp_path / "model.pt"
    shutil.copy(pt_file, pt)
    shutil.copy(ref.tokenizer_file, tmp_path / "tokenizer.json")
    model = wat.load_model(pt, at_head=False)
    assert model.tokenizer_file == str(tmp_path / "tokenizer.json")
    assert model.tokenizer.encode(" Hello world") == wat.load_model("tiny.en", at_head=False).tokenizer.encode(
        " Hello world")


# --------------------------------------------------------------------------------------------------------------
# Whisper-AT heads


def _reference_head(mode: str, n_layer: int, rep_dim: int, seed: int = 0):
    """whisper-at 0.5's ATModel with random weights (not PyTorch's init: every tensor distinct and non-trivial)."""
    import torch
    from whisper_at.model import ATModel

    torch.manual_seed(seed)
    head = ATModel(label_dim=527, n_layer=n_layer, rep_dim=rep_dim, mode=mode)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return {"at_model." + k: v.clone() for k, v in head.state_dict().items()}


def _check_head(head_params: dict, sd: dict) -> None:
    for key, value in sd.items():
        parts = key[len("at_model."):].split(".")
        path, leaf = [], parts[-1]
        for p in parts[:-1]:
            if p.isdigit():
                path[-1] = f"{path[-1]}_{p}"
            else:
                path.append(p)
        node = head_params
        for p in path:
            node = node[p]
        v = value.numpy()
        if leaf == "weight" and v.ndim == 2:
            np.testing.assert_array_equal(np.asarray(node["kernel"]), v.T, err_msg=key)
        elif leaf == "weight":
            np.testing.assert_array_equal(np.asarray(node["scale"]), v, err_msg=key)
        else:
            np.testing.assert_array_equal(np.asarray(node[leaf]), v, err_msg=key)


def test_released_head_formats(ref, work):
    import torch

    from whisper_at_jax.convert.at_head import load_at_head

    sd = _reference_head("tl_down_tr_512_1_8", 4, 384)
    path = work / "tiny_custom_low.pth"
    torch.save(sd, path)
    # not a released file name: the head counts (invisible in the tensors) are assumed, with a warning
    with pytest.warns(UserWarning, match="head counts are not stored"):
        params, cfg = load_at_head(path, ref.dims)
    assert cfg["mode"] == "tl_down_tr_512_1_8" and cfg["n_classes"] == 527 and len(cfg["labels"]) == 527
    assert cfg["labels"][0][2] == "Speech"
    _check_head(params, sd)
    # a head of another model size (base: width 512) is refused with the widths named
    wrong = work / "base_ori.pth"
    torch.save(_reference_head("tl_tr_1_8", 6, 512), wrong)
    with pytest.raises(CheckpointError, match=r"base_ori\.pth: .*width 512.*n_audio_state\) is 384"):
        load_at_head(wrong, ref.dims)
    # a head tensor of the wrong shape is named with both shapes
    bad = dict(sd)
    bad["at_model.time_tr.mlp.0.weight"] = bad["at_model.time_tr.mlp.0.weight"][:, :-1]
    torch.save(bad, work / "bad_head.pth")
    with pytest.raises(CheckpointError, match=r"time_tr\.mlp\.0\.weight.*\(2048, 511\).*\(2048, 512\)"):
        load_at_head(work / "bad_head.pth", ref.dims)


# --------------------------------------------------------------------------------------------------------------
# The CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    # a private cache dir: building a tokenizer.json from tiktoken must not write into the user's ~/.cache
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XDG_CACHE_HOME=str(CACHE))
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_cli_openai_pt(ref, pt_file, work):
    out = work / "cli_pt"
    r = _cli(pt_file, out)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "tokenizer:" in r.stderr  # says where the tokenizer came from
    loaded = resolve(out)
    assert_params_equal(loaded.params, ref.params)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.slow
def test_cli_hf_with_released_head(ref, hf_dir, work):
    """A released-style TL-TR head saved the way whisper-at's checkpoints are (torch.save of the at_model.* state
    dict), attached while converting a Hugging Face folder; load_model(out) carries it."""
    import torch

    sd = _reference_head("tl_tr_1_8", ref.dims.n_audio_layer, ref.dims.n_audio_state)
    head_file = work / "tiny.en_ori.pth"
    torch.save(sd, head_file)
    out = work / "cli_hf"
    r = _cli(hf_dir, out, "--head", head_file)
    assert r.returncode == 0, r.stderr
    model = wat.load_model(out)
    assert_params_equal(model.params, ref.params)
    assert model.head_config["mode"] == "tl_tr_1_8" and len(model.head_config["labels"]) == 527
    _check_head(model.head_params, sd)
    assert len(flatten_dict(model.head_params)) == len(sd) == 34  # TL-TR: 34 tensors, none left out
    # the head moves along when our checkpoint is converted again (in process), and can be taken from it
    assert convert_cli().main([str(out), str(work / "cli_hf_again"), "-q"]) == 0
    again = resolve(work / "cli_hf_again")
    assert again.head_config == model.head_config
    _check_head(again.head_params, sd)
    from whisper_at_jax.convert.at_head import load_at_head

    params, cfg = load_at_head(out, ref.dims)
    _check_head(params, sd)
    assert cfg["labels"] == model.head_config["labels"]


# Bad inputs: each makes a CheckpointError naming the file/tensor, and the CLI writes nothing.

def _evil_pt(path: Path, marker: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return os.system, (f"echo pwned > {marker}",)

    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {}, "x": Evil()}, path)


def _bad_input(kind: str, ref, state_dict, work: Path) -> tuple[Path, str]:
    import torch

    from whisper_at_jax.convert import embedded_model_dir

    d = work / f"bad_{kind}"
    d.mkdir(exist_ok=True)
    if kind == "truncated":
        data = embedded_model_dir("tiny.en")[1].read_bytes()
        (d / "model.bin").write_bytes(data[: len(data) - 1000])
        return d, r"model\.bin: truncated model\.bin"
    if kind == "missing":
        sd = {k: v for k, v in _torch_sd(state_dict).items() if k != "encoder.blocks.2.mlp.0.weight"}
        torch.save({"dims": ref.dims.to_dict(), "model_state_dict": sd}, d / "m.pt")
        return d / "m.pt", r"m\.pt: missing tensor encoder\.blocks\.2\.mlp\.0\.weight \(expected shape \(1536, 384\)\)"
    if kind == "misshapen":
        from safetensors.numpy import save_file

        (d / "ck").mkdir()
        for f in ("config.json", "tokenizer.json"):
            shutil.copyfile(work / "ours" / f, d / "ck" / f)
        flat = {"/".join(k): v for k, v in flatten_dict(ref.params).items()}
        flat["encoder/blocks_1/attn/query/kernel"] = flat["encoder/blocks_1/attn/query/kernel"][:, :200].copy()
        save_file(flat, str(d / "ck" / "params.safetensors"))
        return d / "ck", (r"ck/params\.safetensors: tensor encoder/blocks_1/attn/query/kernel has shape \(384, 200\), "
                          r"expected \(384, 384\)")
    if kind == "pickled_callable":
        _evil_pt(d / "evil.pt", d / "pwned.txt")
        return d / "evil.pt", r"evil\.pt: refused to load"
    if kind == "empty_pt":
        (d / "empty.pt").write_bytes(b"")
        return d / "empty.pt", r"empty\.pt: empty file"
    if kind == "empty_model_bin":
        (d / "model.bin").write_bytes(b"")
        return d, r"model\.bin: empty file"
    if kind == "not_a_checkpoint":
        (d / "notes.txt").write_text("hello")
        return d, r"bad_not_a_checkpoint: not a recognised checkpoint folder"
    if kind == "truncated_pt":
        data = (work / "pt" / "tiny.en.pt").read_bytes()
        (d / "cut.pt").write_bytes(data[: len(data) // 2])
        return d / "cut.pt", r"cut\.pt: not a readable PyTorch checkpoint \(corrupt or truncated\?\)"
    if kind == "hf_truncated":
        shutil.copyfile(work / "hf" / "config.json", d / "config.json")
        data = (work / "hf" / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        return d, r"model\.safetensors: truncated: tensor model\."
    raise AssertionError(kind)


BAD = ["truncated", "truncated_pt", "missing", "misshapen", "pickled_callable", "empty_pt", "empty_model_bin",
       "not_a_checkpoint", "hf_truncated"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input(kind, ref, state_dict, pt_file, hf_dir, ours_dir, work, capsys):
    # scripts/convert.py's main() in process: `python scripts/convert.py` exits with what it returns (the
    # subprocess runs above cover the process level)
    src, pattern = _bad_input(kind, ref, state_dict, work)
    with pytest.raises(CheckpointError, match=pattern):
        resolve(src)
    out = work / f"out_{kind}"
    assert convert_cli().main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("convert.py: error: ") and re.search(pattern, last), err
    assert "Traceback" not in err
    _no_leftovers(out)
    if kind == "pickled_callable":
        assert not (work / "bad_pickled_callable" / "pwned.txt").exists()
