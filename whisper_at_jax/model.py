"""Whisper in Flax Linen: audio encoder (with per-block taps) and text decoder (with a functional KV cache).

The parameter tree mirrors openai-whisper's state dict so converters are name maps:
``encoder.blocks.0.mlp.2.weight`` -> ``encoder/blocks_0/mlp_2/kernel`` (transposed),
``*.attn_ln.weight`` -> ``*/attn_ln/scale``, ``decoder.token_embedding.weight`` -> ``decoder/token_embedding/embedding``.

Numerics follow openai-whisper: LayerNorm eps 1e-5 computed in fp32, exact (erf) GELU, key projection without bias,
softmax in fp32, output projection tied to the token embedding. ``dtype`` is the compute dtype; params stay fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelDimensions:
    """openai-whisper's ``ModelDimensions``; field names are kept so a ``.pt`` ``dims`` dict loads as is."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.n_vocab - 51765 - int(self.is_multilingual)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelDimensions":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(d)
        if missing:
            raise ValueError(f"model dims are missing {sorted(missing)} (got {sorted(d)})")
        return cls(**{k: int(d[k]) for k in names})

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


# Every released Whisper size; `.en` models share dims with their multilingual sibling but for n_vocab = 51864.
_SIZES = {
    # name: (n_mels, width, heads, enc layers, dec layers, n_vocab)
    "tiny": (80, 384, 6, 4, 4, 51865),
    "base": (80, 512, 8, 6, 6, 51865),
    "small": (80, 768, 12, 12, 12, 51865),
    "medium": (80, 1024, 16, 24, 24, 51865),
    "large-v1": (80, 1280, 20, 32, 32, 51865),
    "large-v2": (80, 1280, 20, 32, 32, 51865),
    "large-v3": (128, 1280, 20, 32, 32, 51866),
    "turbo": (128, 1280, 20, 32, 4, 51866),
}


# "large" is large-v2 as in Whisper-AT (its models and released heads); openai-whisper now means large-v3 by it.
SIZE_ALIASES = {"large": "large-v2", "large-v3-turbo": "turbo"}


def dims_for(name: str) -> ModelDimensions:
    """Dims of a named Whisper size (``tiny.en``, ``base``, ..., ``large-v3``, ``turbo``; ``large`` = large-v2)."""
    english_only = name.endswith(".en")
    base = name[: -len(".en")] if english_only else name
    base = SIZE_ALIASES.get(base, base)
    if base not in _SIZES or (english_only and base not in ("tiny", "base", "small", "medium")):
        raise ValueError(f"unknown Whisper size {name!r}; known: {sorted(_SIZES)} (+ '.en' for tiny..medium)")
    n_mels, width, heads, enc_layers, dec_layers, n_vocab = _SIZES[base]
    return ModelDimensions(
        n_mels=n_mels, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads, n_audio_layer=enc_layers,
        n_vocab=51864 if english_only else n_vocab, n_text_ctx=448, n_text_state=width, n_text_head=heads,
        n_text_layer=dec_layers,
    )


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's encoder position table: [sin | cos] halves (not interleaved)."""
    if channels % 2:
        raise ValueError(f"sinusoid channels must be even, got {channels}")
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2, dtype=np.float32))
    scaled_time = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Numerics: each op written once, as a function of its param subtree. The Linen modules below declare the params
# (openai-whisper's names) and compute through these functions.

def matmul_precision(dtype: Any) -> jax.lax.Precision:
    """The precision of every matmul and convolution computing in ``dtype``.

    float32 compute means float32 products on every backend: XLA's DEFAULT is TF32 on NVIDIA GPUs (a single bf16
    pass on TPUs), which moves fp32 encoder states far from the CPU's (docs/benchmarks.md, "GPU"). bf16 compute
    keeps DEFAULT. On CPU both are exact float32, so the CPU pays nothing.
    """
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


