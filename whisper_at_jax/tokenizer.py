"""Whisper's tokenizer on Hugging Face ``tokenizers``, with openai-whisper's interface and special-token ids.

Checkpoints carry a ``tokenizer.json`` (GPT-2 byte-level BPE plus Whisper's specials). Those files name some
specials differently from openai-whisper (``<|nocaptions|>`` for ``<|nospeech|>``, ``<|iw|>`` for ``<|he|>``) and
often lack the 1501 timestamp tokens, so the ids of the specials are laid out here the way openai-whisper lays
them out (consecutively after ``<|endoftext|>``) and checked against the file where the names agree. Ordinary
text is encoded by the ``tokenizers`` BPE (same pre-tokenizer regex and merges as openai's tiktoken files) and
decoded from the byte-level vocabulary directly, so partial UTF-8 sequences turn into U+FFFD exactly as
tiktoken's ``decode(errors="replace")`` does.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import string
from typing import Iterable, Sequence

LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

# Language code by name, plus the aliases openai-whisper accepts.
TO_LANGUAGE_CODE: dict[str, str] = {
    **{language: code for code, language in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb", "pushto": "ps",
    "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh",
}

# GPT-2's pre-tokenizer regex (also tiktoken's pat_str for Whisper).
_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# tokenizer.json files from older exports name these specials differently; ids are what matter.
_HF_ALIASES = {"<|nospeech|>": ("<|nocaptions|>",), "<|he|>": ("<|iw|>",)}


def special_token_names(num_languages: int = 99) -> list[str]:
    """openai-whisper's special tokens in id order, starting at ``<|endoftext|>``."""
    return [
        "<|endoftext|>", "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in list(LANGUAGES)[:num_languages]],
        "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


@functools.lru_cache(maxsize=None)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-unicode map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


def _byte_encoder() -> dict[int, str]:
    return {b: c for c, b in _byte_decoder().items()}


def _repair_merges(model: dict) -> list[str]:
    """Add the merges a tokenizer.json lacks for tokens of its own vocab; returns the added merges.

    The multilingual tokenizer.json shipped with Whisper checkpoints misses the very first merge (``Ġ t``), so
    ``" they"`` would become ``" " + "they"`` instead of openai-whisper's single token. Ordinary ids are BPE ranks,
    so a missing merge goes where its result's rank puts it.
    """
    vocab, merges = model["vocab"], model.get("merges") or []
    as_pair = (lambda m: tuple(m)) if merges and isinstance(merges[0], list) else (lambda m: tuple(m.split(" ", 1)))
    pairs = [as_pair(m) for m in merges]
    formed = {a + b for a, b in pairs}
    eot = vocab.get("<|endoftext|>", len(vocab))
    added = []
    for tok, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        if len(tok) < 2 or tok in formed or rank >= eot:
            continue
        splits = [(max(vocab[tok[:c]], vocab[tok[c:]]), tok[:c], tok[c:]) for c in range(1, len(tok))
                  if vocab.get(tok[:c], rank) < rank and vocab.get(tok[c:], rank) < rank]
        if splits:
            _, left, right = min(splits)
            pos = next((k for k, (a, b) in enumerate(pairs) if vocab.get(a + b, -1) > rank), len(pairs))
            pairs.insert(pos, (left, right))
            added.append(f"{left} {right}")
    if added:
        model["merges"] = [list(p) for p in pairs] if merges and isinstance(merges[0], list) else \
            [f"{a} {b}" for a, b in pairs]
    return added


class _Encoding:
    """The tokenizer.json file turned into what Whisper needs: BPE encoder, id -> bytes table, special ids."""

    def __init__(self, tokenizer_file: str, num_languages: int):
        from tokenizers import Tokenizer as HFTokenizer

        if not os.path.isfile(tokenizer_file):
            raise ValueError(f"tokenizer file not found: {tokenizer_file}")
        try:
            with open(tokenizer_file, encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{tokenizer_file}: not a Hugging Face tokenizer.json ({e})") from e
        vocab = spec.get("model", {}).get("vocab") if isinstance(spec, dict) else None
        if spec.get("model", {}).get("type") != "BPE" or not isinstance(vocab, dict):
            raise ValueError(f"{tokenizer_file}: expected a byte-level BPE model with a vocab")
        self.repaired_merges = _repair_merges(spec["model"])
        try:
            self.hf = (HFTokenizer.from_str(json.dumps(spec)) if self.repaired_merges
                       else HFTokenizer.from_file(tokenizer_file))
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise ValueError(f"{tokenizer_file}: not a Hugging Face tokenizer.json ({e})") from e
        added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        eot = added.get("<|endoftext|>", vocab.get("<|endoftext|>"))
        if eot is None:
            raise ValueError(f"{tokenizer_file}: no <|endoftext|> token")
        bdec = _byte_decoder()
        table: list[bytes | None] = [None] * eot
        for tok, i in vocab.items():
            if i < eot:
                try:
                    table[i] = bytes(bdec[c] for c in tok)
                except KeyError as e:
                    raise ValueError(f"{tokenizer_file}: token {tok!r} is not byte-level BPE") from e
        missing = [i for i, b in enumerate(table) if b is None]
        if missing:
            raise ValueError(f"{tokenizer_file}: ordinary token ids {missing[:5]}... have no vocab entry")
        self.names = special_token_names(num_languages)
        self.special_tokens = {name: eot + k for k, name in enumerate(self.names)}
        for name, i in self.special_tokens.items():
            for alias in (name, *_HF_ALIASES.get(name, ())):
                if alias in added and added[alias] != i:
                    raise ValueError(
                        f"{tokenizer_file}: {alias} has id {added[alias]} but Whisper's layout with "
                        f"num_languages={num_languages} puts it at {i}; wrong num_languages for this tokenizer?")
        self.table = table + [n.encode() for n in self.names]
        self.eot = eot
        self.n_vocab = len(self.table)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.n_vocab}): {bad[:5]}")
        return b"".join([self.table[i] for i in ids])


