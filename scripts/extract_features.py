#!/usr/bin/env python3
"""Encode a dataset split once and write its pooled Whisper taps for cached-mode training.

    python scripts/extract_features.py --model tiny.en --tfrecords data/esc50 --split train \
        --out features/esc50_tiny.en --clip_seconds 5 --pool 10 --fold_regex '^(\\d+)-'

The command line is ``whisper_at_jax.cli.extract_features`` (``--help``).
"""

import sys

from whisper_at_jax.cli.extract_features import main

if __name__ == "__main__":
    from whisper_at_jax.extras import missing_extra_exits

    with missing_extra_exits():
        sys.exit(main())
