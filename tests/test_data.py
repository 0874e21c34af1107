"""Data layer: CSV sources, the TFRecord writer, the tf.data reader (TFDS read-back, bad data, host sharding,
exact resume, balanced sampling). All audio and CSVs are made here (tones); no network, no /work/shared."""

from __future__ import annotations

import collections
import io
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from whisper_at_jax.data import (  # noqa: E402
    ClipRecord,
    DataError,
    host_example_counts,
    label_balanced_weights,
    make_dataset,
    read_audioset_csv,
    read_esc50_csv,
    read_label_csv,
    write_tfrecords,
)
from whisper_at_jax import parallel  # noqa: E402
from whisper_at_jax.audio import SAMPLE_RATE as SR  # noqa: E402

NAMES = ["speech", "dog", "music"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: 12 tone clips (16 kHz mono 16-bit, 0.5-1.6 s) with 1-2 labels each


def _tone(i: int, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) * np.hanning(t.size)).astype(np.float32)


def _labels_of(i: int) -> tuple[int, ...]:
    return (i % 3,) if i % 4 else (i % 3, 2) if i % 3 != 2 else (2,)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    recs = []
    for i in range(12):
        path = d / f"c{i:02d}.{'flac' if i % 2 else 'wav'}"
        sf.write(path, _tone(i, 0.5 + 0.1 * i), SR, subtype="PCM_16")
        recs.append(ClipRecord(f"c{i:02d}", str(path), _labels_of(i)))
    return recs


@pytest.fixture(scope="module", params=["flac", "pcm16"])
def written(request, clips, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ds_{request.param}")
    report = write_tfrecords(clips, out, "train", num_shards=4, encoding=request.param, label_names=NAMES)
    return out, report, request.param


@pytest.fixture(scope="module")
def flac_ds(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_main")
    write_tfrecords(clips, out, "train", num_shards=4, label_names=NAMES)
    return out


def _source_int16(path: str) -> np.ndarray:
    # Independent of our code path: libsndfile's own int16 read of the 16-bit source file.
    return sf.read(path, dtype="int16")[0]


def _read_all(data, split="train", **kw):
    """Every example of one evaluation pass: id -> (audio, labels)."""
    kw.setdefault("clip_samples", 30000)
    it = make_dataset(data, split, batch_size=5, training=False, repeat=False, process_index=0, process_count=1, **kw)
    out = {}
    for b in it:
        for k in np.flatnonzero(b["mask"]):
            out[b["id"][k]] = (b["audio"][k], b["labels"][k])
    return out, it


# ---------------------------------------------------------------------------------------------------------------
# Write -> read back (ours and TFDS)


def test_roundtrip_reader_and_tfds(written, clips):
    out, report, encoding = written
    assert report.num_examples == 12 and not report.failed and len(report.shard_files) == 4
    assert sorted(os.path.basename(p) for p in report.shard_files) == [
        f"audio_clips-train.tfrecord-{i:05d}-of-00004" for i in range(4)]
    assert not [f for f in os.listdir(out) if f.startswith(".")]
    by_id = {r.id: r for r in clips}

    ours, _ = _read_all(out)
    assert sorted(ours) == sorted(by_id)
    for cid, (audio, labels) in ours.items():
        src = _source_int16(by_id[cid].path)
        # Lossless path (16-bit source, FLAC or PCM, same quantisation): exact equality, then zero padding.
        np.testing.assert_array_equal(audio[: src.size], src.astype(np.float32) / 32768.0)
        assert not audio[src.size:].any()
        expect = np.zeros(3, np.float32)
        expect[list(by_id[cid].labels)] = 1
        np.testing.assert_array_equal(labels, expect)

    builder = tfds.builder_from_directory(str(out))
    assert builder.info.splits["train"].num_examples == 12
    assert builder.info.splits["train"].num_shards == 4
    assert builder.info.features["labels"].feature.names == NAMES
    seen = {}
    for ex in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)):
        cid = ex["id"].decode()
        if encoding == "flac":
            pcm = sf.read(io.BytesIO(ex["audio"]), dtype="int16")[0]
        else:
            pcm = ex["audio"]  # TFDS decodes the raw bytes to the int16 waveform itself
        seen[cid] = (pcm, sorted(ex["labels"].tolist()), float(ex["duration"]), int(ex["sample_rate"]))
    assert sorted(seen) == sorted(by_id)
    for cid, (pcm, labels, duration, rate) in seen.items():
        src = _source_int16(by_id[cid].path)
        np.testing.assert_array_equal(pcm, src)
        assert labels == sorted(by_id[cid].labels)
        assert rate == SR and duration == pytest.approx(src.size / SR, abs=1e-6)