def layer_norm(p: Params, x: Array, eps: float = 1e-5) -> Array:
    """LayerNorm in fp32 with PyTorch's eps (Flax's default is 1e-6), cast back to the input dtype."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]).astype(x.dtype)


def dense(p: Params, x: Array, dtype: Any, k_chunk: int | None = None) -> Array:
    """x @ kernel (+ bias) in ``dtype`` (nn.Dense's arithmetic); with ``k_chunk``, an fp32 contraction in pieces of
    that length summed pairwise (accuracy: see CAREFUL_BLOCKS)."""
    x, w = x.astype(dtype), p["kernel"].astype(dtype)
    dot = lambda a, b: jax.lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())),  # noqa: E731
                                           precision=matmul_precision(dtype))
    # (bf16 compute: one product, which accumulates in fp32, beats a sum of bf16-rounded pieces)
    if k_chunk is None or x.shape[-1] <= k_chunk or jnp.dtype(dtype) != jnp.float32:
        y = dot(x, w)
    else:
        parts = [dot(x[..., i:i + k_chunk], w[i:i + k_chunk]) for i in range(0, x.shape[-1], k_chunk)]
        while len(parts) > 1:
            parts = [sum(parts[i:i + 2]) for i in range(0, len(parts), 2)]
        y = parts[0]
    return y + p["bias"].astype(dtype) if "bias" in p else y


def conv1d(p: Params, x: Array, stride: int, dtype: Any) -> Array:
    """Width-3 convolution with padding 1 over [B, T, C] (nn.Conv's arithmetic), kernel [3, C_in, C_out]."""
    y = jax.lax.conv_general_dilated(x.astype(dtype), p["kernel"].astype(dtype), (stride,), [(1, 1)],
                                     dimension_numbers=("NWC", "WIO", "NWC"), precision=matmul_precision(dtype))
    return y + p["bias"].astype(dtype)


def tied_logits(x: Array, embedding: Array, dtype: Any, *, transposed: bool = False) -> Array:
    """The decoder's output projection: states [..., d] times the token embedding [V, d], in fp32.

    ``transposed``: ``embedding`` is its [d, V] copy (``embedding.T``, contiguous). Decoding one row at a time on
    CPU uses it: XLA CPU's matrix-vector product reads that layout faster (docs/benchmarks.md), while for several
    rows the [V, d] layout is as fast or faster.
    """
    spec = "...d,dv->...v" if transposed else "...d,vd->...v"
    return jnp.einsum(spec, x.astype(jnp.float32), embedding.astype(jnp.float32), precision=matmul_precision(dtype))


# Long self-attention (encoder: 1500 frames) runs in query blocks so the [H, block, keys] scores stay in cache
# (faster on CPU: docs/design.md); each query row's softmax is independent, so the result is the same.
_QUERY_BLOCK = 250


def split_heads(x: Array, n_head: int) -> Array:
    """[B, T, d] -> [B, H, T, d/H] (head-major: the layout the decoder cache keeps, so steps never transpose)."""
    b, t, d = x.shape
    return x.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)


def _softmax_attention(q: Array, k: Array, v: Array, mask: Array | None, query_block: int) -> Array:
    """softmax(q k^T + mask) v over [..., T, hd] arrays (q already scaled), queries in blocks of ``query_block``
    when there is no mask; softmax in fp32."""
    precision = matmul_precision(q.dtype)

    def block(qb: Array, mask_b: Array | None) -> Array:
        logits = jnp.einsum("...qd,...kd->...qk", qb, k, preferred_element_type=jnp.float32, precision=precision)
        if mask_b is not None:
            logits = logits + mask_b
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("...qk,...kd->...qd", weights, v, precision=precision)

    tq = q.shape[-2]
    if mask is None and tq > query_block:
        return jnp.concatenate([block(q[..., i:i + query_block, :], None) for i in range(0, tq, query_block)], axis=-2)
    return block(q, mask)


def _scale_queries(q: Array) -> Array:
    # openai-whisper scales q and k by hd**-0.25 each; one 1/sqrt(hd) on q is the same product up to rounding.
    return q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)


