"""Config files for ``scripts/train.py --config configs/NAME.py[:ARG]``; the recipes live in
:mod:`whisper_at_jax.configs` (a config of your own imports ``whisper_at_jax.configs.common``)."""
