"""Shared fixtures: real weights from installed packages, reference models built from the same tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("XLA_FLAGS", "")
# The suite runs on the CPU even where libtpu (the tpu extra) is installed; tests/test_tpu.py compiles for TPUs
# without one (deviceless), which needs no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = Path(__file__).resolve().parent / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still part of CI)")
    config.addinivalue_line("markers", "isa_sensitive: fp32 parity bounds that move with the CPU's instruction set "
                                       "(CI runs them natively and again capped at AVX2: .ci/run)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is not present (developer/CI material only)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_en():
    import whisper_at_jax as wat

    return wat.load_model("tiny.en", at_head=False)


@pytest.fixture(scope="session")
def base_model():
    import whisper_at_jax as wat

    return wat.load_model("base", at_head=False)


@pytest.fixture(scope="session")
def german_speech_file() -> Path:
    """German speech the project made with espeak-ng, at espeak's own 22050 Hz (loading it resamples)."""
    return DATA / "speech_de.flac"


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """Real-ish speech the project ships (espeak-ng, made by this project): 16 kHz float32."""
    import soundfile as sf

    audio, sr = sf.read(DATA / "speech_en.flac", dtype="float32")
    assert sr == 16000
    return audio
