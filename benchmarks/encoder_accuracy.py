"""Encoder accuracy: how far ours and openai-whisper's PyTorch fp32 are from a float64 forward, per block and final.

    python benchmarks/encoder_accuracy.py [--model base] [--esc50 ../shared/data/esc50] [--clips 3]

The same real weights run in openai-whisper's encoder in float64 (its LayerNorm's fp32 cast bypassed for that run);
both fp32 implementations are judged against it on the project's speech sample, the sample reversed, the sample
with noise, and optionally the first ESC-50 clips. Per block, each block is also fed the float64 forward's previous
output, which isolates the error a block adds from the error it inherits. docs/design.md ("Parity tolerances")
quotes this script's numbers.
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import markdown_table  # noqa: E402


def _inputs(esc50: str | None, clips: int) -> dict[str, np.ndarray]:
    import soundfile as sf

    speech = sf.read(os.path.join(ROOT, "tests", "data", "speech_en.flac"), dtype="float32")[0]
    noise = 0.05 * np.random.default_rng(0).standard_normal(speech.shape).astype(np.float32)
    out = {"speech": speech, "speech reversed": speech[::-1].copy(), "speech + noise": speech + noise}
    if esc50:
        for path in sorted(glob.glob(os.path.join(esc50, "**", "*.flac"), recursive=True))[:clips]:
            out[os.path.basename(path)] = sf.read(path, dtype="float32")[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--esc50", default=None, help="ESC-50 folder (../shared/data/esc50); its first --clips clips")
    ap.add_argument("--clips", type=int, default=3)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import whisper

    import whisper_at_jax as wat
    from whisper_at_jax import model as M
    from whisper_at_jax.convert.openai import float64_layer_norm, openai_encoder_layers

    model = wat.load_model(args.model, at_head=False)
    ref = model.to_openai_whisper()
    ref64 = copy.deepcopy(ref).double()
    params, n_head = model.params["encoder"], model.dims.n_audio_head
    pieces = M.encoder_pieces(params, n_head, jnp.float32)  # the CPU schedule's pieces, one block at a time
    block_fns = [jax.jit(lambda x, b=b: pieces.block_mlp(b, pieces.block_attention(b, x, M._attend_per_head)))
                 for b in range(model.dims.n_audio_layer)]
    finals, per_block = [], []
    for name, audio in _inputs(args.esc50, args.clips).items():
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), n_mels=model.dims.n_mels)[None]
        final, _ = model.encode(mel.numpy(), return_layers=True)
        _, theirs_final = openai_encoder_layers(ref, mel)
        with float64_layer_norm(), torch.no_grad():
            layers64, final64 = openai_encoder_layers(ref64, mel.double())
            iso64 = [ref64.encoder.blocks[b](torch.from_numpy(layers64[b - 1].astype(np.float32)).double()).numpy()
                     for b in range(1, len(layers64))] if name == "speech" else []
        finals.append({"input": name, "ours": f"{np.abs(np.asarray(final) - final64).max():.2e}",
                       "openai-whisper fp32": f"{np.abs(theirs_final - final64).max():.2e}",
                       "ours vs openai-whisper": f"{np.abs(np.asarray(final) - theirs_final).max():.2e}"})
        if name == "speech":
            for b in range(1, len(layers64)):
                x_in = layers64[b - 1].astype(np.float32)
                with torch.no_grad():
                    theirs = ref.encoder.blocks[b](torch.from_numpy(x_in)).numpy()
                ours = np.asarray(block_fns[b](jnp.asarray(x_in)))
                per_block.append({"block": b, "max magnitude": f"{np.abs(iso64[b - 1]).max():.0f}",
                                  "ours": f"{np.abs(ours - iso64[b - 1]).max():.2e}",
                                  "openai-whisper fp32": f"{np.abs(theirs - iso64[b - 1]).max():.2e}"})
    print(f"{args.model}: final encoder states, max abs distance from the float64 forward")
    print(markdown_table(finals, ["input", "ours", "openai-whisper fp32", "ours vs openai-whisper"]))
    print(f"\n{args.model}, speech input: each block fed the float64 forward's previous output, max abs distance of its "
          "output from float64")
    print(markdown_table(per_block, ["block", "max magnitude", "ours", "openai-whisper fp32"]))


if __name__ == "__main__":
    main()
