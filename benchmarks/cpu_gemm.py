"""fp32 matrix products of the tiny.en encoder on CPU: XLA (what our encoder runs) vs PyTorch (what openai-whisper
runs), GFLOP/s on the same operands.

    python benchmarks/cpu_gemm.py [--rounds 20] [--json out.json]
    taskset -c 0 python benchmarks/cpu_gemm.py     # one core

Most of the encoder's time is these products (tiny.en, 30-s window: ~37 GFLOP). The shapes are those of the CPU
encoder program (model._encoder_forward_cpu): a 500-row block through the q/k/v/out projections and the MLP, and
one head's 500-query block of attention (scores, then weights x values). Ten products per timed call: ``jnp.dot``
at ``Precision.HIGHEST`` in one jitted ``lax.map`` (as the encoder loops over blocks and heads) against
``torch.matmul`` on the same ten operands; interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import machine, markdown_table, time_alternating, write_json  # noqa: E402

REPEATS = 10  # products per timed call

#: (product, M, K, N): x [M, K] @ w [K, N]
SHAPES = [
    ("q/k/v/out projection", 500, 384, 384),
    ("MLP up (mlp_0)", 500, 384, 1536),
    ("MLP down (mlp_2)", 500, 1536, 384),
    ("attention scores (one head)", 500, 64, 1500),
    ("attention weights x values (one head)", 500, 1500, 64),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    # REPEATS products in one program (lax.map over operands, as the encoder loops over blocks and heads), so
    # neither dispatch nor a thread pool's wake-up is timed per product.
    dots = jax.jit(lambda a, b: jax.lax.map(lambda a1: jnp.dot(a1, b, precision=jax.lax.Precision.HIGHEST), a))
    rng = np.random.default_rng(0)
    rows = []
    for product, m, k, n in SHAPES:
        a = rng.standard_normal((REPEATS, m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        a_j, b_j = jnp.asarray(a), jnp.asarray(b)
        a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
        t = time_alternating({"xla": lambda: jax.block_until_ready(dots(a_j, b_j)),
                              "torch": lambda: [torch.matmul(a1, b_t) for a1 in a_t]},
                             rounds=args.rounds, warmup=2)
        t = {name: secs / REPEATS for name, secs in t.items()}
        gflop = 2 * m * k * n / 1e9
        rows.append({"product": product, "M x K x N": f"{m} x {k} x {n}",
                     "XLA GFLOP/s": f"{gflop / t['xla']:.0f}", "PyTorch GFLOP/s": f"{gflop / t['torch']:.0f}",
                     "XLA / PyTorch time": f"{t['xla'] / t['torch']:.2f}x"})
    affinity = len(os.sched_getaffinity(0))
    print(f"fp32 products, {machine()}, {affinity} cores usable, jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {args.rounds} rounds")
    print(markdown_table(rows, list(rows[0])))
    if args.json:
        write_json(args.json, {"machine": machine(), "cores": affinity, "rows": rows})


if __name__ == "__main__":
    main()
