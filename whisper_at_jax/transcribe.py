"""Long-form transcription: openai-whisper's ``transcribe``, with Whisper-AT sound tags from the same encoder pass.

Two long-form modes:

``sequential`` (default)
    openai-whisper's algorithm (release 20250625) step for step: a 30-s window at ``seek``, segments split at
    consecutive timestamp tokens, seek to the last complete timestamp, temperature fallback on
    ``compression_ratio_threshold`` / ``logprob_threshold``, the no-speech skip, ``condition_on_previous_text``
    with the prompt reset after a temperature > 0.5, the last window zero-padded after ``segment_size`` frames.
    The encoder runs once per window; temperature fallbacks reuse its output. With ``word_timestamps`` each
    window's segments get their words (:mod:`whisper_at_jax.timing`, from the same encoder output), the next
    window starts after the last word, and ``hallucination_silence_threshold`` applies openai-whisper's skipping.

``batched``
    Independent windows of at most 30 s, decoded ``batch_size`` at a time under one compiled program (the last
    batch is filled with copies of its last window, so the shape, and the compile, is always the same and the
    filler rows never decode longer than a real one); the batch axis is sharded over a ``("data",)`` mesh of
    every device. Each window ends at the quietest point of the 5 s before its 30-s limit (see
    :func:`window_bounds`): cutting at fixed 30-s marks dropped every sentence that ran over a mark (Whisper does
    not transcribe speech cut off at a window's end), doubling the word error rate on a 141-s test file;
    cutting in pauses brings it within 1 point of sequential mode. A window's mel is zero-padded after its end,
    as openai-whisper pads its last window. Segments come from the window's timestamp pairs; a trailing
    segment the model did not close is kept up to the window's end (there is no next window to seek into).
    Windows do not condition on each other (only on ``initial_prompt``, given to every window), which is what
    makes them independent. Fallbacks re-decode only the windows that failed, at the next temperature, in
    power-of-two sub-batches. Word timestamps are aligned per window; they do not move the windows.

Sound tags (``at_time_res`` given and a head on the model) come from the decoder's own encoder passes: with
tags on, each window's one encoder pass also returns its block outputs, which go to a
:class:`whisper_at_jax.tagging.TagRows` (the one tag hook: it pools them onto the absolute 0.4-s grid and
runs the head); ``tag()`` and ``parse_at_label`` live in :mod:`whisper_at_jax.tagging`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import fields
from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from . import parallel, tagging
from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .decoding import DecodingOptions, DecodingResult, decode, detect_language
from .outputs import format_timestamp
# the windows of a file and a model's encoder programs, shared with tag(); the tag branch itself is tagging.TagRows
from .options import TranscribeError, check_options
from .tagging import bucket, load_mel, progress, put_batch
from .tokenizer import LANGUAGES, get_tokenizer
from .timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, add_word_timestamps, get_end, skip_hallucinations

_DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_DECODE_FIELDS = {f.name for f in fields(DecodingOptions)}
# openai-whisper CLI options that belong to the subtitle writers (whisper_at_jax.outputs), not to transcribe:
# accepted and ignored here, as its CLI passes them along with the transcribe options
_WRITER_OPTIONS = ("highlight_words", "max_line_width", "max_line_count", "max_words_per_line")


class _WordOptions(NamedTuple):
    prepend_punctuations: str
    append_punctuations: str
    hallucination_silence_threshold: float | None


# ---------------------------------------------------------------------------------------------------------------
# Argument checks

def parse_clip_timestamps(clip_timestamps: str | Sequence[float]) -> list[float]:
    """``"start,end,start,end,..."`` (seconds; a last start runs to the end) or a sequence of numbers -> floats.

    Raises:
        TranscribeError: a value that is not a number, a negative time, or a clip whose end is not after its start.
    """
    items = ([t for t in clip_timestamps.split(",") if t.strip()] if isinstance(clip_timestamps, str)
             else list(clip_timestamps))
    try:
        times = [float(t) for t in items]
    except (TypeError, ValueError):
        raise TranscribeError(f"clip_timestamps must be comma-separated seconds, got {clip_timestamps!r}") from None
    if any(not t >= 0 for t in times) or any(end <= start for start, end in zip(times[::2], times[1::2])):
        raise TranscribeError(f"clip_timestamps {clip_timestamps!r}: each clip's end must come after its start, "
                              "and no time may be negative")
    return times


def _check_decode_options(decode_options: dict) -> None:
    for name in _WRITER_OPTIONS:
        decode_options.pop(name, None)
    unknown = set(decode_options) - _DECODE_FIELDS
    if unknown:
        raise TranscribeError(f"unknown transcribe/decoding options: {sorted(unknown)}")


def _tokenizer(model: Any, language: str | None, task: str):
    return get_tokenizer(model.tokenizer_file, model.is_multilingual, num_languages=model.num_languages,
                         language=language, task=task)


def _needs_fallback(r: DecodingResult, compression_ratio_threshold: float | None, logprob_threshold: float | None,
                    no_speech_threshold: float | None) -> bool:
    needs = False
    if compression_ratio_threshold is not None and r.compression_ratio > compression_ratio_threshold:
        needs = True  # too repetitive
    if logprob_threshold is not None and r.avg_logprob < logprob_threshold:
        needs = True  # average log probability too low
    if (no_speech_threshold is not None and r.no_speech_prob > no_speech_threshold
            and logprob_threshold is not None and r.avg_logprob < logprob_threshold):
        needs = False  # silence: no point retrying
    return needs


def _options_for(decode_options: dict, t: float) -> DecodingOptions:
    kwargs = dict(decode_options)
    if t > 0:  # beam search and patience only apply to greedy decoding
        kwargs.pop("beam_size", None)
        kwargs.pop("patience", None)
    else:  # best_of only applies to sampling
        kwargs.pop("best_of", None)
    return DecodingOptions(**kwargs, temperature=t)


def _temperatures(temperature: float | Sequence[float]) -> list[float]:
    temps = [temperature] if isinstance(temperature, (int, float, np.integer, np.floating)) else list(temperature)
    if not temps:
        raise TranscribeError("temperature must be a number or a non-empty sequence of numbers")
    for t in temps:
        if not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(t) or t < 0:
            raise TranscribeError(f"temperatures must be finite numbers >= 0, got {t!r}")
    return [float(t) for t in temps]


# ---------------------------------------------------------------------------------------------------------------
# Segments

def _segments_from_tokens(tokens: list[int], tokenizer: Any, seek: int, segment_size: int, time_offset: float,
                          time_precision: float, input_stride: int, result: DecodingResult, keep_tail: bool
                          ) -> tuple[list[dict], int, bool]:
    """openai-whisper's timestamp splitting -> (segments, frames to advance, whether the tokens end in a single
    timestamp: no speech after it).

    ``keep_tail``: batched mode keeps an unfinished last segment (ended by EOT without a closing timestamp) up to
    the window end instead of seeking back to its start.
    """
    tb = tokenizer.timestamp_begin
    segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE

    def new_segment(start: float, end: float, toks: list[int]) -> dict:
        text_tokens = [t for t in toks if t < tokenizer.eot]
        return {"seek": seek, "start": start, "end": end, "text": tokenizer.decode(text_tokens), "tokens": toks,
                "temperature": float(result.temperature), "avg_logprob": float(result.avg_logprob),
                "compression_ratio": float(result.compression_ratio),
                "no_speech_prob": float(result.no_speech_prob)}

    is_ts = [t >= tb for t in tokens]
    single_timestamp_ending = is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    segments = []
    if consecutive:
        slices = list(consecutive)
        if single_timestamp_ending:
            slices.append(len(tokens))
        last_slice = 0
        for current_slice in slices:
            sliced = tokens[last_slice:current_slice]
            segments.append(new_segment(time_offset + (sliced[0] - tb) * time_precision,
                                        time_offset + (sliced[-1] - tb) * time_precision, sliced))
            last_slice = current_slice
        if single_timestamp_ending:
            advance = segment_size
        elif keep_tail:
            tail = tokens[last_slice:]
            if any(t < tokenizer.eot for t in tail):
                start_pos = tail[0] - tb if tail[0] >= tb else tokens[last_slice - 1] - tb
                segments.append(new_segment(time_offset + start_pos * time_precision,
                                            time_offset + segment_duration, tail))
            advance = segment_size
        else:
            # ignore the unfinished segment and seek to the last timestamp
            advance = (tokens[last_slice - 1] - tb) * input_stride
    else:
        duration = segment_duration
        timestamps = [t for t in tokens if t >= tb]
        if timestamps and timestamps[-1] != tb:
            # no consecutive timestamps but it has a timestamp; use the last one
            duration = (timestamps[-1] - tb) * time_precision
        segments.append(new_segment(time_offset, time_offset + duration, list(tokens)))
        advance = segment_size
    return segments, advance, single_timestamp_ending


def _finish_window(segments: list[dict], all_segments: list[dict], all_tokens: list[int]) -> None:
    # as openai-whisper: an instantaneous or empty segment keeps its place with no text
    for s in segments:
        if s["start"] == s["end"] or s["text"].strip() == "":
            s["text"] = ""
            s["tokens"] = []
            if "words" in s:
                s["words"] = []
    for s in segments:
        all_segments.append({"id": len(all_segments), **s})
    all_tokens.extend(t for s in segments for t in s["tokens"])


def _print_segments(segments: list[dict]) -> None:
    for s in segments:
        print(f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] {s['text']}")


# ---------------------------------------------------------------------------------------------------------------
# transcribe

def transcribe(model: Any, audio: Any, *, verbose: bool | None = None,
               temperature: float | Sequence[float] = _DEFAULT_TEMPERATURES,
               compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
               no_speech_threshold: float | None = 0.6, condition_on_previous_text: bool = True,
               initial_prompt: str | None = None, carry_initial_prompt: bool = False,
               clip_timestamps: str | Sequence[float] = "0", word_timestamps: bool = False,
               prepend_punctuations: str = PREPEND_PUNCTUATIONS, append_punctuations: str = APPEND_PUNCTUATIONS,
               hallucination_silence_threshold: float | None = None, mode: str = "sequential", batch_size: int = 8,
               at_time_res: float | None = None, **decode_options: Any) -> dict:
    """Transcribe an audio file or 16-kHz waveform, as openai-whisper's ``transcribe`` (and whisper-at's).

    Args:
        model: a :class:`whisper_at_jax.WhisperModel`.
        audio: a path (any format :func:`whisper_at_jax.audio.load_audio` reads) or float samples at 16 kHz.
        verbose: True prints each segment, False shows a progress bar, None is silent (openai-whisper's meaning).
        temperature: one temperature or the fallback sequence.
        compression_ratio_threshold, logprob_threshold, no_speech_threshold, condition_on_previous_text,
        initial_prompt, carry_initial_prompt, clip_timestamps: as openai-whisper (``clip_timestamps`` and the
            conditioning only in sequential mode; batched mode gives ``initial_prompt`` to every window).
        word_timestamps, prepend_punctuations, append_punctuations: as openai-whisper: each segment gets
            ``"words"`` (``word, start, end, probability``) from the decoder's cross-attention
            (:mod:`whisper_at_jax.timing`); in sequential mode the next window starts after the last word, in
            batched mode the windows stay where they are.
        hallucination_silence_threshold: with ``word_timestamps`` (sequential mode), as openai-whisper: silences
            longer than this many seconds around likely hallucinations (runs of improbable, very short or very
            long words) are skipped and the hallucinated segments dropped.
        mode: ``"sequential"`` (openai-whisper's algorithm, exact) or ``"batched"`` (independent 30-s windows
            decoded ``batch_size`` at a time over every device; see the module docstring).
        batch_size: windows per batch in batched mode and tag windows per encoder call.
        at_time_res: seconds per sound-tag row (a multiple of 0.4); needs a head on the model. None: no tags.
        **decode_options: :class:`whisper_at_jax.decoding.DecodingOptions` fields (``language``, ``task``,
            ``beam_size``, ``best_of``, ``patience``, ``length_penalty``, ``suppress_tokens``, ...).

    Returns:
        ``{"text", "segments", "language"}`` as openai-whisper, segments with ``id, seek, start, end, text,
        tokens, temperature, avg_logprob, compression_ratio, no_speech_prob``; with ``at_time_res`` also
        ``"at_time_res"`` and ``"audio_tag"``: float32 logits ``[ceil(duration / at_time_res), n_classes]``
        (sigmoid for probabilities), row ``i`` covering ``[i, i + 1) * at_time_res`` seconds, and
        ``"duration"`` (seconds of audio; the writers clip the last row to it). A head whose labels are not
        AudioSet's 527 adds ``"at_labels"`` (its class names, for ``parse_at_label``).

    Raises:
        whisper_at_jax.audio.AudioError: unreadable/empty file, NaN or infinite samples.
        TranscribeError: bad options (unknown names, ``at_time_res`` not a multiple of 0.4, no head, ...).
    """
    # the long-form rules are the command line's (options.py); decoding options are checked as openai-whisper
    # checks them, when the decoder is built
    check_options(mode=mode, clip_timestamps=clip_timestamps, word_timestamps=word_timestamps,
                  hallucination_silence_threshold=hallucination_silence_threshold, batch_size=batch_size)
    clip_timestamps = parse_clip_timestamps(clip_timestamps)
    if word_timestamps and decode_options.get("task") == "translate":
        warnings.warn("word-level timestamps on translations may not be reliable", stacklevel=2)
    decode_options = dict(decode_options)
    _check_decode_options(decode_options)
    temperatures = _temperatures(temperature)
    if at_time_res is not None:
        tagging.check_tags(model, at_time_res)

    mel, content_frames = load_mel(model, audio)
    mesh = parallel.make_mesh()
    n_dev, sharding = mesh.devices.size, parallel.data_sharding(mesh)
    batch_size = -(-int(batch_size) // n_dev) * n_dev  # every device gets the same number of rows
    tags = tagging.TagRows(model, content_frames, at_time_res) if at_time_res is not None else None

    common = dict(verbose=verbose, temperatures=temperatures, compression_ratio_threshold=compression_ratio_threshold,
                  logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
                  initial_prompt=initial_prompt, decode_options=decode_options, tags=tags)
    words = (_WordOptions(prepend_punctuations, append_punctuations, hallucination_silence_threshold)
             if word_timestamps else None)
    if mode == "sequential":
        result = _sequential(model, mel, content_frames, condition_on_previous_text=condition_on_previous_text,
                             carry_initial_prompt=carry_initial_prompt, clip_timestamps=clip_timestamps,
                             words=words, **common)
    else:
        result = _batched(model, mel, content_frames, batch_size=batch_size, sharding=(n_dev, sharding),
                          words=words, **common)
    if tags is not None:
        result.update(tags.finish())
    return result


def _detect(model: Any, features: Any, verbose: bool | None) -> str:
    if verbose:
        print("Detecting language using up to the first 30 seconds. Use `--language` to specify the language")
    _, probs = detect_language(model, features)
    language = max(probs[0], key=probs[0].get)
    if verbose is not None:
        print(f"Detected language: {LANGUAGES[language].title()}")
    return language


def _sequential(model: Any, mel: np.ndarray, content_frames: int, *, verbose, temperatures, compression_ratio_threshold,
                logprob_threshold, no_speech_threshold, condition_on_previous_text, initial_prompt,
                carry_initial_prompt, clip_timestamps, decode_options, tags, words) -> dict:
    programs = model.programs
    params = model.params
    dims = model.dims

    def encode(mel_window: np.ndarray):
        x = jnp.asarray(mel_window[None])
        return programs.encode_layers(params, x) if tags is not None else (programs.encode(params, x), None)

    first_window = None  # (features, layers) of mel[:, :3000], when language detection encoded it
    if decode_options.get("language") is None:
        if not model.is_multilingual:
            decode_options["language"] = "en"
        else:
            # openai-whisper: pad_or_trim(mel, N_FRAMES) of the padded spectrogram; for 30 s of content or more it
            # is also the first decoder window, which then reuses this pass
            first_window = encode(mel[:, :N_FRAMES])
            decode_options["language"] = _detect(model, first_window[0], verbose)
    language = decode_options["language"]
    task = decode_options.get("task", "transcribe")
    tokenizer = _tokenizer(model, language, task)

    seek_points = [round(ts * FRAMES_PER_SECOND) for ts in clip_timestamps]
    if len(seek_points) == 0:
        seek_points.append(0)
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    seek_clips = list(zip(seek_points[::2], seek_points[1::2]))

    input_stride = N_FRAMES // dims.n_audio_ctx  # mel frames per output token: 2
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per output token: 0.02
    all_tokens: list[int] = []
    all_segments: list[dict] = []
    prompt_reset_since = 0
    remaining_prompt_length = dims.n_text_ctx // 2 - 1
    if initial_prompt is not None:
        initial_prompt_tokens = tokenizer.encode(" " + initial_prompt.strip())
        all_tokens.extend(initial_prompt_tokens)
        remaining_prompt_length -= len(initial_prompt_tokens)
    else:
        initial_prompt_tokens = []

    clip_idx = 0
    seek = seek_clips[clip_idx][0]
    last_speech_timestamp = 0.0
    with progress(content_frames, "frames", verbose is not False) as pbar:
        while clip_idx < len(seek_clips):
            seek_clip_start, seek_clip_end = seek_clips[clip_idx]
            if seek < seek_clip_start:
                seek = seek_clip_start
            if seek >= seek_clip_end:
                clip_idx += 1
                if clip_idx < len(seek_clips):
                    seek = seek_clips[clip_idx][0]
                continue
            time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
            segment_size = min(N_FRAMES, content_frames - seek, seek_clip_end - seek)
            mel_segment = mel[:, seek:seek + segment_size]
            if segment_size < N_FRAMES:
                mel_segment = np.pad(mel_segment, ((0, 0), (0, N_FRAMES - segment_size)))

            # the window's one encoder pass: final states for the decoder, block outputs for the head
            if first_window is not None and seek == 0 and segment_size == N_FRAMES:
                features, layers = first_window
            else:
                features, layers = encode(mel_segment)
            first_window = None
            if tags is not None:  # its frames up to the next window's start are the ones it transcribed
                tags.add_window(layers, seek // input_stride)

            if carry_initial_prompt:
                nignored = max(len(initial_prompt_tokens), prompt_reset_since)
                remaining_prompt = all_tokens[nignored:][-remaining_prompt_length:]
                decode_options["prompt"] = initial_prompt_tokens + remaining_prompt
            else:
                decode_options["prompt"] = all_tokens[prompt_reset_since:]

            result = None
            for t in temperatures:
                result = decode(model, features, _options_for(decode_options, t))[0]
                if not _needs_fallback(result, compression_ratio_threshold, logprob_threshold, no_speech_threshold):
                    break
            tokens = list(result.tokens)

            if no_speech_threshold is not None:
                should_skip = result.no_speech_prob > no_speech_threshold
                if logprob_threshold is not None and result.avg_logprob > logprob_threshold:
                    should_skip = False  # confident text despite the no-speech probability
                if should_skip:
                    previous_seek = seek
                    seek += segment_size
                    pbar.update(min(content_frames, seek) - previous_seek)
                    continue

            previous_seek = seek
            current_segments, advance, single_timestamp_ending = _segments_from_tokens(
                tokens, tokenizer, seek, segment_size, time_offset, time_precision, input_stride, result,
                keep_tail=False)
            seek += advance
            if words is not None:
                add_word_timestamps(current_segments, model, tokenizer, features, segment_size,
                                    last_speech_timestamp=last_speech_timestamp,
                                    prepend_punctuations=words.prepend_punctuations,
                                    append_punctuations=words.append_punctuations)
                if not single_timestamp_ending:
                    last_word_end = get_end(current_segments)
                    if last_word_end is not None and last_word_end > time_offset:
                        seek = round(last_word_end * FRAMES_PER_SECOND)
                if words.hallucination_silence_threshold is not None:
                    seek, drop_window = skip_hallucinations(
                        current_segments, threshold=words.hallucination_silence_threshold, seek=seek,
                        previous_seek=previous_seek, segment_frames=segment_size,
                        single_timestamp_ending=single_timestamp_ending,
                        last_speech_timestamp=last_speech_timestamp, content_frames=content_frames)
                    if drop_window:
                        pbar.update(min(content_frames, seek) - previous_seek)
                        continue
                last_word_end = get_end(current_segments)
                if last_word_end is not None:
                    last_speech_timestamp = last_word_end
            if verbose:
                _print_segments(current_segments)
            _finish_window(current_segments, all_segments, all_tokens)
            if not condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)  # a high temperature's text is no good as a prompt
            pbar.update(min(content_frames, seek) - previous_seek)

    decode_options.pop("prompt", None)
    return dict(text=tokenizer.decode(all_tokens[len(initial_prompt_tokens):]), segments=all_segments,
                language=language)


def window_bounds(mel: np.ndarray, content_frames: int, search_frames: int = 500, smooth_frames: int = 20
                  ) -> list[int]:
    """Batched mode's window boundaries (mel frames): ``[0, b_1, ..., content_frames]``, windows at most 30 s.

    A window ends at the quietest point of the last ``search_frames`` (5 s) before its 30-s limit (frame
    loudness = mean log-mel, smoothed over ``smooth_frames``; the latest point wins a tie, so a boundary falling
    in a pause stays at 30 s). Cutting at a pause keeps words whole: cutting at fixed 30-s marks drops the
    sentence that runs over the boundary (Whisper does not transcribe speech cut off at the window's end).
    """
    bounds = [0]
    if content_frames <= 0:
        return bounds
    loud = mel[:, :content_frames].mean(axis=0)
    if smooth_frames > 1:
        loud = np.convolve(loud, np.ones(smooth_frames) / smooth_frames, mode="same")
    while content_frames - bounds[-1] > N_FRAMES:
        hi = bounds[-1] + N_FRAMES
        lo = max(bounds[-1] + N_FRAMES - search_frames, bounds[-1] + 1)
        seg = loud[lo:hi + 1]
        # latest minimum: np.argmin on the reversed slice
        cut = hi - int(np.argmin(seg[::-1]))
        # on a whole encoder frame, so the window's encoder frames (and its tags) sit on the absolute frame grid
        bounds.append(cut - cut % 2)
    bounds.append(content_frames)
    return bounds


def _batched(model: Any, mel: np.ndarray, content_frames: int, *, verbose, temperatures, compression_ratio_threshold,
             logprob_threshold, no_speech_threshold, initial_prompt, decode_options, tags, batch_size,
             sharding, words) -> dict:
    programs = model.programs
    params = model.params
    dims = model.dims
    n_dev, shard = sharding
    bounds = window_bounds(mel, content_frames)
    n_windows = len(bounds) - 1
    input_stride = N_FRAMES // dims.n_audio_ctx
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE
    language = decode_options.get("language")
    task = decode_options.get("task", "transcribe")
    if language is None and not model.is_multilingual:
        language = decode_options["language"] = "en"
    if language is None:
        # openai-whisper detects once, on the first 30 s of the padded spectrogram (= tag window 0)
        features = programs.encode(params, jnp.asarray(mel[:, :N_FRAMES][None]))
        language = decode_options["language"] = _detect(model, features, verbose)
    tokenizer = _tokenizer(model, language, task)
    if initial_prompt is not None:
        decode_options["prompt"] = tokenizer.encode(" " + initial_prompt.strip())

    all_tokens: list[int] = []
    all_segments: list[dict] = []
    last_speech_timestamp = 0.0

    def window_mel(k: int) -> np.ndarray:
        seg = mel[:, bounds[k]:bounds[k + 1]]
        return np.pad(seg, ((0, 0), (0, N_FRAMES - seg.shape[1]))) if seg.shape[1] < N_FRAMES else seg

    with progress(n_windows, "windows", verbose is not False) as pbar:
        for b0 in range(0, n_windows, batch_size):
            ks = list(range(b0, min(b0 + batch_size, n_windows)))
            # a power-of-two batch (a multiple of the device count), filled with copies of the last window: a
            # short file decodes 1-2 rows, not batch_size, and there are at most log2(batch_size) + 1 shapes
            size = -(-bucket(len(ks), batch_size) // n_dev) * n_dev
            batch = np.stack([window_mel(k) for k in ks] + [window_mel(ks[-1])] * (size - len(ks)))
            x = put_batch(batch, shard, n_dev)
            if tags is not None:
                features, layers = programs.encode_layers(params, x)
                # each window gives the frames it transcribed (windows do not overlap; the last one gives all)
                first = [bounds[k] // input_stride for k in ks] + [0] * (size - len(ks))
                take = [(bounds[k + 1] // input_stride - first[j]) if k + 1 < n_windows else layers.shape[2]
                        for j, k in enumerate(ks)] + [0] * (size - len(ks))
                tags.add_batch(layers, first, take, lambda a: put_batch(a, shard, n_dev))
            else:
                features = programs.encode(params, x)

            results = _decode_batch_with_fallback(model, features, len(ks), temperatures, decode_options,
                                                  compression_ratio_threshold, logprob_threshold,
                                                  no_speech_threshold, size)
            for j, k in enumerate(ks):
                r = results[j]
                seek = bounds[k]
                segment_size = bounds[k + 1] - seek
                if no_speech_threshold is not None:
                    skip = r.no_speech_prob > no_speech_threshold
                    if logprob_threshold is not None and r.avg_logprob > logprob_threshold:
                        skip = False
                    if skip:
                        continue
                segs, _, _ = _segments_from_tokens(list(r.tokens), tokenizer, seek, segment_size,
                                                float(seek * HOP_LENGTH / SAMPLE_RATE), time_precision,
                                                input_stride, r, keep_tail=True)
                end_time = (seek + segment_size) * HOP_LENGTH / SAMPLE_RATE
                for s in segs:  # a timestamp past the window's content is clipped to it
                    s["end"] = min(s["end"], end_time)
                    s["start"] = min(s["start"], s["end"])
                if words is not None:  # the windows are fixed: words do not move the next one
                    add_word_timestamps(segs, model, tokenizer, features[j:j + 1], segment_size,
                                        last_speech_timestamp=last_speech_timestamp,
                                        prepend_punctuations=words.prepend_punctuations,
                                        append_punctuations=words.append_punctuations)
                    last_speech_timestamp = get_end(segs) if segs else last_speech_timestamp
                if verbose:
                    _print_segments(segs)
                _finish_window(segs, all_segments, all_tokens)
            pbar.update(len(ks))

    decode_options.pop("prompt", None)
    return dict(text=tokenizer.decode(all_tokens), segments=all_segments, language=language)


def _decode_batch_with_fallback(model: Any, features: Any, n_real: int, temperatures: list[float],
                                decode_options: dict, compression_ratio_threshold, logprob_threshold,
                                no_speech_threshold, batch_size: int) -> list[DecodingResult]:
    results = decode(model, features, _options_for(decode_options, temperatures[0]))[:n_real]
    pending = [j for j in range(n_real)
               if _needs_fallback(results[j], compression_ratio_threshold, logprob_threshold, no_speech_threshold)]
    for t in temperatures[1:]:
        if not pending:
            break
        size = bucket(len(pending), batch_size)
        idx = pending + [pending[-1]] * (size - len(pending))
        sub = decode(model, features[np.asarray(idx)], _options_for(decode_options, t))
        still = []
        for pos, j in enumerate(pending):
            results[j] = sub[pos]
            if _needs_fallback(sub[pos], compression_ratio_threshold, logprob_threshold, no_speech_threshold):
                still.append(j)
        pending = still
    return results
