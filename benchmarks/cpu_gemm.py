"""fp32 matrix products of the tiny.en encoder on CPU: XLA (what our encoder runs) vs PyTorch (what openai-whisper
runs), GFLOP/s on the same operands.

    python benchmarks/cpu_gemm.py [--rounds 20] [--json out.json]
    taskset -c 0 python benchmarks/cpu_gemm.py     # one core

Most of the encoder's time is these products (tiny.en, 30-s window: ~37 GFLOP). The shapes are those of the CPU
encoder schedule (model.encode_per_item): a 500-row block through the q/k/v/out projections and the MLP, and
one head's 500-query block of attention (scores, then weights x values): ``jnp.dot`` at ``Precision.HIGHEST``
inside ``jax.jit`` against ``torch.matmul`` on the same operands. Product micro-benchmarks on 2 shared cores move by
10-20% from run to run (thread wake-ups, the other library's spinning threads); quote the ratios' range over runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import machine, markdown_table, write_json  # noqa: E402

REPEATS, WARM = 10, 3  # timed and untimed products per round and library

#: (product, M, K, N): x [M, K] @ w [K, N]
SHAPES = [
    ("q/k/v/out projection", 500, 384, 384),
    ("MLP up (mlp_0)", 500, 384, 1536),
    ("MLP down (mlp_2)", 500, 1536, 384),
    ("attention scores (one head)", 500, 64, 1500),
    ("attention weights x values (one head)", 500, 1500, 64),
]


def _time_products(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per product. Rounds alternate the libraries (load drifts hit both); within a round each runs
    WARM untimed products first, so neither is timed while waking its thread pool or while the other library's
    threads still spin after their last call, then REPEATS timed ones back to back."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(WARM):
                fn()
            t0 = time.perf_counter()
            for _ in range(REPEATS):
                fn()
            times[name].append((time.perf_counter() - t0) / REPEATS)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    rng = np.random.default_rng(0)
    rows = []
    for product, m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        a_j, b_j = jnp.asarray(a), jnp.asarray(b)
        a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
        t = _time_products({"xla": lambda: jax.block_until_ready(dot(a_j, b_j)),
                            "torch": lambda: torch.matmul(a_t, b_t)}, args.rounds)
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
