"""Data for head training: label-file readers, the TFRecord writer, and the tf.data reader.

* :mod:`~whisper_at_jax.data.sources`: AudioSet segment CSVs, ESC-50 metadata, generic ``path,labels`` CSVs ->
  :class:`Source` (records + class names + a report of missing clips / unknown labels).
* :mod:`~whisper_at_jax.data.tfrecords`: :func:`write_tfrecords` -> sharded TFRecords readable by
  ``tfds.builder_from_directory``.
* :mod:`~whisper_at_jax.data.reader`: :func:`make_dataset` (per-host, deterministic, resumable, optionally
  label-balanced); :func:`whisper_at_jax.parallel.to_global` makes its batches global arrays.

TensorFlow is imported only inside the functions that need it.
"""

from whisper_at_jax.data.reader import (
    AudioBatchIterator,
    ReaderStats,
    host_example_counts,
    label_balanced_weights,
    make_dataset,
)
from whisper_at_jax.data.sources import (
    ClipRecord,
    DataError,
    Source,
    SourceReport,
    read_audioset_csv,
    read_esc50_csv,
    read_label_csv,
)
from whisper_at_jax.data.tfrecords import WriteReport, decode_audio_bytes, read_metadata, write_tfrecords

__all__ = [
    "AudioBatchIterator",
    "ClipRecord",
    "DataError",
    "ReaderStats",
    "Source",
    "SourceReport",
    "WriteReport",
    "decode_audio_bytes",
    "host_example_counts",
    "label_balanced_weights",
    "make_dataset",
    "read_audioset_csv",
    "read_esc50_csv",
    "read_label_csv",
    "read_metadata",
    "write_tfrecords",
]
