"""Data for head training: label-file readers, the TFRecord writer and reader, the feature store, and the feed.

* :mod:`~whisper_at_jax.data.sources`: AudioSet segment CSVs, ESC-50 metadata, generic ``path,labels`` CSVs ->
  :class:`Source` (records + class names + a report of missing clips / unknown labels).
* :mod:`~whisper_at_jax.data.tfrecords`: :func:`write_tfrecords` -> sharded TFRecords readable by
  ``tfds.builder_from_directory``.
* :mod:`~whisper_at_jax.data.reader`: :func:`make_dataset` (per-host, deterministic, resumable, optionally
  label-balanced); :func:`whisper_at_jax.parallel.to_global` makes its batches global arrays.
* :mod:`~whisper_at_jax.data.shards`: a split's shards on disk (metadata, cut-short shards, labels files).
* :mod:`~whisper_at_jax.data.examples`: :class:`ExampleSource` (examples in memory or memory-mapped) and
  :class:`IndexStream` (the deterministic, resumable batch order).
* :mod:`~whisper_at_jax.data.features`: cached mode's feature store (:func:`extract_features`,
  :class:`FeatureWriter`, :func:`open_features`).
* :mod:`~whisper_at_jax.data.feed`: :func:`open_feed`, the trainer's one interface to the three kinds of data
  (in-memory, cached features, TFRecords): batches from an iterator with ``next()`` and ``state()``.

TensorFlow is imported only inside the functions that need it.
"""

from whisper_at_jax.data.examples import ExampleSource, IndexStream, ShardedArray, TrainError, eval_batches
from whisper_at_jax.data.features import FeatureWriter, extract_features, make_encode_fn, open_features
from whisper_at_jax.data.feed import SourceFeed, TFRecordData, gather_states, open_feed
from whisper_at_jax.data.reader import AudioBatchIterator, label_balanced_weights, make_dataset
from whisper_at_jax.data.shards import ReaderStats, host_example_counts
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
    "ExampleSource",
    "FeatureWriter",
    "IndexStream",
    "ReaderStats",
    "ShardedArray",
    "Source",
    "SourceFeed",
    "SourceReport",
    "TFRecordData",
    "TrainError",
    "WriteReport",
    "decode_audio_bytes",
    "eval_batches",
    "extract_features",
    "gather_states",
    "host_example_counts",
    "label_balanced_weights",
    "make_dataset",
    "make_encode_fn",
    "open_features",
    "open_feed",
    "read_audioset_csv",
    "read_esc50_csv",
    "read_label_csv",
    "read_metadata",
    "write_tfrecords",
]
