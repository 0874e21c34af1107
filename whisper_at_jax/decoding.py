"""Decoding of 30-s windows with Whisper, token for token as openai-whisper's ``decode`` (release 20250625).

What runs where:

- Greedy and temperature sampling run as two compiled programs per number of rows: a prefill of the initial
  tokens (sot sequence, prompt, prefix) in fixed 32-token decoder chunks (one program for every prompt length,
  plus one for prompt-free windows: sequential transcription's prompt grows window by window), then a
  ``lax.while_loop`` (compiled once; budget, temperature and rule settings are runtime values) that applies
  openai-whisper's logit rules on device (suppress blank / suppress tokens / timestamp rules), picks the next
  token, and stops when every row has reached end-of-text or the token budget is spent. A row that loops
  (hallucination) only runs to the budget; finished rows just emit end-of-text meanwhile.
- Beam search compiles one decoder step (KV-cache reorder + decoder + logit rules + log-softmax + top-k) and
  keeps openai-whisper's beam bookkeeping (candidate dict, finished lists up to ``beam_size * patience``, the
  final ranking) on the host, because its semantics (dedup of equal sequences, insertion-ordered ties,
  early stop when every audio has enough finished candidates) are defined by Python data structures.

The device side is the model's :class:`whisper_at_jax.programs.DecoderPrograms` (``model.programs.decoder``): they
use the model only through its ``encode`` / ``init_cache`` / ``decode`` methods (the prefill captures the
decoder's final LayerNorm output ``decoder.ln`` so that it projects only the two rows it needs to the vocabulary).
This module holds the host side and the on-device logit rules.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .tokenizer import LANGUAGES, TO_LANGUAGE_CODE, Tokenizer, get_tokenizer

if TYPE_CHECKING:
    from .programs import DecoderPrograms

CHUNK_LENGTH = 30  # seconds per window; timestamp precision is CHUNK_LENGTH / n_audio_ctx (0.02 s)
# Initial tokens go through the decoder this many at a time (programs.DecoderPrograms._prefill; 448 = 14 * 32), or
# in one chunk of _SHORT_PREFILL when there are no more (no prompt or prefix: the sot sequence is 1 to 4 tokens),
# where 32 rows cost more prefill time for nothing. So at most two prefill programs per number of rows, whatever the
# prompt lengths.
_PREFILL_CHUNK = 32
_SHORT_PREFILL = 4

Array = jax.Array


@dataclass(frozen=True)
class DecodingOptions:
    """openai-whisper's decoding options (same names, defaults and meaning)."""

    # "transcribe" (X -> X), "translate" (X -> English) or "lang_id" (language detection only)
    task: str = "transcribe"
    # language of the audio; detected when None (multilingual models)
    language: str | None = None
    # sampling
    temperature: float = 0.0
    sample_len: int | None = None  # max tokens to sample; default n_text_ctx // 2
    best_of: int | None = None  # independent samples per window when temperature > 0
    beam_size: int | None = None  # beams when temperature == 0
    patience: float | None = None  # beam search patience (arxiv:2204.05424)
    # None: rank by sum logprob / length; else Google NMT's length penalty alpha
    length_penalty: float | None = None
    # previous-context text or tokens, and a forced prefix of the current window
    prompt: str | list[int] | None = None
    prefix: str | list[int] | None = None
    # token ids (list or comma-separated) to suppress; "-1" = tokenizer.non_speech_tokens
    suppress_tokens: str | Iterable[int] | None = "-1"
    suppress_blank: bool = True
    # timestamps
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    # accepted for compatibility and ignored: the compute dtype is the model's (load_model(dtype=...))
    fp16: bool = True
    # PRNG seed for temperature sampling (jax.random; torch's sampler cannot be reproduced)
    seed: int = 0


