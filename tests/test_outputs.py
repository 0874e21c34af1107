"""Writers: byte-equal to openai-whisper's ``get_writer`` on the same result; tags in json and SDH captions;
atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def result(tiny_en, speech):
    """A real transcript (tiny.en on the project's speech clip), plus a copy shifted past one hour so the
    hour field of the timestamps is exercised."""
    from whisper_at_jax.transcribe import transcribe

    r = transcribe(tiny_en, speech)
    late = [dict(s, id=len(r["segments"]) + i, start=s["start"] + 3725.25, end=s["end"] + 3725.25,
                 text=s["text"] + "\tand a tab --> arrow")
            for i, s in enumerate(r["segments"])]
    return dict(r, segments=r["segments"] + late)


@pytest.mark.parametrize("fmt", ["txt", "vtt", "srt", "tsv", "json", "all"])
@pytest.mark.slow
def test_same_files_as_openai_whisper(result, fmt, tmp_path):
    from whisper.utils import get_writer as openai_writer

    from whisper_at_jax.outputs import get_writer

    (tmp_path / "ref").mkdir()
    (tmp_path / "ours").mkdir()
    audio_path = "/some/where/My talk.v2.flac"
    openai_writer(fmt, str(tmp_path / "ref"))(result, audio_path)
    get_writer(fmt, str(tmp_path / "ours"))(result, audio_path)
    ref_files = sorted(os.listdir(tmp_path / "ref"))
    assert ref_files == sorted(os.listdir(tmp_path / "ours"))
    assert ref_files and all(f.startswith("My talk.v2.") for f in ref_files)
    for name in ref_files:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


@pytest.fixture(scope="module")
def word_result(tiny_en, speech):
    """A transcript with word timestamps over two windows (the speech, a pause, the speech again)."""
    audio = np.concatenate([speech, np.zeros(16000 * 2, np.float32), speech, speech])
    return tiny_en.transcribe(audio, word_timestamps=True, temperature=0.0)


@pytest.mark.parametrize("options", [
    {}, {"highlight_words": True}, {"max_line_width": 24, "max_line_count": 2}, {"max_line_width": 24},
    {"max_words_per_line": 3}, {"max_line_width": 30, "max_line_count": 1, "highlight_words": True}])
@pytest.mark.slow
def test_word_subtitles_same_as_openai_whisper(word_result, options, tmp_path):
    """With word timestamps, srt/vtt cues are built from the words (line width / count, words per line,
    highlighting), byte-equal to openai-whisper's writers on the same result and options."""
    from whisper.utils import get_writer as openai_writer

    from whisper_at_jax.outputs import get_writer

    assert len({s["seek"] for s in word_result["segments"]}) >= 2
    for fmt in ("srt", "vtt"):
        (tmp_path / fmt / "ref").mkdir(parents=True)
        (tmp_path / fmt / "ours").mkdir()
        openai_writer(fmt, str(tmp_path / fmt / "ref"))(word_result, "talk.flac", dict(options))
        get_writer(fmt, str(tmp_path / fmt / "ours"))(word_result, "talk.flac", dict(options))
        ref = (tmp_path / fmt / "ref" / f"talk.{fmt}").read_text()
        assert (tmp_path / fmt / "ours" / f"talk.{fmt}").read_text() == ref
        if options.get("highlight_words"):
            assert "<u>" in ref


def _tagged(result: dict) -> dict:
    """The transcript with a tag matrix: 10-s rows; logits chosen so row 0 has Dog (and Speech), row 1 only
    speech, row 2 Music, row 3 (past the speech) Music and Bird."""
    from whisper_at_jax.labels import audioset_labels

    names = [lab[2] for lab in audioset_labels()]
    idx = {n: names.index(n) for n in ("Speech", "Dog", "Music", "Bird")}
    segments = [s for s in result["segments"] if s["end"] < 100]
    tags = np.full((4, 527), -6.0, np.float32)
    tags[:, idx["Speech"]] = 4.0
    tags[0, idx["Dog"]] = 2.0
    tags[2, idx["Music"]] = 3.0
    tags[3, idx["Music"]] = 1.0
    tags[3, idx["Bird"]] = 0.5
    tags[3, idx["Speech"]] = -3.0
    return dict(result, segments=segments, at_time_res=10, audio_tag=tags, duration=36.5)


def test_sdh_captions(result, tmp_path):
    from whisper_at_jax.outputs import get_writer

    r = _tagged(result)
    get_writer("srt", str(tmp_path))(r, "clip.wav")
    get_writer("vtt", str(tmp_path))(r, "clip.wav")
    srt = (tmp_path / "clip.srt").read_text()
    vtt = (tmp_path / "clip.vtt").read_text()
    cues = [c.split("\n") for c in srt.strip().split("\n\n")]
    texts = [c[2] for c in cues]
    segs = r["segments"]
    # the speech runs 0 - ~13.6 s: captions overlapping row 0 (0-10 s) carry [Dog]; none says [Speech]
    for seg, text in zip(segs, texts):
        assert text.endswith(seg["text"].strip())
        if seg["start"] < 10:
            assert text.startswith("[Dog] ")
        assert "[Speech]" not in text
    # rows 2 and 3 overlap no speech: their tags are cues of their own, the last clipped to the 36.5-s duration
    assert texts[len(segs):] == ["[Music]", "[Music] [Bird]"]
    assert cues[-2][1] == "00:00:20,000 --> 00:00:30,000"
    assert cues[-1][1] == "00:00:30,000 --> 00:00:36,500"
    assert [c[0] for c in cues] == [str(i) for i in range(1, len(cues) + 1)]
    assert vtt.startswith("WEBVTT\n\n") and "00:30.000 --> 00:36.500\n[Music] [Bird]" in vtt


def test_json_carries_transcript_and_tags(result, tmp_path):
    from whisper_at_jax.outputs import get_writer
    from whisper_at_jax.tagging import parse_at_label

    r = _tagged(result)
    get_writer("json", str(tmp_path))(r, "clip.wav")
    data = json.loads((tmp_path / "clip.json").read_text())
    assert data["text"] == r["text"] and len(data["segments"]) == len(r["segments"])
    assert np.array_equal(np.asarray(data["audio_tag"], np.float32), r["audio_tag"])
    assert data["at_time_res"] == 10
    parsed = parse_at_label(r)
    assert [[t["label"] for t in row["tags"]] for row in data["audio_tags"]] == \
        [[n for n, _ in row["audio tags"]] for row in parsed]
    first = data["audio_tags"][0]["tags"][0]
    assert first["label"] == "Speech" and first["probability"] == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_writes_are_atomic(result, tmp_path, monkeypatch):
    from whisper_at_jax import outputs

    writer = outputs.get_writer("txt", str(tmp_path))
    path = writer(result, "a.wav")
    before = open(path).read()

    def boom(self, result, file, options=None, **kw):
        file.write("partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs.WriteTXT, "write_result", boom)
    with pytest.raises(RuntimeError):
        writer(result, "a.wav")
    assert open(path).read() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["a.txt"]  # and no temporary file is left behind


def test_bad_format(tmp_path):
    from whisper_at_jax.outputs import format_timestamp, get_writer

    with pytest.raises(ValueError, match="output format"):
        get_writer("docx", str(tmp_path))
    with pytest.raises(ValueError, match="non-negative"):
        format_timestamp(-1.0)
