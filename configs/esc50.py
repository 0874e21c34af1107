"""ESC-50, one fold held out: ``--config configs/esc50.py:SIZE[,HEAD_MODE] --config.data.fold=K`` (K = 1..5).
The recipe: :mod:`whisper_at_jax.configs.esc50`."""

from whisper_at_jax.configs.esc50 import get_config  # noqa: F401
