"""Long-form transcription (openai-whisper's ``transcribe``), Whisper-AT sound tags from the same encoder pass,
tags-only inference (``tag``) and ``parse_at_label``.

Two long-form modes:

``sequential`` (default)
    openai-whisper's algorithm (release 20250625) step for step: a 30-s window at ``seek``, segments split at
    consecutive timestamp tokens, seek to the last complete timestamp, temperature fallback on
    ``compression_ratio_threshold`` / ``logprob_threshold``, the no-speech skip, ``condition_on_previous_text``
    with the prompt reset after a temperature > 0.5, the last window zero-padded after ``segment_size`` frames.
    The encoder runs once per window; temperature fallbacks reuse its output.

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
    power-of-two sub-batches.

Sound tags (``at_time_res`` given and a head on the model) live on a fixed grid as well: "tag windows" at
absolute 30-s boundaries whose mel is sliced from the 30-s-padded spectrogram (whisper-at's and the pre-2024
openai-whisper's slicing, so the last window's tail is the log-mel of real padding). Each tag window gives 75
pooled steps of 0.4 s (mean of 20 encoder frames per Whisper-AT). Rows are indexed by absolute pooled step: row
``i`` is the head applied to steps ``[i r, (i + 1) r)`` with ``r = at_time_res / 0.4`` (an integer). A row that
straddles two tag windows (``r`` not dividing 75, or ``r > 75``) takes each step from the window that contains it;
steps past the last window are zero, as whisper-at zero-pads a short last segment. So the tags of a file do not
depend on the decoding at all: ``transcribe(..., at_time_res=x)["audio_tag"]`` in either mode equals
``tag(..., at_time_res=x)["audio_tag"]``.

Encoder passes: a decoder window that is exactly a tag window (starts on a 30-s boundary, 30 s of content:
always the first window of a file longer than 30 s, and language detection's window) runs
``encode(return_layers=True)`` once and feeds the decoder its final states and the head its taps. Tag windows
the decoder never lands on exactly (sequential seeks drift off the grid; batched windows end in pauses) are
encoded on their own, taps only, ``batch_size`` at a time, as soon as the decoder has moved past them: about
one extra encoder pass per 30 s of audio, the price of tags that are aligned to absolute time and identical
whatever the decoding did. Temperature fallback never reruns the encoder or the head.
"""

from __future__ import annotations

import math
import sys
import warnings
import weakref
from dataclasses import fields
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .audio import (FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, load_audio,
                    log_mel_spectrogram)
from .decoding import DecodingOptions, DecodingResult, decode, detect_language

#: Pooled steps per 30-s window (1500 encoder frames / 20).
STEPS_PER_WINDOW = 75
#: Mel frames per pooled step (20 encoder frames x 2 mel frames).
FRAMES_PER_STEP = 40

_DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_DECODE_FIELDS = {f.name for f in fields(DecodingOptions)}
# openai-whisper transcribe() arguments we do not implement: refused when switched on, ignored when off
_UNSUPPORTED = ("word_timestamps", "hallucination_silence_threshold", "highlight_words")


class TranscribeError(ValueError):
    """Bad arguments to ``transcribe`` / ``tag`` (named in the message)."""


# ---------------------------------------------------------------------------------------------------------------
# Compiled pieces, cached per model object (weakly: dropping the model frees them)

class _Compiled:
    def __init__(self, model: Any):
        module = model.module

        def encode(params, mel):
            return module.apply({"params": params}, mel, method="encode")

        def encode_taps(params, mel):
            from .heads import pool_taps

            final, layers = module.apply({"params": params}, mel, True, method="encode")
            return final, pool_taps(layers).astype(jnp.float32)

        def taps_only(params, mel):
            return encode_taps(params, mel)[1]

        self.encode = jax.jit(encode)
        self.encode_taps = jax.jit(encode_taps)
        self.taps_only = jax.jit(taps_only)
        self.head_key = None
        self.head_apply = None

    def head(self, model: Any) -> Callable[[Any, Any], Any]:
        cfg = model.head_config or {}
        key = (cfg.get("mode"), id(model.head_params))
        if self.head_apply is None or self.head_key != key:
            head = _make_head(model)
            self.head_apply = jax.jit(lambda hp, x: head.apply({"params": hp}, x))
            self.head_key = key
        return self.head_apply


