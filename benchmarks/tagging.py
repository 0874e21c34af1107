"""Whisper-AT cost on this CPU, tiny.en + a TL-TR head (random weights: the cost does not depend on them).

    python benchmarks/tagging.py [--audio FILE] [--rounds 3] [--json out.json]

Measured in one process, interleaved rounds, warm:
  - ours: transcribe alone vs transcribe with ``at_time_res=10`` (goal: ratio <= 1.05), and ``tag()`` alone;
  - whisper-at 0.5 (PyTorch): its ``transcribe(..., at_time_res=10)`` on the same weights and head.
``tag()`` throughput is quoted in audio-seconds per second against whisper-at's transcribe-with-tags, the only way
that package produces tags. Default audio: the project's speech sample repeated to ~95 s with pauses.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import machine, markdown_table, peak_rss_mb, time_alternating, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf
    import torch
    from whisper_at.model import ModelDimensions as ATDims
    from whisper_at.model import Whisper as ATWhisper

    import whisper_at_jax as wat
    from whisper_at_jax.api import WhisperModel
    from whisper_at_jax.audio import SAMPLE_RATE
    from whisper_at_jax.convert import params_to_state_dict
    from whisper_at_jax.heads import head_params_from_torch

    if args.audio:
        audio = wat.load_audio(args.audio)
    else:
        speech, _ = sf.read(os.path.join(ROOT, "tests", "data", "speech_en.flac"), dtype="float32")
        audio = np.concatenate([np.concatenate([speech, np.zeros(8000, np.float32)]) for _ in range(7)])
    duration = len(audio) / SAMPLE_RATE

    base = wat.load_model("tiny.en", at_head=False)
    torch.manual_seed(0)
    ref = ATWhisper(ATDims(**base.dims.to_dict()), at_low_compute=False)
    head_sd = {k: v.numpy() for k, v in ref.at_model.state_dict().items()}
    sd = {k: torch.from_numpy(v.copy()) for k, v in params_to_state_dict(base.params).items()}
    sd.update({"at_model." + k: torch.from_numpy(v) for k, v in head_sd.items()})
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    labels = [[i, "", f"class_{i}"] for i in range(527)]
    model = WhisperModel(base.dims, base.params, tokenizer_file=base.tokenizer_file,
                         head_params=head_params_from_torch(head_sd, "tl_tr_1_8"),
                         head_config={"mode": "tl_tr_1_8", "n_classes": 527, "labels": labels})

    import whisper_at

    fns = {
        "ours transcribe": lambda: model.transcribe(audio, temperature=0.0),
        "ours transcribe + tags (at_time_res=10)": lambda: model.transcribe(audio, temperature=0.0, at_time_res=10),
        "ours tag() only": lambda: model.tag(audio, at_time_res=10),
    }
    if not args.skip_reference:
        fns["whisper-at 0.5 transcribe + tags"] = lambda: whisper_at.transcribe(
            ref, audio, at_time_res=10, temperature=0.0, fp16=False, language="en")
    t = time_alternating(fns, rounds=args.rounds)
    rows = [{"implementation": k, "seconds": f"{v:.2f}", "audio s / s": f"{duration / v:.1f}"} for k, v in t.items()]
    ratio = t["ours transcribe + tags (at_time_res=10)"] / t["ours transcribe"]
    summary = {"tags overhead (ours, transcribe+tags / transcribe)": f"{ratio:.3f}"}
    if "whisper-at 0.5 transcribe + tags" in t:
        summary["tag() throughput vs whisper-at transcribe+tags"] = \
            f"{t['whisper-at 0.5 transcribe + tags'] / t['ours tag() only']:.1f}x"
    print(f"tiny.en + TL-TR (random), {duration:.0f} s of audio, {machine()}, peak RSS {peak_rss_mb():.0f} MB")
    print(markdown_table(rows, ["implementation", "seconds", "audio s / s"]))
    for k, v in summary.items():
        print(f"- {k}: {v}")
    if args.json:
        write_json(args.json, {"machine": machine(), "duration_s": duration, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
