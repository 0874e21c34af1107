"""Sounds made here for the experiments and the demo: espeak-ng speech, synthesised backgrounds, mixing at an SNR.

Everything is made by this module (no recording from elsewhere): the speech is espeak-ng (GPL-3 program; its output
is not covered by the program's license), the backgrounds are synthesised below with a fixed seed, so the demo file
(``scripts/make_demo.py``) is reproducible and the project's own. Backgrounds imitate ESC-50 classes the shipped
head knows: ``rain`` (hiss + droplet patter), ``siren`` (a two-tone wail), ``clock_tick`` (tick-tock clicks),
``church_bells`` (inharmonic strikes). :func:`speech` needs ``espeak-ng`` on PATH (Debian: ``apt-get install
espeak-ng``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from whisper_at_jax.audio import SAMPLE_RATE as SR

DEMO_TEXT = ("Whisper A T writes down what people say, and it also hears the sounds behind them, "
             "like the siren in the street outside.")
#: The demo's background: an ESC-50 class the shipped head knows (tests/test_default_head.py checks its top tag).
DEMO_BACKGROUND = "siren"
DEMO_PATH = Path(__file__).resolve().parent.parent / "assets" / "demo.flac"


class SynthError(RuntimeError):
    """espeak-ng missing or failing (named in the message)."""


def speech(text: str, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng -> float32 16 kHz mono (espeak writes 22.05 kHz; resampled by load_audio)."""
    from whisper_at_jax.audio import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    fd, tmp = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp, text],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise SynthError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
        return load_audio(tmp)
    finally:
        os.unlink(tmp)


def _fft_filter(x: np.ndarray, lo: float, hi: float, slope: float = 0.0) -> np.ndarray:
    """Band-limit ``x`` to [lo, hi] Hz with a spectral tilt of ``slope`` dB/octave (above lo)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SR)
    gain = ((f >= lo) & (f <= hi)).astype(np.float64)
    if slope:
        gain *= np.power(np.maximum(f, lo) / lo, slope / 6.02)
    return np.fft.irfft(spec * gain, n=len(x))


def rain(seconds: float, seed: int = 0) -> np.ndarray:
    """Steady rain: broadband hiss (pink-ish, 300 Hz-7 kHz) + a patter of droplets (short decaying noise bursts,
    Poisson ~150/s, random loudness) + slow swells. Peak-normalised to 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    hiss = _fft_filter(rng.standard_normal(n), 300, 7000, slope=-2.0)
    hiss /= np.abs(hiss).max()
    swell = 1 + 0.25 * np.sin(2 * np.pi * 0.15 * np.arange(n) / SR + rng.uniform(0, 6.3))
    drops = np.zeros(n)
    for t in rng.uniform(0, n, int(150 * seconds)).astype(int):
        m = int(rng.uniform(0.002, 0.012) * SR)
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4)) * rng.lognormal(0, 0.6)
        end = min(n, t + m)
        drops[t:end] += burst[: end - t]
    drops = _fft_filter(drops, 1000, 7500)
    x = 0.7 * hiss * swell + 0.5 * drops / (np.abs(drops).max() + 1e-9)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def siren(seconds: float, seed: int = 0) -> np.ndarray:
    """An emergency-vehicle wail: fundamental swept 700<->1400 Hz (4-s period) with odd harmonics."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = 1050 + 350 * np.sin(2 * np.pi * t / 4.0 + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = np.sin(phase) + 0.35 * np.sin(3 * phase) + 0.15 * np.sin(5 * phase)
    x += 0.02 * rng.standard_normal(len(t))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def clock_tick(seconds: float, seed: int = 0) -> np.ndarray:
    """A mechanical clock: 4 ticks per second alternating 'tick' (3.2 kHz) and 'tock' (2.1 kHz), each a click of
    damped resonances with a little jitter, over faint room noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = 0.003 * rng.standard_normal(n)
    m = int(0.025 * SR)
    tt = np.arange(m) / SR
    for k, start in enumerate(np.arange(0.1, seconds, 0.25)):
        f0 = 3200 if k % 2 == 0 else 2100
        click = sum(a * np.sin(2 * np.pi * f0 * r * tt) for a, r in ((1, 1), (0.5, 1.7), (0.3, 2.9)))
        click = click * np.exp(-tt / 0.004) + 0.3 * rng.standard_normal(m) * np.exp(-tt / 0.001)
        i = int((start + rng.normal(0, 0.002)) * SR)
        end = min(n, i + m)
        x[i:end] += click[: end - i]
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def church_bells(seconds: float, seed: int = 0) -> np.ndarray:
    """Bells: strikes every 1.2 s alternating two pitches, each with a bell's inharmonic partials
    (hum 0.5, prime 1, tierce 1.2, quint 1.5, nominal 2, ...) and long exponential decays."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = np.zeros(n)
    partials = ((0.5, 0.6, 3.0), (1.0, 1.0, 2.0), (1.2, 0.7, 1.5), (1.5, 0.4, 1.2), (2.0, 0.6, 1.0),
                (2.5, 0.3, 0.7), (3.0, 0.2, 0.5), (4.2, 0.15, 0.3))
    for k, start in enumerate(np.arange(0.05, seconds, 1.2)):
        f0 = 440.0 if k % 2 == 0 else 370.0
        i = int(start * SR)
        t = np.arange(n - i) / SR
        for r, a, tau in partials:
            x[i:] += a * np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 6.3)) * np.exp(-t / tau)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


BACKGROUNDS = {"rain": rain, "siren": siren, "clock_tick": clock_tick, "church_bells": church_bells}


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def mix_at_snr(speech_audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 20 log10(rms(speech) / rms(noise)) = snr_db; the noise is tiled or cropped
    to the speech's length (the reference's gen_noisy_speech.py). The sum is scaled down only if its peak would
    exceed 1 (what writing a 16-bit file needs), which leaves the SNR unchanged."""
    s = np.asarray(speech_audio, np.float64)
    nz = np.asarray(noise, np.float64)
    if len(s) == 0 or len(nz) == 0:
        raise ValueError("mix_at_snr: empty speech or noise")
    nz = np.tile(nz, -(-len(s) // len(nz)))[: len(s)]
    nz = nz * (rms(s) / max(rms(nz), 1e-6)) / (10 ** (snr_db / 20))
    y = s + nz
    peak = np.abs(y).max()
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


def write_flac(path: Path, audio: np.ndarray) -> None:
    """16-bit FLAC, written to a temporary file in the same folder and renamed."""
    import soundfile as sf

    from whisper_at_jax.io_utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.flac") as tmp:
        sf.write(tmp, np.clip(audio, -1, 1), SR, subtype="PCM_16", format="FLAC")


def make_demo(background: str = DEMO_BACKGROUND, snr_db: float = 6.0, text: str = DEMO_TEXT,
              seed: int = 0) -> np.ndarray:
    """The demo audio: 0.5 s of the background alone, then speech over it, then 0.5 s of background."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; choose from {sorted(BACKGROUNDS)}")
    sp = speech(text, voice="en-us", speed=145)
    lead = int(0.5 * SR)
    sp = np.concatenate([np.zeros(lead, np.float32), sp, np.zeros(lead, np.float32)])
    bg = BACKGROUNDS[background](len(sp) / SR, seed=seed)
    # SNR measured on the spoken part only, so the silent lead-in/out do not lower it
    voiced = sp[lead:-lead]
    bg_scaled = bg * (rms(voiced) / rms(bg)) / (10 ** (snr_db / 20))
    y = sp + bg_scaled
    return (0.9 * y / np.abs(y).max()).astype(np.float32)