def _attend(q: Array, k: Array, v: Array, mask: Array | None = None, query_block: int = _QUERY_BLOCK) -> Array:
    """Scaled dot-product attention over head-major [B, H, T, hd] arrays -> [B, Tq, H*hd]; softmax in fp32.

    ``mask`` is additive, broadcastable to [B, H, Tq, Tk] (0 where allowed, -inf where not). Without a mask,
    queries go in blocks of ``query_block``. The softmax is normalised before the product with the values
    (normalising after it moved base's encoder past the parity bound: docs/benchmarks.md).
    """
    b, h, tq, hd = q.shape
    out = _softmax_attention(_scale_queries(q), k, v, mask, query_block)
    return out.transpose(0, 2, 1, 3).reshape(b, tq, h * hd)


# ---------------------------------------------------------------------------------------------------------------
# Modules: param declarations (names and initialisers as Flax's nn.Dense / nn.Conv give them) over the functions

class LayerNorm(nn.Module):
    """:func:`layer_norm` over params ``scale`` (ones) and ``bias`` (zeros)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        p = {"scale": self.param("scale", nn.initializers.ones, (d,), jnp.float32),
             "bias": self.param("bias", nn.initializers.zeros, (d,), jnp.float32)}
        return layer_norm(p, x, self.epsilon)


class Dense(nn.Module):
    """:func:`dense` over ``kernel`` [in, features] (LeCun normal) and ``bias`` (zeros), as ``nn.Dense`` declares
    them."""

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, k_chunk: int | None = None) -> Array:
        p = {"kernel": self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                                  jnp.float32)}
        if self.use_bias:
            p["bias"] = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return dense(p, x, self.dtype, k_chunk)


class Conv1d(nn.Module):
    """:func:`conv1d` over ``kernel`` [3, in, features] and ``bias``, as ``nn.Conv(kernel_size=(3,))`` declares
    them."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        p = {"kernel": self.param("kernel", nn.initializers.lecun_normal(), (3, x.shape[-1], self.features),
                                  jnp.float32),
             "bias": self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)}
        return conv1d(p, x, self.stride, self.dtype)


