"""Result writers in openai-whisper's CLI conventions (txt, json, srt, vtt, tsv), with Whisper-AT sound tags.

For a result without tags every writer produces exactly what ``whisper.utils.get_writer`` writes (same file
names ``<audio basename>.<ext>``, same text). With tags (a ``transcribe(..., at_time_res=...)`` or ``tag``
result):

- ``json`` carries the transcript and the tags: ``audio_tag`` as nested lists of raw logits (rows x classes) and
  ``audio_tags``, the readable ``parse_at_label`` rows with probabilities;
- ``srt`` / ``vtt`` caption sounds the way subtitles for the deaf and hard of hearing do: the tags of the tag rows
  that overlap a caption's time span are prefixed to it (``"[Dog] [Music] text"``), and a tag row that overlaps
  no speech caption becomes a cue of its own (``"[Dog barking]"``). Speech classes are left out (the caption
  already is the speech);
- ``txt`` and ``tsv`` stay transcript-only, as openai-whisper's.

Every file is written atomically: a temporary file in the output directory, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO

import numpy as np

#: AudioSet classes that are speech itself: a caption does not announce "[Speech]".
SPEECH_CLASSES = frozenset({
    "Speech", "Male speech, man speaking", "Female speech, woman speaking", "Child speech, kid speaking",
    "Conversation", "Narration, monologue", "Speech synthesizer", "Babbling",
})

#: Defaults for the tags shown in captions (probability threshold, at most this many per caption).
CAPTION_TAG_THRESHOLD = 0.5
CAPTION_TAG_TOP_K = 3


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """``[HH:]MM:SS.mmm`` as openai-whisper formats subtitle times."""
    if seconds < 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds}")
    milliseconds = round(seconds * 1000.0)
    hours = milliseconds // 3_600_000
    milliseconds -= hours * 3_600_000
    minutes = milliseconds // 60_000
    milliseconds -= minutes * 60_000
    seconds = milliseconds // 1_000
    milliseconds -= seconds * 1_000
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{seconds:02d}{decimal_marker}{milliseconds:03d}"


def _write_atomic(path: str, write: Callable[[TextIO], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------------------------
# Tags for captions

def caption_tag_spans(result: dict, options: Optional[dict] = None) -> list[tuple[float, float, list[str]]]:
    """``[(start, end, [name, ...]), ...]`` per tag row with tags to show (speech classes removed), rows clipped to
    the audio's duration when known. Empty when the result has no tags."""
    if "audio_tag" not in result or "at_time_res" not in result:
        return []
    from .transcribe import parse_at_label

    options = options or {}
    threshold = options.get("tag_threshold", CAPTION_TAG_THRESHOLD)
    top_k = options.get("tag_top_k", CAPTION_TAG_TOP_K)
    exclude = set(options.get("tag_exclude", SPEECH_CLASSES))
    rows = np.asarray(result["audio_tag"])
    if rows.size == 0:
        return []
    # consider a few more than top_k so that dropping speech classes still leaves up to top_k sounds
    parsed = parse_at_label(result, top_k=min(rows.shape[1], top_k + len(exclude)), p_threshold_prob=threshold)
    duration = result.get("duration")  # transcribe/tag put it beside the tags; rows are clipped to it
    spans = []
    for row in parsed:
        names = [n for n, _ in row["audio tags"] if n not in exclude][:top_k]
        if not names:
            continue
        start, end = row["time"]["start"], row["time"]["end"]
        if duration is not None:
            end = min(end, float(duration))
            if end <= start:
                continue
        spans.append((start, end, names))
    return spans


def _sdh(names: Sequence[str]) -> str:
    return " ".join(f"[{n}]" for n in names)


# ---------------------------------------------------------------------------------------------------------------
# Writers

class ResultWriter:
    """Writes ``<output_dir>/<audio basename>.<extension>``; call as ``writer(result, audio_path, options)``."""

    extension: str

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def output_path(self, audio_path: str) -> str:
        base = os.path.splitext(os.path.basename(audio_path))[0]
        return os.path.join(self.output_dir, base + "." + self.extension)

    def __call__(self, result: dict, audio_path: str, options: Optional[dict] = None, **kwargs: Any) -> str:
        path = self.output_path(audio_path)
        _write_atomic(path, lambda f: self.write_result(result, file=f, options=options, **kwargs))
        return path

    def write_result(self, result: dict, file: TextIO, options: Optional[dict] = None, **kwargs: Any) -> None:
        raise NotImplementedError


class WriteTXT(ResultWriter):
    extension = "txt"

    def write_result(self, result: dict, file: TextIO, options: Optional[dict] = None, **kwargs: Any) -> None:
        for segment in result.get("segments", []):
            print(segment["text"].strip(), file=file, flush=True)