@dataclass(frozen=True)
class DecodingResult:
    """One window's decoding, as openai-whisper's ``DecodingResult``."""

    audio_features: Any
    language: str
    language_probs: dict[str, float] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = np.nan
    no_speech_prob: float = np.nan
    temperature: float = np.nan
    compression_ratio: float = np.nan


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length (openai-whisper's hallucination signal)."""
    text_bytes = text.encode("utf-8")
    return len(text_bytes) / len(zlib.compress(text_bytes))


# ----------------------------------------------------------------------------------------------------------
# On-device logit rules


class _Rules(NamedTuple):
    """Per-call rule parameters as arrays, so changing them does not recompile."""

    suppress: Array  # bool [V]: SuppressTokens
    blank: Array  # bool [V]: SuppressBlank (first sampled token only)
    timestamps: Array  # bool []: ApplyTimestampRules on/off
    max_initial: Array  # int32 []: max_initial_timestamp index, -1 for none


class _Consts(NamedTuple):
    eot: int
    timestamp_begin: int
    no_timestamps: int
    no_speech: int


def _apply_rules(logits: Array, sampled: Array, i: Array, rules: _Rules, c: _Consts) -> Array:
    """openai-whisper's SuppressBlank, SuppressTokens and ApplyTimestampRules, batched.

    logits [N, V] fp32; sampled [N, S] tokens sampled so far (valid where position < i); i = number sampled.
    """
    neg = -jnp.inf
    ids = jnp.arange(logits.shape[-1])
    tb, eot = c.timestamp_begin, c.eot
    first = i == 0
    logits = jnp.where(first & rules.blank[None, :], neg, logits)
    logits = jnp.where(rules.suppress[None, :], neg, logits)

    ts = jnp.where(ids[None, :] == c.no_timestamps, neg, logits)
    n, s = sampled.shape
    last = jnp.take(sampled, jnp.maximum(i - 1, 0), axis=1)
    penult = jnp.take(sampled, jnp.maximum(i - 2, 0), axis=1)
    last_ts = (i >= 1) & (last >= tb)
    penult_ts = (i < 2) | (penult >= tb)
    # timestamps come in pairs, except right before end-of-text
    ts = jnp.where((last_ts & penult_ts)[:, None] & (ids >= tb)[None, :], neg, ts)
    ts = jnp.where((last_ts & ~penult_ts)[:, None] & (ids < eot)[None, :], neg, ts)
    # timestamps never decrease, and a segment ends strictly after it starts
    pos = jnp.arange(s)
    is_ts = (sampled >= tb) & (pos < i)[None, :]
    any_ts = is_ts.any(axis=1)
    last_pos = jnp.max(jnp.where(is_ts, pos[None, :], 0), axis=1)
    last_val = jnp.take_along_axis(sampled, last_pos[:, None], axis=1)[:, 0]
    ts_last = jnp.where(last_ts & ~penult_ts, last_val, last_val + 1)
    ts = jnp.where(any_ts[:, None] & (ids >= tb)[None, :] & (ids[None, :] < ts_last[:, None]), neg, ts)
    # the first sampled token is a timestamp, no later than max_initial_timestamp
    ts = jnp.where(first & (ids < tb)[None, :], neg, ts)
    ts = jnp.where(first & (rules.max_initial >= 0) & (ids > tb + rules.max_initial)[None, :], neg, ts)
    # if the timestamps together outweigh every single text token, sample a timestamp
    logprobs = jax.nn.log_softmax(ts, axis=-1)
    ts_logprob = jax.nn.logsumexp(jnp.where((ids >= tb)[None, :], logprobs, neg), axis=-1)
    max_text = jnp.max(jnp.where((ids < tb)[None, :], logprobs, neg), axis=-1)
    ts = jnp.where((ts_logprob > max_text)[:, None] & (ids < tb)[None, :], neg, ts)
    return jnp.where(rules.timestamps, ts, logits)


def _first_argmax(x: Array) -> Array:
    """``jnp.argmax(x, -1)`` (the first index of the maximum) as two plain reductions: argmax lowers to one
    (value, index) reduction that XLA CPU does not vectorize, 0.24 ms over tiny.en's 51864 logits per decoding step."""
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    first = jnp.min(jnp.where(x == x.max(axis=-1, keepdims=True), ids, x.shape[-1]), axis=-1)
    return jnp.minimum(first, x.shape[-1] - 1)  # NaN logits (no index equals the max): stay in the vocabulary


# ----------------------------------------------------------------------------------------------------------
# Compiled programs: the model's (whisper_at_jax.programs.DecoderPrograms, their traced bodies)


def _programs(model: Any, tokenizer: Tokenizer) -> "DecoderPrograms":
    """The model's decoder programs for ``tokenizer``'s special tokens."""
    consts = _Consts(tokenizer.eot, tokenizer.timestamp_begin, tokenizer.no_timestamps, tokenizer.no_speech)
    return model.programs.decoder(consts)


# ----------------------------------------------------------------------------------------------------------
# Host side


def _as_features(model: Any, mel: Any) -> tuple[Array, bool]:
    """mel [B, n_mels, frames] / [n_mels, frames], or encoder output [B, n_audio_ctx, d] -> features, single."""
    if not hasattr(mel, "shape"):
        mel = np.asarray(mel, np.float32)
    elif not isinstance(mel, (np.ndarray, jax.Array)):
        mel = np.asarray(mel)  # e.g. a CPU torch tensor
    dims = model.dims
    single = mel.ndim == 2
    x = mel[None] if single else mel
    if x.ndim != 3:
        raise ValueError(f"expected a mel spectrogram [batch, {dims.n_mels}, frames] (or unbatched), or encoder "
                         f"output [batch, {dims.n_audio_ctx}, {dims.n_audio_state}]; got shape {tuple(mel.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch: no windows to decode")
    if tuple(x.shape[-2:]) == (dims.n_audio_ctx, dims.n_audio_state):
        return jnp.asarray(x), single
    if x.shape[1] != dims.n_mels:
        raise ValueError(f"mel must have {dims.n_mels} mel bins on axis -2 (or be encoder output "
                         f"[batch, {dims.n_audio_ctx}, {dims.n_audio_state}]); got shape {tuple(mel.shape)}")
    return model.encode(jnp.asarray(x, jnp.float32)), single


def _check_language(language: str | None) -> None:
    if language is not None and language.lower() not in LANGUAGES and language.lower() not in TO_LANGUAGE_CODE:
        raise ValueError(f"Unsupported language: {language}")


def detect_language(model: Any, mel: Any, tokenizer: Tokenizer | None = None
                    ) -> tuple[np.ndarray | int, list[dict[str, float]] | dict[str, float]]:
    """Most probable language token per window and the probabilities over the model's languages.

    ``mel``: [B, n_mels, frames] (or unbatched) or encoder output [B, n_audio_ctx, d]. Unbatched input gives an
    int and one dict, as openai-whisper's ``detect_language``.
    """
    if tokenizer is None:
        tokenizer = get_tokenizer(model.tokenizer_file, model.is_multilingual, num_languages=model.num_languages)
    if tokenizer.language is None or tokenizer.language_token not in tokenizer.sot_sequence:
        raise ValueError("This model doesn't have language tokens so it can't perform lang id")
    features, single = _as_features(model, mel)
    tokens, probs = _detect(model, features, tokenizer)
    if single:
        return int(tokens[0]), probs[0]
    return tokens, probs


def _detect(model: Any, features: Array, tokenizer: Tokenizer) -> tuple[np.ndarray, list[dict[str, float]]]:
    progs = _programs(model, tokenizer)
    lang_tokens = np.asarray(tokenizer.all_language_tokens)
    mask = np.zeros(model.dims.n_vocab, bool)
    mask[lang_tokens] = True
    tokens, probs = progs.detect(model.params, features, tokenizer.sot, jnp.asarray(mask))
    probs = np.asarray(probs)[:, lang_tokens]
    codes = tokenizer.all_language_codes
    return np.asarray(tokens), [{c: float(p) for c, p in zip(codes, row)} for row in probs]


class _Task:
    """Options resolved against the model and tokenizer (openai-whisper's ``DecodingTask`` set-up)."""

    def __init__(self, model: Any, options: DecodingOptions):
        self.model = model
        self.options = options = self._verify(options)
        self.tokenizer = get_tokenizer(model.tokenizer_file, model.is_multilingual,
                                       num_languages=model.num_languages, language=options.language or "en",
                                       task=options.task if options.task != "lang_id" else "transcribe")
        tok = self.tokenizer
        self.n_group = options.beam_size or options.best_of or 1
        self.n_ctx = model.dims.n_text_ctx
        self.sample_len = options.sample_len or self.n_ctx // 2
        self.sot_sequence = tok.sot_sequence_including_notimestamps if options.without_timestamps \
            else tok.sot_sequence
        self.initial_tokens = self._initial_tokens()
        self.sample_begin = len(self.initial_tokens)
        self.sot_index = self.initial_tokens.index(tok.sot)
        if self.sample_begin > self.n_ctx:
            raise ValueError(f"{self.sample_begin} initial tokens (prompt + prefix) exceed the text context "
                             f"of {self.n_ctx}")
        self.prefill_chunk = _SHORT_PREFILL if self.sample_begin <= _SHORT_PREFILL else _PREFILL_CHUNK
        # openai-whisper stops once the token list outgrows n_ctx: at most n_ctx + 1 - sample_begin steps
        self.budget = min(self.sample_len, self.n_ctx + 1 - self.sample_begin)
        # the token buffer's length is a compiled shape; one size for every sample_len up to n_ctx // 2 (the
        # budget itself is a runtime value) keeps the programs shared across options
        self.buffer_len = max(self.budget, self.n_ctx // 2)
        v = model.dims.n_vocab
        suppress = np.zeros(v, bool)
        if options.suppress_tokens:
            suppress[list(self._suppress_tokens())] = True
        blank = np.zeros(v, bool)
        if options.suppress_blank:
            blank[tok.encode(" ") + [tok.eot]] = True
        max_initial = -1
        if not options.without_timestamps and options.max_initial_timestamp:
            precision = CHUNK_LENGTH / model.dims.n_audio_ctx
            max_initial = round(options.max_initial_timestamp / precision)
        self.rules = _Rules(jnp.asarray(suppress), jnp.asarray(blank), jnp.asarray(not options.without_timestamps),
                            jnp.asarray(max_initial, jnp.int32))

    @staticmethod
    def _verify(options: DecodingOptions) -> DecodingOptions:
        if options.task not in ("transcribe", "translate", "lang_id"):
            raise ValueError(f"task must be 'transcribe', 'translate' or 'lang_id', got {options.task!r}")
        if options.beam_size is not None and options.best_of is not None:
            raise ValueError("beam_size and best_of can't be given together")
        if options.temperature < 0 or not np.isfinite(options.temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {options.temperature}")
        if options.temperature == 0 and options.best_of is not None:
            raise ValueError("best_of with greedy sampling (T=0) is not compatible")
        if options.patience is not None and options.beam_size is None:
            raise ValueError("patience requires beam_size to be given")
        if options.length_penalty is not None and not 0 <= options.length_penalty <= 1:
            raise ValueError("length_penalty (alpha) should be a value between 0 and 1")
        for name in ("beam_size", "best_of", "sample_len"):
            value = getattr(options, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if options.beam_size is not None and round(options.beam_size * (options.patience or 1.0)) < 1:
            raise ValueError(f"Invalid beam size ({options.beam_size}) or patience ({options.patience})")
        return options

    def _initial_tokens(self) -> tuple[int, ...]:
        tokens = list(self.sot_sequence)
        tok = self.tokenizer
        if prefix := self.options.prefix:
            prefix_tokens = tok.encode(" " + prefix.strip()) if isinstance(prefix, str) else list(prefix)
            max_prefix_len = self.n_ctx // 2 - self.sample_len
            # openai-whisper slices [-max_prefix_len:], which keeps everything when max_prefix_len == 0
            prefix_tokens = prefix_tokens[-max_prefix_len:]
            tokens = tokens + prefix_tokens
        if prompt := self.options.prompt:
            prompt_tokens = tok.encode(" " + prompt.strip()) if isinstance(prompt, str) else list(prompt)
            tokens = [tok.sot_prev] + prompt_tokens[-(self.n_ctx // 2 - 1):] + tokens
        bad = [t for t in tokens if not 0 <= int(t) < self.model.dims.n_vocab]
        if bad:
            raise ValueError(f"prompt/prefix token ids out of the vocabulary: {bad[:5]}")
        return tuple(int(t) for t in tokens)

    def _suppress_tokens(self) -> tuple[int, ...]:
        tok = self.tokenizer
        spec = self.options.suppress_tokens
        if isinstance(spec, str):
            try:
                spec = [int(t) for t in spec.split(",") if t.strip()]
            except ValueError as e:
                raise ValueError(f"suppress_tokens must be comma-separated ints, got {spec!r}") from e
        tokens = [int(t) for t in spec]
        if -1 in tokens:
            tokens = [t for t in tokens if t >= 0]
            tokens.extend(tok.non_speech_tokens)
        tokens.extend([tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech])
        bad = [t for t in tokens if not 0 <= t < self.model.dims.n_vocab]
        if bad:
            raise ValueError(f"suppress_tokens out of the vocabulary: {bad[:5]}")
        return tuple(sorted(set(tokens)))

    # ------------------------------------------------------------------------------------------------------
    def run(self, features: Array) -> list[DecodingResult]:
        tok, opts, model = self.tokenizer, self.options, self.model
        progs = _programs(model, tok)
        n_audio = features.shape[0]
        tokens = np.tile(np.asarray(self.initial_tokens, np.int32), (n_audio, 1))

        languages = [opts.language] * n_audio
        language_probs = None
        if opts.task == "lang_id" or (opts.language is None and model.is_multilingual):
            lang_tokens, language_probs = _detect(model, features, tok)
            languages = [max(p, key=p.get) for p in language_probs]
            if opts.language is None:
                tokens[:, self.sot_index + 1] = lang_tokens
        elif opts.language is None:
            languages = ["en"] * n_audio  # English-only model: nothing to detect
        if opts.task == "lang_id":
            return [DecodingResult(audio_features=f, language=lang, language_probs=p)
                    for f, lang, p in zip(features, languages, language_probs)]

        tokens = np.repeat(tokens, self.n_group, axis=0)
        padded = np.full((tokens.shape[0], self.n_ctx), tok.eot, np.int32)
        padded[:, : tokens.shape[1]] = tokens
        cache, logits0, no_speech = progs.prefill(model.params, features, jnp.asarray(padded),
                                                  jnp.int32(self.sample_begin), jnp.int32(self.sot_index),
                                                  n_group=self.n_group, chunk_len=self.prefill_chunk)
        if opts.beam_size is not None:
            seqs, sum_logprobs = self._beam_search(progs, cache, logits0, tokens)
        else:
            seqs, sum_logprobs = self._sample(progs, cache, logits0, tokens)

        # seqs[a]: candidate token lists (sampled part, up to EOT) of audio a; rank them as openai-whisper does
        no_speech = np.asarray(no_speech)[:: self.n_group]
        results = []
        for a in range(n_audio):
            cands, lps = seqs[a], sum_logprobs[a]
            best = _rank(cands, lps, opts.length_penalty)
            tokens_a = [int(t) for t in cands[best]]
            text = tok.decode(tokens_a).strip()
            results.append(DecodingResult(
                audio_features=features[a], language=languages[a],
                language_probs=None if language_probs is None else language_probs[a], tokens=tokens_a,
                text=text, avg_logprob=lps[best] / (len(tokens_a) + 1), no_speech_prob=float(no_speech[a]),
                temperature=opts.temperature, compression_ratio=compression_ratio(text)))
        return results

    def _sample(self, progs: "DecoderPrograms", cache: Any, logits0: Array, tokens: np.ndarray
                ) -> tuple[list[list[list[int]]], list[list[float]]]:
        opts = self.options
        params = self.model.params
        # one row on CPU: the output projection reads the embedding's [d, V] copy (tied_logits)
        single_cpu = tokens.shape[0] == 1 and all(d.platform == "cpu" for d in logits0.devices())
        embedding_t = progs.embedding_t(params) if single_cpu else None
        sampled, sum_lp, _ = progs.sample_loop(
            params, embedding_t, *cache, logits0, jnp.asarray(tokens[:, -1]), jnp.int32(self.sample_begin),
            jnp.int32(self.budget), self.rules, jax.random.PRNGKey(opts.seed),
            jnp.float32(opts.temperature), buffer_len=self.buffer_len)
        sampled, sum_lp = np.asarray(sampled), np.asarray(sum_lp)
        eot = self.tokenizer.eot
        seqs, lps = [], []
        for a in range(tokens.shape[0] // self.n_group):
            group, group_lp = [], []
            for r in range(a * self.n_group, (a + 1) * self.n_group):
                row = list(sampled[r])
                # the buffer is EOT-filled, so rows that ran out of budget still end in EOT (openai pads one)
                cut = row.index(eot) if eot in row else len(row)
                group.append(row[:cut])
                group_lp.append(float(sum_lp[r]))
            seqs.append(group)
            lps.append(group_lp)
        return seqs, lps

    def _beam_search(self, progs: "DecoderPrograms", cache: Any, logits0: Array, tokens: np.ndarray
                     ) -> tuple[list[list[list[int]]], list[list[float]]]:
        opts, eot = self.options, self.tokenizer.eot
        beam = opts.beam_size
        max_candidates = round(beam * (opts.patience or 1.0))
        n_rows = tokens.shape[0]
        n_audio = n_rows // beam
        k = min(beam + 1, self.model.dims.n_vocab)
        rows = [list(map(int, r)) for r in tokens]  # full sequences, initial tokens included
        sum_lp = np.zeros(n_rows, np.float32)
        finished_sequences: list[dict[tuple, float]] = [{} for _ in range(n_audio)]
        sampled = np.full((n_rows, self.buffer_len), eot, np.int32)
        values, indices = progs.beam_first(logits0, jnp.asarray(sampled), self.rules, k=k)
        sb = self.sample_begin
        self_k, self_v, cross_k, cross_v = cache
        source = np.arange(n_rows, dtype=np.int32)
        for i in range(self.budget):
            if i > 0:
                self_k, self_v, values, indices = progs.beam_step(
                    self.model.params, self_k, self_v, cross_k, cross_v, jnp.asarray(source), jnp.asarray(sampled),
                    jnp.int32(i), jnp.int32(sb), self.rules, k=k)
            values, indices = np.asarray(values), np.asarray(indices)
            next_rows, source, new_lp = [], [], np.zeros(n_rows, np.float32)
            for a in range(n_audio):
                scores: dict[tuple, float] = {}
                sources: dict[tuple, int] = {}
                finished: dict[tuple, float] = {}
                # every beam's top beam+1 continuations; equal sequences (first step: all beams are equal)
                # collapse into one dict entry that keeps its first insertion position
                for j in range(beam):
                    idx = a * beam + j
                    prefix = rows[idx]
                    for lp, t in zip(values[idx], indices[idx]):
                        seq = tuple(prefix + [int(t)])
                        scores[seq] = float(np.float32(sum_lp[idx]) + np.float32(lp))
                        sources[seq] = idx
                saved = 0
                for seq in sorted(scores, key=scores.get, reverse=True):
                    if seq[-1] == eot:
                        finished[seq] = scores[seq]
                    else:
                        new_lp[len(next_rows)] = scores[seq]
                        next_rows.append(list(seq))
                        source.append(sources[seq])
                        saved += 1
                        if saved == beam:
                            break
                if saved != beam:
                    raise RuntimeError(f"beam search kept {saved} of {beam} beams; vocabulary too small?")
                previously = finished_sequences[a]
                for seq in sorted(finished, key=finished.get, reverse=True):
                    if len(previously) >= max_candidates:
                        break
                    previously[seq] = finished[seq]
            rows, sum_lp = next_rows, new_lp
            source = np.asarray(source, np.int32)
            sampled[:, : i + 1] = np.asarray([r[sb:] for r in rows], np.int32)
            if all(len(f) >= max_candidates for f in finished_sequences):
                break

        seqs, lps = [], []
        for a, sequences in enumerate(finished_sequences):
            if len(sequences) < beam:  # not enough finished: add the live beams, best first
                group_lp = sum_lp[a * beam: (a + 1) * beam]
                for j in list(np.argsort(group_lp))[::-1]:
                    sequences[tuple(rows[a * beam + j] + [eot])] = float(group_lp[j])
                    if len(sequences) >= beam:
                        break
            group = []
            for seq in sequences:
                body = list(seq[sb:])
                group.append(body[: body.index(eot)] if eot in body else body)
            seqs.append(group)
            lps.append(list(sequences.values()))
        return seqs, lps


def _rank(candidates: Sequence[Sequence[int]], sum_logprobs: Sequence[float], length_penalty: float | None) -> int:
    """openai-whisper's MaximumLikelihoodRanker: sum logprob over length, or over Google NMT's penalty."""
    scores = []
    for lp, toks in zip(sum_logprobs, candidates):
        length = len(toks)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        scores.append(lp / penalty)
    return int(np.argmax(scores))


def decode(model: Any, mel: Any, options: DecodingOptions = DecodingOptions(), **kwargs: Any
           ) -> DecodingResult | list[DecodingResult]:
    """Decode 30-s window(s): mel [B, n_mels, 3000] (or unbatched) or encoder output [B, n_audio_ctx, d].

    ``model`` is a ``whisper_at_jax.WhisperModel``; keyword arguments override ``options`` fields. Returns one
    ``DecodingResult`` per window (a single one for unbatched input), as openai-whisper's ``decode``.
    """
    if kwargs:
        unknown = set(kwargs) - set(DecodingOptions.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decoding options: {sorted(unknown)}")
        options = replace(options, **kwargs)
    _check_language(options.language)
    features, single = _as_features(model, mel)
    results = _Task(model, options).run(features)
    return results[0] if single else results
