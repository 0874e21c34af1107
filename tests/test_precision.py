"""float32 compute must mean float32 matmuls on GPUs too.

XLA's DEFAULT precision runs float32 dots as TF32 on NVIDIA GPUs (one bf16 pass on TPUs). On an H200 that moved
tiny.en's final encoder states by 0.34 (max magnitude 13) from the CPU's, where HIGHEST gives 6.5e-4
(benchmarks/gpu_asr.py, docs/benchmarks.md). CI has no GPU, so these tests lower the programs for CUDA (no device
needed) and read the precision of every dot and convolution in the StableHLO: HIGHEST in float32, DEFAULT in
bfloat16 (where speed is the point).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from whisper_at_jax import model as M
from whisper_at_jax.heads import head_param_shapes, make_head

DIMS = M.dims_for("tiny.en")


def _matmul_lines(fn, *args) -> list[str]:
    text = jax.export.export(jax.jit(fn), platforms=["cuda"])(*args).mlir_module()
    return [line for line in text.splitlines() if re.search(r"stablehlo\.(dot_general|convolution)", line)]


def _check(lines: list[str], dtype) -> None:
    assert lines, "no matmul found: the program changed shape, fix the test"
    for line in lines:  # both operands' precision: "[HIGHEST, HIGHEST]" or two "#stablehlo<precision HIGHEST>"
        assert line.count("HIGHEST") == (2 if dtype == jnp.float32 else 0), line[-200:]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.slow
def test_encoder_and_decoder_precision(dtype):
    model = M.Whisper(DIMS, dtype=dtype)
    params = M.param_shapes(DIMS)
    mel = jax.ShapeDtypeStruct((1, DIMS.n_mels, 3000), jnp.float32)
    _check(_matmul_lines(lambda p, x: model.apply({"params": p}, x, method="encode"), params, mel), dtype)
    tokens = jax.ShapeDtypeStruct((1, 3), jnp.int32)
    # one full teacher-forced pass: the decoder blocks, cross-attention and the tied output projection
    _check(_matmul_lines(lambda p, x, t: model.apply({"params": p}, x, t), params, mel, tokens), dtype)


def test_head_precision():
    head = make_head("tl_down_tr_256_1_8", n_layers=DIMS.n_audio_layer, width=DIMS.n_audio_state)
    taps = jax.ShapeDtypeStruct((2, DIMS.n_audio_layer, 25, DIMS.n_audio_state), jnp.float32)
    _check(_matmul_lines(lambda p, x: head.apply({"params": p}, x), head_param_shapes(head), taps), jnp.float32)
