"""The shared config pieces, :mod:`whisper_at_jax.configs.common` (kept here for ``from configs import common``)."""

from whisper_at_jax.configs.common import PAPER_RECIPES, base_config, paper_recipe, size_of  # noqa: F401