@functools.lru_cache(maxsize=8)
def _load_encoding(tokenizer_file: str, num_languages: int) -> _Encoding:
    return _Encoding(tokenizer_file, num_languages)


class Tokenizer:
    """openai-whisper's ``Tokenizer`` interface (special-token properties, ``encode``/``decode``, word splitting)."""

    def __init__(self, encoding: _Encoding, num_languages: int, language: str | None = None,
                 task: str | None = None):
        self.encoding = encoding
        self.num_languages = num_languages
        self.language = language
        self.task = task
        self.special_tokens: dict[str, int] = dict(encoding.special_tokens)
        sot_sequence = [self.sot]
        if language is not None:
            sot_sequence.append(self.to_language_token(language))
        if task is not None:
            sot_sequence.append(self.transcribe if task == "transcribe" else self.translate)
        self.sot_sequence: tuple[int, ...] = tuple(sot_sequence)

    # --- text <-> ids -------------------------------------------------------------------------------------
    def encode(self, text: str, *, allowed_special: str | set = frozenset(),
               disallowed_special: str | set = "all") -> list[int]:
        """Text -> ids. As tiktoken, special-token text in the input is an error unless allowed."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = (set(self.special_tokens) - allowed) if disallowed_special == "all" else set(disallowed_special)
        if "<|" in text:
            for name in disallowed:
                if name in text:
                    raise ValueError(f"text contains the special token {name!r}; pass allowed_special to encode it")
            if allowed:
                return self._encode_with_specials(text, allowed)
        return self.encoding.encode_ordinary(text)

    def _encode_with_specials(self, text: str, allowed: set) -> list[int]:
        out: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(n), n) for n in allowed if n in rest]
            if not hits:
                out += self.encoding.encode_ordinary(rest)
                break
            pos, name = min(hits, key=lambda h: (h[0], -len(h[1])))
            if pos:
                out += self.encoding.encode_ordinary(rest[:pos])
            out.append(self.special_tokens[name])
            rest = rest[pos + len(name):]
        return out

    def decode(self, token_ids: Sequence[int], errors: str = "replace") -> str:
        """Ids -> text, dropping timestamp tokens (other specials are written out, as openai-whisper does)."""
        tb = self.timestamp_begin
        return self.encoding.decode_bytes(t for t in token_ids if t < tb).decode("utf-8", errors=errors)

    def decode_with_timestamps(self, token_ids: Sequence[int], errors: str = "replace") -> str:
        """Ids -> text with timestamp tokens written out, e.g. ``<|1.08|>``."""
        return self.encoding.decode_bytes(token_ids).decode("utf-8", errors=errors)

    # --- special tokens -----------------------------------------------------------------------------------
    @property
    def eot(self) -> int:
        return self.encoding.eot

    @property
    def sot(self) -> int:
        return self.special_tokens["<|startoftranscript|>"]

    @property
    def transcribe(self) -> int:
        return self.special_tokens["<|transcribe|>"]

    @property
    def translate(self) -> int:
        return self.special_tokens["<|translate|>"]

    @property
    def sot_lm(self) -> int:
        return self.special_tokens["<|startoflm|>"]

    @property
    def sot_prev(self) -> int:
        return self.special_tokens["<|startofprev|>"]

    @property
    def no_speech(self) -> int:
        return self.special_tokens["<|nospeech|>"]

    @property
    def no_timestamps(self) -> int:
        return self.special_tokens["<|notimestamps|>"]

    @property
    def timestamp_begin(self) -> int:
        return self.special_tokens["<|0.00|>"]

    @property
    def language_token(self) -> int:
        """Id of this tokenizer's ``language``."""
        if self.language is None:
            raise ValueError("This tokenizer does not have language token configured")
        return self.to_language_token(self.language)

    def to_language_token(self, language: str) -> int:
        token = self.special_tokens.get(f"<|{language}|>")
        if token is None:
            raise KeyError(f"Language {language} not found in tokenizer.")
        return token

    @functools.cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        return tuple(self.special_tokens[f"<|{c}|>"] for c in list(LANGUAGES)[: self.num_languages])

    @functools.cached_property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(self.decode([t]).strip("<|>") for t in self.all_language_tokens)

    @property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return tuple(self.sot_sequence) + (self.no_timestamps,)

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens suppressed by ``suppress_tokens="-1"``: speaker tags, music notes, brackets and the like.

        Basic punctuation stays allowed; hyphens and apostrophes only inside words (their space-prefixed
        forms are suppressed).
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # U+2640..U+267F symbols: when a tokenizer splits one into several tokens, its first token (shared
        # lead bytes of the block) is safe to suppress.
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    # --- word splitting (word timestamps) -------------------------------------------------------------------
    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        if self.language in {"zh", "ja", "th", "lo", "my", "yue"}:
            # No spaces between words: split wherever the tokens decode to whole code points.
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        full = self.decode_with_timestamps(tokens)
        replacement = "\ufffd"
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            decoded = self.decode_with_timestamps(current)
            # A replacement char means an unfinished UTF-8 sequence, unless the full text has one there too.
            if replacement not in decoded or full[offset + decoded.index(replacement)] == replacement:
                words.append(decoded)
                word_tokens.append(current)
                current = []
                offset += len(decoded)
        return words, word_tokens

    def split_tokens_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        subwords, subword_tokens = self.split_tokens_on_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, toks in zip(subwords, subword_tokens):
            starts_word = (toks[0] >= self.eot or subword.startswith(" ") or subword.strip() in string.punctuation
                           or not words)
            if starts_word:
                words.append(subword)
                word_tokens.append(list(toks))
            else:
                words[-1] += subword
                word_tokens[-1].extend(toks)
        return words, word_tokens

    def __repr__(self) -> str:
        return (f"Tokenizer(n_vocab={self.encoding.n_vocab}, num_languages={self.num_languages}, "
                f"language={self.language!r}, task={self.task!r})")


