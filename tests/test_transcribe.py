"""Long-form transcription and Whisper-AT tags against the references.

Oracles: openai-whisper 20250625's ``whisper.transcribe`` on a PyTorch model holding the same tiny.en / base
weights (transcripts, segments, timestamps, language), and whisper-at 0.5 (its encoder's pooled taps, its
``ATModel`` head, its own ``transcribe(..., at_time_res=10)`` and ``parse_at_label``) with the same weights and a
random head saved in the official ``at_model.*`` key format.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest


# avg_logprob / no_speech_prob are sums/softmaxes of fp32 log-probs computed by different kernels (XLA vs
# PyTorch); measured |diff| ~1e-5 on tiny.en, so 1e-3 leaves room without hiding a different token path
# (a changed token moves avg_logprob by ~1e-2 or more, and tokens are compared exactly anyway).
LOGPROB_TOL = 1e-3
# Tag logits vs whisper-at: different mel/encoder/head kernels in fp32; the bound. Measured ~2e-6.
TAG_TOL = 1e-4

# sentences spoken by espeak-ng into the long test file (made by the test; nothing downloaded)
SENTENCES = [
    "The harbour was quiet in the early morning, and the fishing boats rocked gently against the pier.",
    "Maria checked the weather report twice before she decided to take the northern trail.",
    "Our train to the capital leaves at seven fifteen, so please be at the station by seven.",
    "The committee will publish its final report on the water supply next Thursday.",
    "He poured the coffee, opened the window, and listened to the rain on the roof.",
    "Scientists measured the temperature of the lake every hour for three full weeks.",
    "If you want to learn a new language, practice speaking it a little every single day.",
    "The old library on the corner has a beautiful reading room with tall wooden shelves.",
    "After the concert, the musicians packed their instruments and drove back to the hotel.",
    "Please remember to turn off the lights and lock the door when you leave the office.",
    "The children built a small castle out of sand and decorated it with shells.",
    "A strong wind blew across the valley and bent the tall grass toward the river.",
    "The museum opens at ten in the morning and closes at six in the evening.",
    "She wrote a long letter to her grandmother and mailed it on the way to school.",
    "The engineers tested the new bridge with heavy trucks before it was opened to traffic.",
    "Every autumn the leaves in the park turn red, orange and bright yellow.",
    "The doctor advised him to drink more water and to walk for thirty minutes a day.",
    "Two students presented their project about solar energy to the whole class.",
    "The bakery on Main Street sells fresh bread, cakes and cookies every morning.",
    "We watched the sun set behind the mountains and then walked slowly back to the camp.",
    "The pilot announced that the plane would land twenty minutes ahead of schedule.",
    "A small cat slept on the warm windowsill while the family ate dinner.",
]


@pytest.fixture(scope="module")
def torch_tiny(tiny_en):
    return tiny_en.to_openai_whisper()


@pytest.fixture(scope="module")
def long_audio():
    """~140 s of espeak-ng speech: varied rate and gain, pauses of 0.3-2.5 s; sentences run over the 30-s marks."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from whisper_at_jax.audio import load_audio

    rng = np.random.default_rng(0)
    parts = []
    with tempfile.TemporaryDirectory() as d:
        for i, s in enumerate(SENTENCES):
            p = os.path.join(d, f"{i}.wav")
            subprocess.run(["espeak-ng", "-s", str(int(rng.integers(140, 175))), "-w", p, s], check=True,
                           capture_output=True)
            parts.append(load_audio(p) * float(rng.uniform(0.3, 1.0)))
            parts.append(np.zeros(int(16000 * rng.uniform(0.3, 2.5)), np.float32))
    return np.concatenate(parts).astype(np.float32), " ".join(SENTENCES)


def assert_same_transcript(ref: dict, ours: dict) -> None:
    assert ours["language"] == ref["language"]
    assert ours["text"] == ref["text"]
    assert len(ours["segments"]) == len(ref["segments"])
    for a, b in zip(ref["segments"], ours["segments"]):
        for key in ("id", "seek", "start", "end", "text", "tokens", "temperature"):
            assert b[key] == a[key], (key, a, b)
        assert b["compression_ratio"] == pytest.approx(a["compression_ratio"], abs=1e-12)
        for key in ("avg_logprob", "no_speech_prob"):
            assert abs(b[key] - a[key]) < LOGPROB_TOL, (key, a[key], b[key])