def test_resampled_stereo_clip_and_crop(tmp_path):
    # 44.1 kHz stereo -> 16 kHz mono; a [start, end] crop keeps exactly that span.
    stereo = np.stack([_tone(1, 2.0, 44100), 0.5 * _tone(1, 2.0, 44100)], axis=1)
    sf.write(tmp_path / "st.wav", stereo, 44100, subtype="FLOAT")
    sf.write(tmp_path / "long.wav", _tone(3, 3.0), SR, subtype="PCM_16")
    recs = [ClipRecord("st", str(tmp_path / "st.wav"), (0,)),
            ClipRecord("cut", str(tmp_path / "long.wav"), (1,), start=1.0, end=2.0)]
    write_tfrecords(recs, tmp_path / "out", "train", 1, label_names=NAMES)
    got, _ = _read_all(tmp_path / "out", clip_samples=40000)
    import soxr

    want = soxr.resample(stereo.mean(axis=1), 44100, SR, quality="HQ")
    # Tolerance: one int16 step (the stored samples are quantised to 16 bits).
    np.testing.assert_allclose(got["st"][0][: want.size], want, atol=1.0 / 32768 + 1e-7)
    src = _source_int16(str(tmp_path / "long.wav"))
    np.testing.assert_array_equal(got["cut"][0][:SR], src[SR:2 * SR] / 32768.0)
    assert not got["cut"][0][SR:].any()


def test_clip_seconds_caps_length(tmp_path, clips):
    rep = write_tfrecords(clips[-3:], tmp_path, "train", 1, label_names=NAMES, clip_seconds=1.0)
    assert rep.truncated == 3  # clips 9..11 are 1.4-1.6 s
    got, _ = _read_all(tmp_path, clip_samples=30000)
    for a, _ in got.values():
        assert np.flatnonzero(a).max() < SR


# ---------------------------------------------------------------------------------------------------------------
# Sources


def _write_tone(path, i=0, seconds=0.5):
    sf.write(path, _tone(i, seconds), SR, subtype="PCM_16")


