"""Golden-value parity of the Flax Whisper with openai-whisper (PyTorch) and CTranslate2 on the same real weights.

Tolerances (fp32 on CPU):
- every block output within 2e-5 of that block's max magnitude of openai-whisper fp32's (pre-ln_post values grow to
  ~600 in tiny.en's last block, so an absolute bound would be meaningless);
- final encoder states against openai-whisper run in float64 (the exact answer for these weights): within
  REF_ERROR_FACTOR x PyTorch fp32's own distance from float64, measured in the same test on the same machine. The
  final states' fp32 error is summation order in the products, amplified by ln_post (it normalises rows with a
  ~600 outlier channel); which order a CPU runs depends on the kernels its instruction set selects, so a fixed
  absolute bound fits one CPU and not another. Measured distances from float64 (tiny.en / base): on an AVX-512
  Xeon PyTorch 1.4e-4 / 4.2e-4, ours 2.1e-4 / 3.2e-4; the same Xeon with XLA's other product kernels
  (`--xla_cpu_experimental_ynn_fusion_type=`, `=individual_dot`) moves ours on tiny.en over 1.6e-4 - 6.9e-4 (4.2x,
  summation order alone); an AVX2-only AMD EPYC gave ours 1.13e-3 vs PyTorch's 2.0e-4 (5.7x). The bound (8x) is
  "the same fp32 accuracy class as the reference": a porting mistake (a cast, a position slice, a mask) moves the
  states by 1e-2 - 1;
- decoder logits <= 2e-4 x max(1, max|logit|) (logits reach ~30; measured ~1e-5 relative).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from whisper_at_jax.convert.openai import float64_layer_norm, openai_encoder_layers

pytestmark = pytest.mark.isa_sensitive


REF_ERROR_FACTOR = 8.0


def _mel(audio: np.ndarray, n_mels: int) -> np.ndarray:
    import whisper

    audio = whisper.pad_or_trim(torch.from_numpy(audio))
    return whisper.log_mel_spectrogram(audio, n_mels=n_mels).numpy()[None]


def _float64_final(ref, mel: torch.Tensor) -> np.ndarray:
    """openai-whisper's encoder in float64: the exact answer for these weights, up to float64 rounding."""
    with float64_layer_norm():
        return openai_encoder_layers(copy.deepcopy(ref).double(), mel.double())[1]


