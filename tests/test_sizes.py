"""Every Whisper size, and the large-v3 / turbo layout (128 mel bins, 51866 tokens, 100 languages) end to end.

The real weights the suite can install are tiny.en and base (80 mels, 99 languages). The other sizes differ only in
dims, so they are checked as shapes against openai-whisper's own modules (built on the meta device: no memory).
large-v3 and turbo also change the inputs and the vocabulary; that path runs on a small model with their layout
(random weights, two blocks each side), written as an OpenAI ``.pt`` and loaded with ``load_model``, against
openai-whisper on the same weights.
"""

from __future__ import annotations

import base64
import gzip

import numpy as np
import pytest
import torch

import whisper_at_jax as wat
from flax.traverse_util import flatten_dict

from whisper_at_jax.convert.openai import _openai_key, _torch_shape
from whisper_at_jax.model import ModelDimensions, dims_for, param_shapes

SIZES = ["tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v1", "large-v2",
         "large-v3", "turbo"]


def _openai_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """openai-whisper's state dict shapes for ``dims`` (its encoder and decoder modules, on the meta device)."""
    from whisper.model import AudioEncoder, TextDecoder

    with torch.device("meta"):
        enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        dec = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)
    out = {f"encoder.{k}": tuple(v.shape) for k, v in enc.state_dict().items()}
    out.update({f"decoder.{k}": tuple(v.shape) for k, v in dec.state_dict().items()})
    return out


@pytest.mark.parametrize("name", SIZES)
@pytest.mark.slow
def test_every_size_has_openai_whispers_tensors(name):
    import whisper

    dims = dims_for(name)
    ours = {}
    for path, leaf in flatten_dict(param_shapes(dims)).items():
        key, layout = _openai_key(path)
        ours[key] = _torch_shape(tuple(leaf.shape), "T" if layout else "")
    assert ours == _openai_shapes(dims)
    # openai-whisper's alignment-head masks are [n_text_layer, n_text_head] per released model: an independent
    # record of each decoder's depth x heads
    mask = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool)
    assert mask.size == dims.n_text_layer * dims.n_text_head
    assert (dims.n_mels, dims.n_vocab) == ((128, 51866) if name in ("large-v3", "turbo") else
                                           (80, 51864 if name.endswith(".en") else 51865))


def test_size_aliases():
    import whisper_at

    # Whisper-AT (whose heads this package serves) means large-v2 by "large"; openai-whisper now means large-v3
    assert whisper_at._MODELS["large"] == whisper_at._MODELS["large-v2"]
    assert dims_for("large") == dims_for("large-v2") and dims_for("large-v3-turbo") == dims_for("turbo")
    for bad in ("large-v3.en", "huge", "turbo.en"):
        with pytest.raises(ValueError, match="unknown Whisper size"):
            dims_for(bad)


# A large-v3-layout model small enough for a unit test: large-v3's inputs and vocabulary, tiny's width.
V3_SMALL = ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=2,
                           n_vocab=51866, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=2)


@pytest.fixture(scope="module")
def v3_pair(tmp_path_factory):
    """(ours loaded from an OpenAI .pt, openai-whisper's model) with the same random weights."""
    from whisper.model import ModelDimensions as OpenAIDims
    from whisper.model import Whisper

    torch.manual_seed(0)
    ref = Whisper(OpenAIDims(**V3_SMALL.to_dict())).eval()
    # Every tensor drawn here: openai-whisper leaves the decoder's positional embedding uninitialised (torch.empty:
    # whatever the memory held, NaN included) and PyTorch's LayerNorms start at 1 / 0. std 0.05: each layer's
    # outputs stay O(1) for widths 384-1536, the logits O(1-10) as a trained model's.
    with torch.no_grad():
        for name, p in ref.named_parameters():
            is_norm_scale = p.ndim == 1 and "ln" in name.split(".")[-2] and name.endswith(".weight")
            p.copy_((1.0 if is_norm_scale else 0.0) + torch.randn_like(p) * 0.05)
    work = tmp_path_factory.mktemp("v3")
    pt = work / "v3-small.pt"
    torch.save({"dims": V3_SMALL.to_dict(), "model_state_dict": ref.state_dict()}, pt)
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(work / "cache"))  # the tokenizer built from multilingual.tiktoken goes here
    try:
        ours = wat.load_model(str(pt), at_head=False)
    finally:
        mp.undo()
    return ours, ref


def _mel128(speech: np.ndarray) -> np.ndarray:
    import whisper

    return whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(speech)), n_mels=128).numpy()[None]


