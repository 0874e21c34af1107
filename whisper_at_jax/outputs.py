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

A result with word timestamps gets openai-whisper's word-based srt / vtt cues (options ``max_line_width``,
``max_line_count``, ``max_words_per_line``, ``highlight_words``), tags prefixed as above.

Every file is written atomically: a temporary file in the output directory, then ``os.replace``.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO

import numpy as np

from .io_utils import atomic_write_bytes
from .tagging import parse_at_label

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
    buffer = io.StringIO()
    write(buffer)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Tags for captions

def caption_tag_spans(result: dict, options: Optional[dict] = None) -> list[tuple[float, float, list[str]]]:
    """``[(start, end, [name, ...]), ...]`` per tag row with tags to show (speech classes removed), rows clipped to
    the audio's duration when known. Empty when the result has no tags."""
    if "audio_tag" not in result or "at_time_res" not in result:
        return []
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
        segments = result.get("segments", [])
        for segment in segments:
            print(segment["text"].strip(), file=file, flush=True)
        if not segments:  # tags only: the file carries the tags, never an empty file over an earlier transcript
            for start, end, names in caption_tag_spans(result, options):
                print(f"[{format_timestamp(start)} --> {format_timestamp(end)}] {', '.join(names)}", file=file)


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
        segments = result.get("segments", [])
        if segments and "words" in segments[0]:
            cues = [[s, e, text, True] for s, e, text in self._word_cues(segments, options)]
        else:
            cues = [[float(seg["start"]), float(seg["end"]), seg["text"].strip().replace("-->", "->"), True]
                    for seg in segments]
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

    def _word_cues(self, segments: list[dict], options: dict) -> Iterator[tuple[float, float, str]]:
        """openai-whisper's cues for a result with word timestamps: lines of words (``max_line_width``
        characters, ``max_words_per_line`` words), ``max_line_count`` lines per cue (else one cue per segment), and
        with ``highlight_words`` one cue per word with that word underlined."""
        max_line_count = options.get("max_line_count")
        preserve_segments = max_line_count is None or options.get("max_line_width") is None
        max_line_width = options.get("max_line_width") or 1000
        max_words_per_line = options.get("max_words_per_line") or 1000

        def subtitles() -> Iterator[list[dict]]:
            line_len, line_count = 0, 1
            subtitle: list[dict] = []
            last = next((w["start"] for seg in segments for w in seg["words"]), segments[0]["start"])
            for segment in segments:
                for chunk in range(0, len(segment["words"]), max_words_per_line):
                    for i, original in enumerate(segment["words"][chunk:chunk + max_words_per_line]):
                        timing = dict(original)
                        long_pause = not preserve_segments and timing["start"] - last > 3.0
                        has_room = line_len + len(timing["word"]) <= max_line_width
                        seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                        if line_len > 0 and has_room and not long_pause and not seg_break:
                            line_len += len(timing["word"])
                        else:
                            timing["word"] = timing["word"].strip()
                            if (subtitle and max_line_count is not None and (long_pause or line_count >= max_line_count)
                                    or seg_break):
                                yield subtitle
                                subtitle, line_count = [], 1
                            elif line_len > 0:
                                line_count += 1
                                timing["word"] = "\n" + timing["word"]
                            line_len = len(timing["word"].strip())
                        subtitle.append(timing)
                        last = timing["start"]
            if subtitle:
                yield subtitle

        for subtitle in subtitles():
            text = "".join(w["word"] for w in subtitle)
            if not options.get("highlight_words"):
                yield float(subtitle[0]["start"]), float(subtitle[-1]["end"]), text
                continue
            last = float(subtitle[0]["start"])
            for i, word in enumerate(subtitle):
                start, end = float(word["start"]), float(word["end"])
                if self.format_timestamp(last) != self.format_timestamp(start):
                    yield last, start, text
                yield start, end, "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w["word"]) if j == i else w["word"]
                                          for j, w in enumerate(subtitle))
                last = end


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
        segments = result.get("segments", [])
        rows = [(seg["start"], seg["end"], seg["text"].strip().replace("\t", " ")) for seg in segments]
        if not segments:  # tags only: one row per tag span, the text in caption style ("[Dog] [Siren]")
            rows = [(start, end, _sdh(names)) for start, end, names in caption_tag_spans(result, options)]
        for start, end, text in rows:
            print(round(1000 * start), round(1000 * end), text, sep="\t", file=file, flush=True)


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
        options = options or {}
        parsed = parse_at_label(result, top_k=options.get("top_k", 5), p_threshold=options.get("p_threshold", -1.0))
        duration = result.get("duration")  # the last row ends with the audio, not at its grid line
        out["audio_tags"] = [
            {"start": row["time"]["start"],
             "end": row["time"]["end"] if duration is None else min(row["time"]["end"], float(duration)),
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