class MultiHeadAttention(nn.Module):
    n_state: int
    n_head: int
    dtype: Any = jnp.float32

    def setup(self):
        self.query = Dense(self.n_state, dtype=self.dtype)
        self.key = Dense(self.n_state, use_bias=False, dtype=self.dtype)
        self.value = Dense(self.n_state, dtype=self.dtype)
        self.out = Dense(self.n_state, dtype=self.dtype)

    def __call__(self, x: Array, mask: Array | None = None, attend: Callable[..., Array] | None = None,
                 k_chunk: int | None = None) -> Array:
        """Self-attention over ``x`` [B, T, d] (no cache): encoder blocks, tagging heads. ``attend(q, k, v)``
        replaces :func:`_attend` (the CPU encoder's per-head schedule); ``k_chunk``: see :func:`dense`."""
        q, k, v = (split_heads(f(x, k_chunk), self.n_head) for f in (self.query, self.key, self.value))
        return self.out(_attend(q, k, v, mask) if attend is None else attend(q, k, v), k_chunk)

    def kv(self, xa: Array) -> tuple[Array, Array]:
        """Head-major keys and values [B, H, T, hd] of ``xa`` [B, T, d]."""
        return split_heads(self.key(xa), self.n_head), split_heads(self.value(xa), self.n_head)

    def attend_kv(self, x: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
        """Attention of ``x``'s queries over given head-major keys/values (cached self-attention, cross-attention)."""
        return self.out(_attend(split_heads(self.query(x), self.n_head), k, v, mask))

    def logits_kv(self, x: Array, k: Array) -> Array:
        """fp32 attention logits [B, H, T, S] (scaled, before the softmax) of ``x``'s queries over head-major keys:
        the cross-attention weights word timing reads."""
        q = _scale_queries(split_heads(self.query(x), self.n_head))
        return jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32,
                          precision=matmul_precision(self.dtype))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN Transformer block; the same block builds Whisper's encoder and decoder and the Whisper-AT heads."""

    n_state: int
    n_head: int
    cross_attention: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.attn = MultiHeadAttention(self.n_state, self.n_head, self.dtype)
        self.attn_ln = LayerNorm()
        if self.cross_attention:
            self.cross_attn = MultiHeadAttention(self.n_state, self.n_head, self.dtype)
            self.cross_attn_ln = LayerNorm()
        self.mlp_0 = Dense(4 * self.n_state, dtype=self.dtype)
        self.mlp_2 = Dense(self.n_state, dtype=self.dtype)
        self.mlp_ln = LayerNorm()

    def self_attention(self, x: Array, attend: Callable[..., Array] | None = None,
                       k_chunk: int | None = None) -> Array:
        """``x`` plus its self-attention (no mask)."""
        return x + self.attn(self.attn_ln(x), attend=attend, k_chunk=k_chunk)

    def mlp(self, x: Array, k_chunk: int | None = None) -> Array:
        """``x`` plus its MLP; rows are independent (the CPU encoder runs them in blocks)."""
        return x + self.mlp_2(gelu(self.mlp_0(self.mlp_ln(x), k_chunk)), k_chunk)

    def __call__(self, x: Array) -> Array:
        return self.mlp(self.self_attention(x))

    def cross_kv(self, xa: Array) -> tuple[Array, Array]:
        return self.cross_attn.kv(xa)

    def decode(self, x: Array, cache: "DecoderCache", layer: int, offset: Array, self_mask: Array,
               cross_logits: bool = False) -> tuple[Array, "DecoderCache", Array | None]:
        """One decoder step over ``x`` [B, T, d] at positions offset..offset+T-1 of layer ``layer``'s cache ->
        (output, cache, and with ``cross_logits`` the cross-attention logits [B, H, T, S], else None).

        The new keys/values are written into the stacked [L, B, H, ctx, hd] cache in place (one
        dynamic_update_slice on the whole stack), so a decode loop carries the cache without re-stacking it.
        """
        h = self.attn_ln(x)
        k_new, v_new = self.attn.kv(h)
        start = (layer, 0, 0, offset, 0)
        self_k = jax.lax.dynamic_update_slice(cache.self_k, k_new[None].astype(cache.self_k.dtype), start)
        self_v = jax.lax.dynamic_update_slice(cache.self_v, v_new[None].astype(cache.self_v.dtype), start)
        x = x + self.attn.attend_kv(h, self_k[layer], self_v[layer], self_mask)
        h = self.cross_attn_ln(x)
        x = x + self.cross_attn.attend_kv(h, cache.cross_k[layer], cache.cross_v[layer])
        qk = self.cross_attn.logits_kv(h, cache.cross_k[layer]) if cross_logits else None
        return self.mlp(x), cache._replace(self_k=self_k, self_v=self_v), qk


# ---------------------------------------------------------------------------------------------------------------
# The encoder: one module (its pieces: stem, block attention, block MLP, ln_post) run by two schedules

# The first block's rounding errors are amplified 50-100x by the blocks after it, so the first CAREFUL_BLOCKS
# blocks take their fp32 products in BLOCK0_K_CHUNK-long pieces summed pairwise (XLA CPU accumulates a long
# contraction less accurately than MKL): accuracy and cost in docs/design.md ("Parity tolerances").
CAREFUL_BLOCKS = 1
BLOCK0_K_CHUNK = 128

# The CPU schedule keeps live buffers small (buffers over glibc's mmap threshold are page-faulted on every call):
# MLP rows in blocks of CPU_ENCODER_ROWS, attention one head at a time in blocks of CPU_ATTENTION_QUERIES
# queries. Why and the sizes tried: docs/design.md and docs/benchmarks.md ("Tried and not kept").
CPU_ENCODER_ROWS = 500
CPU_ATTENTION_QUERIES = 500


