"""Compiled decoding against openai-whisper's ``decode`` (PyTorch, fp32) on the same real weights and mel.

Token sequences must be identical. avg_logprob / no_speech_prob: within 1e-4, because the two stacks compute
the same fp32 graph in a different order (decoder logits agree to ~1e-5 in test_model_parity), and a sum of
~50 per-token log-probabilities accumulates those differences; measured differences are ~2e-5.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
whisper = pytest.importorskip("whisper")

from conftest import torch_whisper  # noqa: E402

from whisper_at_jax.decoding import DecodingOptions, DecodingResult, decode, detect_language  # noqa: E402

LOGPROB_TOL = 1e-4


def _mel(audio: np.ndarray):
    """openai-whisper's log-mel of one 30-s window; both implementations decode this same tensor."""
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(np.asarray(audio, np.float32))))


def _ref_decode(ref, mel, **kw):
    return whisper.decode(ref, mel, whisper.DecodingOptions(fp16=False, **kw))


def _assert_same(ours: DecodingResult, theirs) -> None:
    assert ours.tokens == theirs.tokens, f"\nours:   {ours.text}\ntheirs: {theirs.text}"
    assert ours.text == theirs.text
    assert ours.language == theirs.language
    assert abs(ours.avg_logprob - theirs.avg_logprob) < LOGPROB_TOL
    assert abs(ours.no_speech_prob - theirs.no_speech_prob) < LOGPROB_TOL
    assert ours.compression_ratio == pytest.approx(theirs.compression_ratio, rel=1e-12)


@pytest.fixture(scope="module")
def ref_tiny(tiny_en):
    return torch_whisper(tiny_en)


@pytest.fixture(scope="module")
def mel_speech(speech):
    return _mel(speech)


@pytest.fixture(scope="module")
def thirds(speech) -> list[np.ndarray]:
    """The 14-s clip cut in three ~4.7-s pieces (one sentence-ish each): short windows keep the slow
    reference runs (beam search, base) affordable on this CPU."""
    n = len(speech) // 3
    return [speech[:n], speech[n:2 * n], speech[2 * n:]]


@pytest.fixture(scope="module")
def mel_short(thirds):
    return _mel(thirds[0])


@pytest.fixture(scope="module")
def german_speech() -> np.ndarray:
    """German speech made here with espeak-ng (skip without it), for language detection and translation."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed")
    import tempfile

    from whisper_at_jax.audio import load_audio

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "de.wav"
        subprocess.run([exe, "-v", "de", "-w", str(wav), "Guten Morgen. Heute ist das Wetter schön."], check=True, capture_output=True)
        return load_audio(str(wav))


# ---------------------------------------------------------------------------------------------------------
# tiny.en against openai-whisper


@pytest.mark.parametrize("kw", [
    dict(without_timestamps=True),
    dict(),  # timestamps: ApplyTimestampRules incl. max_initial_timestamp and the logsumexp rule
], ids=["no_timestamps", "timestamps"])
def test_greedy_equals_openai(tiny_en, ref_tiny, mel_speech, kw):
    theirs = _ref_decode(ref_tiny, mel_speech, language="en", **kw)
    ours = decode(tiny_en, mel_speech.numpy(), DecodingOptions(language="en", **kw))
    _assert_same(ours, theirs)
    assert len(ours.tokens) > 40  # 14 s of real speech: a real transcript, not an early EOT


@pytest.mark.parametrize("kw", [
    dict(prompt="Quick brown foxes and the moon landing."),
    dict(prefix="Please call", without_timestamps=True),
    dict(prompt=" We choose to go.", prefix="Please"),
], ids=["prompt", "prefix", "prompt_prefix"])
def test_prompt_prefix_equal_openai(tiny_en, ref_tiny, thirds, kw):
    mel = _mel(thirds[2])
    ours = decode(tiny_en, mel.numpy(), DecodingOptions(language="en", **kw))
    _assert_same(ours, _ref_decode(ref_tiny, mel, language="en", **kw))
    # a prefix in timestamp mode may end the window at once (openai-whisper does the same: compared above)
    assert len(ours.tokens) > 5 or ("prefix" in kw and not kw.get("without_timestamps"))


def test_no_suppression_from_features(tiny_en, ref_tiny, mel_short):
    """Rules switched off (suppress_tokens="", no blank suppression, no max initial timestamp), decoding
    precomputed encoder output."""
    kw = dict(language="en", suppress_tokens="", suppress_blank=False, max_initial_timestamp=None)
    features = tiny_en.encode(mel_short.numpy()[None])
    _assert_same(decode(tiny_en, features, DecodingOptions(**kw))[0], _ref_decode(ref_tiny, mel_short, **kw))


@pytest.mark.parametrize("kw", [
    dict(beam_size=5),
    # same beam count (same compiled step); patience 1.5 keeps up to 8 finished candidates
    dict(beam_size=5, patience=1.5, length_penalty=0.6, without_timestamps=True),
], ids=["beam5", "beam5_patience_penalty"])
def test_beam_search_equals_openai(tiny_en, ref_tiny, mel_short, kw):
    theirs = _ref_decode(ref_tiny, mel_short, language="en", **kw)
    ours = decode(tiny_en, mel_short.numpy(), DecodingOptions(language="en", **kw))
    _assert_same(ours, theirs)
    assert len(ours.tokens) > 8


def test_token_budget(tiny_en, ref_tiny, mel_short):
    """sample_len caps every row (a looping row cannot stall the batch); the cut matches openai-whisper's."""
    theirs = _ref_decode(ref_tiny, mel_short, language="en", sample_len=7)
    ours = decode(tiny_en, mel_short.numpy(), DecodingOptions(language="en", sample_len=7))
    _assert_same(ours, theirs)
    assert len(ours.tokens) == 7