_COMPILED: "weakref.WeakKeyDictionary[Any, _Compiled]" = weakref.WeakKeyDictionary()


def _compiled(model: Any) -> _Compiled:
    c = _COMPILED.get(model)
    if c is None:
        c = _COMPILED[model] = _Compiled(model)
    return c


def _make_head(model: Any):
    from .heads import make_head

    cfg = model.head_config or {}
    hp = model.head_params
    n_classes = int(cfg.get("n_classes") or np.shape(hp["mlp_layer_1"]["bias"])[0])
    return make_head(cfg["mode"], model.dims.n_audio_layer, model.dims.n_audio_state, n_classes)


def _mesh_sharding() -> tuple[int, Any]:
    """(device count, NamedSharding splitting axis 0 over a ("data",) mesh of every device)."""
    from jax.sharding import NamedSharding, PartitionSpec

    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return len(devices), NamedSharding(mesh, PartitionSpec("data"))


def _put_batch(x: np.ndarray, sharding: Any, n_dev: int) -> jax.Array:
    if n_dev == 1:
        return jnp.asarray(x)
    return jax.device_put(x, sharding)


def _progress(total: int, unit: str, disable: bool, desc: str | None = None):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        class _Null:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def update(self, n=1):
                pass

        return _Null()
    return tqdm(total=total, unit=unit, disable=disable, desc=desc, file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks

def at_time_res_steps(at_time_res: float) -> int:
    """``at_time_res`` seconds as a whole number of 0.4-s pooled steps; ``TranscribeError`` if it is not one."""
    if isinstance(at_time_res, bool) or not isinstance(at_time_res, (int, float, np.integer, np.floating)):
        raise TranscribeError(f"at_time_res must be a number of seconds (a multiple of 0.4), got {at_time_res!r}")
    x = float(at_time_res)
    if not math.isfinite(x) or x <= 0:
        raise TranscribeError(f"at_time_res must be a positive multiple of 0.4 s, got {at_time_res!r}")
    # integer arithmetic on tenths-of-steps: 1.2000000000000002 is 3 steps, 1.0 is not a multiple
    steps = round(x / 0.4)
    if steps < 1 or abs(steps * 0.4 - x) > 1e-6:
        raise TranscribeError(f"at_time_res must be a multiple of 0.4 s (e.g. 0.4, 0.8, 2, 10), got {at_time_res!r}")
    return int(steps)


def _require_head(model: Any) -> None:
    if getattr(model, "head_params", None) is None or not (getattr(model, "head_config", None) or {}).get("mode"):
        raise TranscribeError("this model has no Whisper-AT head: load one with load_model(..., at_head=PATH) "
                              "to get sound tags")


def _check_decode_options(decode_options: dict) -> None:
    for name in _UNSUPPORTED:
        if decode_options.pop(name, None):
            raise TranscribeError(f"{name} is not supported by whisper_at_jax.transcribe")
    for name in ("prepend_punctuations", "append_punctuations", "max_line_width", "max_line_count",
                 "max_words_per_line"):
        decode_options.pop(name, None)
    unknown = set(decode_options) - _DECODE_FIELDS
    if unknown:
        raise TranscribeError(f"unknown transcribe/decoding options: {sorted(unknown)}")


def _load(model: Any, audio: Any) -> tuple[np.ndarray, int]:
    """audio (path or 16-kHz samples) -> (mel [n_mels, content + 3000] with 30 s of padding, content frames)."""
    samples = load_audio(audio)
    mel = np.asarray(log_mel_spectrogram(samples, model.dims.n_mels, padding=N_SAMPLES))
    return mel, mel.shape[-1] - N_FRAMES


def _tokenizer(model: Any, language: str | None, task: str):
    from .tokenizer import get_tokenizer

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
# The tag grid

class _TagGrid:
    """Tag windows at absolute 30-s boundaries -> rows of ``steps`` pooled steps, computed as windows arrive.

    ``add(k, taps)`` takes window ``k``'s pooled taps [L, 75, d]; rows whose steps are all available (windows
    arrive in any order) go through the head in batches, and windows no later row needs are freed, so memory
    stays at a few windows on long files.
    """

    def __init__(self, model: Any, mel: np.ndarray, content_frames: int, steps: int, batch_size: int,
                 sharding: tuple[int, Any]):
        self.model, self.mel, self.steps = model, mel, steps
        self.n_windows = -(-content_frames // N_FRAMES)
        self.n_rows = -(-content_frames // (steps * FRAMES_PER_STEP))
        self.total_steps = self.n_windows * STEPS_PER_WINDOW
        self.batch_size = batch_size
        self.n_dev, self.sharding = sharding
        cfg = model.head_config or {}
        self.n_classes = int(cfg.get("n_classes") or np.shape(model.head_params["mlp_layer_1"]["bias"])[0])
        self.rows = np.zeros((self.n_rows, self.n_classes), np.float32)
        self.taps: dict[int, np.ndarray] = {}
        self.done_windows: set[int] = set()
        self.next_row = 0
        self.compiled = _compiled(model)

    def window_mel(self, k: int) -> np.ndarray:
        return self.mel[:, k * N_FRAMES:(k + 1) * N_FRAMES]

    def _windows_of_row(self, i: int) -> range:
        first = i * self.steps
        last = min((i + 1) * self.steps, self.total_steps) - 1
        return range(first // STEPS_PER_WINDOW, last // STEPS_PER_WINDOW + 1)

    def add(self, k: int, taps: Any) -> None:
        if k in self.done_windows or k >= self.n_windows:
            return
        self.taps[k] = np.asarray(taps, np.float32)
        self.done_windows.add(k)
        self._flush()

    def missing_before(self, frame: int) -> list[int]:
        """Tag windows that end at or before mel frame ``frame`` and have not been computed."""
        return [k for k in range(min(frame // N_FRAMES, self.n_windows)) if k not in self.done_windows]

    def compute(self, windows: Iterable[int]) -> None:
        """Encode the given tag windows (taps only), ``batch_size`` at a time."""
        windows = [k for k in windows if k not in self.done_windows]
        bs = self.batch_size
        for s in range(0, len(windows), bs):
            chunk = windows[s:s + bs]
            # a power-of-two batch (a multiple of the device count): sequential mode mostly asks for one window
            # at a time, and padding that to batch_size would encode batch_size windows for one
            size = -(-_bucket(len(chunk), bs) // self.n_dev) * self.n_dev
            batch = np.stack([self.window_mel(k) for k in chunk] + [self.window_mel(chunk[-1])] * (size - len(chunk)))
            taps = np.asarray(self.compiled.taps_only(self.model.params, _put_batch(batch, self.sharding, self.n_dev)))
            for j, k in enumerate(chunk):
                self.add(k, taps[j])

    def finish(self) -> np.ndarray:
        self.compute(range(self.n_windows))
        self._flush()
        assert self.next_row == self.n_rows, (self.next_row, self.n_rows)
        return self.rows

    def _row_taps(self, i: int) -> np.ndarray:
        first, last = i * self.steps, (i + 1) * self.steps
        parts = []
        for k in self._windows_of_row(i):
            lo = max(first, k * STEPS_PER_WINDOW) - k * STEPS_PER_WINDOW
            hi = min(last, (k + 1) * STEPS_PER_WINDOW) - k * STEPS_PER_WINDOW
            parts.append(self.taps[k][:, lo:hi])
        x = np.concatenate(parts, axis=1)
        if x.shape[1] < self.steps:  # past the last window: zeros, as whisper-at pads a short last segment
            x = np.pad(x, ((0, 0), (0, self.steps - x.shape[1]), (0, 0)))
        return x

    def _flush(self) -> None:
        ready = []
        i = self.next_row
        while i < self.n_rows and all(k in self.taps for k in self._windows_of_row(i)):
            ready.append(i)
            i += 1
        if not ready:
            return
        head = self.compiled.head(self.model)
        # fixed-size head batches (padded) so one compile serves every call
        hb = 16
        for s in range(0, len(ready), hb):
            idx = ready[s:s + hb]
            x = np.stack([self._row_taps(r) for r in idx])
            if len(idx) < hb:
                x = np.concatenate([x, np.repeat(x[-1:], hb - len(idx), axis=0)])
            logits = np.asarray(head(self.model.head_params, jnp.asarray(x)))
            self.rows[idx[0]:idx[-1] + 1] = logits[: len(idx)]
        self.next_row = i
        still_needed = set(self._windows_of_row(self.next_row)) if self.next_row < self.n_rows else set()
        for k in list(self.taps):
            if k < min(still_needed, default=self.n_windows):
                del self.taps[k]


# ---------------------------------------------------------------------------------------------------------------
# Segments

def _segments_from_tokens(tokens: list[int], tokenizer: Any, seek: int, segment_size: int, time_offset: float,
                          time_precision: float, input_stride: int, result: DecodingResult, keep_tail: bool
                          ) -> tuple[list[dict], int]:
    """openai-whisper's timestamp splitting -> (segments, frames to advance).

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
    return segments, advance


def _finish_window(segments: list[dict], all_segments: list[dict], all_tokens: list[int]) -> None:
    # as openai-whisper: an instantaneous or empty segment keeps its place with no text
    for s in segments:
        if s["start"] == s["end"] or s["text"].strip() == "":
            s["text"] = ""
            s["tokens"] = []
    for s in segments:
        all_segments.append({"id": len(all_segments), **s})
    all_tokens.extend(t for s in segments for t in s["tokens"])


def _print_segments(segments: list[dict]) -> None:
    from .outputs import format_timestamp

    for s in segments:
        print(f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] {s['text']}")


# ---------------------------------------------------------------------------------------------------------------
# transcribe

def transcribe(model: Any, audio: Any, *, verbose: bool | None = None,
               temperature: float | Sequence[float] = _DEFAULT_TEMPERATURES,
               compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
               no_speech_threshold: float | None = 0.6, condition_on_previous_text: bool = True,
               initial_prompt: str | None = None, carry_initial_prompt: bool = False,
               clip_timestamps: str | Sequence[float] = "0", mode: str = "sequential", batch_size: int = 8,
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
    if mode not in ("sequential", "batched"):
        raise TranscribeError(f"mode must be 'sequential' or 'batched', got {mode!r}")
    if mode == "batched" and clip_timestamps not in ("0", [0], (0,), [0.0], (0.0,)):
        raise TranscribeError("clip_timestamps is only supported in sequential mode")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise TranscribeError(f"batch_size must be a positive integer, got {batch_size!r}")
    decode_options = dict(decode_options)
    _check_decode_options(decode_options)
    temperatures = _temperatures(temperature)
    steps = None
    if at_time_res is not None:
        steps = at_time_res_steps(at_time_res)
        _require_head(model)

    mel, content_frames = _load(model, audio)
    n_dev, sharding = _mesh_sharding()
    batch_size = -(-int(batch_size) // n_dev) * n_dev  # every device gets the same number of rows
    grid = None
    if steps is not None:
        grid = _TagGrid(model, mel, content_frames, steps, batch_size, (n_dev, sharding))

    common = dict(verbose=verbose, temperatures=temperatures, compression_ratio_threshold=compression_ratio_threshold,
                  logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
                  initial_prompt=initial_prompt, decode_options=decode_options, grid=grid)
    if mode == "sequential":
        result = _sequential(model, mel, content_frames, condition_on_previous_text=condition_on_previous_text,
                             carry_initial_prompt=carry_initial_prompt, clip_timestamps=clip_timestamps, **common)
    else:
        result = _batched(model, mel, content_frames, batch_size=batch_size, sharding=(n_dev, sharding), **common)
    if grid is not None:
        result["at_time_res"] = at_time_res
        result["audio_tag"] = grid.finish()
        result["duration"] = content_frames * HOP_LENGTH / SAMPLE_RATE
        _attach_labels(model, result)
    return result


def _attach_labels(model: Any, result: dict) -> None:
    # parse_at_label finds the head's names here when they are not AudioSet's 527 (which it knows itself)
    labels = (model.head_config or {}).get("labels")
    if labels and not _is_audioset(labels):
        result["at_labels"] = [str(row[2]) for row in sorted(labels, key=lambda r: int(r[0]))]


def _detect(model: Any, features: Any, verbose: bool | None) -> str:
    from .tokenizer import LANGUAGES

    if verbose:
        print("Detecting language using up to the first 30 seconds. Use `--language` to specify the language")
    _, probs = detect_language(model, features)
    language = max(probs[0], key=probs[0].get)
    if verbose is not None:
        print(f"Detected language: {LANGUAGES[language].title()}")
    return language


def _sequential(model: Any, mel: np.ndarray, content_frames: int, *, verbose, temperatures, compression_ratio_threshold,
                logprob_threshold, no_speech_threshold, condition_on_previous_text, initial_prompt,
                carry_initial_prompt, clip_timestamps, decode_options, grid) -> dict:
    compiled = _compiled(model)
    params = model.params
    dims = model.dims
    shared: dict[int, Any] = {}  # tag window k -> final states, when encoded with taps before its decoder window

    def encode_tag_window(k: int):
        final, taps = compiled.encode_taps(params, jnp.asarray(grid.window_mel(k)[None]))
        grid.add(k, taps[0])
        return final

    if decode_options.get("language") is None:
        if not model.is_multilingual:
            decode_options["language"] = "en"
        else:
            first = mel[:, :N_FRAMES]  # openai-whisper: pad_or_trim(mel, N_FRAMES) of the padded spectrogram
            if grid is not None:
                shared[0] = encode_tag_window(0)
                features = shared[0]
            else:
                features = compiled.encode(params, jnp.asarray(first[None]))
            decode_options["language"] = _detect(model, features, verbose)
    language = decode_options["language"]
    task = decode_options.get("task", "transcribe")
    tokenizer = _tokenizer(model, language, task)

    if isinstance(clip_timestamps, str):
        clip_timestamps = [float(ts) for ts in (clip_timestamps.split(",") if clip_timestamps else [])]
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
    with _progress(content_frames, "frames", verbose is not False) as pbar:
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

            # the encoder pass: shared with the tag grid when this window is exactly a tag window
            k = seek // N_FRAMES
            if grid is not None and seek % N_FRAMES == 0 and segment_size == N_FRAMES:
                features = shared.pop(k, None)
                if features is None:
                    features = encode_tag_window(k)
            else:
                features = compiled.encode(params, jnp.asarray(mel_segment[None]))
            if grid is not None:  # tag windows the seek has moved past will never be shared: encode them now
                grid.compute(grid.missing_before(seek))

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
            current_segments, advance = _segments_from_tokens(
                tokens, tokenizer, seek, segment_size, time_offset, time_precision, input_stride, result,
                keep_tail=False)
            seek += advance
            if verbose:
                _print_segments(current_segments)
            _finish_window(current_segments, all_segments, all_tokens)
            if not condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)  # a high temperature's text is no good as a prompt
            pbar.update(min(content_frames, seek) - previous_seek)

    decode_options.pop("prompt", None)
    return dict(text=tokenizer.decode(all_tokens[len(initial_prompt_tokens):]), segments=all_segments,
                language=language)


def _bucket(n: int, cap: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return min(b, cap) if n <= cap else n


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
        bounds.append(cut)
    bounds.append(content_frames)
    return bounds


def _batched(model: Any, mel: np.ndarray, content_frames: int, *, verbose, temperatures, compression_ratio_threshold,
             logprob_threshold, no_speech_threshold, initial_prompt, decode_options, grid, batch_size,
             sharding) -> dict:
    compiled = _compiled(model)
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
        first = mel[:, :N_FRAMES][None]
        if grid is not None:
            features, taps = compiled.encode_taps(params, jnp.asarray(first))
            grid.add(0, taps[0])
        else:
            features = compiled.encode(params, jnp.asarray(first))
        language = decode_options["language"] = _detect(model, features, verbose)
    tokenizer = _tokenizer(model, language, task)
    if initial_prompt is not None:
        decode_options["prompt"] = tokenizer.encode(" " + initial_prompt.strip())

    all_tokens: list[int] = []
    all_segments: list[dict] = []

    def window_mel(k: int) -> np.ndarray:
        seg = mel[:, bounds[k]:bounds[k + 1]]
        return np.pad(seg, ((0, 0), (0, N_FRAMES - seg.shape[1]))) if seg.shape[1] < N_FRAMES else seg

    with _progress(n_windows, "windows", verbose is not False) as pbar:
        for b0 in range(0, n_windows, batch_size):
            ks = list(range(b0, min(b0 + batch_size, n_windows)))
            batch = np.stack([window_mel(k) for k in ks] + [window_mel(ks[-1])] * (batch_size - len(ks)))
            x = _put_batch(batch, shard, n_dev)
            if grid is not None:
                # a decoder window that is exactly a tag window (30 s starting on the grid) feeds the head too
                features, taps = compiled.encode_taps(params, x)
                on_grid = [(j, k) for j, k in enumerate(ks)
                           if bounds[k] % N_FRAMES == 0 and bounds[k + 1] - bounds[k] == N_FRAMES]
                if on_grid:
                    taps = np.asarray(taps)
                    for j, k in on_grid:
                        grid.add(bounds[k] // N_FRAMES, taps[j])
            else:
                features = compiled.encode(params, x)

            results = _decode_batch_with_fallback(model, features, len(ks), temperatures, decode_options,
                                                  compression_ratio_threshold, logprob_threshold,
                                                  no_speech_threshold, batch_size)
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
                segs, _ = _segments_from_tokens(list(r.tokens), tokenizer, seek, segment_size,
                                                float(seek * HOP_LENGTH / SAMPLE_RATE), time_precision,
                                                input_stride, r, keep_tail=True)
                end_time = (seek + segment_size) * HOP_LENGTH / SAMPLE_RATE
                for s in segs:  # a timestamp past the window's content is clipped to it
                    s["end"] = min(s["end"], end_time)
                    s["start"] = min(s["start"], s["end"])
                if verbose:
                    _print_segments(segs)
                _finish_window(segs, all_segments, all_tokens)
            if grid is not None:
                grid.compute(grid.missing_before(bounds[ks[-1] + 1]))
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
        size = _bucket(len(pending), batch_size)
        idx = pending + [pending[-1]] * (size - len(pending))
        sub = decode(model, features[np.asarray(idx)], _options_for(decode_options, t))
        still = []
        for pos, j in enumerate(pending):
            results[j] = sub[pos]
            if _needs_fallback(sub[pos], compression_ratio_threshold, logprob_threshold, no_speech_threshold):
                still.append(j)
        pending = still
    return results


# ---------------------------------------------------------------------------------------------------------------
# Tags only

def tag(model: Any, audio: Any, *, at_time_res: float = 10, batch_size: int = 8, verbose: bool | None = None
        ) -> dict:
    """Sound tags only (no decoder): ``{"at_time_res", "audio_tag", "duration"}`` on the same fixed grid as
    ``transcribe(..., at_time_res=...)`` (equal rows), tag windows encoded ``batch_size`` at a time over every
    device. ``audio_tag`` is float32 logits ``[ceil(duration / at_time_res), n_classes]``."""
    steps = at_time_res_steps(at_time_res)
    _require_head(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise TranscribeError(f"batch_size must be a positive integer, got {batch_size!r}")
    mel, content_frames = _load(model, audio)
    n_dev, sharding = _mesh_sharding()
    batch_size = -(-int(batch_size) // n_dev) * n_dev
    grid = _TagGrid(model, mel, content_frames, steps, batch_size, (n_dev, sharding))
    with _progress(grid.n_windows, "windows", verbose is not False) as pbar:
        for s in range(0, grid.n_windows, batch_size):
            grid.compute(range(s, min(s + batch_size, grid.n_windows)))
            pbar.update(min(batch_size, grid.n_windows - s))
    result = {"at_time_res": at_time_res, "audio_tag": grid.finish(),
              "duration": content_frames * HOP_LENGTH / SAMPLE_RATE}
    _attach_labels(model, result)
    return result


# ---------------------------------------------------------------------------------------------------------------
# parse_at_label

def _is_audioset(labels: Sequence[Sequence[Any]]) -> bool:
    if len(labels) != 527:
        return False
    from .labels import audioset_labels

    ref = audioset_labels()
    return all(str(a[2]) == str(b[2]) for a, b in zip(sorted(labels, key=lambda r: int(r[0])), ref))


def _label_names(result: dict, n_classes: int, labels: Sequence[Any] | None) -> list[str]:
    if labels is not None:
        if hasattr(labels, "head_config"):  # a model
            labels = (labels.head_config or {}).get("labels")
        names = [str(r[2]) if isinstance(r, (list, tuple)) else str(r) for r in labels]
    elif result.get("at_labels"):
        names = [str(n) for n in result["at_labels"]]
    elif n_classes == 527:
        from .labels import audioset_labels

        names = [lab[2] for lab in audioset_labels()]
    else:
        names = [f"class_{i}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} label names for {n_classes} tag classes")
    return names


def parse_at_label(result: dict, top_k: int = 5, p_threshold: float = -1.0,
                   include_class_list: Iterable[int] | None = None, language: str = "en", *,
                   p_threshold_prob: float | None = None, labels: Sequence[Any] | None = None) -> list[dict]:
    """Readable tags per time row, as whisper-at's ``parse_at_label``.

    Per row: the ``top_k`` highest logits first, THEN only those above the threshold and in
    ``include_class_list`` (so a class outside the row's top-k never appears, as in whisper-at).

    Args:
        result: a ``transcribe(..., at_time_res=...)`` or ``tag(...)`` result.
        top_k: classes considered per row.
        p_threshold: threshold on the logit (whisper-at's meaning; -1 ~ probability 0.27).
        include_class_list: class indices allowed (default: all).
        language: label-name language. Only English names ship; others warn and use English (as whisper-at
            does for a language it lacks). ``"follow_asr"`` is accepted and means the same.
        p_threshold_prob: the threshold as a probability in (0, 1) instead (converted to its logit); give
            ``p_threshold`` or this, not both.
        labels: names (or [index, mid, name] rows, or a model with a head) overriding the result's / AudioSet's.

    Returns:
        ``[{"time": {"start": i * res, "end": (i + 1) * res}, "audio tags": [(name, logit), ...]}, ...]``.
    """
    if "audio_tag" not in result or "at_time_res" not in result:
        raise ValueError("result has no sound tags: pass at_time_res to transcribe() or use tag()")
    if p_threshold_prob is not None:
        if p_threshold != -1.0:
            raise ValueError("give p_threshold (a logit) or p_threshold_prob (a probability), not both")
        p = float(p_threshold_prob)
        if not 0.0 < p < 1.0:
            raise ValueError(f"p_threshold_prob must be a probability in (0, 1), got {p_threshold_prob!r}")
        p_threshold = math.log(p / (1.0 - p))
    if language not in ("en", "follow_asr"):
        warnings.warn(f"{language!r} label names are not available; using English names", stacklevel=2)
    audio_tag = np.asarray(result["audio_tag"], np.float32)
    if audio_tag.ndim != 2:
        raise ValueError(f"audio_tag must be [rows, classes], got shape {audio_tag.shape}")
    n_classes = audio_tag.shape[1]
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    k = min(int(top_k), n_classes)
    names = _label_names(result, n_classes, labels)
    allowed = None if include_class_list is None else {int(i) for i in include_class_list}
    steps = at_time_res_steps(result["at_time_res"])
    out = []
    for i, row in enumerate(audio_tag):
        # stable descending order: ties keep the lower index first (torch.topk's order on CPU for ties is
        # unspecified; real logits practically never tie)
        top = np.argsort(-row, kind="stable")[:k]
        tags = [(names[j], float(row[j])) for j in top
                if row[j] > p_threshold and (allowed is None or int(j) in allowed)]
        out.append({"time": {"start": round(i * steps * 0.4, 6), "end": round((i + 1) * steps * 0.4, 6)},
                    "audio tags": tags})
    return out


def sigmoid(x: Any) -> np.ndarray:
    """Logits -> probabilities (numerically safe)."""
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
