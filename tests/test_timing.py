"""Word-level timestamps against openai-whisper 20250625 (``whisper.timing`` pieces and ``transcribe(...,
word_timestamps=True)``) on a PyTorch model holding the same tiny.en weights and alignment heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whisper_at_jax import timing
from whisper_at_jax.transcribe import TranscribeError

# A word's probability is the mean of its tokens' softmax probabilities over fp32 logits from different kernels
# (XLA vs PyTorch, logits ~1e-5 apart): measured |diff| <= 3.1e-5 on tiny.en; a different token or word would move
# it by far more, and words and tokens are compared exactly.
PROB_TOL = 1e-4
# Word times are DTW path positions in 0.02-s frames over cross-attention weights that differ by rounding; equal
# on every input measured (speech, a 61-s three-window file, base), so this allows no frame of drift.
TIME_TOL = 1e-9


@pytest.fixture(scope="module")
def torch_tiny(tiny_en):
    return tiny_en.to_openai_whisper()


def test_alignment_heads_are_openai_whispers(tiny_en, base_model):
    """The heads read from the checkpoints' metadata (CTranslate2 config.json) equal openai-whisper's table."""
    import base64
    import gzip

    import whisper

    for name, model in (("tiny.en", tiny_en), ("base", base_model)):
        ref = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), bool)
        np.testing.assert_array_equal(timing.alignment_heads(model), ref.reshape(model.dims.n_text_layer, -1))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (12, 40), (40, 12), (57, 300)])
def test_dtw_equals_openai_whisper(shape):
    from whisper.timing import dtw_cpu

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for x in (rng.standard_normal(shape), np.round(rng.standard_normal(shape), 1)):  # the second with ties
        ref = dtw_cpu(x.astype(np.float64).copy())
        ours = timing.dtw(x)
        np.testing.assert_array_equal(ours[0], ref[0])
        np.testing.assert_array_equal(ours[1], ref[1])


@pytest.mark.parametrize("n", [2, 3, 4, 7, 150])
def test_median_filter_equals_openai_whisper(n):
    """Alone, and as the jitted aligner runs it: the signal followed by other values, its length given."""
    from whisper.timing import median_filter

    x = np.random.default_rng(n).standard_normal((3, 5, n)).astype(np.float32)
    ref = median_filter(torch.from_numpy(x), 7).numpy()
    np.testing.assert_array_equal(np.asarray(timing.median_filter(x, 7)), ref)
    longer = np.concatenate([x, np.full((3, 5, 40), 9.0, np.float32)], axis=-1)
    np.testing.assert_array_equal(np.asarray(timing.median_filter(longer, 7, n))[..., :n], ref)


def test_merge_punctuations_equals_openai_whisper():
    from whisper.timing import WordTiming as RefTiming
    from whisper.timing import merge_punctuations

    words = [" (", "Hello", ",", " world", ".", " \"", "Yes", "\"", "!", " ¿", "No", "?"]
    ours = [timing.WordTiming(w, [i], i, i + 1, 0.5) for i, w in enumerate(words)]
    ref = [RefTiming(w, [i], i, i + 1, 0.5) for i, w in enumerate(words)]
    timing.merge_punctuations(ours, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    merge_punctuations(ref, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    assert [(w.word, w.tokens) for w in ours] == [(w.word, w.tokens) for w in ref]


def _assert_same_words(ref: dict, ours: dict) -> None:
    assert ours["text"] == ref["text"]
    assert len(ours["segments"]) == len(ref["segments"])
    for a, b in zip(ref["segments"], ours["segments"]):
        assert (b["seek"], b["tokens"]) == (a["seek"], a["tokens"])
        assert abs(b["start"] - a["start"]) <= TIME_TOL and abs(b["end"] - a["end"]) <= TIME_TOL, (a, b)
        assert [w["word"] for w in b["words"]] == [w["word"] for w in a["words"]]
        for wa, wb in zip(a["words"], b["words"]):
            assert abs(wb["start"] - wa["start"]) <= TIME_TOL and abs(wb["end"] - wa["end"]) <= TIME_TOL, (wa, wb)
            assert abs(wb["probability"] - wa["probability"]) <= PROB_TOL, (wa, wb)


@pytest.mark.slow
def test_word_timestamps_equal_openai_whisper(tiny_en, torch_tiny, speech):
    import whisper

    ref = whisper.transcribe(torch_tiny, torch.from_numpy(speech), word_timestamps=True, temperature=0.0,
                             fp16=False, verbose=None)
    ours = tiny_en.transcribe(speech, word_timestamps=True, temperature=0.0)
    assert sum(len(s["words"]) for s in ours["segments"]) > 30
    _assert_same_words(ref, ours)


@pytest.mark.slow
def test_word_timestamps_base_equal_openai_whisper(base_model, speech):
    """The multilingual base model (its own alignment heads; language detected)."""
    import whisper

    ref = whisper.transcribe(base_model.to_openai_whisper(), torch.from_numpy(speech), word_timestamps=True,
                             temperature=0.0, fp16=False, verbose=None)
    ours = base_model.transcribe(speech, word_timestamps=True, temperature=0.0)
    assert ours["language"] == ref["language"] == "en"
    _assert_same_words(ref, ours)


@pytest.mark.slow
def test_word_timestamps_move_the_next_window(tiny_en, torch_tiny, speech):
    """Three windows: with word timestamps a window ends after its last word, which moves where the next one
    starts (openai-whisper's seek rule); every window's seek, segments and words equal openai-whisper's."""
    import whisper

    rng = np.random.default_rng(0)
    gap = lambda s: (0.003 * rng.standard_normal(int(s * 16000))).astype(np.float32)  # noqa: E731
    audio = np.concatenate([speech, gap(1.3), speech[::-1], gap(0.7), speech[: len(speech) // 2], gap(2.1), speech])
    ref = whisper.transcribe(torch_tiny, torch.from_numpy(audio), word_timestamps=True, temperature=0.0,
                             fp16=False, verbose=None)
    ours = tiny_en.transcribe(audio, word_timestamps=True, temperature=0.0)
    plain = tiny_en.transcribe(audio, temperature=0.0)
    assert len({s["seek"] for s in ours["segments"]}) >= 2
    assert [s["seek"] for s in ours["segments"]] != [s["seek"] for s in plain["segments"]]
    _assert_same_words(ref, ours)


@pytest.mark.slow
def test_hallucination_silence_threshold_equals_openai_whisper(tiny_en, torch_tiny, speech):
    """Speech, 12 s of faint noise, half the speech, 20 s of noise, speech: with a 2-s threshold openai-whisper skips
    silences around what it judges hallucinated and drops segments (here a different transcript from the one
    without the threshold); ours gives the same seeks, segments and words."""
    import whisper

    rng = np.random.default_rng(0)
    noise = lambda s: (0.01 * rng.standard_normal(int(s * 16000))).astype(np.float32)  # noqa: E731
    audio = np.concatenate([speech, noise(12), speech[: len(speech) // 2], noise(20), speech])
    ref = whisper.transcribe(torch_tiny, torch.from_numpy(audio), word_timestamps=True, temperature=0.0,
                             hallucination_silence_threshold=2.0, fp16=False, verbose=None)
    ours = tiny_en.transcribe(audio, word_timestamps=True, temperature=0.0, hallucination_silence_threshold=2.0)
    without = tiny_en.transcribe(audio, word_timestamps=True, temperature=0.0)
    assert [s["seek"] for s in ours["segments"]] != [s["seek"] for s in without["segments"]]
    _assert_same_words(ref, ours)


@pytest.mark.slow
def test_batched_word_timestamps_equal_openai_whispers_on_each_window(tiny_en, torch_tiny, speech):
    """Batched mode (windows cut in pauses, decoded together; no seek rule): each window's words equal what
    openai-whisper's own ``add_word_timestamps`` gives for that window's mel, segments and content length, with the
    last speech time carried from window to window as its transcribe carries it."""
    import copy

    import whisper
    from whisper.timing import add_word_timestamps
    from whisper.utils import get_end

    from whisper_at_jax.audio import log_mel_spectrogram
    from whisper_at_jax.audio import N_FRAMES, N_SAMPLES
    from whisper_at_jax.transcribe import window_bounds

    rng = np.random.default_rng(1)
    gap = lambda s: (0.003 * rng.standard_normal(int(s * 16000))).astype(np.float32)  # noqa: E731
    audio = np.concatenate([speech, gap(1.5), speech, gap(0.8), speech, gap(2.0), speech, gap(1.0), speech])
    plain = tiny_en.transcribe(audio, temperature=0.0, mode="batched", batch_size=4)
    ours = tiny_en.transcribe(audio, temperature=0.0, mode="batched", batch_size=4, word_timestamps=True)
    assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in plain["segments"]]
    assert all(s["text"].strip() for s in plain["segments"])  # nothing cleared: every segment got its words

    mel = np.asarray(log_mel_spectrogram(audio, padding=N_SAMPLES))
    content = mel.shape[1] - N_FRAMES
    bounds = window_bounds(mel, content)
    seeks = sorted({s["seek"] for s in plain["segments"]})
    assert len(seeks) >= 3 and set(seeks) <= set(bounds)
    ref_segments, last_speech = [], 0.0
    for seek in seeks:
        segs = [copy.deepcopy(s) for s in plain["segments"] if s["seek"] == seek]
        size = bounds[bounds.index(seek) + 1] - seek
        window = torch.from_numpy(whisper.pad_or_trim(mel[:, seek:seek + size], N_FRAMES))
        tokenizer = whisper.tokenizer.get_tokenizer(False, language="en", task="transcribe")
        add_word_timestamps(segments=segs, model=torch_tiny, tokenizer=tokenizer, mel=window, num_frames=size,
                            last_speech_timestamp=last_speech)
        last_speech = get_end(segs)
        ref_segments += segs
    _assert_same_words(dict(plain, segments=ref_segments), ours)


@pytest.fixture(scope="module")
def speech_window(tiny_en, speech):
    """tiny.en's tokenizer and the encoder states of the speech sample's first window."""
    import whisper_at_jax as wat
    from whisper_at_jax.tokenizer import get_tokenizer

    tok = get_tokenizer(tiny_en.tokenizer_file, multilingual=False)
    return tok, tiny_en.encode(np.asarray(wat.log_mel_spectrogram(speech, padding=480000))[None, :, :3000])


def test_one_aligner_program_per_token_bucket(tiny_en, speech_window):
    """Windows of any length share the compiled forced pass (batched mode cuts every window to its own length)."""
    tok, features = speech_window
    text = tok.encode(" The quick brown fox jumps over the lazy dog.")
    aligner = tiny_en.programs.aligner
    words = timing.find_alignment(tiny_en, tok, text, features, 2999)
    before = aligner._cache_size()
    for frames in (2600, 1802, 1000):
        assert [w.word for w in timing.find_alignment(tiny_en, tok, text, features, frames)] == [w.word for w in words]
    assert aligner._cache_size() == before


@pytest.mark.slow
def test_accelerator_forced_length_gives_the_same_words(tiny_en, speech_window, monkeypatch):
    """Off the CPU every window's forced pass is padded to 256 tokens (one program; compiling dominates there): the
    padding must not change any word, time or probability. Run on this CPU by reporting another platform."""
    assert timing._forced_length(7, 448, "cpu") == 32 and timing._forced_length(40, 448, "cpu") == 64
    assert timing._forced_length(7, 448, "gpu") == 256 and timing._forced_length(229, 448, "tpu") == 256
    assert timing._forced_length(300, 448, "gpu") == 320 and timing._forced_length(440, 448, "gpu") == 448
    tok, features = speech_window
    texts = [tok.encode(" The quick brown fox jumps over the lazy dog."),
             tok.encode(" And so, my fellow Americans, ask not what your country can do for you; ask what you can"
                        " do for your country. The quick brown fox jumps over the lazy dog, again and again.")]
    on_cpu = [timing.find_alignment(tiny_en, tok, t, features, 2999) for t in texts]
    monkeypatch.setattr(timing, "_platform", lambda x: "gpu")
    aligner = tiny_en.programs.aligner
    before = aligner._cache_size()
    padded = [timing.find_alignment(tiny_en, tok, t, features, 2999) for t in texts]
    assert aligner._cache_size() == before + 1  # both texts, one program
    for a, b in zip(on_cpu, padded):
        assert [(w.word, w.start, w.end) for w in a] == [(w.word, w.start, w.end) for w in b]
        # the same products over more rows, which XLA blocks differently: fp32 sums round apart (measured 1.8e-6);
        # a different token or frame would move a probability by orders of magnitude more
        assert max(abs(x.probability - y.probability) for x, y in zip(a, b)) <= 1e-5


def test_word_timestamps_options(tiny_en, speech):
    with pytest.raises(TranscribeError, match="hallucination_silence_threshold needs mode sequential"):
        tiny_en.transcribe(speech, word_timestamps=True, hallucination_silence_threshold=2.0, mode="batched")
    with pytest.raises(TranscribeError, match="hallucination_silence_threshold needs word_timestamps"):
        tiny_en.transcribe(speech, hallucination_silence_threshold=2.0)
    assert "words" not in tiny_en.transcribe(speech[:16000 * 3], temperature=0.0)["segments"][0]