def test_batch_equals_single(tiny_en, thirds):
    """Two different windows decoded together equal each decoded alone."""
    mels = np.stack([_mel(w).numpy() for w in thirds[:2]])
    together = decode(tiny_en, mels, DecodingOptions(language="en"))
    assert len(together) == 2
    for w, r in zip(mels, together):
        alone = decode(tiny_en, w, DecodingOptions(language="en"))
        assert isinstance(alone, DecodingResult)
        assert alone.tokens == r.tokens
        assert abs(alone.avg_logprob - r.avg_logprob) < LOGPROB_TOL
    assert together[0].text != together[1].text


def test_sampling(tiny_en, mel_short):
    """Temperature sampling (jax.random, so not torch's draws): reproducible per seed, best_of ranks samples."""
    mel = mel_short.numpy()
    kw = dict(language="en", temperature=0.5, best_of=2, sample_len=24, without_timestamps=True)
    a = decode(tiny_en, mel, DecodingOptions(seed=1, **kw))
    b = decode(tiny_en, mel, DecodingOptions(seed=1, **kw))
    assert a.tokens == b.tokens and a.avg_logprob == b.avg_logprob
    assert a.temperature == 0.5 and np.isfinite(a.avg_logprob) and a.text and len(a.tokens) <= 24


def test_jfk(tiny_en, ref_tiny, shared_dir):
    path = shared_dir / "data" / "speech" / "jfk.wav"
    if not path.is_file():
        pytest.skip("jfk.wav not present")
    from whisper_at_jax.audio import load_audio

    mel = _mel(load_audio(str(path)))
    ours = decode(tiny_en, mel.numpy(), DecodingOptions(language="en"))
    _assert_same(ours, _ref_decode(ref_tiny, mel, language="en"))


def test_bad_options(tiny_en, mel_speech):
    mel = mel_speech.numpy()
    with pytest.raises(ValueError, match="beam_size and best_of"):
        decode(tiny_en, mel, DecodingOptions(beam_size=2, best_of=2))
    with pytest.raises(ValueError, match="best_of with greedy"):
        decode(tiny_en, mel, DecodingOptions(best_of=2))
    with pytest.raises(ValueError, match="Unsupported language"):
        decode(tiny_en, mel, DecodingOptions(language="klingon"))
    with pytest.raises(ValueError, match="unknown decoding options"):
        decode(tiny_en, mel, beam=3)
    with pytest.raises(ValueError, match="mel bins"):
        decode(tiny_en, np.zeros((2, 40, 3000), np.float32))
    with pytest.raises(ValueError, match="shape"):
        decode(tiny_en, np.zeros(3000, np.float32))
    with pytest.raises(ValueError, match="task"):
        decode(tiny_en, mel, DecodingOptions(task="summarize"))
    with pytest.raises(ValueError, match="length_penalty"):
        decode(tiny_en, mel, DecodingOptions(beam_size=2, length_penalty=2.0))
    with pytest.raises(ValueError, match="language tokens"):
        detect_language(tiny_en, mel)


# ---------------------------------------------------------------------------------------------------------
# multilingual base against openai-whisper


@pytest.fixture(scope="module")
def base_pair(base_model):
    return base_model, torch_whisper(base_model)


@pytest.fixture(scope="module")
def two_languages(thirds, german_speech):
    return torch.stack([_mel(thirds[1]), _mel(german_speech)])


def test_base_language_detection(base_pair, two_languages):
    model, ref = base_pair
    ref_tokens, ref_probs = whisper.decoding.detect_language(ref, two_languages)
    tokens, probs = detect_language(model, two_languages.numpy())
    assert list(tokens) == ref_tokens.tolist()
    assert [max(p, key=p.get) for p in probs] == ["en", "de"]
    for ours, theirs in zip(probs, ref_probs):
        assert max(abs(ours[c] - theirs[c]) for c in theirs) < LOGPROB_TOL


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_base_tasks_equal_openai(base_pair, two_languages, task):
    model, ref = base_pair
    theirs = _ref_decode(ref, two_languages, task=task)
    ours = decode(model, two_languages.numpy(), DecodingOptions(task=task))
    for o, t in zip(ours, theirs):
        _assert_same(o, t)
    assert [o.language for o in ours] == ["en", "de"]
