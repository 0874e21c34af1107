#!/usr/bin/env python3
"""The paper's Figure 1 (upper) on real material: ASR word error rate and background-sound tagging accuracy
of one Whisper model as ESC-50 noise is mixed under real speech at SNRs from -20 to 20 dB.

    python scripts/noise_experiment.py --shared /work/shared --model tiny.en \
        --head runs/esc50_tiny.en/head_holdout1 --fold 1 --out runs/noise_tiny.en
    python scripts/noise_experiment.py --plot runs/noise_tiny.en [runs/noise_base] --figure docs/figure1.png

The command line is ``whisper_at_jax.cli.noise_experiment`` (``--help``), the experiment ``whisper_at_jax.experiments``.
"""

import sys

from whisper_at_jax.cli.noise_experiment import main

if __name__ == "__main__":
    sys.exit(main())
