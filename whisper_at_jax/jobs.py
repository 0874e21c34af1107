"""Resumable batch jobs: skip inputs whose outputs already exist, and stop between inputs on SIGTERM.

A batch job stopped from outside (a preemption, a time limit) and re-run with the same outputs resumes where it
stopped: every output is written atomically (``outputs.py``), so an output that exists is complete.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Sequence

logger = logging.getLogger("whisper_at_jax.jobs")

#: Exit status of a job stopped on SIGTERM in a resumable state (sysexits' EX_TEMPFAIL: "retry later").
EXIT_RESUMABLE = 75


def output_paths(audio_path: str, output_dir: str, output_format: str) -> list[str]:
    """The files ``outputs.get_writer(output_format, output_dir)`` writes for ``audio_path``."""
    from .outputs import FORMATS, WRITERS

    if output_format not in FORMATS:
        raise ValueError(f"output format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    kinds = WRITERS.values() if output_format == "all" else [WRITERS[output_format]]
    return [w(output_dir).output_path(audio_path) for w in kinds]


def split_done(audio_paths: Sequence[str], output_dir: str, output_format: str, overwrite: bool = False
               ) -> tuple[list[str], list[str]]:
    """(inputs to do, inputs skipped because all their outputs exist); ``overwrite`` does them all."""
    todo, done = [], []
    for p in audio_paths:
        finished = not overwrite and all(os.path.isfile(o) for o in output_paths(p, output_dir, output_format))
        (done if finished else todo).append(p)
    return todo, done


class StopRequest:
    """SIGTERM sets ``requested`` (the job stops at its next safe point: after the current input, or the current
    train step); a second SIGTERM kills as usual. ``close()`` puts the previous handler back."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: no handler
            self._previous = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        logger.warning("SIGTERM: stopping at the next safe point (a second SIGTERM kills the job)")

    def close(self) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
