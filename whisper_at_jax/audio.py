"""Audio front end: decoding, resampling, padding and Whisper's log-mel spectrogram in JAX.

The numbers follow openai-whisper's ``whisper/audio.py`` (same STFT, same Slaney mel filterbank, same
log/clamp/scale), so a mel computed here feeds the converted Whisper weights exactly as the PyTorch one does.
Files are decoded with libsndfile (through ``soundfile``: wav, flac, ogg/vorbis, opus and, with libsndfile >= 1.1,
mp3) and resampled with libsoxr: no ffmpeg binary is needed.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second (10 ms)
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's conv stem halves the frame rate
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50 encoder positions per second (20 ms)

PathLike = Union[str, os.PathLike]
AudioLike = Union[PathLike, np.ndarray, jax.Array]


class AudioError(ValueError):
    """Audio that cannot be used: missing, empty or undecodable file, non-finite samples, wrong shape."""


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _finite_or_raise(audio: np.ndarray, what: str, axes: tuple[str, ...] = ("sample", "channel")) -> None:
    # A NaN sample would turn the whole window's log-mel into NaN (the per-example max is NaN) and the decoder
    # would silently emit garbage, so refuse it up front and say where.
    if audio.size == 0 or np.isfinite(audio).all():
        return
    bad = ~np.isfinite(audio)
    first = np.argwhere(bad)[0]
    where = ", ".join(f"{name} {int(i)}" for name, i in zip(axes, first))
    raise AudioError(
        f"{what}: {int(bad.sum())} sample(s) are NaN or infinite (first at {where}); "
        "clean the signal (e.g. np.nan_to_num) before passing it"
    )


def _to_float(audio: np.ndarray, what: str) -> np.ndarray:
    if audio.dtype.kind == "f":
        return audio.astype(np.float32, copy=False)
    if audio.dtype.kind == "i":
        # Integer PCM at its full scale, as soundfile would have read it: int16 32767 -> ~1.0.
        return (audio.astype(np.float64) / float(-np.iinfo(audio.dtype).min)).astype(np.float32)
    if audio.dtype.kind == "u":
        info = np.iinfo(audio.dtype)
        mid = (info.max + 1) / 2.0
        return ((audio.astype(np.float64) - mid) / mid).astype(np.float32)
    raise AudioError(f"{what}: unsupported sample dtype {audio.dtype}; expected float or integer PCM")


def _downmix(audio: np.ndarray, what: str) -> np.ndarray:
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise AudioError(f"{what}: expected a 1-D [samples] or 2-D [samples, channels] array, got shape {audio.shape}")
    if audio.shape[1] > audio.shape[0] > 0:
        # soundfile's layout is [samples, channels]; an array wider than it is long is almost surely
        # [channels, samples] (torchaudio's layout) and averaging it the other way would yield nonsense.
        raise AudioError(
            f"{what}: shape {audio.shape} has more channels than samples; expected [samples, channels] "
            "(transpose a [channels, samples] array first)"
        )
    if audio.shape[1] == 1:
        return audio[:, 0]
    return audio.mean(axis=1, dtype=np.float64).astype(np.float32)


def _resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out or audio.size == 0:
        return audio
    import soxr

    # soxr "HQ": 20-bit precision, passband to 91% of Nyquist with linear phase; what sox itself uses by default.
    return np.asarray(soxr.resample(audio, sr_in, sr_out, quality="HQ"), dtype=np.float32)


_SUPPORTED_HINT = (
    "libsndfile reads wav, flac, ogg (vorbis, opus), mp3, aiff and more; convert other containers "
    "(m4a, aac, mp4, webm) first, e.g. `ffmpeg -i IN -ar 16000 -ac 1 OUT.wav`"
)
_MPEG_FRAME = 1152  # samples per MPEG-1 layer III frame
# libsndfile's header log notes a WAV whose data chunk announces more bytes than the file holds, e.g.
# "data : 64000 (should be 31978)".
_WAV_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _truncation(info: str, fmt: str, announced: int, decoded: int) -> str | None:
    """Why the file looks cut short, or None. libsndfile decodes what is there without complaint, so look."""
    m = _WAV_SHORT.search(info)
    if m:
        said, has = int(m.group(1)), int(m.group(2))
        # 0 and 0xFFFFFFFF are what streaming writers (ffmpeg to a pipe, sox -) leave in the header: not a cut.
        if said > has and said not in (0, 0xFFFFFFFF):
            return f"its data chunk announces {said} bytes but the file holds {has}"
    if "File ended unexpectedly" in info:  # Ogg with no end-of-stream page
        return "the Ogg stream ends without its end-of-stream page"
    # MP3 lengths without a Xing/LAME header are mpg123's estimate from the bitrate; allow it a frame or two.
    slack = 2 * _MPEG_FRAME if fmt == "MP3" else 0
    if decoded + slack < announced:
        return f"its header announces {announced} frames but only {decoded} could be decoded"
    return None


def _decode_file(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            announced, sr, fmt, info = f.frames, f.samplerate, f.format, f.extra_info
            audio = f.read(dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports every failure as LibsndfileError/RuntimeError with its own text
        msg = f"{path}: cannot decode audio ({type(e).__name__}: {e})"
        if "not recognised" in str(e) or "unimplemented format" in str(e):
            msg += f"; {_SUPPORTED_HINT}"
        raise AudioError(msg) from e
    why = _truncation(info, fmt, announced, audio.shape[0])
    if why:
        # A silently shortened transcript is worse than an error.
        raise AudioError(f"{path}: file is truncated: {why}")
    return audio, sr


def load_audio(path_or_array: AudioLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Load audio as a float32 mono numpy array at ``sr`` Hz.

    Args:
        path_or_array: a path to an audio file (anything libsndfile decodes: wav, flac, ogg/vorbis, opus, mp3
            with libsndfile >= 1.1, aiff, ...), or an array already sampled at ``sr``: 1-D ``[samples]`` or 2-D
            ``[samples, channels]``. Float arrays are taken as is (nominally in [-1, 1]); integer arrays are PCM
            and are scaled by their full range (int16 32767 -> ~1.0).
        sr: the sample rate wanted. Files at other rates are resampled with libsoxr (high quality).

    Returns:
        ``np.ndarray`` of dtype float32, shape ``[samples]``; channels are averaged. Audio with no samples (a
        valid file with zero frames, or an empty array) is allowed and gives an empty array, as openai-whisper's
        ``load_audio`` does; transcribing it gives an empty transcript.

    Raises:
        AudioError: the file is missing, a directory, 0 bytes, not audio libsndfile can decode, or truncated
            (fewer frames than its header announces); the array has an unusable shape or dtype; or any sample
            is NaN or infinite (NaN would make the whole window's log-mel NaN, so it is refused rather than
            silently zeroed). The message names the file and the problem.
    """
    if sr <= 0:
        raise AudioError(f"sample rate must be positive, got {sr}")
    if isinstance(path_or_array, (str, os.PathLike)):
        path = os.fspath(path_or_array)
        audio, file_sr = _decode_file(path)
        _finite_or_raise(audio, path)
        return np.ascontiguousarray(_resample(_downmix(audio, path), file_sr, sr), dtype=np.float32)
    what = "audio array"
    try:
        audio = np.asarray(path_or_array)
    except Exception as e:
        raise AudioError(f"{what}: cannot convert {type(path_or_array).__name__} to an array ({e})") from e
    audio = _to_float(audio, what)
    audio = _downmix(audio, what)
    _finite_or_raise(audio, what)
    return np.ascontiguousarray(audio, dtype=np.float32)


