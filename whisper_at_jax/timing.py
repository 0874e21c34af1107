"""Word-level timestamps, openai-whisper's method: the decoder's cross-attention aligns each text token to audio.

For a window's text tokens, one forced decoder pass gives the cross-attention logits of the model's alignment heads
(from the checkpoint's metadata: CTranslate2's config.json, a Hugging Face generation_config.json, ours; else every
head of the upper half of the decoder, openai-whisper's default for a checkpoint file). Their
softmax over the window's frames, standardised over tokens and median-filtered along time, averaged over heads, is
aligned to time by dynamic time warping; a word starts at the frame where the path enters its first token.
``add_word_timestamps`` then applies openai-whisper's heuristics (punctuation merged into words, over-long words at
sentence and segment boundaries truncated, segment bounds moved to the words') so the words equal its own.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE

#: Encoder frames per second (0.02 s each).
TOKENS_PER_SECOND = 50
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
_TOKEN_BUCKET = 32  # forced passes padded to a multiple of this many tokens: one compile per bucket
# The shortest forced pass off the CPU. On CPU a longer pass costs time on every window (tiny.en: 82 / 124 / 160 ms
# for 32 / 64 / 96 tokens), so each 32-token bucket gets its own program. On a GPU the pass takes ~2 ms whatever its
# length while each program compiles for 11-13 s (XLA's autotuning; docs/benchmarks.md, H200): one program of 256
# covers every window (sot sequence + no-timestamps + at most n_text_ctx // 2 = 224 sampled tokens + eot).
_ACCELERATOR_FORCED_TOKENS = 256


@dataclasses.dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def alignment_heads(model: Any) -> np.ndarray:
    """[n_text_layer, n_text_head] bool mask of the heads whose cross-attention follows the speech."""
    layers, heads = model.dims.n_text_layer, model.dims.n_text_head
    mask = np.zeros((layers, heads), bool)
    pairs = (model.whisper_meta or {}).get("alignment_heads")
    if pairs:
        for layer, head in pairs:
            mask[int(layer), int(head)] = True
    else:
        mask[layers // 2:] = True
    return mask


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment of ``cost`` [N, M] (lowest total cost, steps down / right / diagonal) ->
    (row indices, column indices) of the path from (0, 0) to (N-1, M-1).

    Ties break as openai-whisper's ``dtw_cpu`` is written: diagonal only when strictly cheapest, then down, then
    right (its numba build departs from that on some exact ties of large matrices, e.g. costs rounded to 0.1; the
    alignment matrices here are continuous). The accumulated costs (float32, as there) are filled one anti-diagonal
    at a time, stored skewed (row d = i + j) so that each cell's three predecessors are contiguous slices of the two
    previous rows."""
    n, m = cost.shape
    acc = np.full((n + m + 1, n + 1), np.inf, np.float32)  # acc[i + j, i]: cost of reaching cell (i, j)
    acc[0, 0] = 0
    step = np.zeros((n + m + 1, n + 1), np.int8)
    x = np.full((n + m + 1, n + 1), np.inf, np.float32)
    ii, jj = np.meshgrid(np.arange(1, n + 1), np.arange(1, m + 1), indexing="ij")
    x[ii + jj, ii] = cost
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)
        c0, c1, c2 = acc[d - 2, lo - 1:hi], acc[d - 1, lo - 1:hi], acc[d - 1, lo:hi + 1]
        diag = (c0 < c1) & (c0 < c2)
        down = ~diag & (c1 < c0) & (c1 < c2)
        acc[d, lo:hi + 1] = x[d, lo:hi + 1] + np.where(diag, c0, np.where(down, c1, c2))
        step[d, lo:hi + 1] = np.where(diag, 0, np.where(down, 1, 2))
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = 1 if j == 0 else 2 if i == 0 else step[i + j, i]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.asarray(path[::-1]).T
    return rows, cols


def median_filter(x: Any, width: int, length: Any = None) -> Any:
    """Median over a sliding window of odd ``width`` along the last axis, edges reflected (openai-whisper's): the
    middle of an odd-even transposition sort of the ``width`` shifted copies (min / max only: exactly the median).

    ``length`` (may be traced): only the first ``length`` entries are the signal; the right edge reflects there and
    the entries after it are left undefined (one compiled program serves every window length)."""
    pad = width // 2
    size = x.shape[-1]
    length = size if length is None else length
    # reflect: -k -> k, length - 1 + k -> length - 1 - k
    src = jnp.arange(-pad, size + pad)
    src = jnp.where(src < 0, -src, jnp.where(src >= length, 2 * (length - 1) - src, src))
    padded = jnp.take(x, jnp.clip(src, 0, size - 1), axis=-1)
    v = [padded[..., k:k + size] for k in range(width)]
    for r in range(width):
        for i in range(r % 2, width - 1, 2):
            v[i], v[i + 1] = jnp.minimum(v[i], v[i + 1]), jnp.maximum(v[i], v[i + 1])
    return jnp.where(length > pad, v[pad], x)  # openai-whisper leaves a signal of <= pad entries as it is


