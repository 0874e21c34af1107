#!/usr/bin/env python3
"""ESC-50 five-fold cross-validation of Whisper-AT heads on a frozen Whisper encoder (the paper's ESC-50 protocol).

    python scripts/esc50.py --shared /work/shared --model tiny.en \
        --heads tl_tr,tl_down_tr,wa_mlp,last_mlp,linear --lr 1e-4,5e-4,1e-3 --out runs/esc50_tiny.en
    python scripts/esc50.py --shared /work/shared --model tiny.en --default_head whisper_at_jax/assets/heads/tiny.en \
        --out runs/esc50_tiny.en

The command line is ``whisper_at_jax.cli.esc50`` (``--help``), the experiment ``whisper_at_jax.experiments``.
"""

import sys

from whisper_at_jax.cli.esc50 import main

if __name__ == "__main__":
    sys.exit(main())
