"""The rules on transcription, writer and tag display options that need no model, written once.

:func:`check_options` raises :class:`OptionError` naming each option as the caller spells it (``spell``): the
Python name by default, ``--flag-name`` for the command line (:func:`flag`), so ``scripts/infer.py`` refuses a bad
combination before any model loads with the same rule the library applies.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

#: Options that only mean something with word timestamps, in the order they are checked.
WORD_OPTIONS = ("hallucination_silence_threshold", "highlight_words", "max_line_width", "max_line_count",
                "max_words_per_line", "prepend_punctuations", "append_punctuations")
#: Writer options that are counts (>= 1 when given).
COUNT_OPTIONS = ("max_line_width", "max_line_count", "max_words_per_line")


class TranscribeError(ValueError):
    """Bad arguments to ``transcribe`` / ``tag`` (named in the message)."""


class OptionError(TranscribeError):
    """A bad option value or combination (named in the message)."""


def flag(name: str) -> str:
    """``max_line_width`` -> ``--max-line-width``: how the command line spells an option."""
    return "--" + name.replace("_", "-")


def check_count(value: Any, name: str) -> None:
    """A count option (``name`` as the caller spells it): an integer >= 1, or None (not given)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OptionError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise OptionError(f"{name} must be >= 1")


def _check_decoding(o: dict, s: Callable[[str], str]) -> None:
    check_count(o.get("beam_size"), s("beam_size"))
    patience = o.get("patience")
    if patience is not None and o.get("beam_size") is None:
        raise OptionError(f"{s('patience')} needs {s('beam_size')}")
    if patience is not None and round(o["beam_size"] * patience) < 1:
        raise OptionError(f"{s('patience')} times {s('beam_size')} must be >= 1")
    length_penalty = o.get("length_penalty")
    if length_penalty is not None and not 0.0 <= length_penalty <= 1.0:
        raise OptionError(f"{s('length_penalty')} must be in [0, 1]")
    suppress = o.get("suppress_tokens", "-1")
    try:
        [int(t) for t in suppress.split(",") if t.strip()] if isinstance(suppress, str) else [int(t) for t in suppress]
    except (TypeError, ValueError):
        raise OptionError(f"{s('suppress_tokens')} must be comma-separated integers, got {suppress!r}") from None


def _check_long_form(o: dict, s: Callable[[str], str]) -> None:
    from whisper_at_jax.transcribe import parse_clip_timestamps

    if o.get("mode", "sequential") not in ("sequential", "batched"):
        raise OptionError(f"{s('mode')} must be 'sequential' or 'batched', got {o['mode']!r}")
    sequential = o.get("mode", "sequential") == "sequential"
    try:
        clips = parse_clip_timestamps(o.get("clip_timestamps", "0"))
    except TranscribeError as e:
        raise OptionError(f"{s('clip_timestamps')}: {e}") from None
    if not sequential and clips not in ([], [0.0]):
        raise OptionError(f"{s('clip_timestamps')} needs {s('mode')} sequential")
    if o.get("carry_initial_prompt") and o.get("initial_prompt") is None:
        raise OptionError(f"{s('carry_initial_prompt')} needs {s('initial_prompt')}")
    if not o.get("word_timestamps"):
        for name in WORD_OPTIONS:
            if o.get(name):
                raise OptionError(f"{s(name)} needs {s('word_timestamps')}")
    elif not sequential and o.get("hallucination_silence_threshold") is not None:
        raise OptionError(f"{s('hallucination_silence_threshold')} needs {s('mode')} sequential")
    for name in COUNT_OPTIONS:
        check_count(o.get(name), s(name))


def check_options(spell: Callable[[str], str] = str, **options: Any) -> None:
    """Check the options given (by their Python names; those left out take their defaults), in this order:

    - ``batch_size``, ``top_k`` integers >= 1; ``threshold`` a probability in (0, 1);
    - decoding: ``beam_size`` >= 1, ``patience`` only with ``beam_size`` and their product >= 1, ``length_penalty``
      in [0, 1], ``suppress_tokens`` comma-separated integers;
    - long form: ``clip_timestamps`` valid (:func:`whisper_at_jax.transcribe.parse_clip_timestamps`) and only in
      sequential ``mode``, ``carry_initial_prompt`` only with ``initial_prompt``, the :data:`WORD_OPTIONS` only with
      ``word_timestamps`` (``hallucination_silence_threshold`` only in sequential mode), the :data:`COUNT_OPTIONS`
      >= 1.

    Raises:
        OptionError: the first rule broken, each option named by ``spell(name)``.
    """
    s = spell
    for name in ("batch_size", "top_k"):
        check_count(options.get(name), s(name))
    threshold = options.get("threshold")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise OptionError(f"{s('threshold')} is a probability in (0, 1)")
    _check_decoding(options, s)
    _check_long_form(options, s)
