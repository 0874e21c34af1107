#!/usr/bin/env python3
"""Write a split of audio clips + labels as sharded TFRecords with TFDS metadata (for head training).

    python scripts/make_tfrecords.py --format audioset --csv balanced_train_segments.csv --audio-dir audio/ \\
        --out data/audioset --split train --num-shards 64
    python scripts/make_tfrecords.py --format esc50 --csv esc50/meta/esc50.csv --audio-dir esc50/audio \\
        --out data/esc50 --split fold1 --folds 1
    python scripts/make_tfrecords.py --format csv --csv clips.csv --out data/mine --split train

The command line is ``whisper_at_jax.cli.make_tfrecords`` (``--help``).
"""

import sys

from whisper_at_jax.cli.make_tfrecords import main

if __name__ == "__main__":
    from whisper_at_jax.extras import missing_extra_exits

    with missing_extra_exits():
        sys.exit(main())
