#!/usr/bin/env python3
"""Train a Whisper-AT head on a frozen Whisper encoder (or, with ``--compile_only=TOPOLOGY``, compile the run for a
TPU slice): ``whisper_at_jax.cli.train`` (``--help``).

    python scripts/train.py --config configs/esc50.py:tiny.en --config.data.fold=1 --config.workdir=runs/esc_f1
"""

import sys

from whisper_at_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