class AudioEncoder(nn.Module):
    n_mels: int
    n_ctx: int
    n_state: int
    n_head: int
    n_layer: int
    dtype: Any = jnp.float32

    def setup(self):
        self.conv1 = Conv1d(self.n_state, 1, self.dtype, name="conv1")
        self.conv2 = Conv1d(self.n_state, 2, self.dtype, name="conv2")
        self.positional_embedding = self.param(
            "positional_embedding", lambda _: jnp.asarray(sinusoids(self.n_ctx, self.n_state)))
        self.blocks = [ResidualAttentionBlock(self.n_state, self.n_head, dtype=self.dtype, name=f"blocks_{i}")
                       for i in range(self.n_layer)]
        self.ln_post = LayerNorm()

    def __call__(self, mel: Array, return_layers: bool = False) -> Array | tuple[Array, Array]:
        """mel [B, n_mels, frames] -> final states [B, frames/2, d] (and block outputs [B, L, frames/2, d]).

        Inputs shorter than 30 s use the first frames/2 rows of the position table (Whisper-AT's 10-s training
        regime); the block outputs are taken before ``ln_post``, as Whisper-AT taps them.
        """
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must be [batch, {self.n_mels}, frames], got shape {mel.shape}")
        if mel.shape[2] > 2 * self.n_ctx:
            raise ValueError(f"mel has {mel.shape[2]} frames; this encoder takes at most {2 * self.n_ctx}")
        if self.is_initializing():  # the params are created by running the pieces through the bound submodules
            final, layers = encode_batched(self, mel)
        else:  # the schedule is chosen when the program is lowered for its platform, not by the default backend
            final, layers = jax.lax.platform_dependent(
                self.variables["params"], mel, cpu=lambda p, m: encode_per_item(self.pieces(p), m),
                default=lambda p, m: encode_batched(self.pieces(p), m))
        return (final, layers) if return_layers else final

    def pieces(self, params: Params) -> "EncoderPieces":
        """This encoder's pieces as pure functions of ``params`` (its subtree): what runs inside lax.map."""
        return EncoderPieces(self.clone(parent=None), params)

    # the pieces a schedule runs (through the bound module, or through EncoderPieces)
    def stem(self, mel: Array) -> Array:
        """mel [B, n_mels, F] -> the first block's input [B, F/2, d]: two GELU convolutions plus positions."""
        x = mel.transpose(0, 2, 1).astype(self.dtype)
        x = gelu(self.conv1(x))
        x = gelu(self.conv2(x))
        return (x + self.positional_embedding[: x.shape[1]]).astype(self.dtype)

    def block_attention(self, i: int, x: Array, attend: Callable[..., Array] | None = None) -> Array:
        return self.blocks[i].self_attention(x, attend, BLOCK0_K_CHUNK if i < CAREFUL_BLOCKS else None)

    def block_mlp(self, i: int, x: Array) -> Array:
        return self.blocks[i].mlp(x, BLOCK0_K_CHUNK if i < CAREFUL_BLOCKS else None)

    def post(self, x: Array) -> Array:
        return self.ln_post(x)


class EncoderPieces:
    """An :class:`AudioEncoder`'s pieces (``stem``, ``block_attention``, ``block_mlp``, ``post``) as pure functions
    of its param subtree, each an ``apply`` of that method: a schedule can run them inside ``lax.map``."""

    def __init__(self, encoder: AudioEncoder, params: Params):
        self.n_layer, self._encoder, self._params = encoder.n_layer, encoder, params

    def __getattr__(self, piece: str) -> Callable[..., Array]:
        if piece not in ("stem", "block_attention", "block_mlp", "post"):
            raise AttributeError(piece)
        return functools.partial(self._encoder.apply, {"params": self._params}, method=piece)


def encoder_pieces(params: Params, n_head: int, dtype: Any = jnp.float32) -> EncoderPieces:
    """:class:`EncoderPieces` of an encoder param subtree (its dims read from the shapes)."""
    n_ctx, d = params["positional_embedding"].shape
    n_layer = sum(1 for name in params if name.startswith("blocks_"))
    encoder = AudioEncoder(params["conv1"]["kernel"].shape[1], n_ctx, d, n_head, n_layer, dtype)
    return EncoderPieces(encoder, params)