def test_large_v3_layout_tokenizer(v3_pair):
    from whisper.tokenizer import get_tokenizer

    from whisper_at_jax.tokenizer import get_tokenizer as get_tokenizer_ours

    ours, _ = v3_pair
    assert ours.dims == V3_SMALL and ours.is_multilingual and ours.num_languages == 100
    tok = get_tokenizer_ours(ours.tokenizer_file, True, num_languages=100, language="yue", task="translate")
    ref = get_tokenizer(True, num_languages=100, language="yue", task="translate")
    for name in ("eot", "sot", "sot_prev", "no_timestamps", "no_speech", "timestamp_begin", "transcribe",
                 "translate", "sot_sequence", "sot_sequence_including_notimestamps"):
        assert getattr(tok, name) == getattr(ref, name), name
    assert tok.language_token == ref.language_token == 50358  # <|yue|>: the 100th language
    assert dict(zip(tok.all_language_tokens, tok.all_language_codes)) == \
        dict(zip(ref.all_language_tokens, ref.all_language_codes))


@pytest.mark.slow
def test_large_v3_layout_matches_openai_whisper(v3_pair, speech):
    from whisper.decoding import detect_language
    from whisper.tokenizer import get_tokenizer

    from whisper_at_jax.decoding import detect_language as detect_language_ours

    ours, ref = v3_pair
    mel = _mel128(speech)
    with torch.no_grad():
        ref_final = ref.encoder(torch.from_numpy(mel))
        tokens = list(get_tokenizer(True, num_languages=100, language="en").sot_sequence_including_notimestamps)
        tokens = torch.tensor([tokens + [440, 1049, 7053, 21831, 764]])
        ref_logits = ref.decoder(tokens, ref_final).numpy()
        ref_lang, ref_probs = detect_language(ref, ref_final[0])
    final = np.asarray(ours.encode(mel))
    ref_final = ref_final.numpy()
    # Two fp32 blocks and ln_post, states up to ~4: fp32 rounding of a few 1e-7 relative per operation, not
    # amplified by depth as in tiny.en's real last block (measured 3.5e-6 absolute, 8e-7 of the max magnitude).
    assert np.abs(final - ref_final).max() <= 1e-5 * max(1.0, np.abs(ref_final).max())
    logits = np.asarray(ours.module.apply({"params": ours.params}, mel, tokens.numpy().astype(np.int32)))
    # Two decoder blocks on those states, then the tied projection (384 products per logit): fp32 rounding relative
    # to the largest logit (measured 5.0e-6 absolute of 4.7: 1.1e-6 relative).
    assert np.abs(logits - ref_logits).max() <= 5e-6 * np.abs(ref_logits).max()
    lang, probs = detect_language_ours(ours, mel[0])
    assert lang == int(ref_lang)
    assert len(probs) == 100 and "yue" in probs
    for code, p in ref_probs.items():  # softmax over the 100 language logits (measured 6e-8)
        assert abs(probs[code] - p) <= 1e-5, code


@pytest.mark.slow
def test_large_v3_layout_transcribes_as_openai_whisper(v3_pair, speech):
    """openai-whisper's transcribe on the same random weights: language detection over the 100 languages, the
    shifted special tokens (<|transcribe|> 50360, <|notimestamps|> 50364, timestamps from 50365) and the
    suppression and timestamp rules on a 51866-token vocabulary give the same segments (these random weights
    detect Yoruba and write six timestamped segments of made-up words)."""
    import whisper
    from test_transcribe import assert_same_transcript

    from whisper_at_jax.transcribe import transcribe

    ours, ref = v3_pair
    expected = whisper.transcribe(ref, speech, fp16=False, temperature=0.0)
    got = transcribe(ours, speech, temperature=0.0)
    assert got["segments"] and got["language"] != "en"  # detected, not defaulted
    assert_same_transcript(expected, got)


def test_large_v3_layout_converts_from_every_format(v3_pair, tmp_path):
    """The same weights as a Hugging Face folder (transformers' save_pretrained, config num_mel_bins 128 / vocab_size
    51866) and as CTranslate2's own conversion of it (float32) load as exactly the params the .pt gave."""
    import shutil

    from ctranslate2.converters import TransformersConverter
    from test_convert import assert_params_equal, hf_whisper

    from whisper_at_jax.convert import params_to_state_dict

    ours, _ = v3_pair
    hf = tmp_path / "hf"
    hf_whisper(params_to_state_dict(ours.params), V3_SMALL).save_pretrained(hf)
    shutil.copyfile(ours.tokenizer_file, hf / "tokenizer.json")  # CTranslate2's converter reads it
    ct2 = TransformersConverter(str(hf)).convert(str(tmp_path / "ct2"), quantization="float32")
    for path in (hf, ct2):
        loaded = wat.load_model(path, at_head=False)
        assert loaded.dims == V3_SMALL and loaded.num_languages == 100, path
        assert_params_equal(loaded.params, ours.params)
