#!/usr/bin/env python3
r"""Evaluate a trained Whisper-AT head: mAP / mean AUC / d' (multi-label) or accuracy (single-label).

    python scripts/evaluate.py --checkpoint runs/esc50/export --features features/esc50_tiny.en --split train \
        --fold 1 --single_label
    python scripts/evaluate.py --checkpoint runs/as2m/export --tfrecords data/audioset --split eval

The command line is ``whisper_at_jax.cli.evaluate`` (``--help``).
"""

import sys

from whisper_at_jax.cli.evaluate import main

if __name__ == "__main__":
    from whisper_at_jax.extras import missing_extra_exits

    with missing_extra_exits():
        sys.exit(main())
