#!/usr/bin/env python3
"""Convert Whisper weights (and optionally a Whisper-AT head) into a whisper-at-jax checkpoint directory.

    python scripts/convert.py SRC OUT [--head PTH] [--dtype float32|bfloat16|float16] [--tokenizer tokenizer.json]
                              [--overwrite]

The command line is ``whisper_at_jax.cli.convert`` (``--help``).
"""

import sys

from whisper_at_jax.cli.convert import main

if __name__ == "__main__":
    from whisper_at_jax.extras import missing_extra_exits

    with missing_extra_exits():
        sys.exit(main())
