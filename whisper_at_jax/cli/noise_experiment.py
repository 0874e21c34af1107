"""The paper's Figure 1 (upper) on real material: ASR word error rate and background-sound tagging accuracy
of one Whisper model as ESC-50 noise is mixed under real speech at SNRs from -20 to 20 dB.

    python scripts/noise_experiment.py --shared /work/shared --model tiny.en \
        --head runs/esc50_tiny.en/head_holdout1 --fold 1 --out runs/noise_tiny.en
    python scripts/noise_experiment.py --plot runs/noise_tiny.en [runs/noise_base] --figure docs/figure1.png

What is mixed, transcribed and scored: ``whisper_at_jax.experiments.noise``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisper_at_jax.experiments import noise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", help="folder holding data/esc50 and data/speech")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--head", help="head checkpoint trained with --fold held out")
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--n_clips", type=int, default=50, help="clips (one per class, class order)")
    ap.add_argument("--snrs", default=",".join(str(s) for s in noise.SNRS))
    ap.add_argument("--out", help="results folder (results.json)")
    ap.add_argument("--tag_only", action="store_true", help="tag the mixtures with the head only (no "
                    "transcription, no WER): a quick check of a head on sounds under real speech")
    ap.add_argument("--synth_check", action="store_true", help="tag make_demo.py's synthesised backgrounds under "
                    "speech with --model's head (default: the shipped one) and print the top classes")
    ap.add_argument("--plot", nargs="*", default=None, help="result folders to plot (no experiment is run)")
    ap.add_argument("--figure", default="docs/figure1.png")
    args = ap.parse_args(argv)
    if args.synth_check:
        res = noise.synth_check(args.model, args.head)
        if args.out:
            noise.save(Path(args.out), {"model": args.model, "head": str(args.head), "synth_check": res})
        return 0
    if args.plot:
        noise.plot([Path(p) for p in args.plot], Path(args.figure))
        return 0
    if not (args.shared and args.head and args.out):
        ap.error("--shared, --head and --out are required to run the experiment")
    try:
        setup = noise.Setup(args.model, args.head, args.fold, args.n_clips,
                            tuple(float(s) for s in args.snrs.split(",")), args.tag_only)
        res = noise.run(setup, Path(args.shared), Path(args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    noise.save(Path(args.out), res)
    print(noise.markdown(res))
    return 0
