"""Convert Whisper weights (and optionally a Whisper-AT head) into a whisper-at-jax checkpoint directory.

    python scripts/convert.py SRC OUT [--head PTH] [--dtype float32|bfloat16|float16] [--tokenizer tokenizer.json]
                              [--overwrite]

SRC: a model name (``tiny.en`` / ``base`` from installed packages; ``small``, ``large-v3``, ``turbo``, ... downloaded
from OpenAI once and cached; ``owner/repo`` from the Hugging Face Hub), an OpenAI ``.pt``, a Hugging Face folder (safetensors, sharded or
``pytorch_model.bin``), a CTranslate2 folder or ``model.bin`` (fp32, fp16, int8, int8_float16, int16), or one of our
checkpoints (to attach a head or change the dtype). ``--head``: a released Whisper-AT head (``{size}_ori.pth``,
``{size}_low.pth``), one of our checkpoints holding a head, or ``audioset`` / ``audioset-low`` (the official
Whisper-AT AudioSet head for the model name SRC, downloaded once). OUT is written atomically: on any error nothing is left.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return 0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="model name (tiny.en, base, small, large-v3, turbo, ...; owner/repo on the Hugging "
                                "Face Hub) or path: .pt, Hugging Face / CTranslate2 folder, model.bin, or a "
                                "whisper-at-jax checkpoint")
    ap.add_argument("out", help="output checkpoint directory")
    ap.add_argument("--head", help="Whisper-AT head to attach: {size}_ori.pth / {size}_low.pth, our checkpoint, or "
                                   "audioset / audioset-low (the official head for the model name, downloaded)")
    ap.add_argument("--head-mode", help="head mode when the tensors cannot tell (mean_* vs last_*), e.g. last_tr_8")
    ap.add_argument("--labels", help="label list of the head (CSV index,mid,display_name / JSON / one name per line); "
                                     "default: the checkpoint's own, or AudioSet's 527 for a 527-class head")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="storage dtype of the params (compute dtype is chosen at load time)")
    ap.add_argument("--tokenizer", help="tokenizer.json to store (needed for an OpenAI .pt when openai-whisper's "
                                        "tiktoken files and the embedded models are not installed)")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once the new one is done)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return ap


def _read_head(args: argparse.Namespace, dims, log) -> tuple[dict, dict]:
    """--head (a file, our checkpoint, or audioset / audioset-low for the model name) for a model of ``dims``."""
    from flax.traverse_util import flatten_dict

    from whisper_at_jax.convert.at_head import load_at_head, read_labels

    t = time.perf_counter()
    log(f"reading head {args.head}")
    labels = read_labels(args.labels) if args.labels else None
    if args.head in ("audioset", "audioset-low"):
        from whisper_at_jax.api import official_head

        args.head = official_head(args.src, low_compute=args.head == "audioset-low")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head_params, head_config = load_at_head(args.head, dims, mode=args.head_mode, labels=labels)
    for w in caught:
        _log(f"  warning: {w.message}")
    n_head = sum(int(v.size) for v in flatten_dict(head_params).values())
    log(f"  head {head_config['mode']}: {n_head / 1e6:.2f} M params, {head_config['n_classes']} classes "
        f"[{time.perf_counter() - t:.1f} s]")
    return head_params, head_config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    log = (lambda m: None) if args.quiet else _log
    try:
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} already exists (pass --overwrite to replace it)")
        if (args.labels or args.head_mode) and not args.head:
            raise ValueError("--labels / --head-mode need --head")
        if args.tokenizer and not Path(args.tokenizer).is_file():
            raise ValueError(f"--tokenizer {args.tokenizer}: no such file")

        from whisper_at_jax.convert import progress, resolve, save_checkpoint
        from flax.traverse_util import flatten_dict

        progress.enable(not args.quiet)
        t0 = time.perf_counter()
        src = Path(args.src)
        log(f"reading {args.src}" + (f" ({_size(src) / 1e6:.1f} MB)" if src.exists() else ""))
        loaded = resolve(args.src)
        n_tensors = len(flatten_dict(loaded.params))
        n_params = sum(int(v.size) for v in flatten_dict(loaded.params).values())
        log(f"  {loaded.source}: {n_tensors} tensors, {n_params / 1e6:.1f} M params, dims {loaded.dims} "
            f"[{time.perf_counter() - t0:.1f} s]")

        head_params, head_config = loaded.head_params, loaded.head_config
        if args.head:
            head_params, head_config = _read_head(args, loaded.dims, log)

        tokenizer = args.tokenizer
        if tokenizer is None:
            tokenizer = loaded.tokenizer_file  # resolve() already looked for one if the checkpoint brought none
            if tokenizer is None:
                raise ValueError(f"{args.src} carries no tokenizer.json and {loaded.tokenizer_note}")
            if loaded.tokenizer_note:
                log(f"  tokenizer: {loaded.tokenizer_note}")

        t = time.perf_counter()
        log(f"writing {out} ({args.dtype})")
        save_checkpoint(out, loaded.dims, loaded.params, tokenizer, source=loaded.source, dtype=args.dtype,
                        whisper_meta=loaded.whisper_meta, head_params=head_params, head_config=head_config,
                        overwrite=args.overwrite)
        log(f"  {_size(out) / 1e6:.1f} MB [{time.perf_counter() - t:.1f} s]")
        print(f"wrote {out}: {loaded.source}" + (f" + head {head_config['mode']}" if head_params is not None else "")
              + f", {args.dtype}, {time.perf_counter() - t0:.1f} s")
        return 0
    except KeyboardInterrupt:
        _log("convert.py: interrupted; nothing written")
        return 130
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _log(f"convert.py: error: {msg}")
        return 1
