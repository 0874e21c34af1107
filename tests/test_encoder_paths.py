"""The CPU encoder schedule (batch items, heads and row blocks in lax.map) against the batched schedule that
accelerators run, both over the same encoder pieces, on the real tiny.en weights.

Both compute the same per-row arithmetic; they may differ only by matmul summation order (different matrix
shapes reach the CPU matmul kernels). Tolerance: TOL x each array's max magnitude in fp32 (pre-ln_post block
outputs reach ~600, so an absolute bound would be meaningless). Two fp32 evaluations of one function differ by at
most the sum of their distances from the exact answer; for tiny.en's last block (the largest) that distance is
3.9e-6 of its max magnitude for ours, 5.1e-6 for PyTorch fp32 and up to 7.3e-6 for ours under XLA's other product
kernels (all against a float64 forward, tests/test_model_parity.py's input): two programs each as accurate as
PyTorch fp32 (~5e-6) differ by <= 1e-5. Measured here: 0 (bit-equal) on 30-s windows, 1.7e-6 on the 501-row
input (2.7e-6 on an AVX2-only AMD EPYC); a wrong row block, padding or head split moves the outputs by O(1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import whisper_at_jax as wat
from whisper_at_jax import model as M

pytestmark = pytest.mark.isa_sensitive


@pytest.fixture(scope="module")
def tiny():
    return wat.load_model("tiny.en", at_head=False)


def _mel(batch: int, frames: int) -> np.ndarray:
    """Log-mel of a made-up signal (chirps + noise): real spectrogram statistics without a data file."""
    t = np.arange(frames * 160) / 16000
    audio = np.stack([0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t)) for i in range(batch)])
    audio += 0.01 * np.random.default_rng(0).standard_normal(audio.shape)
    return np.asarray(wat.log_mel_spectrogram(audio.astype(np.float32)))[..., :frames]


TOL = 1e-5


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("frames", [3000, 1002])  # 1002 frames -> 501 rows: the last row block is padded
@pytest.mark.slow
def test_cpu_program_equals_batched(tiny, frames):
    params = tiny.params["encoder"]
    mel = jnp.asarray(_mel(2, frames))
    n_head = tiny.dims.n_audio_head
    batched = jax.jit(lambda p, m: M.encode_batched(M.encoder_pieces(p, n_head), m))(params, mel)
    looped = jax.jit(lambda p, m: M.encode_per_item(M.encoder_pieces(p, n_head), m, M.CPU_ENCODER_ROWS))(
        params, mel)
    for name, a, b in zip(("final", "layers"), looped, batched):
        assert a.shape == b.shape, name
        assert _rel(a, b) <= TOL, f"{name}: {_rel(a, b)} of max magnitude"
    # The public entry point on CPU runs the looped program.
    final, layers = tiny.encode(np.asarray(mel), return_layers=True)
    assert _rel(final, looped[0]) <= TOL and _rel(layers, looped[1]) <= TOL


def test_the_model_owns_its_encoder_programs(tiny):
    """``model.encode``, ``tag`` and ``transcribe`` run the same compiled programs, the model's ``programs``: one
    compile per input shape serves all of them."""
    assert tiny.programs is tiny.programs  # made once per model
    mel = _mel(1, 200)[0]  # unbatched: encode adds the batch axis
    before = tiny.programs.encode_layers._cache_size()
    final, layers = tiny.encode(mel, return_layers=True)
    again = tiny.programs.encode_layers(tiny.params, jnp.asarray(mel[None]))
    assert tiny.programs.encode_layers._cache_size() == before + 1
    np.testing.assert_array_equal(np.asarray(final), np.asarray(again[0])[0])


@pytest.mark.slow
def test_cpu_program_row_block_sizes(tiny):
    """Any row block size (a divisor of T, a non-divisor, one larger than T) gives the same result."""
    params = tiny.params["encoder"]
    mel = jnp.asarray(_mel(1, 600))  # 300 rows
    n_head = tiny.dims.n_audio_head
    pieces = M.encoder_pieces(params, n_head, jnp.float32)
    ref = M.encode_batched(pieces, mel)[1]
    for rows in (100, 128, 1000):
        out = M.encode_per_item(pieces, mel, rows)[1]
        assert _rel(out, ref) <= TOL, (rows, _rel(out, ref))


@pytest.mark.slow
def test_init_and_bf16_paths():
    """init still builds the openai-named tree through the Linen submodules; the bf16 CPU program runs through
    the same pieces (bf16 keeps ~3 significant digits and the error grows through 4 blocks: judged at 5% of the
    final states' max magnitude, measured 2.2%)."""
    dims = M.dims_for("tiny.en")
    shapes = M.param_shapes(dims)
    assert shapes["encoder"]["blocks_0"]["attn"]["key"]["kernel"].shape == (384, 384)
    assert "bias" not in shapes["encoder"]["blocks_0"]["attn"]["key"]
    model = wat.load_model("tiny.en", at_head=False)
    mel = _mel(1, 400)
    f32 = model.encode(mel)
    bf16 = M.Whisper(dims, dtype=jnp.bfloat16).apply({"params": model.params}, jnp.asarray(mel), method="encode")
    assert bf16.dtype == jnp.bfloat16
    assert _rel(bf16, f32) <= 5e-2