def pad_or_trim(array: Union[np.ndarray, jax.Array], length: int = N_SAMPLES, *, axis: int = -1):
    """Zero-pad at the end or cut ``array`` along ``axis`` to ``length``, as the encoder expects.

    Works for numpy arrays (returns numpy) and JAX arrays (returns JAX, usable under ``jax.jit``).
    """
    xp = jnp if isinstance(array, jax.Array) else np
    n = array.shape[axis]
    if n > length:
        return xp.take(array, xp.arange(length), axis=axis)
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return xp.pad(array, widths)
    return array


# ---------------------------------------------------------------------------------------------------------------
# Mel filterbank (Slaney scale, Slaney area normalisation: librosa.filters.mel's defaults)

_F_SP = 200.0 / 3.0  # Hz per mel in the linear part below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # 1 kHz .. 6.4 kHz spans 27 mels


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    linear = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    linear = m * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, linear)


@functools.lru_cache(maxsize=None)
def _mel_filters_cached(n_mels: int, sr: int, n_fft: int) -> np.ndarray:
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(mel_pts)
    offsets = mel_pts[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_bins]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    # Rounded to float32 before the area normalisation, then again after it: the reference asset was built in
    # float32 in these two steps, and doing the same makes ours equal to it bit for bit instead of to ~1 ulp.
    tri = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (mel_pts[2:] - mel_pts[:-2])
    weights = (tri * area[:, None]).astype(np.float32)
    weights.setflags(write=False)
    return weights


def mel_filters(n_mels: int = 80) -> np.ndarray:
    """Whisper's mel filterbank, ``[n_mels, N_FFT // 2 + 1]`` float32 (read-only; copy it to modify).

    The Slaney-scale, Slaney-normalised triangular filters over 0..8 kHz (``librosa.filters.mel(sr=16000,
    n_fft=400, n_mels=n_mels)``), computed here rather than shipped. Whisper uses 80 bins, large-v3 and turbo 128.
    """
    if not isinstance(n_mels, (int, np.integer)) or n_mels <= 0:
        raise ValueError(f"n_mels must be a positive integer (80 or 128 for Whisper), got {n_mels!r}")
    return _mel_filters_cached(int(n_mels), SAMPLE_RATE, N_FFT)