def test_esc50_source_and_missing_report(tmp_path, caplog):
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(8):
        name = f"{i % 4 + 1}-{100 + i}-A-{i % 3}.wav"
        rows.append(f"{name},{i % 4 + 1},{i % 3},{['dog', 'rain', 'crow'][i % 3]},False,{100 + i},A")
        if i == 5:
            continue  # missing on disk
        # Re-encoded copies keep the stem: .flac for a .wav listed in the CSV must be found.
        _write_tone(audio / (name if i % 2 else name.replace(".wav", ".flac")), i)
    (tmp_path / "esc50.csv").write_text("\n".join(rows) + "\n")

    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.data"):
        src = read_esc50_csv(tmp_path / "esc50.csv", audio)
    assert src.label_names == ["dog", "rain", "crow"]
    assert src.report.missing == ["2-105-A-2.wav"] and len(src.records) == 7
    assert "1 clip(s) missing" in caplog.text and "2-105-A-2.wav" in caplog.text
    assert {r.id: r.labels for r in src.records}["1-100-A-0"] == (0,)

    folds = read_esc50_csv(tmp_path / "esc50.csv", audio, folds=[1, 3])
    assert {r.id.split("-")[0] for r in folds.records} == {"1", "3"} and folds.label_names == src.label_names

    with pytest.raises(DataError, match="missing on disk"):
        read_esc50_csv(tmp_path / "esc50.csv", audio, strict=True)

    rep = write_tfrecords(src, tmp_path / "out", "train", 3)
    assert rep.missing == ["2-105-A-2.wav"]
    lines = (tmp_path / "out" / "missing.txt").read_text().splitlines()
    assert lines == [f"train\t2-105-A-2.wav\t{audio / '2-105-A-2.wav'}"]
    # A second split in the same folder; rewriting "train" with fewer shards removes its old shards.
    write_tfrecords(read_esc50_csv(tmp_path / "esc50.csv", audio, folds=[4]), tmp_path / "out", "eval", 1)
    write_tfrecords(src, tmp_path / "out", "train", 2)
    shards = sorted(f for f in os.listdir(tmp_path / "out") if ".tfrecord-" in f)
    assert shards == ["audio_clips-eval.tfrecord-00000-of-00001", "audio_clips-train.tfrecord-00000-of-00002",
                      "audio_clips-train.tfrecord-00001-of-00002"]
    builder = tfds.builder_from_directory(str(tmp_path / "out"))
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 7, "eval": 2}
    got, _ = _read_all(tmp_path / "out")
    assert len(got) == 7
    got_eval, _ = _read_all(tmp_path / "out", "eval")
    assert sorted(got_eval) == ["4-103-A-0", "4-107-A-1"]
    # Splits joined with '+' read as one (cross-validation: train on four folds, hold one out).
    write_tfrecords(read_esc50_csv(tmp_path / "esc50.csv", audio, folds=[1, 2, 3]), tmp_path / "out", "f123", 2)
    joined, _ = _read_all(tmp_path / "out", "f123+eval")
    assert sorted(joined) == sorted(got)
    assert host_example_counts(tmp_path / "out", "f123+eval", 1) == [7]
    bal = make_dataset(tmp_path / "out", "f123+eval", 7, 4000, seed=1, process_index=0, process_count=1,
                       sampling="balanced")
    assert set(next(bal)["id"]) <= set(got)


AUDIOSET_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=6\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)
MIDS = {"/m/09x0r": 0, "/m/0bt9lr": 1, "/m/04rlf": 2}  # Speech, Dog, Music (AudioSet ontology ids)


def test_audioset_source_conventions_unknown_mid_strict(tmp_path, caplog):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    _write_tone(audio / "--aaaaaaaaa.flac", 0)  # {YTID}.flac
    _write_tone(audio / "sub" / "bbbbbbbbbbb_30.000.wav", 1)  # {YTID}_{start as written}, in a subfolder
    _write_tone(audio / "Yccccccccccc.wav", 2)  # PANNs' Y{YTID}
    _write_tone(audio / "eeeeeeeeeee_0.wav", 3)  # {YTID}_{whole seconds}
    csv_text = AUDIOSET_HEADER + (
        '--aaaaaaaaa, 0.000, 10.000, "/m/09x0r,/m/04rlf"\n'
        'bbbbbbbbbbb, 30.000, 40.000, "/m/0bt9lr,/m/zzzzz"\n'  # one unknown MID: kept with the known one
        'ccccccccccc, 10.000, 20.000, "/m/04rlf"\n'
        'ddddddddddd, 0.000, 10.000, "/m/09x0r"\n'  # missing on disk
        'eeeeeeeeeee, 0.000, 10.000, "/m/zzzzz"\n'  # only an unknown MID: dropped, listed
    )
    (tmp_path / "seg.csv").write_text(csv_text)
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.data"):
        src = read_audioset_csv(tmp_path / "seg.csv", audio, MIDS, NAMES)
    recs = {r.id: r for r in src.records}
    assert {k: v.labels for k, v in recs.items()} == {
        "--aaaaaaaaa": (0, 2), "bbbbbbbbbbb": (1,), "ccccccccccc": (2,)}
    assert recs["bbbbbbbbbbb"].path.endswith(os.path.join("sub", "bbbbbbbbbbb_30.000.wav"))
    assert recs["--aaaaaaaaa"].start is None  # files hold the segment: no crop
    assert src.report.missing == ["ddddddddddd"]
    assert src.report.unknown_labels == {"/m/zzzzz": 2}
    assert src.report.dropped_no_labels == ["eeeeeeeeeee"]
    assert "unknown label" in caplog.text and "/m/zzzzz" in caplog.text
    with pytest.raises(DataError, match="unknown label.*strict"):
        read_audioset_csv(tmp_path / "seg.csv", audio, MIDS, NAMES, strict=True)

    full = read_audioset_csv(tmp_path / "seg.csv", audio, MIDS, NAMES, audio_is_segment=False)
    assert {(r.start, r.end) for r in full.records if r.id == "bbbbbbbbbbb"} == {(30.0, 40.0)}

    (tmp_path / "bad.csv").write_text(AUDIOSET_HEADER + "xxxxxxxxxxx, 0.0, 10.0\n")
    with pytest.raises(DataError, match=r"bad.csv:4: expected 4 fields"):
        read_audioset_csv(tmp_path / "bad.csv", audio, MIDS, NAMES)