def encode_batched(enc: AudioEncoder | EncoderPieces, mel: Array) -> tuple[Array, Array]:
    """The batched schedule (accelerators): mel [B, n_mels, F] -> (final [B, F/2, d], block outputs
    [B, L, F/2, d])."""
    x = enc.stem(mel)
    layers = []
    for i in range(enc.n_layer):
        x = enc.block_mlp(i, enc.block_attention(i, x))
        layers.append(x)
    return enc.post(x), jnp.stack(layers, axis=1)


def _attend_per_head(q: Array, k: Array, v: Array) -> Array:
    """_attend without a mask over [1, H, T, hd] arrays, one head at a time (rank-2 products, which XLA CPU runs
    faster than unit-batch ones) -> [1, Tq, H*hd]."""
    one = lambda qkv: _softmax_attention(_scale_queries(qkv[0]), *qkv[1:], None, CPU_ATTENTION_QUERIES)  # noqa: E731
    out = jax.lax.map(one, (q[0], k[0], v[0]))  # [H, Tq, hd]
    return out.transpose(1, 0, 2).reshape(1, q.shape[2], -1)


def encode_per_item(enc: EncoderPieces, mel: Array, rows: int = CPU_ENCODER_ROWS) -> tuple[Array, Array]:
    """The CPU schedule of the same pieces: one batch item, one attention head and ``rows`` MLP rows at a time
    (rows and heads are independent, so it equals :func:`encode_batched` up to rounding)."""

    def item(mel_1: Array) -> tuple[Array, Array]:
        x = enc.stem(mel_1[None])  # [1, T, d]
        t, d = x.shape[1:]
        r = min(rows, t)
        n = -(-t // r)
        layers = []
        for i in range(enc.n_layer):
            x = enc.block_attention(i, x, _attend_per_head)
            # padded rows (zeros) are computed and dropped
            xs = jnp.pad(x[0], ((0, n * r - t), (0, 0))).reshape(n, r, d)
            x = jax.lax.map(lambda xr: enc.block_mlp(i, xr), xs).reshape(1, n * r, d)[:, :t]
            layers.append(x[0])
        return enc.post(x[0]), jnp.stack(layers)

    return jax.lax.map(item, mel)


class DecoderCache(NamedTuple):
    """Decoder state for incremental decoding, head-major: the self-attention keys/values stacked over layers,
    [L, B, H, ctx, hd] (ctx = n_text_ctx), updated in place every step, and the cross-attention ones as one
    [B, H, S, hd] array per layer (S audio frames), which XLA CPU reads without copying a slice of a stack
    (docs/benchmarks.md, "Tried and not kept").
    """

    self_k: Array
    self_v: Array
    cross_k: tuple[Array, ...]
    cross_v: tuple[Array, ...]

    def repeat_rows(self, n: int) -> "DecoderCache":
        """Every batch row ``n`` times in a row (beam search, best-of: a group of rows per audio)."""
        return DecoderCache(jnp.repeat(self.self_k, n, axis=1), jnp.repeat(self.self_v, n, axis=1),
                            tuple(jnp.repeat(x, n, axis=0) for x in self.cross_k),
                            tuple(jnp.repeat(x, n, axis=0) for x in self.cross_v))


class TextDecoder(nn.Module):
    n_vocab: int
    n_ctx: int
    n_state: int
    n_head: int
    n_layer: int
    dtype: Any = jnp.float32

    def setup(self):
        self.token_embedding = nn.Embed(self.n_vocab, self.n_state, name="token_embedding")
        self.positional_embedding = self.param(
            "positional_embedding", nn.initializers.normal(0.02), (self.n_ctx, self.n_state))
        self.blocks = [ResidualAttentionBlock(self.n_state, self.n_head, cross_attention=True, dtype=self.dtype,
                                              name=f"blocks_{i}") for i in range(self.n_layer)]
        self.ln = LayerNorm()

    def init_cache(self, audio_features: Array) -> DecoderCache:
        """Empty self-attention cache plus the cross-attention keys/values of ``audio_features`` [B, S, d]."""
        b = audio_features.shape[0]
        xa = audio_features.astype(self.dtype)
        cross = [blk.cross_kv(xa) for blk in self.blocks]
        zeros = jnp.zeros((self.n_layer, b, self.n_head, self.n_ctx, self.n_state // self.n_head), self.dtype)
        return DecoderCache(zeros, zeros, tuple(k for k, _ in cross), tuple(v for _, v in cross))

    def __call__(self, tokens: Array, cache: DecoderCache, offset: Array | int = 0) -> tuple[Array, DecoderCache]:
        """tokens [B, T] at positions offset..offset+T-1 -> fp32 logits [B, T, n_vocab] and the updated cache."""
        logits, cache, _ = self.forward(tokens, cache, offset)
        return logits, cache

    def forward(self, tokens: Array, cache: DecoderCache, offset: Array | int = 0, cross_logits: bool = False
                ) -> tuple[Array, DecoderCache, Array | None]:
        """``__call__``, and with ``cross_logits`` every layer's cross-attention logits [L, B, H, T, S]."""
        t = tokens.shape[1]
        offset = jnp.asarray(offset, jnp.int32)
        pos = jax.lax.dynamic_slice_in_dim(self.positional_embedding, offset, t, axis=0)
        x = (self.token_embedding(tokens) + pos).astype(self.dtype)
        q_pos = offset + jnp.arange(t)
        k_pos = jnp.arange(self.n_ctx)
        mask = jnp.where(k_pos[None, :] <= q_pos[:, None], 0.0, -jnp.inf).astype(jnp.float32)
        qks = []
        for i, block in enumerate(self.blocks):
            x, cache, qk = block.decode(x, cache, i, offset, mask, cross_logits)
            qks.append(qk)
        x = self.ln(x)
        return (tied_logits(x, self.token_embedding.embedding, self.dtype), cache,
                jnp.stack(qks) if cross_logits else None)


class Whisper(nn.Module):
    """Encoder + decoder. Use the methods through ``apply(..., method=...)``."""

    dims: ModelDimensions
    dtype: Any = jnp.float32

    def setup(self):
        d = self.dims
        self.encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer,
                                    self.dtype)
        self.decoder = TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer,
                                   self.dtype)

    def encode(self, mel: Array, return_layers: bool = False):
        return self.encoder(mel, return_layers=return_layers)

    def init_cache(self, audio_features: Array) -> DecoderCache:
        return self.decoder.init_cache(audio_features)

    def decode(self, tokens: Array, cache: DecoderCache, offset: Array | int = 0):
        return self.decoder(tokens, cache, offset)

    def decode_cross_logits(self, tokens: Array, audio_features: Array) -> tuple[Array, Array]:
        """Forced pass of ``tokens`` [B, T] from position 0 -> (logits [B, T, n_vocab], cross-attention logits
        [L, B, H, T, S]): what word timing aligns."""
        logits, _, qk = self.decoder.forward(tokens, self.init_cache(audio_features), 0, cross_logits=True)
        return logits, qk

    def __call__(self, mel: Array, tokens: Array) -> Array:
        """Full forward (teacher forcing): logits [B, T, n_vocab] for ``tokens`` given ``mel``."""
        audio_features = self.encode(mel)
        logits, _ = self.decode(tokens, self.init_cache(audio_features), 0)
        return logits


def _init_inputs(dims: ModelDimensions) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    # Two mel frames (one encoder frame): the params do not depend on the input's length (the encoder slices its
    # positional table), and a short trace keeps every load's init fast.
    return (jax.ShapeDtypeStruct((1, dims.n_mels, 2), jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32))


def init_params(dims: ModelDimensions, seed: int = 0) -> Params:
    """Random params of the right shapes (tests, benchmarks); the tree real weights load into."""
    mel, tokens = (jnp.zeros(x.shape, x.dtype) for x in _init_inputs(dims))
    return jax.jit(Whisper(dims).init)(jax.random.PRNGKey(seed), mel, tokens)["params"]


def param_shapes(dims: ModelDimensions) -> Params:
    """Shapes/dtypes of every param without allocating (``jax.eval_shape``)."""
    return jax.eval_shape(Whisper(dims).init, jax.random.PRNGKey(0), *_init_inputs(dims))["params"]
