"""Make the project's demo file: espeak-ng speech over a background sound synthesised here.

    python scripts/make_demo.py                      # -> whisper_at_jax/assets/demo.flac
    python scripts/make_demo.py --background church_bells --out /tmp/demo.flac

The speech and the backgrounds are made by ``whisper_at_jax.experiments.sounds`` (no recording from elsewhere; see
its docstring). Needs ``espeak-ng`` on PATH (Debian: ``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whisper_at_jax.audio import SAMPLE_RATE
from whisper_at_jax.experiments import sounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--background", default=sounds.DEMO_BACKGROUND, choices=sorted(sounds.BACKGROUNDS))
    ap.add_argument("--snr", type=float, default=6.0, help="speech-to-background ratio in dB")
    ap.add_argument("--text", default=sounds.DEMO_TEXT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(sounds.DEMO_PATH))
    args = ap.parse_args(argv)
    try:
        audio = sounds.make_demo(args.background, args.snr, args.text, args.seed)
    except (sounds.SynthError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    sounds.write_flac(out, audio)
    print(f"wrote {out}: {len(audio) / SAMPLE_RATE:.1f} s, {out.stat().st_size / 1024:.0f} KB")
    return 0