def test_audioset_default_label_list(tmp_path):
    # Without a map, the package's AudioSet list (whisper_at_jax.labels, 527 classes) is used.
    _write_tone(tmp_path / "aaaaaaaaaaa.wav")
    (tmp_path / "s.csv").write_text(AUDIOSET_HEADER + 'aaaaaaaaaaa, 0.0, 10.0, "/m/09x0r,/m/04rlf"\n')
    src = read_audioset_csv(tmp_path / "s.csv", tmp_path)
    from whisper_at_jax.labels import audioset_labels, mid_to_index

    m = mid_to_index()
    assert len(src.label_names) == 527 == len(audioset_labels())
    assert src.records[0].labels == tuple(sorted((m["/m/09x0r"], m["/m/04rlf"])))
    assert src.label_names[m["/m/09x0r"]] == "Speech"


def test_generic_csv_names_ids_and_unknown(tmp_path):
    for i in range(4):
        _write_tone(tmp_path / f"a{i}.wav", i)
    (tmp_path / "l.csv").write_text("path,labels\na0.wav,dog;music\na1.wav,2\na2.wav,cat\nmissing.wav,dog\na3.wav,\n")
    src = read_label_csv(tmp_path / "l.csv", labels=NAMES)
    assert {r.id: r.labels for r in src.records} == {"a0.wav": (1, 2), "a1.wav": (2,), "a3.wav": ()}
    assert src.report.unknown_labels == {"cat": 1} and src.report.dropped_no_labels == ["a2.wav"]
    assert src.report.missing == ["missing.wav"]
    with pytest.raises(DataError, match="strict"):
        read_label_csv(tmp_path / "l.csv", labels=NAMES, strict=True)
    # No class list: the distinct names become the classes, sorted.
    auto = read_label_csv(tmp_path / "l.csv")
    assert auto.label_names == ["2", "cat", "dog", "music"]
    with pytest.raises(DataError, match="'path' and 'labels'"):
        (tmp_path / "h.csv").write_text("file,y\na0.wav,1\n")
        read_label_csv(tmp_path / "h.csv")


# ---------------------------------------------------------------------------------------------------------------
# Bad data


def test_undecodable_clip_skipped_with_warning(tmp_path, clips, caplog):
    bad = tmp_path / "garbage.flac"
    bad.write_bytes(b"this is not audio" * 50)
    recs = list(clips[:4]) + [ClipRecord("garbage", str(bad), (1,))]
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.data"):
        rep = write_tfrecords(recs, tmp_path / "out", "train", 2, label_names=NAMES)
    assert rep.num_examples == 4 and [i for i, _ in rep.failed] == ["garbage"]
    assert "skipped undecodable clip 'garbage'" in caplog.text
    got, _ = _read_all(tmp_path / "out")
    assert sorted(got) == sorted(r.id for r in clips[:4])
    with pytest.raises(DataError, match="garbage.*cannot be decoded"):
        write_tfrecords(recs, tmp_path / "strict", "train", 2, label_names=NAMES, strict=True)
    assert not [f for f in os.listdir(tmp_path / "strict") if "tfrecord" in f]  # nothing left behind


