"""Audio front end against openai-whisper (the reference) and against signals whose ideal answer is known."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from whisper_at_jax import audio as A
from whisper_at_jax.audio import AudioError, load_audio, log_mel_spectrogram, mel_filters, pad_or_trim

whisper = pytest.importorskip("whisper")  # openai-whisper, test extra
torch = pytest.importorskip("torch")

JFK = Path("/work/shared/data/speech/jfk.wav")

# Log-mel tolerance: the 1e-4 absolute. Both sides are fp32 FFTs (torch's pocketfft, XLA's DUCC) whose
# rounding differs in the quietest bins of loud frames. Measured max abs diff: 4.6e-6 on the synthetic speech below,
# 5.5e-5 (80 bins) / 5.8e-5 (128) on tests/data/speech_en.flac, 3.5e-5 on jfk.wav, 3.3e-5 on espeak-ng speech.
# Against a float64 computation on speech_en.flac ours is 2.6e-5 off and torch 3.4e-5: the gap is the
# reference's own fp32 noise, so a tighter bound would test rounding luck, not correctness.
MEL_ATOL = 1e-4


# ------------------------------------------------------------------------------------------------ fixtures/helpers


def _speech_like(seconds: float = 4.0, seed: int = 0, f0: float = 120.0) -> np.ndarray:
    """Voiced-speech-like signal: a gliding harmonic source with syllable-rate amplitude, noise, and a silence."""
    rng = np.random.default_rng(seed)
    sr = A.SAMPLE_RATE
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    # Harmonics up to ~4 kHz falling as 1/k, like a glottal source; 3-Hz envelope ~ syllables.
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30)) * (0.3 + 0.2 * np.sin(2 * np.pi * 3 * t))
    x = 0.2 * voiced + 0.01 * rng.standard_normal(t.size)
    x[sr : sr + sr // 2] = 0.0  # exact digital silence: exercises the 1e-10 floor and the max - 8 clamp
    return x.astype(np.float32)


def _reference_mel(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    return whisper.log_mel_spectrogram(torch.from_numpy(np.ascontiguousarray(audio)), n_mels, padding=padding).numpy()


def _tone(sr: int, seconds: float, freqs, amps) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return sum(a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs, amps))


def _raises_naming(path: Path, match: str):
    """AudioError whose message names the file and matches ``match``."""

    class _Ctx:
        def __enter__(self):
            self._ctx = pytest.raises(AudioError, match=match)
            self._info = self._ctx.__enter__()
            return self._info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            if handled:
                assert str(path) in str(self._info.value), str(self._info.value)
            return handled

    return _Ctx()


# ------------------------------------------------------------------------------------------------ constants, filters


def test_constants_equal_openai_whisper():
    import whisper.audio as wa

    for name in ("SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "CHUNK_LENGTH", "N_SAMPLES", "N_FRAMES", "FRAMES_PER_SECOND",
                 "N_SAMPLES_PER_TOKEN", "TOKENS_PER_SECOND"):
        assert getattr(A, name) == getattr(wa, name), name


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_openai_asset(n_mels):
    # openai-whisper ships librosa's filterbank as a file; ours is computed. Measured: bit-identical (diff 0.0).
    asset = Path(whisper.__file__).parent / "assets" / "mel_filters.npz"
    ref = np.load(asset)[f"mel_{n_mels}"]
    ours = mel_filters(n_mels)
    assert ours.shape == ref.shape == (n_mels, A.N_FFT // 2 + 1)
    assert ours.dtype == np.float32
    # 1e-8 (~1 float32 ulp of the largest weight, 0.026) leaves room for libm differences across platforms.
    assert np.abs(ours - ref).max() <= 1e-8


def test_mel_filters_rejects_bad_n_mels():
    with pytest.raises(ValueError, match="n_mels"):
        mel_filters(0)


# ------------------------------------------------------------------------------------------------ log-mel parity


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("padding", [0, A.N_SAMPLES])
def test_log_mel_matches_openai_whisper(n_mels, padding):
    x = _speech_like()
    ref = _reference_mel(x, n_mels, padding)
    ours = np.asarray(log_mel_spectrogram(x, n_mels=n_mels, padding=padding))
    assert ours.shape == ref.shape == (n_mels, (x.size + padding) // A.HOP_LENGTH)
    assert np.abs(ours - ref).max() <= MEL_ATOL


def test_log_mel_matches_openai_whisper_on_shipped_speech(speech):
    # tests/data/speech_en.flac (espeak-ng speech made by the project; conftest's `speech` fixture).
    path = Path(__file__).parent / "data" / "speech_en.flac"
    np.testing.assert_array_equal(load_audio(path), speech)
    for n_mels in (80, 128):
        ref = _reference_mel(speech, n_mels, A.N_SAMPLES)
        assert np.abs(np.asarray(log_mel_spectrogram(speech, n_mels, A.N_SAMPLES)) - ref).max() <= MEL_ATOL


def test_log_mel_matches_openai_whisper_on_jfk():
    if not JFK.exists():
        pytest.skip(f"{JFK} not present (shared data is optional)")
    x = load_audio(JFK)
    # jfk.wav is 16-kHz mono int16: what openai-whisper's ffmpeg decode gives is int16 / 32768, as soundfile reads.
    raw, sr = sf.read(JFK, dtype="int16")
    assert sr == A.SAMPLE_RATE and np.array_equal(x, raw.astype(np.float32) / 32768.0)
    for padding in (0, A.N_SAMPLES):
        ref = _reference_mel(x, 80, padding)
        ours = np.asarray(log_mel_spectrogram(x, padding=padding))
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= MEL_ATOL


def test_log_mel_matches_openai_whisper_on_tts_at_22050_hz(german_speech_file):
    x = load_audio(german_speech_file)  # 22050 Hz: load_audio resamples it with soxr first
    ref = _reference_mel(x, 80, A.N_SAMPLES)
    assert np.abs(np.asarray(log_mel_spectrogram(x, padding=A.N_SAMPLES)) - ref).max() <= MEL_ATOL


def test_log_mel_batched_jit_path_and_empty(tmp_path):
    a, b = _speech_like(3.0, seed=1, f0=110.0), 0.1 * _speech_like(3.0, seed=2, f0=210.0)
    batch = np.asarray(log_mel_spectrogram(np.stack([a, b])))
    assert batch.shape == (2, 80, a.size // A.HOP_LENGTH)
    # Per-example clamp: each row equals the unbatched result (b is 20 dB quieter, so a global max would differ).
    # Measured bit-identical; 1e-6 allows for a different XLA blocking of the batched FFT.
    for row, x in zip(batch, (a, b)):
        np.testing.assert_allclose(row, np.asarray(log_mel_spectrogram(x)), rtol=0, atol=1e-6)
    jitted = jax.jit(log_mel_spectrogram, static_argnames=("n_mels", "padding"))
    np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(a), n_mels=128, padding=A.N_SAMPLES)),
                               np.asarray(log_mel_spectrogram(a, 128, A.N_SAMPLES)), rtol=0, atol=1e-6)
    # A path is loaded like openai-whisper's log_mel_spectrogram(str) does.
    wav = tmp_path / "a.wav"
    sf.write(wav, a, A.SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(np.asarray(log_mel_spectrogram(str(wav))), np.asarray(log_mel_spectrogram(a)))
    # Empty audio padded to a window is all floor, as in openai-whisper (what transcribe of empty audio sees).
    empty = np.zeros(0, np.float32)
    ref = _reference_mel(empty, 80, A.N_SAMPLES)
    np.testing.assert_allclose(np.asarray(log_mel_spectrogram(empty, padding=A.N_SAMPLES)), ref, atol=MEL_ATOL)
    with pytest.raises(AudioError, match="too short"):
        log_mel_spectrogram(np.zeros(100, np.float32))


def test_pad_or_trim_numpy_and_jax():
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    for length in (5, 12, 20):
        ref = whisper.pad_or_trim(x, length)
        np.testing.assert_array_equal(pad_or_trim(x, length), ref)
        out = pad_or_trim(jnp.asarray(x), length)
        assert isinstance(out, jax.Array)
        np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(pad_or_trim(x, 3, axis=0), whisper.pad_or_trim(x, 3, axis=0))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: pad_or_trim(v, 7))(jnp.asarray(x))), x[:, :7])


# ------------------------------------------------------------------------------------------------ load_audio


# (format, subtype, atol vs the source, in the interior). Lossless 16-bit: one LSB (1/32768 = 3.05e-5).
# Lossy codecs at their default quality on this 2-tone signal: measured 2.2e-2 (vorbis) and 1.1e-2 (mp3); 0.05
# still catches a one-sample misalignment (a 3 kHz tone of 0.2 moves ~0.24 per sample) or a wrong gain.
FORMATS = [
    ("wav", "PCM_16", 3.1e-5),
    ("flac", "PCM_16", 3.1e-5),
    ("ogg", "VORBIS", 0.05),
    ("mp3", "MPEG_LAYER_III", 0.05),
]


@pytest.mark.parametrize("ext,subtype,atol", FORMATS, ids=[f[0] for f in FORMATS])
def test_load_audio_formats(tmp_path, ext, subtype, atol):
    if not sf.check_format(ext.upper(), subtype):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {ext}/{subtype}")
    src = _tone(A.SAMPLE_RATE, 2.0, [440.0, 3000.0], [0.3, 0.2]).astype(np.float32)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, src, A.SAMPLE_RATE, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.size == src.size
    edge = 800  # 50 ms: codec start-up / tone onset transients
    assert np.abs(y - src)[edge:-edge].max() <= atol


def test_load_audio_resamples_8k(tmp_path):
    path = tmp_path / "tone8k.wav"
    sf.write(path, _tone(8000, 2.0, [440.0, 1234.5], [0.3, 0.2]).astype(np.float32), 8000, subtype="FLOAT")
    y = load_audio(path)
    ideal = _tone(A.SAMPLE_RATE, 2.0, [440.0, 1234.5], [0.3, 0.2])
    assert y.size == ideal.size
    # Against the mathematically ideal 16-kHz tone (measured 1.9e-7 away from the onsets) ...
    assert np.abs(y - ideal)[800:-800].max() <= 1e-5
    # ... and against an independent resampler, scipy's polyphase FIR, itself 7.3e-4 from ideal here.
    from scipy.signal import resample_poly

    ref = resample_poly(_tone(8000, 2.0, [440.0, 1234.5], [0.3, 0.2]), 2, 1)
    assert np.abs(y - ref)[800:-800].max() <= 2e-3


@pytest.mark.parametrize("ext", ["wav", "mp3"])
def test_load_audio_stereo_48k_downmix(tmp_path, ext):
    if ext == "mp3" and not sf.check_format("MP3", "MPEG_LAYER_III"):
        pytest.skip("libsndfile without mp3")
    left, right = _tone(48000, 2.0, [440.0], [0.4]), _tone(48000, 2.0, [3000.0], [0.4])
    path = tmp_path / f"stereo48k.{ext}"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), 48000,
             subtype="FLOAT" if ext == "wav" else "MPEG_LAYER_III")
    y = load_audio(path)
    ideal = _tone(A.SAMPLE_RATE, 2.0, [440.0, 3000.0], [0.2, 0.2])  # mean of the channels
    assert y.size == ideal.size
    # wav: soxr measured 1.2e-7 from ideal; mp3: lossy, measured 1.3e-2 (see FORMATS).
    assert np.abs(y - ideal)[800:-800].max() <= (1e-5 if ext == "wav" else 0.05)
    if ext == "wav":
        from scipy.signal import resample_poly

        assert np.abs(y - resample_poly((left + right) / 2, 1, 3))[800:-800].max() <= 2e-3  # scipy: 1.6e-4


def test_load_audio_arrays():
    x = _speech_like(1.0)
    out = load_audio(x.astype(np.float64))
    assert out.dtype == np.float32 and np.array_equal(out, x)
    np.testing.assert_array_equal(load_audio(np.stack([x, -x, 2 * x], axis=1)), (x - x + 2 * x) / 3)
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm), pcm / 32768.0, atol=1e-7)  # soundfile's int16 scaling
    assert load_audio(np.zeros(0, np.float32)).shape == (0,)
    with pytest.raises(AudioError, match="channels"):
        load_audio(np.stack([x, x]))  # [channels, samples]
    with pytest.raises(AudioError, match="shape"):
        load_audio(np.zeros((2, 3, 4), np.float32))
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[123] = bad
        with pytest.raises(AudioError, match="sample 123"):
            load_audio(y)
        with pytest.raises(AudioError, match="NaN or infinite"):
            log_mel_spectrogram(np.stack([x, y]))


def test_load_audio_empty_file_is_empty_array(tmp_path):
    path = tmp_path / "no_frames.wav"
    sf.write(path, np.zeros(0, np.float32), A.SAMPLE_RATE)
    y = load_audio(path)
    assert y.shape == (0,) and y.dtype == np.float32


def _truncate(path: Path, frac: float) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"cut_{path.name}")
    out.write_bytes(data[: int(len(data) * frac)])
    return out


def test_load_audio_bad_files(tmp_path):
    with _raises_naming(tmp_path / "missing.wav", "no such file"):
        load_audio(tmp_path / "missing.wav")
    with _raises_naming(tmp_path, "directory"):
        load_audio(tmp_path)
    empty = tmp_path / "zero_bytes.wav"
    empty.touch()
    with _raises_naming(empty, "0 bytes"):
        load_audio(empty)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with _raises_naming(text, "cannot decode"):
        load_audio(text)

    src = _tone(A.SAMPLE_RATE, 2.0, [440.0], [0.5]).astype(np.float32)
    cases = [("wav", "PCM_16", 0.5, "truncated"), ("wav", "PCM_16", 0.0003, "cannot decode"),  # cut in the header
             ("flac", "PCM_16", 0.5, "cannot decode"), ("ogg", "VORBIS", 0.9, "truncated"),
             ("mp3", "MPEG_LAYER_III", 0.5, "truncated")]
    for ext, subtype, frac, match in cases:
        if ext == "mp3" and not sf.check_format("MP3", subtype):
            continue
        good = tmp_path / f"good_{ext}_{frac}.{ext}"
        sf.write(good, src, A.SAMPLE_RATE, subtype=subtype)
        cut = _truncate(good, frac)
        with _raises_naming(cut, match):
            load_audio(cut)

    nan_wav = tmp_path / "nan.wav"
    bad = src.copy()
    bad[1000] = np.nan
    sf.write(nan_wav, bad, A.SAMPLE_RATE, subtype="FLOAT")
    with _raises_naming(nan_wav, "NaN or infinite"):
        load_audio(nan_wav)
    # And through log_mel_spectrogram(path), the error is the same, not a traceback from deep inside.
    with _raises_naming(text, "cannot decode"):
        log_mel_spectrogram(str(text))


def test_streamed_wav_header_is_not_truncation(tmp_path):
    # Writers streaming to a pipe leave 0xFFFFFFFF as the data size; such a file is complete, not cut.
    path = tmp_path / "streamed.wav"
    src = _tone(A.SAMPLE_RATE, 0.5, [440.0], [0.5]).astype(np.float32)
    sf.write(path, src, A.SAMPLE_RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    y = load_audio(path)
    assert y.size == src.size and np.abs(y - src).max() <= 3.1e-5