# ---------------------------------------------------------------------------------------------------------------
# ASR parity with openai-whisper

@pytest.mark.slow
def test_greedy_equals_openai_whisper(tiny_en, torch_tiny, speech, capsys):
    import whisper

    from whisper_at_jax.transcribe import transcribe

    ref = whisper.transcribe(torch_tiny, speech, fp16=False, verbose=True)
    printed_ref = capsys.readouterr().out
    ours = transcribe(tiny_en, speech, verbose=True)
    printed_ours = capsys.readouterr().out
    assert ours["segments"], "the clip is speech: expected segments"
    assert_same_transcript(ref, ours)
    assert printed_ours == printed_ref and "] " in printed_ours  # verbose prints the same lines


@pytest.mark.slow
def test_beam5_equals_openai_whisper(tiny_en, torch_tiny, speech):
    import whisper

    from whisper_at_jax.transcribe import transcribe

    ref = whisper.transcribe(torch_tiny, speech, fp16=False, temperature=0.0, beam_size=5)
    ours = transcribe(tiny_en, speech, temperature=0.0, beam_size=5)
    assert_same_transcript(ref, ours)


@pytest.mark.slow
def test_base_multilingual_detects_language_and_equals(base_model, speech):
    import whisper

    from whisper_at_jax.transcribe import transcribe

    ref = whisper.transcribe(base_model.to_openai_whisper(), speech, fp16=False, temperature=0.0)
    ours = transcribe(base_model, speech, temperature=0.0)
    assert ref["language"] == "en"
    assert_same_transcript(ref, ours)


@pytest.mark.slow
def test_long_file_sequential_equals_and_batched_wer(tiny_en, torch_tiny, long_audio):
    import jiwer
    import whisper
    from whisper.normalizers import EnglishTextNormalizer

    from whisper_at_jax.transcribe import transcribe

    audio, truth = long_audio
    assert len(audio) / 16000 > 120
    ref = whisper.transcribe(torch_tiny, audio, fp16=False)
    seq = transcribe(tiny_en, audio)
    assert_same_transcript(ref, seq)
    assert len({s["seek"] for s in seq["segments"]}) >= 5  # really long-form: several windows

    bat = transcribe(tiny_en, audio, mode="batched", batch_size=4)
    norm = EnglishTextNormalizer()
    wer_seq = jiwer.wer(norm(truth), norm(seq["text"]))
    wer_bat = jiwer.wer(norm(truth), norm(bat["text"]))
    print(f"WER sequential {wer_seq:.4f} batched {wer_bat:.4f}")
    assert wer_bat <= wer_seq + 0.01
    starts = [s["start"] for s in bat["segments"]]
    assert starts == sorted(starts) and all(s["end"] >= s["start"] for s in bat["segments"])
    assert bat["segments"][-1]["end"] <= len(audio) / 16000 + 1e-6


def test_window_bounds_cut_in_pauses(long_audio):
    from whisper_at_jax.audio import N_SAMPLES, log_mel_spectrogram
    from whisper_at_jax.transcribe import window_bounds

    audio, _ = long_audio
    mel = np.asarray(log_mel_spectrogram(audio, 80, padding=N_SAMPLES))
    content = mel.shape[1] - 3000
    b = window_bounds(mel, content)
    assert b[0] == 0 and b[-1] == content
    assert all(0 < y - x <= 3000 for x, y in zip(b, b[1:]))
    # every cut lies where the signal is quiet: the 0.1 s of samples around it are far below the speech level
    level = np.sqrt(np.mean(audio ** 2))
    for cut in b[1:-1]:
        around = audio[max(0, cut * 160 - 800): cut * 160 + 800]
        assert np.sqrt(np.mean(around ** 2)) < 0.1 * level, cut


# ---------------------------------------------------------------------------------------------------------------
# Bad input