def _raw_example(clip_id: str, audio: bytes, labels=(0,)) -> bytes:
    import tensorflow as tf

    f = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "audio": f(bytes_list=tf.train.BytesList(value=[audio])),
        "labels": f(int64_list=tf.train.Int64List(value=list(labels))),
        "id": f(bytes_list=tf.train.BytesList(value=[clip_id.encode()])),
        "duration": f(float_list=tf.train.FloatList(value=[1.0])),
        "sample_rate": f(int64_list=tf.train.Int64List(value=[SR])),
    })).SerializeToString()


def test_corrupt_record_in_foreign_shard(tmp_path, caplog):
    # A record whose audio bytes are not FLAC (as a foreign writer or a bad disk could leave): skipped, counted.
    import tensorflow as tf

    good = io.BytesIO()
    sf.write(good, (_tone(0, 0.5) * 32768).astype(np.int16), SR, format="FLAC", subtype="PCM_16")
    path = tmp_path / "x-train.tfrecord-00000-of-00001"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(_raw_example("ok1", good.getvalue()))
        w.write(_raw_example("broken", b"fLaC" + b"\x00garbage" * 20))
        w.write(_raw_example("ok2", good.getvalue(), (1,)))
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.data"):
        got, it = _read_all(str(tmp_path / "x-train.tfrecord-*"), n_classes=2, encoding="flac")
    assert sorted(got) == ["ok1", "ok2"]
    assert it.stats.bad_records == 1 and list(it.stats.bad_ids) == ["broken"]
    assert "skipping corrupt record broken" in caplog.text
    assert all(np.abs(a).max() > 0.1 for a, _ in got.values())  # no zero-filled stand-in
    with pytest.raises(DataError, match="corrupt record broken"):
        _read_all(str(tmp_path / "x-train.tfrecord-*"), n_classes=2, encoding="flac", strict=True)


def test_truncated_shard(tmp_path, flac_ds, caplog):
    import tensorflow as tf

    data = tmp_path / "ds"
    shutil.copytree(flac_ds, data)
    shard = data / "audio_clips-train.tfrecord-00001-of-00004"
    recs = list(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator())
    ids = [tf.train.Example.FromString(r).features.feature["id"].bytes_list.value[0].decode() for r in recs]
    # Cut the file inside its last record: the records before it stay whole (TFRecord framing: 12 + n + 4 bytes).
    keep = sum(12 + len(r) + 4 for r in recs[:-1])
    with open(shard, "r+b") as f:
        f.truncate(keep + 30)
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.data"):
        got, it = _read_all(data)
    everything, _ = _read_all(flac_ds)
    assert sorted(got) == sorted(set(everything) - {ids[-1]})
    assert it.stats.lost_records == 1 and it.stats.truncated_shards == [str(shard)]
    assert "cut short" in caplog.text
    for cid, (audio, labels) in got.items():
        np.testing.assert_array_equal(audio, everything[cid][0])  # real data, not zeros
        assert np.abs(audio).max() > 0.1 and labels.sum() >= 1
    # Training reads it too (no crash mid-epoch), every batch full of real audio.
    train = make_dataset(data, "train", 4, 8000, training=True, process_index=0, process_count=1)
    for _ in range(5):
        b = next(train)
        assert (np.abs(b["audio"]).max(axis=1) > 0.01).all()
    with pytest.raises(DataError, match="cut short"):
        make_dataset(data, "train", 4, 8000, process_index=0, process_count=1, strict=True)


def test_damaged_record_data_counted(tmp_path, flac_ds, caplog):
    # A flipped byte inside a record (same file size, so only reading finds it): TF's CRC check fails, the rest
    # of that shard cannot be resynchronised; the loss is counted and logged, the other shards read normally.
    import tensorflow as tf

    data = tmp_path / "ds"
    shutil.copytree(flac_ds, data)
    shard = data / "audio_clips-train.tfrecord-00002-of-00004"
    recs = list(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator())
    ids = [tf.train.Example.FromString(r).features.feature["id"].bytes_list.value[0].decode() for r in recs]
    raw = bytearray(shard.read_bytes())
    raw[12 + len(recs[0]) + 4 + 12 + 40] ^= 0xFF  # inside the second record's data
    shard.write_bytes(bytes(raw))
    everything, _ = _read_all(flac_ds)
    with caplog.at_level(logging.WARNING, logger="whisper_at_jax.data"):
        got, it = _read_all(data)
    assert sorted(got) == sorted(set(everything) - set(ids[1:]))
    assert it.stats.unreadable_records == len(ids) - 1
    assert "could not be read" in caplog.text
    for cid, (audio, _) in got.items():
        np.testing.assert_array_equal(audio, everything[cid][0])


