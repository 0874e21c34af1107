"""AudioSet-20K (the balanced subset): ``--config configs/audioset20k.py:SIZE[,512]``.
The recipe: :mod:`whisper_at_jax.configs.audioset20k`."""

from whisper_at_jax.configs.audioset20k import get_config  # noqa: F401