@pytest.mark.slow
def test_empty_and_silence_match_openai_whisper(tiny_en, torch_tiny):
    import whisper

    from whisper_at_jax.transcribe import transcribe

    for audio in (np.zeros(0, np.float32), np.zeros(16000 * 8, np.float32)):
        ref = whisper.transcribe(torch_tiny, audio, fp16=False)
        ours = transcribe(tiny_en, audio)
        assert_same_transcript(ref, ours)
        bat = transcribe(tiny_en, audio, mode="batched")
        assert set(bat) == {"text", "segments", "language"} and bat["language"] == "en"
    assert transcribe(tiny_en, np.zeros(0, np.float32), mode="batched")["segments"] == []


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_bad_inputs_are_clear_errors(tiny_en, tmp_path, mode):
    from whisper_at_jax.audio import AudioError
    from whisper_at_jax.transcribe import transcribe

    nan = np.zeros(16000, np.float32)
    nan[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        transcribe(tiny_en, nan, mode=mode)
    inf = np.ones(16000, np.float32)
    inf[5] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        transcribe(tiny_en, inf, mode=mode)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav"):
        transcribe(tiny_en, str(empty), mode=mode)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match="notes.wav"):
        transcribe(tiny_en, str(text), mode=mode)
    with pytest.raises(AudioError):
        transcribe(tiny_en, str(tmp_path / "missing.flac"), mode=mode)


def test_bad_options(tiny_en, speech):
    from whisper_at_jax.transcribe import TranscribeError, transcribe

    with pytest.raises(TranscribeError, match="mode"):
        transcribe(tiny_en, speech, mode="fast")
    with pytest.raises(TranscribeError, match="batch_size"):
        transcribe(tiny_en, speech, batch_size=0)
    with pytest.raises(TranscribeError, match="unknown"):
        transcribe(tiny_en, speech, beam_width=5)
    with pytest.raises(TranscribeError, match="head"):  # tags need a head
        transcribe(tiny_en, speech, at_time_res=10)


@pytest.mark.slow
def test_other_rates_and_channels(tiny_en, speech, tmp_path):
    """An 8-kHz mono file and a 48-kHz stereo file are resampled/downmixed on load and transcribed."""
    import soundfile as sf
    import soxr

    from whisper_at_jax.transcribe import transcribe

    s8 = soxr.resample(speech, 16000, 8000)
    sf.write(tmp_path / "s8k.wav", s8, 8000, subtype="FLOAT")
    s48 = soxr.resample(speech, 16000, 48000)
    sf.write(tmp_path / "s48k.wav", np.stack([s48, 0.5 * s48], axis=1), 48000, subtype="FLOAT")
    # 8 kHz: the file gives the transcript of the same band-limited signal brought to 16 kHz (tiny.en on
    # espeak speech without its 4-8 kHz band differs from the full-band text, so that is the fair comparison)
    text8 = transcribe(tiny_en, str(tmp_path / "s8k.wav"))["text"]
    assert text8 == transcribe(tiny_en, soxr.resample(s8, 8000, 16000))["text"]
    assert "moon" in text8
    # 48 kHz stereo (channels 1 : 0.5): the downmix is the speech at 0.75 gain, resampled to 16 kHz
    text48 = transcribe(tiny_en, str(tmp_path / "s48k.wav"))["text"]
    assert text48 == transcribe(tiny_en, soxr.resample(0.75 * s48, 48000, 16000))["text"]
    assert "moon" in text48


# ---------------------------------------------------------------------------------------------------------------
# Whisper-AT tags

@pytest.fixture(scope="module")
def at_pair(tiny_en, tmp_path_factory):
    """(our tiny.en with a random TL-TR head, whisper-at 0.5's torch model with the same weights and head)."""
    pytest.importorskip("whisper_at")
    import torch
    from whisper_at.model import ModelDimensions as ATDims
    from whisper_at.model import Whisper as ATWhisper

    from whisper_at_jax.api import WhisperModel
    from whisper_at_jax.convert import params_to_state_dict
    from whisper_at_jax.convert.at_head import load_at_head

    torch.manual_seed(0)
    ref = ATWhisper(ATDims(**tiny_en.dims.to_dict()), at_low_compute=False)
    head_sd = {"at_model." + k: v.clone() for k, v in ref.at_model.state_dict().items()}
    path = tmp_path_factory.mktemp("head") / "random_tl_tr.pth"
    torch.save(head_sd, path)  # as the released {size}_ori.pth: a plain state dict of at_model.* tensors
    sd = {k: torch.from_numpy(np.array(v)) for k, v in params_to_state_dict(tiny_en.params).items()}
    sd.update(head_sd)
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    head_params, head_config = load_at_head(path, tiny_en.dims)
    ours = WhisperModel(tiny_en.dims, tiny_en.params, tokenizer_file=tiny_en.tokenizer_file,
                        head_params=head_params, head_config=head_config)
    return ours, ref