def _check_encoder(model, audio, n_frames=3000):
    ref = model.to_openai_whisper()
    mel = _mel(audio, model.dims.n_mels)[..., :n_frames]
    final, layers = model.encode(mel, return_layers=True)
    ref_layers, ref_final = openai_encoder_layers(ref, torch.from_numpy(mel))
    if n_frames == 3000:  # the unrolled reference must equal openai-whisper's own encoder
        with torch.no_grad():
            np.testing.assert_array_equal(ref.encoder(torch.from_numpy(mel)).numpy(), ref_final)
    layers = np.asarray(layers)
    assert layers.shape == (1, model.dims.n_audio_layer, n_frames // 2, model.dims.n_audio_state)
    report = []
    for i, ref_layer in enumerate(ref_layers):
        scale = np.abs(ref_layer).max()
        err = np.abs(layers[:, i] - ref_layer).max()
        report.append((i, err, scale))
        assert err <= 2e-5 * scale, f"block {i}: max abs diff {err} vs max magnitude {scale}"
    err_final = np.abs(np.asarray(final) - ref_final).max()
    final64 = _float64_final(ref, torch.from_numpy(mel))
    err_final64 = np.abs(np.asarray(final) - final64).max()
    err_torch64 = np.abs(ref_final - final64).max()
    assert err_final64 <= REF_ERROR_FACTOR * err_torch64, (
        f"final states: ours {err_final64:.3g} from float64, more than {REF_ERROR_FACTOR:g}x PyTorch fp32's "
        f"{err_torch64:.3g} (ours vs PyTorch fp32: {err_final:.3g})")
    return report, (err_final, err_final64, err_torch64), ref, mel


def _check_decoder(model, ref, mel):
    tok = [50257, 50362] if not model.is_multilingual else [50258, 50259, 50359, 50363]
    tokens = np.array([tok + [440, 1049, 7053, 21831, 764, 257, 3290, 13]], np.int32)
    with torch.no_grad():
        ref_logits = ref(torch.from_numpy(mel), torch.from_numpy(tokens).long()).numpy()
    logits = np.asarray(model.module.apply({"params": model.params}, mel, tokens))
    err = np.abs(logits - ref_logits).max()
    assert err <= 2e-4 * max(1.0, np.abs(ref_logits).max()), f"decoder logits max abs diff {err}"
    return err


@pytest.mark.slow
def test_tiny_en_matches_openai_whisper(tiny_en, speech):
    report, err_final, ref, mel = _check_encoder(tiny_en, speech)
    print("tiny.en block (index, max abs diff, max magnitude):", report, "final (ours vs torch fp32, ours vs fp64, torch fp32 vs fp64):", err_final)
    print("tiny.en decoder logits max abs diff:", _check_decoder(tiny_en, ref, mel))


@pytest.mark.slow
def test_base_matches_openai_whisper(base_model, speech):
    report, err_final, ref, mel = _check_encoder(base_model, speech)
    print("base block (index, max abs diff, max magnitude):", report, "final (ours vs torch fp32, ours vs fp64, torch fp32 vs fp64):", err_final)
    print("base decoder logits max abs diff:", _check_decoder(base_model, ref, mel))


@pytest.mark.slow
def test_short_input_slices_positions(tiny_en, speech):
    """Whisper-AT trains on 10-s clips: 1000 mel frames -> 500 encoder frames with the first 500 positions."""
    _check_encoder(tiny_en, speech, n_frames=1000)


@pytest.mark.slow
def test_batched_equals_unbatched(tiny_en, speech):
    mel = _mel(speech, 80)
    mel2 = np.concatenate([mel, _mel(speech[::-1].copy(), 80)])
    one = np.asarray(tiny_en.encode(mel[0]))
    two = np.asarray(tiny_en.encode(mel2))
    # Same program on a different batch size may tile reductions differently: 1e-5 on O(1) values.
    np.testing.assert_allclose(two[0], one, atol=1e-5)


@pytest.mark.slow
def test_matches_ctranslate2_encoder(tiny_en, speech):
    """CTranslate2 is an independent implementation (its own kernels) reading the same model.bin."""
    import ctranslate2

    from whisper_at_jax.convert import embedded_model_dir

    ct2 = ctranslate2.models.Whisper(str(embedded_model_dir("tiny.en")[0]), device="cpu", compute_type="float32")
    mel = _mel(speech, 80)
    ref = np.asarray(ct2.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    ours = np.asarray(tiny_en.encode(mel))
    err = np.abs(ours - ref).max()
    with torch.no_grad():
        torch_final = tiny_en.to_openai_whisper().encoder(torch.from_numpy(mel)).numpy()
    err_torch = np.abs(torch_final - ref).max()
    print("CTranslate2 encode max abs diff: ours", err, "openai-whisper fp32", err_torch)
    # CTranslate2 (oneDNN GEMMs, its own LayerNorm) differs from openai-whisper fp32 by about as much as we do
    # (both ~2-3e-4 here, for the ln_post amplification explained at the top): the same 1e-3 bound.
    assert err <= 1e-3


@pytest.mark.slow
def test_bf16_compute_close_to_fp32(speech):
    import whisper_at_jax as wat

    fp32 = wat.load_model("tiny.en", at_head=False)
    bf16 = wat.load_model("tiny.en", at_head=False, dtype="bfloat16")
    mel = _mel(speech, 80)
    a, b = np.asarray(fp32.encode(mel)), np.asarray(bf16.encode(mel), np.float32)
    # bf16 has 8 mantissa bits (~4e-3 relative); after 4 blocks the final (LayerNorm-ed, O(1)) states drift by
    # a few 1e-2 typical. Guard against gross errors (wrong casts give O(1) differences), not precision.
    assert np.abs(a - b).mean() < 0.05, np.abs(a - b).mean()