# ---------------------------------------------------------------------------------------------------------------
# Log-mel spectrogram


@functools.lru_cache(maxsize=None)
def _hann_window() -> np.ndarray:
    # Periodic Hann, = torch.hann_window(400): the window openai-whisper's torch.stft uses.
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


def _log_mel_impl(audio: jax.Array, n_mels: int, padding: int) -> jax.Array:
    audio = audio.astype(jnp.float32)
    if padding > 0:
        audio = jnp.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, padding)])
    n = audio.shape[-1]
    half = N_FFT // 2
    # torch.stft(center=True) reflect-pads n_fft // 2 on both sides.
    padded = jnp.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(half, half)], mode="reflect")
    # 1 + n // hop frames come out of the STFT; Whisper drops the last, leaving n // hop.
    n_frames = n // HOP_LENGTH
    idx = np.arange(n_frames)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]
    frames = padded[..., idx]  # [..., frames, N_FFT]
    # STFT by rfft, not a [400, 201] real DFT matmul: a 400-term fp32 dot rounds more than the FFT's log2(400)
    # stages, and rfft is faster too (docs/benchmarks.md, "Tried and not kept").
    frames = padded[..., idx] * jnp.asarray(_hann_window())  # [..., frames, N_FFT]
    spec = jnp.fft.rfft(frames, axis=-1)  # [..., frames, N_FFT // 2 + 1]
    power = jnp.square(spec.real) + jnp.square(spec.imag)
    filters = jnp.asarray(mel_filters(n_mels))  # [n_mels, bins]
    mel = jnp.einsum("mb,...fb->...mf", filters, power, precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    # Per example (openai-whisper takes the max over the whole tensor, which couples batch items): identical
    # for a single example, and batch results then equal unbatched ones.
    peak = jnp.max(log_spec, axis=(-2, -1), keepdims=True)
    log_spec = jnp.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


_log_mel_jit = jax.jit(_log_mel_impl, static_argnames=("n_mels", "padding"))


def log_mel_spectrogram(audio: AudioLike, n_mels: int = 80, padding: int = 0) -> jax.Array:
    """Whisper's log-mel spectrogram, computed in JAX.

    Args:
        audio: samples at 16 kHz, ``[samples]`` or ``[batch, samples]`` (numpy or JAX), or a path to an audio
            file (read with :func:`load_audio`).
        n_mels: 80, or 128 for large-v3 / turbo. Static under ``jax.jit``.
        padding: zero samples appended before the STFT (openai-whisper's ``transcribe`` passes ``N_SAMPLES``).
            Static under ``jax.jit``.

    Returns:
        float32 ``[n_mels, samples // 160]`` or ``[batch, n_mels, samples // 160]`` (``samples`` counting the
        padding). Each example is clamped at its own ``max - 8`` (in log10 units) and scaled as ``(x + 4) / 4``,
        equal to openai-whisper's ``log_mel_spectrogram`` for one example.

    Raises:
        AudioError: the (padded) signal is shorter than 201 samples (the centred STFT reflect-pads 200 samples
            and needs more than that), has more than 2 dimensions, holds NaN/inf (checked for host arrays and
            files, not for JAX arrays), or the file cannot be loaded.

    The function is jittable as is (``jax.jit(log_mel_spectrogram, static_argnames=("n_mels", "padding"))``);
    called eagerly it runs a cached compiled kernel per input shape.
    """
    if isinstance(audio, (str, os.PathLike)):
        audio = load_audio(audio)
    if not isinstance(audio, jax.Array):
        # Host arrays are checked here (cheap, and an error beats a NaN spectrogram); JAX arrays are not, since
        # that would force a device sync: pass them through load_audio first if they may hold NaN/inf.
        audio = _to_float(np.asarray(audio), "log_mel_spectrogram")
        _finite_or_raise(audio, "log_mel_spectrogram", ("sample",) if audio.ndim == 1 else ("example", "sample"))
    if audio.ndim not in (1, 2):
        raise AudioError(f"log_mel_spectrogram: expected [samples] or [batch, samples], got shape {audio.shape}")
    n_mels = int(n_mels)
    mel_filters(n_mels)  # validates n_mels with a clear message before tracing
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    total = audio.shape[-1] + padding
    if total <= N_FFT // 2:
        raise AudioError(
            f"log_mel_spectrogram: {total} samples is too short: the centred STFT needs more than {N_FFT // 2}; "
            "pass padding=N_SAMPLES or pad_or_trim the audio first"
        )
    return _log_mel_jit(audio, n_mels=n_mels, padding=padding)