def _platform(x: Any) -> str:
    return next(iter(x.devices())).platform if isinstance(x, jax.Array) else jax.default_backend()


def _forced_length(n: int, n_text_ctx: int, platform: str) -> int:
    """Tokens of the forced pass for ``n`` real ones, padded so that few programs serve every window (causal
    attention: the padding after the real tokens changes nothing before it)."""
    shortest = _TOKEN_BUCKET if platform == "cpu" else _ACCELERATOR_FORCED_TOKENS
    return min(-(-max(n, shortest) // _TOKEN_BUCKET) * _TOKEN_BUCKET, n_text_ctx)


def alignment_pass(module: Any, params: Any, ids: Any, features: Any, heads_layer: Any, heads_head: Any, n: Any,
                   frames: Any, qk_scale: Any, eot: int, medfilt_width: int) -> tuple[Any, Any]:
    """The forced pass of ``ids`` [1, T] over ``features`` -> (probability of each next token [T], the alignment
    matrix [T, frames]); compiled as the model's ``programs.aligner``."""
    logits, qk = module.apply({"params": params}, ids, features, method="decode_cross_logits")
    # probability of the token at position r + 1 among the text tokens (ids below eot), from row r
    probs = jax.nn.softmax(logits[0, :, :eot].astype(jnp.float32), axis=-1)
    following = jnp.minimum(jnp.roll(ids[0], -1), eot - 1)
    next_probs = jnp.take_along_axis(probs, following[:, None], axis=-1)[:, 0]
    # over the window's first `frames` encoder frames only (its content); the rest is left undefined
    qk = qk[heads_layer, 0, heads_head] * qk_scale
    weights = jax.nn.softmax(jnp.where(jnp.arange(qk.shape[-1]) < frames, qk, -jnp.inf), axis=-1)
    rows = (jnp.arange(ids.shape[1]) < n)[None, :, None]  # standardised over the real tokens only
    mean = jnp.where(rows, weights, 0).sum(-2, keepdims=True) / n
    std = jnp.sqrt(jnp.where(rows, jnp.square(weights - mean), 0).sum(-2, keepdims=True) / n)
    weights = median_filter((weights - mean) / std, medfilt_width, frames)
    return next_probs, weights.mean(axis=0)


def find_alignment(model: Any, tokenizer: Any, text_tokens: list[int], features: Any, num_frames: int, *,
                   medfilt_width: int = 7, qk_scale: float = 1.0) -> list[WordTiming]:
    """Each word of ``text_tokens`` with its start and end (seconds from the window's start) and its mean token
    probability. ``features``: the window's encoder states [1, S, d]; ``num_frames``: its mel frames of content."""
    if len(text_tokens) == 0:
        return []
    sot = list(tokenizer.sot_sequence)
    tokens = [*sot, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    n = len(tokens)
    if n > model.dims.n_text_ctx:
        raise ValueError(f"{len(text_tokens)} text tokens do not fit the decoder's {model.dims.n_text_ctx} positions")
    padded = _forced_length(n, model.dims.n_text_ctx, _platform(features))
    ids = np.full((1, padded), tokenizer.eot, np.int32)
    ids[0, :n] = tokens
    layer_idx, head_idx = np.nonzero(alignment_heads(model))
    frames = num_frames // 2
    next_probs, matrix = model.programs.aligner(
        model.params, jnp.asarray(ids), features, jnp.asarray(layer_idx), jnp.asarray(head_idx),
        jnp.asarray(n, jnp.int32), jnp.asarray(frames, jnp.int32), jnp.asarray(qk_scale, jnp.float32),
        eot=int(tokenizer.eot), medfilt_width=medfilt_width)
    text_token_probs = np.asarray(next_probs)[len(sot):len(sot) + len(text_tokens)]
    matrix = np.asarray(matrix)[len(sot):n - 1, :frames]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    return [WordTiming(word, toks, float(start), float(end), float(np.mean(text_token_probs[i:j])))
            for word, toks, start, end, i, j in zip(words, word_tokens, starts, ends, boundaries[:-1], boundaries[1:])]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Fold punctuation "words" into their neighbours (in place): opening marks into the next word, closing marks
    into the previous one; the emptied entries keep their place with no text and no tokens."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(segments: list[dict], model: Any, tokenizer: Any, features: Any, num_frames: int, *,
                        last_speech_timestamp: float, prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS) -> None:
    """Give each of one window's ``segments`` its ``"words"`` (``word, start, end, probability``; absolute
    seconds), adjusting the segments' start and end to them, as openai-whisper does (in place)."""
    if len(segments) == 0:
        return
    per_segment = [[t for t in s["tokens"] if t < tokenizer.eot] for s in segments]
    alignment = find_alignment(model, tokenizer, list(itertools.chain.from_iterable(per_segment)), features,
                               num_frames)
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median_duration = min(0.7, float(np.median(durations)) if len(durations) > 0 else 0.0)
    max_duration = median_duration * 2

    # words at sentence boundaries: at most twice the median word duration
    if len(durations) > 0:
        sentence_end_marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in sentence_end_marks:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in sentence_end_marks:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, text_tokens in zip(segments, per_segment):
        saved_tokens = 0
        words = []
        while word_index < len(alignment) and saved_tokens < len(text_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append({"word": timing.word, "start": round(time_offset + timing.start, 2),
                              "end": round(time_offset + timing.end, 2), "probability": timing.probability})
            saved_tokens += len(timing.tokens)
            word_index += 1
        if words:
            # the first (and second) word after a pause: at most twice the median duration
            first_long = words[0]["end"] - words[0]["start"] > max_duration
            pair_long = len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (first_long or pair_long):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)
            # the segment's own start / end win over a first / last word that is too long
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def get_end(segments: list[dict]) -> float | None:
    """End of the last word of ``segments``, else the last segment's end (None without segments)."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s.get("words", []))),
                segments[-1]["end"] if segments else None)


_PUNCTUATION = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS  # not scored as words (openai-whisper's list)


def _word_anomaly_score(word: dict) -> float:
    # very improbable, very short or very long words are typical of hallucinated text
    duration = word["end"] - word["start"]
    score = 1.0 if word.get("probability", 0.0) < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: dict | None) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def skip_hallucinations(segments: list[dict], *, threshold: float, seek: int, previous_seek: int,
                        segment_frames: int, single_timestamp_ending: bool, last_speech_timestamp: float,
                        content_frames: int) -> tuple[int, bool]:
    """openai-whisper's ``hallucination_silence_threshold`` for one window whose ``segments`` have words:
    silences longer than ``threshold`` seconds next to likely hallucinations (segments of anomalous words) are
    skipped. Drops such segments from ``segments`` (in place) and returns (the next seek, whether the whole window
    is to be dropped because its first segment is a hallucination after a long silence)."""
    time_offset = previous_seek * HOP_LENGTH / SAMPLE_RATE
    window_end_time = (previous_seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
    segment_duration = segment_frames * HOP_LENGTH / SAMPLE_RATE
    content_duration = content_frames * HOP_LENGTH / SAMPLE_RATE
    if not single_timestamp_ending:
        last_word_end = get_end(segments)
        if last_word_end is not None and last_word_end > time_offset:
            if window_end_time - last_word_end > threshold:
                seek = round(last_word_end * FRAMES_PER_SECOND)
            else:
                seek = previous_seek + segment_frames

    # a hallucination first, after a long silence: skip the silence and decode again from there
    first = _next_words_segment(segments)
    if first is not None and _is_segment_anomaly(first):
        gap = first["start"] - time_offset
        if gap > threshold:
            return previous_seek + round(gap * FRAMES_PER_SECOND), True

    # a hallucination surrounded by silence or more hallucinations: drop it and what follows, seek to it
    last_end = last_speech_timestamp
    for i, segment in enumerate(segments):
        if not segment["words"]:
            continue
        if _is_segment_anomaly(segment):
            following = _next_words_segment(segments[i + 1:])
            next_start = following["words"][0]["start"] if following is not None else time_offset + segment_duration
            silence_before = (segment["start"] - last_end > threshold or segment["start"] < threshold
                              or segment["start"] - time_offset < 2.0)
            silence_after = (next_start - segment["end"] > threshold or _is_segment_anomaly(following)
                             or window_end_time - segment["end"] < 2.0)
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                if content_duration - segment["end"] < threshold:
                    seek = content_frames
                del segments[i:]
                break
        last_end = segment["end"]
    return seek, False