class SubtitlesWriter(ResultWriter):
    always_include_hours: bool
    decimal_marker: str

    def format_timestamp(self, seconds: float) -> str:
        return format_timestamp(seconds, self.always_include_hours, self.decimal_marker)

    def iterate_result(self, result: dict, options: Optional[dict] = None, **kwargs: Any
                       ) -> Iterator[tuple[str, str, str]]:
        """(start, end, text) per cue: speech segments (tags of overlapping rows prefixed) and tag-only cues, in
        time order."""
        options = {**(options or {}), **kwargs}
        cues = []
        for segment in result.get("segments", []):
            text = segment["text"].strip().replace("-->", "->")
            cues.append([float(segment["start"]), float(segment["end"]), text, True])
        spans = caption_tag_spans(result, options)
        if spans:
            for cue in cues:
                s, e = cue[0], cue[1]
                names: list[str] = []
                for ts, te, tnames in spans:
                    # a zero-length segment still belongs to the row it falls in
                    if ts < max(e, s + 1e-9) and te > s:
                        names.extend(n for n in tnames if n not in names)
                if names:
                    cue[2] = (_sdh(names) + " " + cue[2]).strip()
            for ts, te, tnames in spans:
                if not any(c[3] and c[0] < te and max(c[1], c[0] + 1e-9) > ts for c in cues):
                    cues.append([ts, te, _sdh(tnames), False])
            cues.sort(key=lambda c: (c[0], c[1]))
        for s, e, text, _ in cues:
            yield self.format_timestamp(s), self.format_timestamp(e), text


class WriteVTT(SubtitlesWriter):
    extension = "vtt"
    always_include_hours = False
    decimal_marker = "."

    def write_result(self, result: dict, file: TextIO, options: Optional[dict] = None, **kwargs: Any) -> None:
        print("WEBVTT\n", file=file)
        for start, end, text in self.iterate_result(result, options, **kwargs):
            print(f"{start} --> {end}\n{text}\n", file=file, flush=True)


class WriteSRT(SubtitlesWriter):
    extension = "srt"
    always_include_hours = True
    decimal_marker = ","

    def write_result(self, result: dict, file: TextIO, options: Optional[dict] = None, **kwargs: Any) -> None:
        for i, (start, end, text) in enumerate(self.iterate_result(result, options, **kwargs), start=1):
            print(f"{i}\n{start} --> {end}\n{text}\n", file=file, flush=True)


class WriteTSV(ResultWriter):
    """``start<TAB>end<TAB>text`` with integer milliseconds, as openai-whisper."""

    extension = "tsv"

    def write_result(self, result: dict, file: TextIO, options: Optional[dict] = None, **kwargs: Any) -> None:
        print("start", "end", "text", sep="\t", file=file)
        for segment in result.get("segments", []):
            print(round(1000 * segment["start"]), file=file, end="\t")
            print(round(1000 * segment["end"]), file=file, end="\t")
            print(segment["text"].strip().replace("\t", " "), file=file, flush=True)


def jsonable(result: dict, options: Optional[dict] = None) -> dict:
    """The result with numpy values turned into JSON types and, when it has tags, the readable ``audio_tags``
    (``parse_at_label`` rows, each tag as ``{"label", "logit", "probability"}``)."""

    def conv(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, np.generic):
            return x.item()
        if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
            return np.asarray(x).tolist()
        return x

    out = conv(result)
    if "audio_tag" in result and "at_time_res" in result:
        from .transcribe import parse_at_label

        options = options or {}
        parsed = parse_at_label(result, top_k=options.get("top_k", 5), p_threshold=options.get("p_threshold", -1.0))
        out["audio_tags"] = [
            {"start": row["time"]["start"], "end": row["time"]["end"],
             "tags": [{"label": n, "logit": v, "probability": float(1.0 / (1.0 + np.exp(-v)))}
                      for n, v in row["audio tags"]]}
            for row in parsed]
    return out


class WriteJSON(ResultWriter):
    extension = "json"

    def write_result(self, result: dict, file: TextIO, options: Optional[dict] = None, **kwargs: Any) -> None:
        json.dump(jsonable(result, {**(options or {}), **kwargs}), file)


WRITERS = {"txt": WriteTXT, "vtt": WriteVTT, "srt": WriteSRT, "tsv": WriteTSV, "json": WriteJSON}
FORMATS = tuple(WRITERS) + ("all",)


def get_writer(output_format: str, output_dir: str) -> Callable[..., Any]:
    """A writer for ``output_format`` (txt, vtt, srt, tsv, json or all): ``writer(result, audio_path, options)``
    writes ``<output_dir>/<basename>.<ext>`` and returns the path (a list of paths for ``all``)."""
    if output_format not in FORMATS:
        raise ValueError(f"output format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if output_format == "all":
        writers = [w(output_dir) for w in WRITERS.values()]

        def write_all(result: dict, audio_path: str, options: Optional[dict] = None, **kwargs: Any) -> list[str]:
            return [w(result, audio_path, options, **kwargs) for w in writers]

        return write_all
    return WRITERS[output_format](output_dir)
