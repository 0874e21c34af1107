"""Every compiled (jitted) program of one model, in one place: ``model.programs``, a :class:`Programs` that the
model object (:class:`whisper_at_jax.api.WhisperModel`) makes once and that ``encode``, ``decode``,
``transcribe``, ``tag`` and word timing ask for their programs.

- encoder: :attr:`Programs.encode` (final states) and :attr:`Programs.encode_layers` (+ every block's output);
- tags: :attr:`Programs.step_sums` (0.4-s step sums on the absolute grid, :func:`whisper_at_jax.tagging.step_sums`)
  and :meth:`Programs.head` (one per head mode and class count);
- decoder: :meth:`Programs.decoder`, a :class:`DecoderPrograms` per tokenizer's special tokens (prefill, language
  detection, the sampling loop, beam search's first step and step);
- word timing: :attr:`Programs.aligner` (the forced pass and its alignment matrix,
  :func:`whisper_at_jax.timing.alignment_pass`).

Params are arguments of every program, never constants baked into it, so the weights can change (a head attached,
a checkpoint swapped for one of the same shapes) without recompiling. Dropping the model drops its programs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .decoding import _apply_rules, _Consts, _first_argmax, _Rules
from .heads import make_head
from .model import DecoderCache, Whisper, tied_logits
from .tagging import _n_classes, step_sums
from .timing import alignment_pass

Array = jax.Array


class Programs:
    """The compiled programs of one :class:`~whisper_at_jax.model.Whisper` module (its dims and compute dtype)."""

    def __init__(self, module: Whisper):
        self.module = module

        def encode(params, mel):
            return module.apply({"params": params}, mel, method="encode")

        def encode_layers(params, mel):
            return module.apply({"params": params}, mel, True, method="encode")

        self.encode = jax.jit(encode)
        self.encode_layers = jax.jit(encode_layers)
        self.step_sums = jax.jit(step_sums)
        # static: the vocabulary split and the filter width; token counts come in buckets, frames are traced
        self.aligner = jax.jit(functools.partial(alignment_pass, module), static_argnames=("eot", "medfilt_width"))
        self._heads: dict[tuple[str, int], Callable[[Any, Array], Array]] = {}
        self._decoders: dict[_Consts, DecoderPrograms] = {}

    def head(self, model: Any) -> Callable[[Any, Array], Array]:
        """The tagging head program of the head attached to ``model`` (its mode and class count)."""
        return self.head_for(model.head_config["mode"], _n_classes(model))

    def head_for(self, mode: str, n_classes: int) -> Callable[[Any, Array], Array]:
        """The tagging head of ``mode`` with ``n_classes`` outputs: (head params, taps [B, L, steps, d]) -> logits."""
        key = (mode, int(n_classes))
        if key not in self._heads:
            dims = self.module.dims
            head = make_head(mode, dims.n_audio_layer, dims.n_audio_state, int(n_classes))
            self._heads[key] = jax.jit(lambda hp, x: head.apply({"params": hp}, x))
        return self._heads[key]

    def decoder(self, consts: _Consts) -> "DecoderPrograms":
        """The decoder's programs for a tokenizer's special tokens (``decoding._Consts``)."""
        if consts not in self._decoders:
            self._decoders[consts] = DecoderPrograms(self.module, consts)
        return self._decoders[consts]


class DecoderPrograms:
    """The decoder's compiled programs (what :mod:`whisper_at_jax.decoding` runs on device) for one module and one
    set of special tokens: :meth:`_prefill`, :meth:`_detect`, :meth:`_sample_loop`, :meth:`_beam_first` and
    :meth:`_beam_step` are their traced bodies."""

    def __init__(self, module: Whisper, consts: _Consts):
        self.module, self.consts = module, consts
        self._embedding_src = self._embedding_t = None
        self.transpose = jax.jit(lambda x: x.T)
        self.prefill = jax.jit(self._prefill, static_argnames=("n_group", "chunk_len"))
        self.detect = jax.jit(self._detect)
        self.sample_loop = jax.jit(self._sample_loop, static_argnames=("buffer_len",))
        self.beam_first = jax.jit(self._beam_first, static_argnames=("k",))
        # the self-attention cache is donated: updated in place instead of copied every step
        self.beam_step = jax.jit(self._beam_step, static_argnames=("k",), donate_argnums=(1, 2))

    def embedding_t(self, params: dict) -> Array:
        """The token embedding's [d, V] copy (single-row decoding on CPU: :func:`~whisper_at_jax.model.tied_logits`),
        made once per embedding array and kept while the model keeps that array."""
        emb = params["decoder"]["token_embedding"]["embedding"]
        if self._embedding_src is not emb:
            self._embedding_t, self._embedding_src = self.transpose(emb), emb
        return self._embedding_t

    # ---- pieces of the traced bodies
    def _apply(self, params, *args, method):
        return self.module.apply({"params": params}, *args, method=method)

    def _init_cache(self, params, features, n_group):
        cache = self._apply(params, features, method="init_cache")
        return cache.repeat_rows(n_group) if n_group > 1 else cache

    def _decode_states(self, params, tokens, cache, offset):
        # the decoder's final LayerNorm output (captured) instead of its logits: the logits go unused,
        # so XLA drops their [T, n_vocab] projection, and callers project only the rows they need
        (_, cache), state = self.module.apply({"params": params}, tokens, cache, offset, method="decode",
                                              capture_intermediates=lambda m, _: m.path == ("decoder", "ln"))
        return state["intermediates"]["decoder"]["ln"]["__call__"][0], cache

    def _project(self, params, x, embedding_t=None):
        # the decoder's output projection (tied token embedding, fp32), as TextDecoder applies it; with
        # embedding_t, from the embedding's [d, V] copy
        if embedding_t is not None:
            return tied_logits(x, embedding_t, self.module.dtype, transposed=True)
        return tied_logits(x, params["decoder"]["token_embedding"]["embedding"], self.module.dtype)

    def _select(self, logits, sampled, i, last, sum_logprobs, rules: _Rules, key, temperature):
        c = self.consts
        logits = _apply_rules(logits, sampled, i, rules, c)
        # greedy vs sampling is a traced choice, so temperature fallback reuses the same program
        # (lax.cond runs one branch: greedy decoding draws no random numbers)
        nxt = jax.lax.cond(
            temperature > 0,
            lambda: jax.random.categorical(jax.random.fold_in(key, i),
                                           logits / jnp.maximum(temperature, 1e-30), axis=-1).astype(jnp.int32),
            lambda: _first_argmax(logits))
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        current = jnp.take_along_axis(logprobs, nxt[:, None], axis=1)[:, 0]
        live = last != c.eot
        sum_logprobs = sum_logprobs + jnp.where(live, current, 0.0)
        nxt = jnp.where(live, nxt, c.eot).astype(jnp.int32)
        sampled = jax.lax.dynamic_update_slice_in_dim(sampled, nxt[:, None], i, axis=1)
        return sampled, sum_logprobs, nxt

    # ---- the traced bodies
    def _prefill(self, params, features, init_tokens, n_init, sot_index, n_group, chunk_len):
        # init_tokens [N, n_ctx]: the initial tokens, padded on the right to the text context, so that
        # one program serves every prompt length (condition_on_previous_text changes it every window).
        # They go through the decoder in fixed chunks of chunk_len tokens at positions
        # start..start+C-1. A chunk's filler tokens (positions >= n_init) only write keys/values at
        # positions that the sampling steps overwrite before any query sees them (the causal mask hides
        # positions after the query's), so what sampling reads is the cache of an unpadded prefill.
        cache = self._init_cache(params, features, n_group)
        n, n_ctx = init_tokens.shape
        c = min(chunk_len, n_ctx)

        def chunk(j, state):
            self_k, self_v, last, at_sot = state
            # the last chunk is shifted back if it would run past the context: its overlap recomputes
            # the same tokens at the same positions (only happens when n_ctx is not a multiple of c)
            start = jnp.minimum(j * c, n_ctx - c)
            toks = jax.lax.dynamic_slice_in_dim(init_tokens, start, c, axis=1)
            x, new = self._decode_states(params, toks, DecoderCache(self_k, self_v, cache.cross_k, cache.cross_v),
                                         start)

            def keep(row, p):  # the states at position p, if this chunk holds it
                here = (start <= p) & (p < start + c)
                return jnp.where(here, jnp.take(x, jnp.clip(p - start, 0, c - 1), axis=1), row)

            return new.self_k, new.self_v, keep(last, n_init - 1), keep(at_sot, sot_index)

        x = jax.eval_shape(lambda: self._decode_states(params, init_tokens[:, :c], cache, 0)[0])
        zeros = jnp.zeros((n, x.shape[-1]), x.dtype)
        state = (cache.self_k, cache.self_v, zeros, zeros)
        self_k, self_v, last, at_sot = jax.lax.fori_loop(0, (n_init + c - 1) // c, chunk, state)
        no_speech = jax.nn.softmax(self._project(params, at_sot), axis=-1)[:, self.consts.no_speech]
        return DecoderCache(self_k, self_v, cache.cross_k, cache.cross_v), self._project(params, last), no_speech

    def _detect(self, params, features, sot, language_mask):
        cache = self._init_cache(params, features, 1)
        tokens = jnp.full((features.shape[0], 1), sot, jnp.int32)
        logits, _ = self._apply(params, tokens, cache, 0, method="decode")
        logits = jnp.where(language_mask[None, :], logits[:, 0], -jnp.inf)
        return jnp.argmax(logits, axis=-1), jax.nn.softmax(logits, axis=-1)

    def _sample_loop(self, params, embedding_t, self_k, self_v, cross_k, cross_v, logits0, last_init, sample_begin,
                     budget, rules, key, temperature, buffer_len):
        eot = self.consts.eot
        n = logits0.shape[0]
        sampled = jnp.full((n, buffer_len), eot, jnp.int32)
        sum_lp = jnp.zeros((n,), jnp.float32)
        sampled, sum_lp, nxt = self._select(logits0, sampled, jnp.int32(0), last_init, sum_lp, rules, key,
                                            temperature)

        def cond(state):
            i, _, _, nxt, _, _ = state
            return (i < budget) & jnp.any(nxt != eot)

        def body(state):
            # the cross-attention keys/values are loop-invariant: captured, not carried (no per-step copies)
            i, sampled, sum_lp, nxt, self_k, self_v = state
            cache = DecoderCache(self_k, self_v, cross_k, cross_v)
            x, cache = self._decode_states(params, nxt[:, None], cache, sample_begin + i - 1)
            logits = self._project(params, x[:, 0], embedding_t)
            sampled, sum_lp, nxt = self._select(logits, sampled, i, nxt, sum_lp, rules, key, temperature)
            return i + 1, sampled, sum_lp, nxt, cache.self_k, cache.self_v

        state = (jnp.int32(1), sampled, sum_lp, nxt, self_k, self_v)
        steps, sampled, sum_lp, _, _, _ = jax.lax.while_loop(cond, body, state)
        return sampled, sum_lp, steps

    def _beam_first(self, logits0, sampled, rules, k):
        logits = _apply_rules(logits0, sampled, jnp.int32(0), rules, self.consts)
        return jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), k)

    def _beam_step(self, params, self_k, self_v, cross_k, cross_v, source, sampled, i, sample_begin, rules, k):
        # reorder the self-attention cache to the surviving beams (cross-attention rows are the same
        # within an audio's group, and beams never move across groups)
        # (skipped when every beam keeps its own row, as openai-whisper skips it)
        identity = jnp.all(source == jnp.arange(source.shape[0]))
        self_k, self_v = jax.lax.cond(identity, lambda: (self_k, self_v),
                                      lambda: (_reorder(self_k, source), _reorder(self_v, source)))
        cache = DecoderCache(self_k, self_v, cross_k, cross_v)
        tok = jnp.take(sampled, i - 1, axis=1)
        logits, cache = self._apply(params, tok[:, None], cache, sample_begin + i - 1, method="decode")
        logits = _apply_rules(logits[:, 0], sampled, i, rules, self.consts)
        values, indices = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), k)
        return cache.self_k, cache.self_v, values, indices


def _reorder(x: Array, source: Array) -> Array:
    # row copies with dynamic slices: XLA CPU's generic gather is far slower on these large rows
    return jnp.concatenate([jax.lax.dynamic_slice_in_dim(x, source[r], 1, axis=1) for r in range(x.shape[1])],
                           axis=1)