@pytest.fixture(scope="module")
def tag_audio(speech):
    """47.3 s (not a multiple of any tested resolution): speech, a pause, speech running over the 30-s mark (so
    sequential decoding seeks off the 30-s grid, to 26.68 s with tiny.en), a pause, a cut-off tail."""
    parts = [speech, np.zeros(56000, np.float32), speech, np.zeros(8000, np.float32), speech]
    a = np.concatenate(parts)
    n = int(47.3 * 16000)
    a = np.concatenate([a, speech[: n - len(a)]]) if len(a) < n else a[:n]
    return a.astype(np.float32)


def reference_rows(ref, audio: np.ndarray, res: float) -> np.ndarray:
    """The reference's tags on our absolute grid: whisper-at's encoder taps of each 30-s window of the padded
    spectrogram (its own slicing), concatenated by absolute 0.4-s step, then its ATModel on each row's steps
    (zero-padded past the end, as ATModel pads)."""
    import torch
    from whisper_at.audio import N_SAMPLES, log_mel_spectrogram

    mel = log_mel_spectrogram(torch.from_numpy(audio), padding=N_SAMPLES)
    content = mel.shape[-1] - 3000
    n_win = -(-content // 3000)
    with torch.no_grad():
        taps = torch.cat([ref.encoder(mel[None, :, 3000 * k: 3000 * (k + 1)])[1] for k in range(n_win)], dim=1)
        r = round(res / 0.4)
        n_rows = -(-content // (40 * r))
        rows = []
        for i in range(n_rows):
            x = taps[:, i * r:(i + 1) * r]
            if x.shape[1] < r:
                x = torch.nn.functional.pad(x, (0, 0, 0, r - x.shape[1]))
            rows.append(ref.at_model(x, time_resolution=r * 0.4 + 1e-9)[0])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("res", [0.4, 2, 4, 10, 30])
@pytest.mark.slow
def test_tag_alignment_against_reference(at_pair, tag_audio, res):
    """Rows on the absolute grid at 0.4/2/10/30 s (row ends inside windows) and 4 s (rows straddling the 30-s
    window boundary: steps 70-79), on 47.3 s of audio (a partial last row)."""
    from whisper_at_jax.tagging import tag

    ours, ref = at_pair
    got = tag(ours, tag_audio, at_time_res=res)
    want = reference_rows(ref, tag_audio, res)
    assert got["audio_tag"].shape == (math.ceil(47.3 / res), 527) == want.shape
    err = np.abs(got["audio_tag"] - want).max()
    print(f"res {res}: max |ours - reference| = {err:.2e}")
    assert err < TAG_TOL
    # the check can fail: neighbouring rows differ by far more than the tolerance
    if want.shape[0] > 1:
        assert np.abs(np.diff(want, axis=0)).max() > 100 * TAG_TOL


def reference_block_outputs(ref, mel_window: np.ndarray):
    """whisper-at's encoder, block by block, on one 30-s window: every block's per-frame output [L, 1500, d]
    (its forward pools them; the same modules without the pooling)."""
    import torch
    import torch.nn.functional as F

    enc = ref.encoder
    with torch.no_grad():
        x = F.gelu(enc.conv1(torch.from_numpy(np.ascontiguousarray(mel_window))[None]))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1) + enc.positional_embedding
        outs = []
        for block in enc.blocks:
            x = block(x)
            outs.append(x[0])
    return torch.stack(outs)


def decoder_windows(monkeypatch, model) -> list:
    """Spy on the one encoder pass per decoder window: every mel window our transcribe encodes (with layers)."""
    compiled = model.programs
    real, seen = compiled.encode_layers, []
    monkeypatch.setattr(compiled, "encode_layers", lambda p, mel: (seen.extend(np.asarray(mel)), real(p, mel))[1])
    return seen


def window_seeks(mel: np.ndarray, content: int, windows: list) -> list[tuple[int, np.ndarray]]:
    """(seek, window) for each distinct window: where in our spectrogram the window's content starts."""
    found = {}
    for w in windows:
        n = 3000 - int(np.argmax(np.any(w[:, ::-1] != 0, axis=0)))  # its content: up to the zero padding
        hits = [s for s in range(content - n + 1) if np.array_equal(mel[:, s], w[:, 0])
                and np.array_equal(mel[:, s:s + n], w[:, :n])]
        assert len(hits) == 1, hits
        found.setdefault(hits[0], w)
    return sorted(found.items())


def reference_rows_from_windows(ref, seeks_windows, content: int, res: float) -> np.ndarray:
    """The tag rows our transcribe promises, rebuilt with the reference's modules: each absolute encoder frame
    from the window that transcribed it (frames [seek_k, seek_k+1) / 2 from window k, the last window all 1500),
    mean of 20 absolute frames per step, zeros where no window reaches, whisper-at's ATModel per row."""
    import torch

    r = round(res / 0.4)
    n_rows = -(-content // (40 * r))
    frames = None
    for k, (seek, w) in enumerate(seeks_windows):
        layers = reference_block_outputs(ref, w)
        if frames is None:
            frames = torch.zeros(layers.shape[0], n_rows * r * 20, layers.shape[2])
        first = seek // 2
        take = 1500 if k + 1 == len(seeks_windows) else min(1500, seeks_windows[k + 1][0] // 2 - first)
        take = min(take, frames.shape[1] - first)
        frames[:, first:first + take] = layers[:, :take]
    steps = frames.reshape(frames.shape[0], n_rows * r, 20, -1).mean(dim=2)
    with torch.no_grad():
        rows = [ref.at_model(steps[:, i * r:(i + 1) * r], time_resolution=r * 0.4 + 1e-9)[0] for i in range(n_rows)]
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("mode,res,batch_size", [("sequential", 4, 8), ("sequential", 30, 8), ("batched", 2, 2)])
@pytest.mark.slow
def test_transcribe_tags_follow_the_decoder_windows(at_pair, tag_audio, monkeypatch, mode, res, batch_size):
    """transcribe(at_time_res=...) tags come from the decoder's own encoder passes, aligned to absolute time:
    equal to the reference encoder + ATModel applied frame by frame to the same windows (4 s: rows straddling
    a window change; 30 s: a row longer than what one window transcribes; batched with 2 windows per batch)."""
    import whisper_at_jax.transcribe as tr
    from whisper_at_jax import tagging

    ours, ref = at_pair
    windows = decoder_windows(monkeypatch, ours)
    got = tr.transcribe(ours, tag_audio, at_time_res=res, temperature=0.0, mode=mode, batch_size=batch_size)
    mel, content = tagging.load_mel(ours, tag_audio)
    seeks_windows = window_seeks(mel, content, windows)
    seeks = [s for s, _ in seeks_windows]
    assert seeks[0] == 0 and len(seeks) >= 2 and all(s % 2 == 0 for s in seeks), seeks
    assert any(s % 3000 for s in seeks), seeks  # a window off the 30-s grid: where whisper-at misaligns
    assert len(windows) == len(seeks)  # one encoder pass per decoder window, no other
    want = reference_rows_from_windows(ref, seeks_windows, content, res)
    assert got["audio_tag"].shape == want.shape == (math.ceil(47.3 / res), 527)
    err = np.abs(got["audio_tag"] - want).max()
    print(f"{mode} res {res} seeks {seeks}: max |ours - reference| = {err:.2e}")
    assert err < TAG_TOL
    if want.shape[0] > 1:  # the check can fail: neighbouring rows differ by far more than the tolerance
        assert np.abs(np.diff(want, axis=0)).max() > 100 * TAG_TOL


@pytest.mark.slow
def test_transcribe_tags_equal_whisper_at_transcribe(at_pair, tag_audio, monkeypatch):
    """whisper-at's own transcribe(at_time_res=10): the rows both implementations take from the same full 30-s
    window at the same offset (whisper-at: rows its window at a 30-s boundary wrote and no later window
    overwrote; ours: rows whose frames that window transcribed) are equal; there, tag() agrees too."""
    import torch
    import whisper_at
    from whisper_at.audio import N_SAMPLES, log_mel_spectrogram
    from whisper_at.decoding import decode as at_decode

    import whisper_at_jax.transcribe as tr
    from whisper_at_jax import tagging

    ours, ref = at_pair
    windows = []
    ref.decode = lambda mel, options: (windows.append(mel.clone()), at_decode(ref, mel, options))[1]
    try:
        res_ref = whisper_at.transcribe(ref, tag_audio, at_time_res=10, temperature=0.0, fp16=False)
    finally:
        del ref.decode
    mel = log_mel_spectrogram(torch.from_numpy(tag_audio), padding=N_SAMPLES).numpy()
    ref_seeks = []
    for w in windows:  # which offset each decoded window came from (whole-window equality)
        w = w.numpy()
        hits = [s for s in range(0, mel.shape[1] - 2999)
                if np.array_equal(mel[:, s], w[:, 0]) and np.array_equal(mel[:, s:s + 3000], w)]
        assert len(hits) == 1
        if not ref_seeks or ref_seeks[-1] != hits[0]:
            ref_seeks.append(hits[0])
    n_rows = res_ref["audio_tag"].shape[0]
    writer = {}
    for s in ref_seeks:  # whisper-at's row bookkeeping: later windows overwrite earlier rows
        n_seg = -(-(75 - (s % 1000) // 40) // 25)
        for row in range(s // 1000, min(n_rows, s // 1000 + n_seg)):
            writer[row] = s

    ours_windows = decoder_windows(monkeypatch, ours)
    seq = tr.transcribe(ours, tag_audio, at_time_res=10, temperature=0.0)
    our_mel, content = tagging.load_mel(ours, tag_audio)
    seeks = [s for s, _ in window_seeks(our_mel, content, ours_windows)]

    def our_owner(row: int):  # the window whose transcribed frames hold the whole row, if one does
        for k, s in enumerate(seeks):
            end = seeks[k + 1] if k + 1 < len(seeks) else s + 3000
            if s <= 1000 * row and 1000 * (row + 1) <= min(end, s + 3000) and s + 3000 <= content:
                return s
        return None

    comparable = [row for row, s in writer.items() if s % 3000 == 0 and our_owner(row) == s]
    assert 0 in comparable and len(comparable) >= 2, (ref_seeks, seeks)
    A, B = res_ref["audio_tag"].numpy(), seq["audio_tag"]
    assert B.shape == A.shape == (5, 527)
    err = np.abs(A[comparable] - B[comparable]).max()
    print(f"rows {comparable}; whisper-at windows at {ref_seeks}, ours at {seeks}: max diff {err:.2e}")
    assert err < TAG_TOL
    only = tagging.tag(ours, tag_audio, at_time_res=10)["audio_tag"]
    # same program on the same window except for batch composition (1e-5: XLA CPU may block a batch differently)
    assert np.abs(only[comparable] - B[comparable]).max() < 1e-5
    assert seq["text"]


@pytest.mark.slow
def test_tag_batch_sizes_agree(at_pair, tag_audio):
    from whisper_at_jax.tagging import tag

    ours, _ = at_pair
    one = tag(ours, tag_audio, at_time_res=2, batch_size=1)["audio_tag"]
    three = tag(ours, tag_audio, at_time_res=2, batch_size=3)["audio_tag"]
    # per-row results of a batched XLA program; 1e-5 allows a different reduction blocking per batch shape
    assert np.abs(one - three).max() < 1e-5


@pytest.mark.slow
def test_fallback_reuses_encoder_and_never_reruns_head(at_pair, speech, monkeypatch):
    import whisper_at_jax.transcribe as tr

    ours, _ = at_pair
    compiled = ours.programs
    counts = {"encode": 0, "head": 0}
    for name in ("encode", "encode_layers"):
        fn = getattr(compiled, name)
        monkeypatch.setattr(compiled, name, lambda *a, _fn=fn: (counts.__setitem__("encode", counts["encode"] + 1),
                                                                _fn(*a))[1])
    head = compiled.head(ours)
    monkeypatch.setattr(compiled, "head", lambda m: (lambda *a: (counts.__setitem__("head", counts["head"] + 1),
                                                                 head(*a))[1]))
    seen = []
    real_decode = tr.decode
    monkeypatch.setattr(tr, "decode", lambda m, f, o: (seen.append((f, o.temperature)), real_decode(m, f, o))[1])
    # logprob_threshold 0 fails every decoding, so every window runs all six temperatures (sample_len keeps the
    # high-temperature samples short)
    result = tr.transcribe(ours, speech, at_time_res=2, logprob_threshold=0.0, no_speech_threshold=None,
                           sample_len=24)
    windows = []
    for f, _ in seen:
        if not any(f is w for w in windows):
            windows.append(f)
    assert len(seen) == 6 * len(windows)
    assert all([t for f, t in seen if f is w] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] for w in windows)
    # one encoder pass per decoder window feeds the decoder and the head; the head runs once per batch of
    # finished rows (after a window, and at the end), whatever the 6 temperatures per window did
    assert counts["encode"] == len(windows)
    assert 1 <= counts["head"] <= len(windows) + 1
    assert result["audio_tag"].shape == (7, 527)


@pytest.mark.parametrize("bad", [1.0, 0.3, 0, -0.4, float("nan"), "10", True])
def test_at_time_res_validation(at_pair, speech, bad):
    from whisper_at_jax.options import TranscribeError
    from whisper_at_jax.tagging import tag

    with pytest.raises(TranscribeError, match="at_time_res"):
        tag(at_pair[0], speech, at_time_res=bad)


def test_at_time_res_steps():
    from whisper_at_jax.tagging import STEP_SECONDS, TranscribeError, at_time_res_steps

    assert STEP_SECONDS == 0.4
    assert at_time_res_steps(10) == 25 and at_time_res_steps(0.4) == 1
    assert at_time_res_steps(0.4 * 3) == 3  # 1.2000000000000002: whisper-at's float check rejects it
    for bad in (0.5, 1.0, 0.3, 0, -0.4, float("nan"), float("inf"), "10", True):
        with pytest.raises(TranscribeError, match="at_time_res"):
            at_time_res_steps(bad)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_sums_are_the_absolute_grid_sums(dtype):
    """``tagging.step_sums`` against its definition, frame by frame: window frame ``f < take`` adds to step
    ``(f + offset) // 20``. Small integers are exact in bf16 and in every fp32 summation order, so equality is exact;
    window lengths cover a whole number of 20-frame blocks (1500), a remainder of 1 and of 10, and one frame."""
    import jax.numpy as jnp

    from whisper_at_jax.tagging import step_sums

    rng = np.random.default_rng(0)
    for t in (1500, 1501, 1510, 37, 1):
        offset, take = np.arange(20) % 20, rng.integers(0, t + 1, 20)
        take[:3] = (t, 0, 1)
        x = rng.integers(-64, 64, (20, 2, t, 3)).astype(np.float32)
        want = np.zeros((20, 2, -(-(t + 19) // 20), 3), np.float32)
        for b in range(20):
            for f in range(take[b]):
                want[b, :, (f + offset[b]) // 20] += x[b, :, f]
        got = step_sums(jnp.asarray(x, dtype), jnp.asarray(offset, jnp.int32), jnp.asarray(take, jnp.int32))
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"T={t}")


def test_parse_at_label_equals_whisper_at(at_pair, tag_audio):
    import torch
    from whisper_at.at_post_processing import parse_at_label as ref_parse

    from whisper_at_jax.tagging import parse_at_label, tag

    ours, _ = at_pair
    result = tag(ours, tag_audio, at_time_res=2)
    # spread the logits so the threshold really cuts inside the top-k
    result["audio_tag"] = result["audio_tag"] * 3.0
    ref_result = {"language": "en", "at_time_res": 2, "audio_tag": torch.from_numpy(result["audio_tag"])}
    for kw in ({}, {"top_k": 10, "p_threshold": 0.5}, {"top_k": 3, "include_class_list": list(range(0, 527, 2))}):
        want = ref_parse(ref_result, **kw)
        got = parse_at_label(result, **kw)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g["time"] == pytest.approx(w["time"])
            assert [n for n, _ in g["audio tags"]] == [n for n, _ in w["audio tags"]]
            assert np.allclose([v for _, v in g["audio tags"]], [v for _, v in w["audio tags"]], atol=1e-6)
    # a probability threshold is the logit threshold through the logit function
    p = parse_at_label(result, top_k=10, p_threshold_prob=0.6)
    lg = parse_at_label(result, top_k=10, p_threshold=math.log(0.6 / 0.4))
    assert p == lg
    with pytest.raises(ValueError, match="not both"):
        parse_at_label(result, p_threshold=0.0, p_threshold_prob=0.5)
    with pytest.raises(ValueError, match="probability"):
        parse_at_label(result, p_threshold_prob=1.5)


_MULTI_DEVICE = r"""
import json, sys
import numpy as np
import jax
from whisper_at_jax import convert, load_model
from whisper_at_jax.api import WhisperModel
from whisper_at_jax.convert.at_head import load_at_head
from whisper_at_jax.tagging import tag
from whisper_at_jax.transcribe import transcribe
assert jax.device_count() == 2, jax.devices()
m = load_model("tiny.en", at_head=False)
hp, hc = load_at_head(sys.argv[1], m.dims)
m = WhisperModel(m.dims, m.params, tokenizer_file=m.tokenizer_file, head_params=hp, head_config=hc)
audio = np.load(sys.argv[2])
r = transcribe(m, audio, mode="batched", batch_size=2, at_time_res=10, temperature=0.0)
t = tag(m, audio, at_time_res=2, batch_size=2)
json.dump({"segments": [[s["start"], s["end"], s["tokens"]] for s in r["segments"]],
           "audio_tag": r["audio_tag"].tolist(), "tag": t["audio_tag"].tolist()}, open(sys.argv[3], "w"))
"""


@pytest.mark.slow
def test_batched_over_two_devices_equals_one(at_pair, tag_audio, tmp_path):
    """Batched transcription and tag() with the batch sharded over 2 (virtual CPU) devices give what one device
    gives: same segments and tokens, same tag rows (1e-5: a different per-device batch may block reductions
    differently; measured 0)."""
    import json
    import sys

    import torch

    from whisper_at_jax.heads import head_params_to_torch
    from whisper_at_jax.tagging import tag
    from whisper_at_jax.transcribe import transcribe

    ours, _ = at_pair
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in head_params_to_torch(ours.head_params).items()},
               tmp_path / "head.pth")
    np.save(tmp_path / "audio.npy", tag_audio)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", _MULTI_DEVICE, str(tmp_path / "head.pth"), str(tmp_path / "audio.npy"),
                        str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    one = transcribe(ours, tag_audio, mode="batched", batch_size=2, at_time_res=10, temperature=0.0)
    assert two["segments"] == [[s["start"], s["end"], s["tokens"]] for s in one["segments"]]
    assert np.abs(np.asarray(two["audio_tag"]) - one["audio_tag"]).max() < 1e-5
    assert np.abs(np.asarray(two["tag"]) - tag(ours, tag_audio, at_time_res=2, batch_size=2)["audio_tag"]).max() < 1e-5


def test_parse_clip_timestamps():
    """clip_timestamps as openai-whisper takes them (a string or numbers); nonsense is a TranscribeError naming
    the option, raised before any audio is read."""
    from whisper_at_jax.transcribe import TranscribeError, parse_clip_timestamps, transcribe

    assert parse_clip_timestamps("0") == [0.0] and parse_clip_timestamps("") == []
    assert parse_clip_timestamps("1.5, 9,12") == [1.5, 9.0, 12.0] and parse_clip_timestamps((2, 4)) == [2.0, 4.0]
    for bad, message in (("1,x", "comma-separated seconds"), ("5,3", "end must come after"),
                         ([-1.0], "no time may be negative"), ("nan", "no time may be negative")):
        with pytest.raises(TranscribeError, match=message):
            parse_clip_timestamps(bad)
    with pytest.raises(TranscribeError, match="clip_timestamps"):
        transcribe(None, "/nonexistent.wav", clip_timestamps="4,2")
