"""Compiled decoding against openai-whisper's ``decode`` (PyTorch, fp32) on the same real weights and audio.

Token sequences must be identical. avg_logprob / no_speech_prob / language probabilities: within 1e-4, because the
two stacks compute the same fp32 graph in a different order (decoder logits agree to ~1e-5 in test_model_parity),
and a sum of ~50 per-token log-probabilities accumulates those differences; measured differences are ~2e-5.

Speed: each side encodes each window once (module fixtures; both ``decode`` functions accept encoder output), the
reference runs on one thread, and the tests share decoding shapes, so that few programs are compiled: one prefill
and one sampling loop per number of rows, whatever the prompt lengths (checked here by counting compilations).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Iterator

import jax.monitoring
import numpy as np
import pytest

torch = pytest.importorskip("torch")
whisper = pytest.importorskip("whisper")

from whisper_at_jax.decoding import DecodingOptions, DecodingResult, decode, detect_language  # noqa: E402

LOGPROB_TOL = 1e-4
# jax's monitoring event for one XLA compilation (jax/_src/dispatch.py BACKEND_COMPILE_EVENT)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _mel(audio: np.ndarray):
    """openai-whisper's log-mel of one 30-s window; both implementations start from this same tensor."""
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(np.asarray(audio, np.float32))))


class Window:
    """One 30-s window: the mel, and each implementation's own encoder output of it (computed once)."""

    def __init__(self, model, ref, audio: np.ndarray):
        self.mel = _mel(audio)
        self.ours = model.encode(self.mel.numpy()[None])[0]  # [n_audio_ctx, d]
        with torch.no_grad():
            self.theirs = ref.encoder(self.mel[None])[0]


def _ref_decode(ref, features, **kw):
    return whisper.decode(ref, features, whisper.DecodingOptions(fp16=False, **kw))


def _assert_same(ours: DecodingResult, theirs) -> None:
    assert ours.tokens == theirs.tokens, f"\nours:   {ours.text}\ntheirs: {theirs.text}"
    assert ours.text == theirs.text
    assert ours.language == theirs.language
    assert abs(ours.avg_logprob - theirs.avg_logprob) < LOGPROB_TOL
    assert abs(ours.no_speech_prob - theirs.no_speech_prob) < LOGPROB_TOL
    assert ours.compression_ratio == pytest.approx(theirs.compression_ratio, rel=1e-12)


