"""Transcribe audio files and tag their sounds (Whisper-AT) with one encoder pass per window.

    python scripts/infer.py AUDIO... [--model tiny.en] [--head PATH] [--language en] [--task transcribe]
        [--beam-size 5] [--temperature 0] [--mode sequential|batched] [--batch-size 8] [--dtype float32]
        [--output-dir .] [--output-format txt|json|srt|vtt|tsv|all] [--at-time-res 10] [--top-k 5]
        [--threshold 0.5] [--tags-only] [--word-timestamps] [--initial-prompt TEXT] ...

The decoding options are openai-whisper's CLI options, spelled with hyphens (``--initial-prompt``,
``--condition-on-previous-text False``, ``--no-speech-threshold none``, ...), with its defaults.

Prints each file's transcript (``[start --> end] text``) and, per tag row, the top tags with their
probabilities; writes the chosen output files. The model is loaded once and its compiled functions serve every
file. A file that cannot be read or transcribed is reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and every option's default in its help line."""


def _parser() -> argparse.ArgumentParser:
    from whisper_at_jax.outputs import FORMATS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    ap.add_argument("audio", nargs="*", help="audio file(s) (wav, flac, ogg, mp3, ...)")
    ap.add_argument("--model", default="tiny.en", help="tiny.en, base (installed); small, large-v2, turbo, ... "
                    "(downloaded once: --list-models); owner/repo (Hugging Face Hub); or a checkpoint path")
    ap.add_argument("--head", default=None, help="Whisper-AT head: audioset / audioset-low (official, downloaded "
                    "for --model NAME), {size}_ori.pth / {size}_low.pth, or our checkpoint")
    ap.add_argument("--list-models", action="store_true", help="print the model names, sizes and what is cached")
    ap.add_argument("--language", default=None, help="language code or name (default: detect; en for .en models)")
    ap.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                    help="transcribe in the spoken language, or translate to English (multilingual models)")
    ap.add_argument("--beam-size", type=int, default=None, help="beam search width (temperature 0 only)")
    ap.add_argument("--best-of", type=int, default=None, help="samples per window at temperature > 0")
    ap.add_argument("--temperature", type=float, default=0.0, help="first temperature")
    ap.add_argument("--temperature-increment-on-fallback", type=float, default=0.2,
                    help="fallback step up to 1.0 (use 0 for no fallback)")
    ap.add_argument("--patience", type=float, default=None, help="beam search patience (with --beam-size)")
    ap.add_argument("--length-penalty", type=float, default=None,
                    help="length penalty alpha in [0, 1] (default: rank by the mean log probability)")
    ap.add_argument("--suppress-tokens", default="-1",
                    help="comma-separated token ids to suppress; -1: the non-speech symbols (openai-whisper's "
                         "default); a list that starts with -1 is written --suppress-tokens=-1,ID")
    ap.add_argument("--initial-prompt", default=None, help="text to condition the first window on")
    ap.add_argument("--carry-initial-prompt", action="store_true",
                    help="put --initial-prompt before every window's previous text (sequential mode)")
    ap.add_argument("--condition-on-previous-text", type=_boolean, default=True, metavar="{True,False}",
                    help="give each window the previous window's text as a prompt (sequential mode)")
    ap.add_argument("--compression-ratio-threshold", type=_optional_float, default=2.4, metavar="X|none",
                    help="fall back to a higher temperature above this gzip compression ratio")
    ap.add_argument("--logprob-threshold", type=_optional_float, default=-1.0, metavar="X|none",
                    help="fall back to a higher temperature below this mean token log probability")
    ap.add_argument("--no-speech-threshold", type=_optional_float, default=0.6, metavar="X|none",
                    help="a window is silent above this no-speech probability (with --logprob-threshold)")
    ap.add_argument("--clip-timestamps", default="0",
                    help="start,end,start,end,... seconds to transcribe (sequential mode; a last start runs to "
                         "the end)")
    ap.add_argument("--mode", default="sequential", choices=["sequential", "batched"],
                    help="sequential: openai-whisper's long-form algorithm (each window seeks from the last); "
                         "batched: independent windows cut in pauses, decoded in batches (throughput)")
    ap.add_argument("--word-timestamps", action="store_true",
                    help="word-level timestamps (in the json output's segments; srt/vtt cues from words)")
    ap.add_argument("--hallucination-silence-threshold", type=float, default=None,
                    help="with --word-timestamps: skip silences longer than this (s) around likely hallucinations")
    ap.add_argument("--highlight-words", action="store_true",
                    help="with --word-timestamps: srt/vtt cues underline each word as it is spoken")
    ap.add_argument("--max-line-width", type=int, default=None,
                    help="with --word-timestamps: characters per subtitle line")
    ap.add_argument("--max-line-count", type=int, default=None,
                    help="with --word-timestamps and --max-line-width: lines per subtitle cue")
    ap.add_argument("--max-words-per-line", type=int, default=None,
                    help="with --word-timestamps: words per subtitle line (no effect with --max-line-width)")
    ap.add_argument("--prepend-punctuations", default=None,
                    help="with --word-timestamps: punctuation merged into the next word (default: openai-whisper's)")
    ap.add_argument("--append-punctuations", default=None,
                    help="with --word-timestamps: punctuation merged into the previous word "
                         "(default: openai-whisper's)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per batch (batched mode, tagging)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    ap.add_argument("--output-dir", "-o", default=".", help="where output files go")
    ap.add_argument("--output-format", "-f", default="txt", choices=FORMATS)
    ap.add_argument("--at-time-res", type=float, default=10.0, help="seconds per tag row (multiple of 0.4)")
    ap.add_argument("--top-k", type=int, default=5, help="tags shown per row")
    ap.add_argument("--threshold", type=float, default=None,
                    help="show tags with probability above this (default: whisper-at's logit > -1, p > 0.27)")
    ap.add_argument("--tags-only", action="store_true", help="sound tags only, no transcript (no decoder)")
    ap.add_argument("--no-tags", action="store_true", help="transcript only, even with a head")
    ap.add_argument("--quiet", action="store_true", help="do not print transcripts and tags")
    ap.add_argument("--overwrite", action="store_true",
                    help="redo files whose outputs already exist in --output-dir (default: skip them)")
    return ap


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked (exit status 2 and a message on a bad one)."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.list_models:
        return args
    if not args.audio:
        ap.error("the following arguments are required: audio")
    from whisper_at_jax.options import OptionError, check_options, flag

    try:  # the library's rules, before any model loads
        check_options(flag, **vars(args))
    except OptionError as e:
        ap.error(str(e))
    if args.tags_only and args.no_tags:
        ap.error("--tags-only and --no-tags exclude each other")
    return args


def _boolean(text: str) -> bool:
    """openai-whisper's CLI spelling of a boolean option: True or False."""
    value = {"true": True, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return value


def _optional_float(text: str) -> float | None:
    """A number, or ``none`` for no threshold (openai-whisper's CLI)."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def _temperatures(start: float, step: float) -> tuple[float, ...]:
    if step and step > 0:
        temps, t = [], start
        while t <= 1.0 + 1e-6:
            temps.append(round(t, 6))
            t += step
        return tuple(temps) or (start,)
    return (start,)


def _print_result(path: str, result: dict, args: argparse.Namespace) -> None:
    from whisper_at_jax.outputs import format_timestamp
    from whisper_at_jax.tagging import parse_at_label, sigmoid

    print(f"== {path}")
    for s in result.get("segments", []):
        print(f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] {s['text'].strip()}")
    if "audio_tag" in result:
        kw = {"p_threshold_prob": args.threshold} if args.threshold is not None else {}
        duration = result.get("duration")
        for row in parse_at_label(result, top_k=args.top_k, **kw):
            start, end = row["time"]["start"], row["time"]["end"]
            if duration is not None:
                end = min(end, duration)
            tags = ", ".join(f"{n} ({float(sigmoid(v)):.2f})" for n, v in row["audio tags"]) or "-"
            print(f"[{format_timestamp(start)} --> {format_timestamp(end)}] tags: {tags}")
    sys.stdout.flush()


def _input_problem(path: str) -> str | None:
    """Why ``path`` cannot be an audio input, or None."""
    if os.path.isdir(path):
        return f"{path}: is a directory (give the audio files in it, e.g. {os.path.join(path, '*.flac')})"
    if not os.path.exists(path):
        return f"{path}: no such file"
    if not os.access(path, os.R_OK):
        return f"{path}: not readable"
    return None


def _compile_cache() -> None:
    """Compiled programs persist across runs (the first run of a model/shape compiles for tens of seconds on CPU)."""
    import jax

    cache_dir = os.environ.get("WHISPER_AT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                                     "whisper_at_jax", "xla"))
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _load(args: argparse.Namespace):
    """(model, whether tags are made) or an exit status, with the error printed."""
    import whisper_at_jax as wat
    from whisper_at_jax.convert import CheckpointError
    from whisper_at_jax.options import TranscribeError
    from whisper_at_jax.tagging import at_time_res_steps

    t0 = time.perf_counter()
    try:
        model = wat.load_model(args.model, dtype=args.dtype, at_head=args.head or None)
        if args.tags_only:  # tags asked for: a name with an official AudioSet head gets it (the library's rule)
            model.attach_default_head()
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 2
    has_head = getattr(model, "head_params", None) is not None
    if args.tags_only and not has_head:
        print("error: --tags-only needs a Whisper-AT head (--head PATH, or --head audioset with a model name)",
              file=sys.stderr)
        return 2
    want_tags = has_head and not args.no_tags
    try:
        if want_tags:
            at_time_res_steps(args.at_time_res)
    except TranscribeError as e:
        print(f"error: --at-time-res: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output_dir, exist_ok=True)
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s"
          + (f" with head {model.head_config.get('mode')}" if has_head else " (no tagging head)"), file=sys.stderr)
    return model, want_tags


def _transcribe_options(args: argparse.Namespace, model) -> dict | int:
    """transcribe()'s keyword options from the command line, or an exit status (bad --language)."""
    if args.language:
        from whisper_at_jax.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

        if args.language.lower() not in LANGUAGES and args.language.lower() not in TO_LANGUAGE_CODE:
            print(f"error: unknown --language {args.language!r} (a code such as en, de, or a name)", file=sys.stderr)
            return 2
    options = {"task": args.task}
    if args.language and not model.is_multilingual and args.language.lower() not in ("en", "english"):
        # as openai-whisper's CLI: an English-only model transcribes English whatever was asked
        print(f"warning: {args.model} is English-only; ignoring --language {args.language}", file=sys.stderr)
        args.language = "en"
    if args.language:
        options["language"] = args.language
    if args.beam_size:
        options["beam_size"] = args.beam_size
    if args.best_of:
        options["best_of"] = args.best_of
    for name in ("patience", "length_penalty"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    options["suppress_tokens"] = args.suppress_tokens
    options.update({name: getattr(args, name) for name in (
        "initial_prompt", "carry_initial_prompt", "condition_on_previous_text", "compression_ratio_threshold",
        "logprob_threshold", "no_speech_threshold", "clip_timestamps")})
    for name in ("prepend_punctuations", "append_punctuations"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def _writer_options(args: argparse.Namespace) -> dict:
    options = {"top_k": args.top_k, "highlight_words": args.highlight_words, "max_line_width": args.max_line_width,
               "max_line_count": args.max_line_count, "max_words_per_line": args.max_words_per_line}
    if args.threshold is not None:
        import math

        options["p_threshold"] = math.log(args.threshold / (1.0 - args.threshold))
        options["tag_threshold"] = args.threshold
    return options


def _run(args: argparse.Namespace, model, want_tags: bool, options: dict) -> int:
    """Every input file not done yet: transcribed (or tagged), written, printed. The exit status."""
    from tqdm import tqdm

    from whisper_at_jax.audio import AudioError
    from whisper_at_jax.jobs import EXIT_RESUMABLE, StopRequest, split_done
    from whisper_at_jax.outputs import get_writer
    from whisper_at_jax.options import TranscribeError
    from whisper_at_jax.tagging import tag
    from whisper_at_jax.transcribe import transcribe

    writer = get_writer(args.output_format, args.output_dir)
    temperatures = _temperatures(args.temperature, args.temperature_increment_on_fallback)
    at_time_res = args.at_time_res if want_tags else None
    writer_options = _writer_options(args)
    failures = 0
    files, done = split_done(args.audio, args.output_dir, args.output_format, args.overwrite)
    if done:
        print(f"skipping {len(done)} file(s) whose outputs are in {args.output_dir} (--overwrite redoes them)",
              file=sys.stderr)
    bar = tqdm(files, unit="file", file=sys.stderr, disable=len(files) < 2)
    stop = StopRequest()  # SIGTERM: finish the current file, then stop (a re-run skips what is done)
    for path in bar:
        if stop.requested:
            break
        t = time.perf_counter()
        try:
            if args.tags_only:
                result = tag(model, path, at_time_res=args.at_time_res, batch_size=args.batch_size)
                result.setdefault("segments", [])
                result.setdefault("text", "")
            else:
                result = transcribe(model, path, temperature=temperatures, mode=args.mode,
                                    batch_size=args.batch_size, at_time_res=at_time_res,
                                    word_timestamps=args.word_timestamps,
                                    hallucination_silence_threshold=args.hallucination_silence_threshold,
                                    **options)
            writer(result, path, writer_options)
        except (AudioError, TranscribeError, ValueError, OSError) as e:
            failures += 1
            print(f"error: {e}" if path in str(e) else f"error: {path}: {e}", file=sys.stderr)
            continue
        if not args.quiet:
            if len(files) > 1:
                bar.clear()
            _print_result(path, result, args)
        print(f"{path}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    stop.close()
    if failures:
        print(f"{failures} of {len(files)} file(s) failed", file=sys.stderr)
    if stop.requested:
        print("stopped on SIGTERM; re-run the same command to do the rest", file=sys.stderr)
        return EXIT_RESUMABLE
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """The command line (``scripts/infer.py``, the ``whisper-at-jax`` console script): the exit status."""
    args = _parse_args(argv)
    if args.list_models:
        from whisper_at_jax.hub import list_models

        print("\n".join(list_models()))
        return 0
    bad_inputs = [_input_problem(path) for path in args.audio]
    for problem in filter(None, bad_inputs):  # before the model loads: a typo costs no load time
        print(f"error: {problem}", file=sys.stderr)
    if any(bad_inputs):
        return 2
    _compile_cache()
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    model, want_tags = loaded
    options = _transcribe_options(args, model)
    if isinstance(options, int):
        return options
    return _run(args, model, want_tags, options)