def test_empty_split_and_bad_input_errors(tmp_path, flac_ds, clips):
    with pytest.raises(DataError, match="split 'eval' not in"):
        make_dataset(flac_ds, "eval", 4, 8000, process_index=0, process_count=1)
    with pytest.raises(DataError, match="no TFRecord shards"):
        make_dataset(tmp_path, "train", 4, 8000, process_index=0, process_count=1)
    (tmp_path / "e-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        make_dataset(str(tmp_path / "e-train.tfrecord-*"), "train", 4, 8000, process_index=0, process_count=1,
                     n_classes=3)
    with pytest.raises(DataError, match="fewer than batch_size 13"):
        make_dataset(flac_ds, "train", 13, 8000, process_index=0, process_count=1)
    with pytest.raises(DataError, match="no clips to write"):
        write_tfrecords([], tmp_path / "o", "eval", 1, label_names=NAMES, missing=["x"])
    with pytest.raises(DataError, match="label index 5 outside"):
        write_tfrecords([ClipRecord("a", clips[0].path, (5,))], tmp_path / "o", "eval", 1, label_names=NAMES)
    with pytest.raises(DataError, match="encoding"):
        write_tfrecords(clips, tmp_path / "o", "eval", 1, label_names=NAMES, encoding="mp3")
    with pytest.raises(DataError, match="already holds"):
        write_tfrecords(clips[:2], flac_ds, "other", 1, label_names=NAMES, encoding="pcm16")


# ---------------------------------------------------------------------------------------------------------------
# Hosts, resume, balanced sampling


def test_per_host_sharding_disjoint_and_covering(flac_ds):
    parts = []
    for host in range(2):
        it = make_dataset(flac_ds, "train", 2, 8000, training=False, repeat=False, process_index=host,
                          process_count=2)
        parts.append([i for b in it for i, m in zip(b["id"], b["mask"]) if m])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == [f"c{i:02d}" for i in range(12)]
    assert all(len(p) == len(set(p)) for p in parts)
    with pytest.raises(DataError, match="4 readable shard.*5 hosts"):
        make_dataset(flac_ds, "train", 2, 8000, process_index=0, process_count=5)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert list(a["id"]) == list(b["id"])
    np.testing.assert_array_equal(a["audio"], b["audio"])
    np.testing.assert_array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize("sampling", ["uniform", "balanced"])
def test_resume_equals_uninterrupted(flac_ds, sampling):
    # 12 clips on host 0 of 2 = 6 records, batch 2: 3 batches an epoch; 8 batches cross two epoch boundaries.
    # clip_samples 6000 < every clip, so random crops are exercised too.
    kw = dict(batch_size=2, clip_samples=6000, training=True, seed=7, process_index=0, process_count=2,
              sampling=sampling, shuffle_buffer=8)
    ref_it = make_dataset(flac_ds, "train", **kw)
    ref, states = [], []
    for _ in range(8):
        ref.append(next(ref_it))
        states.append(ref_it.state())
    # Mid-epoch and on an epoch boundary, by step count and by saved state (each rebuilds the pipeline: ~1 s).
    for k, how in ((1, "skip"), (5, "skip"), (3, "state"), (4, "state")):
        if how == "skip":
            resumed = make_dataset(flac_ds, "train", skip_batches=k, **kw)
        else:
            resumed = make_dataset(flac_ds, "train", state=states[k - 1], **kw)
        got = _take(resumed, 8 - k)
        for a, b in zip(ref[k:], got):
            _same(a, b)
        assert resumed.state() == states[-1]
    # A different seed gives a different order (the test above could not pass by ignoring the seed).
    other = _take(make_dataset(flac_ds, "train", **{**kw, "seed": 8}), 3)
    assert [list(b["id"]) for b in other] != [list(b["id"]) for b in ref[:3]]
    # The epochs of a run differ from each other (reshuffled).
    assert [i for b in ref[:3] for i in b["id"]] != [i for b in ref[3:6] for i in b["id"]]


