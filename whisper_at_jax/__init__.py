"""whisper-at-jax: Whisper and Whisper-AT (transcripts + sound tags from one encoder pass) in JAX/Flax."""

from .api import WhisperModel, load_model
from .convert import CheckpointError
from .model import ModelDimensions, Whisper, dims_for

__all__ = ["CheckpointError", "ModelDimensions", "Whisper", "WhisperModel", "dims_for", "load_model"]


def __getattr__(name: str):
    # The audio front end and later capabilities are imported lazily so `import whisper_at_jax` stays light.
    if name in ("load_audio", "log_mel_spectrogram", "pad_or_trim"):
        from . import audio

        return getattr(audio, name)
    if name == "parse_at_label":
        from .tagging import parse_at_label

        return parse_at_label
    raise AttributeError(f"module 'whisper_at_jax' has no attribute {name!r}")
