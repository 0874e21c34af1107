#!/usr/bin/env python3
"""Transcribe audio files and tag their sounds (Whisper-AT) with one encoder pass per window.

    python scripts/infer.py AUDIO... [--model tiny.en] [--head PATH] [--tags-only] [-f all] [-o DIR] ...

The same command as the ``whisper-at-jax`` console script: ``whisper_at_jax.cli.infer`` (``--help``).
"""

import sys

from whisper_at_jax.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