def test_balanced_weights_formula():
    rng = np.random.default_rng(0)
    lists = [sorted(rng.choice(5, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(40)] + [[4]]
    # Direct transcription of whisper-at's gen_weight_file.py: count each label, weight = 1000 / (count + 0.01),
    # clip weight = sum over its labels.
    count = np.zeros(6)
    for labels in lists:
        for lab in labels:
            count[lab] += 1
    want = [sum(1000.0 / (count[lab] + 0.01) for lab in labels) for labels in lists]
    np.testing.assert_allclose(label_balanced_weights(lists, 6), want, rtol=1e-12)
    assert label_balanced_weights([[0], []], 2)[1] == 0.0
    with pytest.raises(DataError, match="outside"):
        label_balanced_weights([[7]], 3)


def test_balanced_sampling_draws(flac_ds, clips):
    it = make_dataset(flac_ds, "train", 3, 6000, training=True, seed=3, process_index=0, process_count=1,
                      sampling="balanced", shuffle_buffer=16)
    # One epoch's stream is exactly the epoch's draw (each record as many times as drawn).
    counts = it.epoch_counts(0)
    assert counts.sum() == 12
    ids = collections.Counter(i for b in _take(it, it.batches_per_epoch) for i in b["id"])
    order = _stream_order_ids(flac_ds)
    assert ids == collections.Counter({order[j]: int(c) for j, c in enumerate(counts) if c})
    # Over many epochs, each clip's draw frequency follows its weight (1000 / (count + 0.01) summed).
    w = label_balanced_weights([c.labels for c in sorted(clips, key=lambda c: order.index(c.id))], 3)
    freq = np.mean([it.epoch_counts(e) for e in range(3000)], axis=0) / 12
    # Tolerance: 3000 epochs x 12 draws; binomial standard error of each frequency is <= 0.0026; allow 4 sigma.
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.011)


def _stream_order_ids(data):
    """The ids in the host's record order (shard order, then record order): what epoch_counts indexes."""
    got = make_dataset(data, "train", 1, 10, training=False, repeat=False, process_index=0, process_count=1)
    return [b["id"][0] for b in got]


def test_to_global_single_process(flac_ds):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    n = len(jax.devices())
    it = make_dataset(flac_ds, "train", 4 * n, 4000, process_index=0, process_count=1)
    b = next(it)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    g = parallel.to_global(b, NamedSharding(mesh, PartitionSpec("data")))
    assert isinstance(g["audio"], jax.Array) and g["audio"].shape == (4 * n, 4000)
    np.testing.assert_array_equal(np.asarray(g["audio"]), b["audio"])
    np.testing.assert_array_equal(np.asarray(g["labels"]), b["labels"])
    assert list(g["id"]) == list(b["id"])


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_esc50_and_bad_input(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(4):
        rows.append(f"{i % 2 + 1}-{i}-A-{i % 2}.wav,{i % 2 + 1},{i % 2},{['dog', 'rain'][i % 2]},False,{i},A")
        _write_tone(audio / f"{i % 2 + 1}-{i}-A-{i % 2}.wav", i)
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    from whisper_at_jax.cli import make_tfrecords

    rc = make_tfrecords.main(["--format", "esc50", "--csv", str(tmp_path / "meta.csv"), "--audio-dir", str(audio),
                              "--out", str(tmp_path / "out"), "--split", "fold1", "--folds", "1",
                              "--num-shards", "2", "--encoding", "pcm16", "-q"])
    assert rc == 0
    got, _ = _read_all(tmp_path / "out", "fold1")
    assert sorted(got) == ["1-0-A-0", "1-2-A-0"]

    # Bad input: a clear message and exit status 2, no traceback (a real subprocess, as a user runs it).
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "make_tfrecords.py"), "--format", "audioset", "--csv",
         str(tmp_path / "nope.csv"), "--audio-dir", str(audio), "--out", str(tmp_path / "o2")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "error: AudioSet CSV not found" in proc.stderr and "Traceback" not in proc.stderr