@contextlib.contextmanager
def _count_compiles() -> Iterator[list[str]]:
    """Names of the XLA programs compiled inside the block."""
    names: list[str] = []

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            names.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The reference decodes with one thread: its per-token steps are too small to share, and on this shared
    2-core machine two OpenMP threads spin-wait on each other (measured under load: greedy decoding of the
    14-s clip took 12.4 s CPU / 53 s wall with 2 threads, 1.8 s / 10 s with 1; beam 5: 29 s vs 5.7 s CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref_tiny(tiny_en):
    return tiny_en.to_openai_whisper()


@pytest.fixture(scope="module")
def window(tiny_en, ref_tiny, speech):
    """window(name) for name in "speech" (the 14-s clip) and "a", "b", "c": the clip cut in three ~4.7-s
    pieces (one sentence-ish each), which keep the reference's slower runs (beam search) affordable."""
    n = len(speech) // 3
    audio = {"speech": speech, "a": speech[:n], "b": speech[n:2 * n], "c": speech[2 * n:]}
    return lru_cache(maxsize=None)(lambda name: Window(tiny_en, ref_tiny, audio[name]))


@pytest.fixture(scope="module")
def german_speech(german_speech_file) -> np.ndarray:
    """German speech at 16 kHz, for language detection and translation."""
    from whisper_at_jax.audio import load_audio

    return load_audio(str(german_speech_file))


# ---------------------------------------------------------------------------------------------------------
# tiny.en against openai-whisper


@pytest.mark.parametrize("kw", [
    dict(without_timestamps=True),
    dict(),  # timestamps: ApplyTimestampRules incl. max_initial_timestamp and the logsumexp rule
], ids=["no_timestamps", "timestamps"])
def test_greedy_equals_openai(tiny_en, ref_tiny, window, kw):
    w = window("speech")
    theirs = _ref_decode(ref_tiny, w.theirs, language="en", **kw)
    ours = decode(tiny_en, w.mel.numpy(), DecodingOptions(language="en", **kw))  # from the mel: encoder path too
    _assert_same(ours, theirs)
    assert len(ours.tokens) > 40  # 14 s of real speech: a real transcript, not an early EOT


def test_prompts_and_prefixes_equal_openai_one_compile(tiny_en, ref_tiny, window):
    """Prompts and prefixes of many lengths: equal to openai-whisper, and after the first, no compilation.

    The long cases span several 32-token prefill chunks; in the last one the start-of-transcript token (where
    no_speech_prob is read) lies in an earlier chunk than the last initial token (where sampling starts).
    """
    w = window("c")
    story = tiny_en.tokenizer.encode(
        " We choose to go to the moon in this decade and do the other things, not because they are easy,"
        " but because they are hard. The quick brown fox jumps over the lazy dog.")
    long_prompt = (story * 8)[:200]  # real text tokens, beyond one chunk
    cases = {
        "prompt": dict(prompt="Quick brown foxes and the moon landing."),
        "prefix": dict(prefix="Please call", without_timestamps=True),
        "prompt_prefix": dict(prompt=" We choose to go.", prefix="Please"),
        "long_prompt": dict(prompt=long_prompt),
        "long_prompt_long_prefix": dict(prompt=long_prompt[:100], prefix=story[:40], without_timestamps=True),
    }
    first = True
    for name, kw in cases.items():
        theirs = _ref_decode(ref_tiny, w.theirs, language="en", **kw)
        with _count_compiles() as compiled:
            ours = decode(tiny_en, w.ours, DecodingOptions(language="en", **kw))
        _assert_same(ours, theirs)
        # a prefix in timestamp mode may end the window at once (openai-whisper does the same: compared above)
        assert len(ours.tokens) > 5 or ("prefix" in kw and not kw.get("without_timestamps")), name
        assert first or not compiled, f"{name}: a new prompt length compiled {compiled}"
        first = False


def test_no_suppression_from_features(tiny_en, ref_tiny, window):
    """Rules switched off (suppress_tokens="", no blank suppression, no max initial timestamp), batched input."""
    kw = dict(language="en", suppress_tokens="", suppress_blank=False, max_initial_timestamp=None)
    w = window("a")
    _assert_same(decode(tiny_en, w.ours[None], DecodingOptions(**kw))[0], _ref_decode(ref_tiny, w.theirs, **kw))


# a prompt of 44 tokens: the prefill spans two 32-token chunks (sampling starts in the second)
BEAM_PROMPT = (" Radio station. Please call Stella and ask her to bring these things with her from the store: six"
               " spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.")


@pytest.mark.parametrize("kw", [
    dict(beam_size=5),
    # same beam count (same compiled step); patience 1.5 keeps up to 8 finished candidates
    dict(beam_size=5, patience=1.5, length_penalty=0.6, without_timestamps=True, prompt=BEAM_PROMPT),
], ids=["beam5", "beam5_patience_penalty_prompt"])
def test_beam_search_equals_openai(tiny_en, ref_tiny, window, kw):
    w = window("a")
    theirs = _ref_decode(ref_tiny, w.theirs, language="en", **kw)
    ours = decode(tiny_en, w.ours, DecodingOptions(language="en", **kw))
    _assert_same(ours, theirs)
    assert len(ours.tokens) > 8
    if "prompt" in kw:
        assert len(tiny_en.tokenizer.encode(" " + kw["prompt"].strip())) > 32


def test_token_budget(tiny_en, ref_tiny, window):
    """sample_len caps every row (a looping row cannot stall the batch); the cut matches openai-whisper's."""
    w = window("a")
    theirs = _ref_decode(ref_tiny, w.theirs, language="en", sample_len=7)
    ours = decode(tiny_en, w.ours, DecodingOptions(language="en", sample_len=7))
    _assert_same(ours, theirs)
    assert len(ours.tokens) == 7


def test_batch_equals_single(tiny_en, window):
    """Two different windows decoded together equal each decoded alone (alone, on CPU, the output projection reads
    the embedding's [d, V] copy; together, the embedding itself)."""
    features = np.stack([np.asarray(window(n).ours) for n in "ab"])
    together = decode(tiny_en, features, DecodingOptions(language="en"))
    assert len(together) == 2
    for f, r in zip(features, together):
        alone = decode(tiny_en, f, DecodingOptions(language="en"))
        assert isinstance(alone, DecodingResult)
        assert alone.tokens == r.tokens
        assert abs(alone.avg_logprob - r.avg_logprob) < LOGPROB_TOL
    assert together[0].text != together[1].text


def test_first_argmax_is_argmax():
    """The greedy pick (max, then the first index holding it) is jnp.argmax, ties and -inf rows included."""
    import jax.numpy as jnp

    from whisper_at_jax.decoding import _first_argmax

    x = np.random.default_rng(0).standard_normal((6, 51864)).astype(np.float32)
    x[1, [7, 300, 51000]] = 9.0  # a tie: the first index wins
    x[2] = -np.inf  # everything suppressed
    x[3, :100] = -np.inf
    x[4, -1] = 50.0  # the last index
    x[5] = 1.0  # all equal
    np.testing.assert_array_equal(np.asarray(_first_argmax(jnp.asarray(x))), np.argmax(x, axis=-1))


def test_sampling(tiny_en, ref_tiny, window):
    """Temperature sampling (jax.random, so not torch's draws) at T = 1: a seed gives the same tokens every time,
    different seeds different ones, and the draws follow openai-whisper's sampling distribution along them,
    softmax(filtered logits / T), computed by its own decoder and logit filters: every drawn token is one it
    allows, avg_logprob is its log-probability sum, and the draws' probability integral transforms under that
    distribution are uniform (Kolmogorov-Smirnov at alpha = 0.001)."""
    temperature, sample_len = 1.0, 24
    w = window("a")
    kw = dict(language="en", temperature=temperature, sample_len=sample_len, without_timestamps=True)
    runs = [decode(tiny_en, w.ours, DecodingOptions(seed=seed, **kw)) for seed in range(8)]
    again = decode(tiny_en, w.ours, DecodingOptions(seed=1, **kw))
    assert again.tokens == runs[1].tokens and again.avg_logprob == runs[1].avg_logprob
    assert len({tuple(r.tokens) for r in runs}) > 1
    assert all(r.temperature == temperature and r.text and len(r.tokens) <= sample_len for r in runs)
    best = [decode(tiny_en, w.ours, DecodingOptions(seed=1, best_of=2, **kw)) for _ in range(2)]  # best_of rows too
    assert best[0].tokens == best[1].tokens and best[0].avg_logprob == best[1].avg_logprob

    task = whisper.decoding.DecodingTask(ref_tiny, whisper.DecodingOptions(fp16=False, **kw))
    eot, begin = task.tokenizer.eot, task.sample_begin
    pit, informative = [], 0
    u = np.random.default_rng(0).random(len(runs) * (sample_len + 1))
    for r in runs:
        drawn = r.tokens + ([eot] if len(r.tokens) < sample_len else [])  # EOT is drawn too, unless the budget ends
        tokens = torch.tensor([list(task.initial_tokens) + r.tokens + [eot]])
        with torch.no_grad():
            logits = ref_tiny.decoder(tokens, w.theirs[None])[0].double()
        sum_logprob = 0.0
        for t, token in enumerate(drawn):
            step = logits[begin - 1 + t].clone()[None]
            for f in task.logit_filters:
                f.apply(step, tokens[:, :begin + t])
            p = torch.softmax(step[0] / temperature, -1).numpy()
            assert p[token] > 0, f"step {t}: token {token} is one openai-whisper suppresses"
            sum_logprob += float(torch.log_softmax(step[0], -1)[token])
            pit.append(p[:token].sum() + u[len(pit)] * p[token])  # uniform on [0, 1] when token ~ p
            informative += p.max() < 0.9
        assert abs(r.avg_logprob - sum_logprob / (len(r.tokens) + 1)) < LOGPROB_TOL
    assert informative >= 10, informative  # enough draws from a spread-out distribution to test
    pit = np.sort(pit)
    n = len(pit)
    ks = max(np.max(np.arange(1, n + 1) / n - pit), np.max(pit - np.arange(n) / n))
    assert ks < np.sqrt(np.log(2 / 0.001) / 2) / np.sqrt(n), (ks, n)


def test_jfk(tiny_en, ref_tiny, shared_dir):
    path = shared_dir / "data" / "speech" / "jfk.wav"
    if not path.is_file():
        pytest.skip("jfk.wav not present")
    from whisper_at_jax.audio import load_audio

    w = Window(tiny_en, ref_tiny, load_audio(str(path)))
    ours = decode(tiny_en, w.ours, DecodingOptions(language="en"))
    _assert_same(ours, _ref_decode(ref_tiny, w.theirs, language="en"))


def test_bad_options(tiny_en, window):
    mel = window("a").mel.numpy()
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
    return base_model, base_model.to_openai_whisper()


@pytest.fixture(scope="module")
def two_languages(base_pair, speech, german_speech):
    """An English and a German window: each implementation's own encoder output of them (batch of 2)."""
    model, ref = base_pair
    n = len(speech) // 3
    mels = torch.stack([_mel(speech[n:2 * n]), _mel(german_speech)])
    with torch.no_grad():
        theirs = ref.encoder(mels)
    return model.encode(mels.numpy()), theirs


@pytest.mark.slow
def test_base_language_detection(base_pair, two_languages):
    (model, ref), (ours_f, theirs_f) = base_pair, two_languages
    ref_tokens, ref_probs = whisper.decoding.detect_language(ref, theirs_f)
    tokens, probs = detect_language(model, ours_f)
    assert list(tokens) == ref_tokens.tolist()
    assert [max(p, key=p.get) for p in probs] == ["en", "de"]
    for ours, theirs in zip(probs, ref_probs):
        assert max(abs(ours[c] - theirs[c]) for c in theirs) < LOGPROB_TOL


@pytest.mark.slow
@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_base_tasks_equal_openai(base_pair, two_languages, task):
    (model, ref), (ours_f, theirs_f) = base_pair, two_languages
    theirs = _ref_decode(ref, theirs_f, task=task)
    ours = decode(model, ours_f, DecodingOptions(task=task))
    for o, t in zip(ours, theirs):
        _assert_same(o, t)
    assert [o.language for o in ours] == ["en", "de"]
