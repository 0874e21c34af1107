"""Whisper-AT's training augmentations on pooled taps, in JAX with explicit PRNG keys (jit- and shard-friendly).

Taps are ``[B, L, S, D]`` (batch, layers, pooled steps, width); labels are multi-hot ``[B, C]``.

* Mixup (reference ``dataloader_feat.py``, AST style): each example is mixed with probability ``p`` with a
  partner, ``x = lam * x_a + (1 - lam) * x_b``, ``lam ~ Beta(alpha, alpha)``. The reference draws the partner
  uniformly from the whole dataset; here example ``i``'s partner is example ``i + 1`` of the (global) batch, the
  last's the first (a roll by one). The trainer's batches are random draws in random order (balanced or shuffled
  sampling), so the partner is a random example, distributed as the reference's, and (in a batch of two or more)
  never the example itself. Why a roll and not a random permutation of the batch: on a mesh the batch is sharded, and a roll moves one row
  from each chip to its neighbour, while a permutation gathers the whole global batch onto every chip (per-chip
  memory then grows with the global batch: the compiler refused large-v2 at a global batch of 4096 on a v5e-256);
  and a roll does not depend on the number of chips, so a run gives the same result on any slice.
* Label smoothing (``eps``), the reference formula exactly: an unmixed example gets ``1 - eps`` on its positives
  and ``eps / C`` elsewhere; a mixed one gets ``eps / C + (1 - eps) * (lam * y_a + (1 - lam) * y_b)`` (additive).
* Time masking (torchaudio ``TimeMasking(10)`` as the reference applies it per example): width
  ``floor(U * w)``, start ``floor(U' * (S - U * w))``, the same span zeroed for every layer and channel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def sample_beta(key: Array, alpha: float, shape: tuple[int, ...]) -> Array:
    """Beta(alpha, alpha) samples.

    For a whole-number ``alpha`` (the reference's 10) it is X / (X + Y) with X, Y ~ Gamma(alpha) each drawn as
    minus the sum of ``alpha`` log-uniforms: exact, and it avoids ``jax.random.beta``'s rejection-sampling loop,
    which costs seconds of XLA compile time on a CPU for every train step that contains it (docs/benchmarks.md,
    "Tried and not kept").
    """
    if float(alpha) == int(alpha) and 1 <= int(alpha) <= 64:
        n = 2 * int(alpha) * math.prod(shape)
        # Drawn 1-D and reshaped: an N-d threefry draw compiles slower on XLA:CPU (docs/benchmarks.md).
        u = jax.random.uniform(key, (n,), minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
        g = -jnp.sum(jnp.log(u.reshape((2, int(alpha)) + tuple(shape))), axis=1)
        return g[0] / (g[0] + g[1])
    return jax.random.beta(key, alpha, alpha, shape)


def smooth_labels(labels: Array, eps: float) -> Array:
    """Unmixed targets: ``1 - eps`` on positives, ``eps / C`` elsewhere (not ``y(1-eps) + eps/C``)."""
    c = labels.shape[-1]
    return jnp.where(labels > 0.5, 1.0 - eps, eps / c).astype(jnp.float32)


def partner(x: Array) -> Array:
    """Each example's mixup partner: row ``i`` gets row ``i + 1`` (the last row gets the first)."""
    return jnp.roll(x, -1, axis=0)


def mixup(key: Array, taps: Array, labels: Array, *, p: float = 0.5, alpha: float = 10.0,
          eps: float = 0.0) -> tuple[Array, Array]:
    """Per-example mixup with the next example of the batch as partner, then the reference's label smoothing.

    Returns (mixed taps in ``taps.dtype``, float32 targets [B, C]). ``p=0`` gives the taps unchanged and
    :func:`smooth_labels` targets.
    """
    b, c = labels.shape
    # three keys, the first unused (the partner is a roll), so the mixing and lambda draws keep their keys
    _, k_use, k_lam = jax.random.split(key, 3)
    use = jax.random.uniform(k_use, (b,)) < p
    lam = sample_beta(k_lam, alpha, (b,)).astype(jnp.float32)
    lam = jnp.where(use, lam, 1.0)
    lam_x = lam.reshape((b,) + (1,) * (taps.ndim - 1))
    xf = taps.astype(jnp.float32)
    mixed = (lam_x * xf + (1.0 - lam_x) * partner(xf)).astype(taps.dtype)
    y_a = labels.astype(jnp.float32)
    y_b = partner(y_a)
    mixed_t = eps / c + (1.0 - eps) * (lam[:, None] * y_a + (1.0 - lam[:, None]) * y_b)
    targets = jnp.where(use[:, None], mixed_t, smooth_labels(y_a, eps))
    return mixed, targets


def time_mask(key: Array, taps: Array, max_width: int = 10, axis: int = 2) -> Array:
    """Zero one random span of ``floor(U * max_width)`` steps per example along ``axis`` (all layers/dims)."""
    if max_width <= 0:
        return taps
    b, s = taps.shape[0], taps.shape[axis]
    k_w, k_s = jax.random.split(key)
    value = jax.random.uniform(k_w, (b,)) * max_width
    start = jnp.floor(jax.random.uniform(k_s, (b,)) * (s - value))
    stop = start + jnp.floor(value)
    pos = jnp.arange(s, dtype=jnp.float32)
    keep = ~((pos[None, :] >= start[:, None]) & (pos[None, :] < stop[:, None]))  # [B, S]
    shape = [1] * taps.ndim
    shape[0], shape[axis] = b, s
    return taps * keep.reshape(shape).astype(taps.dtype)


def augment(key: Array, taps: Array, labels: Array, *, mixup_p: float = 0.5, mixup_alpha: float = 10.0,
            label_smoothing: float = 0.1, time_mask_width: int = 10) -> tuple[Array, Array]:
    """The reference's training augmentation in its order: mixup (+ smoothing), then time masking."""
    k_mix, k_mask = jax.random.split(key)
    taps, targets = mixup(k_mix, taps, labels, p=mixup_p, alpha=mixup_alpha, eps=label_smoothing)
    taps = time_mask(k_mask, taps, time_mask_width)
    return taps, targets