def get_tokenizer(tokenizer_file: str | os.PathLike | None, multilingual: bool, num_languages: int = 99,
                  language: str | None = None, task: str | None = None) -> Tokenizer:
    """A Whisper tokenizer from a checkpoint's ``tokenizer.json``, with openai-whisper's defaults.

    Multilingual: ``language`` (code or name, default ``"en"``) and ``task`` (default ``"transcribe"``) fill the
    start-of-transcript sequence. English-only: both are ignored (``sot_sequence == (sot,)``).
    """
    if tokenizer_file is None:
        raise ValueError("this checkpoint has no tokenizer.json; convert it with scripts/convert.py, which writes "
                         "one (or build one with tokenizer_json_from_tiktoken)")
    if not 1 <= num_languages <= len(LANGUAGES):
        raise ValueError(f"num_languages must be in 1..{len(LANGUAGES)}, got {num_languages}")
    if language is not None:
        language = language.lower()
        if language not in LANGUAGES:
            if language in TO_LANGUAGE_CODE:
                language = TO_LANGUAGE_CODE[language]
            else:
                raise ValueError(f"Unsupported language: {language}")
    if task not in (None, "transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
    if multilingual:
        language = language or "en"
        task = task or "transcribe"
        if list(LANGUAGES).index(language) >= num_languages:
            raise ValueError(f"language {language!r} is not among this model's {num_languages} languages")
    else:
        language = None
        task = None
    return _cached_tokenizer(os.fspath(tokenizer_file), num_languages, language, task)


@functools.lru_cache(maxsize=32)
def _cached_tokenizer(tokenizer_file: str, num_languages: int, language: str | None, task: str | None) -> Tokenizer:
    # one instance per setting, so its cached properties (non_speech_tokens: ~30 ms of encoding) are computed
    # once, not on every decode call
    return Tokenizer(_load_encoding(tokenizer_file, num_languages), num_languages, language=language, task=task)


def tokenizer_json_from_tiktoken(tiktoken_file: str | os.PathLike, multilingual: bool,
                                 num_languages: int = 99) -> str:
    """A Hugging Face ``tokenizer.json`` (as a string) equivalent to one of openai-whisper's ``.tiktoken`` files.

    The vocab is the ranks with bytes written in byte-level form; the merges are recovered from the ranks
    (each multi-byte token is the merge of the split whose parts rank lowest, as tiktoken's BPE builds it);
    ``multilingual`` is checked against the file (multilingual vocabularies have 50257 ordinary tokens, GPT-2's
    50256); the specials are laid out as openai-whisper lays them out for ``num_languages``.
    """
    ranks: dict[bytes, int] = {}
    with open(tiktoken_file, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    if not ranks:
        raise ValueError(f"{tiktoken_file}: empty tiktoken file")
    if multilingual != (len(ranks) > 50256):
        raise ValueError(f"{tiktoken_file}: {len(ranks)} ordinary tokens, which is not a "
                         f"{'multilingual' if multilingual else 'GPT-2 (English-only)'} Whisper vocabulary")
    benc = _byte_encoder()
    as_str = lambda b: "".join(benc[x] for x in b)  # noqa: E731
    vocab = {as_str(b): r for b, r in ranks.items()}
    # Every split of a token into two lower-ranked tokens is a merge of priority rank(token): tiktoken merges
    # whichever adjacent pair concatenates to the lowest-ranked token, whatever the split.
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(ranks[tok[:c]], ranks[tok[c:]], tok[:c], tok[c:]) for c in range(1, len(tok))
                  if ranks.get(tok[:c], rank) < rank and ranks.get(tok[c:], rank) < rank]
        if len(tok) > 1 and not splits:
            raise ValueError(f"{tiktoken_file}: token of rank {rank} is not a merge of two other tokens")
        merges += [f"{as_str(left)} {as_str(right)}" for _, _, left, right in sorted(splits)]
    eot = len(ranks)
    names = special_token_names(num_languages)
    added = [{"id": eot + k, "content": n, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for k, n in enumerate(names) if not n[2:3].isdigit()]
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        # ByteLevel's built-in regex is GPT-2's, the same as tiktoken's pat_str for Whisper (_PAT_STR).
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {**vocab, "<|endoftext|>": eot}, "merges": merges},
    }
    return json.dumps(spec, ensure_ascii=False)
