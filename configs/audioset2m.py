"""The paper's AudioSet-2M recipe: ``--config configs/audioset2m.py:SIZE[,512]``.
The recipe: :mod:`whisper_at_jax.configs.audioset2m`."""

from whisper_at_jax.configs.audioset2m import get_config  # noqa: F401
