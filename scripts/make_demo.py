#!/usr/bin/env python3
"""Make the project's demo file: espeak-ng speech over a background sound synthesised here.

    python scripts/make_demo.py                      # -> whisper_at_jax/assets/demo.flac
    python scripts/make_demo.py --background church_bells --out /tmp/demo.flac

The command line is ``whisper_at_jax.cli.make_demo`` (``--help``), the experiment ``whisper_at_jax.experiments``.
"""

import sys

from whisper_at_jax.cli.make_demo import main

if __name__ == "__main__":
    sys.exit(main())
