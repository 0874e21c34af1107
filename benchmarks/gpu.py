"""GPU benchmark: Whisper encoder and Whisper-AT tagging throughput, ours (JAX) vs whisper-at PyTorch fp16.

    python benchmarks/gpu.py [--size large-v2] [--batch 16] [--mode tl_down_tr_512_1_8] [--json out.json]

Random weights of the named size (throughput does not depend on the values), 30-s windows of random log-mel.
Measured per implementation, warm, in interleaved rounds:
  - encoder: final states for a batch of windows;
  - tagging: encoder + 20-frame pooled taps of every block + head -> logits per 10-s segment (what `tag()` runs).
whisper-at's AudioEncoder pools batch item 0 only, so its tagging is timed at batch 1 (how its transcribe uses it)
and its encoder at the full batch. Results: audio-seconds per second and the ratio ours / PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import markdown_table, time_alternating, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large-v2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mode", default="tl_down_tr_512_1_8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from whisper_at_jax.heads import head_segments, make_head, pool_taps
    from whisper_at_jax.model import AudioEncoder, dims_for

    dims = dims_for(args.size)
    b, frames = args.batch, 3000
    seconds_per_window = 30.0
    rng = np.random.default_rng(0)
    mel_np = rng.standard_normal((b, dims.n_mels, frames)).astype(np.float32)
    mel = jax.device_put(mel_np)
    fns, notes = {}, {}

    enc_f32 = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
    enc_params = jax.jit(enc_f32.init)(jax.random.PRNGKey(0), mel[:1])["params"]
    head = make_head(args.mode, dims.n_audio_layer, dims.n_audio_state, 527)
    taps0 = jnp.zeros((1, dims.n_audio_layer, 25, dims.n_audio_state))
    head_params = head.init(jax.random.PRNGKey(1), taps0)["params"]

    for dt_name in args.dtypes.split(","):
        dt = getattr(jnp, dt_name)
        enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                           dims.n_audio_layer, dtype=dt)
        head_dt = make_head(args.mode, dims.n_audio_layer, dims.n_audio_state, 527, dtype=dt)
        encode = jax.jit(lambda p, m, enc=enc: enc.apply({"params": p}, m))

        def tag(p, hp, m, enc=enc, head_dt=head_dt):
            _, layers = enc.apply({"params": p}, m, True)
            taps = pool_taps(layers, 20)
            return head_segments(lambda t: head_dt.apply({"params": hp}, t), taps, 25)

        tag = jax.jit(tag)
        for name, fn in ((f"ours JAX {dt_name} encoder", lambda encode=encode: encode(enc_params, mel)),
                         (f"ours JAX {dt_name} tagging", lambda tag=tag: tag(enc_params, head_params, mel))):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            notes[name] = f"compile+first {time.perf_counter() - t0:.1f} s"
            print(name, notes[name], flush=True)
            fns[name] = (lambda fn=fn: jax.block_until_ready(fn()), b)

    if not args.skip_torch:
        import torch
        from whisper_at.model import ATModel, AudioEncoder as TorchEncoder

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        t_enc = TorchEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                             dims.n_audio_layer).to(dev).eval()  # fp32 params, fp16 input: openai-whisper's fp16 mode
        t_head = ATModel(527, dims.n_audio_layer, dims.n_audio_state, args.mode).to(dev).eval()
        t_mel = torch.from_numpy(mel_np).to(dev).half()

        def torch_encoder():
            with torch.inference_mode():
                t_enc(t_mel)
            sync()

        def torch_tagging():
            with torch.inference_mode():
                _, all_x = t_enc(t_mel[:1])
                t_head(all_x, time_resolution=10)
            sync()

        for name, fn, n in (("whisper-at PyTorch fp16 encoder", torch_encoder, b),
                            ("whisper-at PyTorch fp16 tagging (batch 1: it pools item 0 only)", torch_tagging, 1)):
            fn()
            fns[name] = (fn, n)

    times = time_alternating({k: v[0] for k, v in fns.items()}, rounds=args.rounds)
    rows = []
    for name, secs in times.items():
        n = fns[name][1]
        rows.append({"implementation": name, "batch": n, "seconds": f"{secs:.4f}",
                     "audio s / s": f"{n * seconds_per_window / secs:.0f}", "note": notes.get(name, "")})
    ref_enc = [r for r in rows if r["implementation"].startswith("whisper-at") and "encoder" in r["implementation"]]
    ref_tag = [r for r in rows if r["implementation"].startswith("whisper-at") and "tagging" in r["implementation"]]
    for r in rows:
        ref = ref_enc if "encoder" in r["implementation"] else ref_tag
        if ref:
            r["vs PyTorch"] = f"{float(r['audio s / s']) / float(ref[0]['audio s / s']):.2f}x throughput"
    dev_name = jax.devices()[0].device_kind
    print(f"{args.size} ({dims.n_audio_layer} layers, d={dims.n_audio_state}), head {args.mode}, device {dev_name}, "
          f"jax {jax.__version__}")
    print(markdown_table(rows, ["implementation", "batch", "seconds", "audio s / s", "vs PyTorch", "note"]))
    if args.json:
        write_json(args.json, {"device": dev_name, "size": args.size, "rows": rows})


if __name__ == "__main__":
    main()
