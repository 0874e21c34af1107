"""Training configs (ml_collections): ``get_config(arg)`` per recipe, on the keys of :func:`common.base_config`.

``scripts/train.py --config configs/NAME.py:ARG`` loads the repository's ``configs/NAME.py``, a one-line file that
takes ``get_config`` from here; a config of your own imports :mod:`whisper_at_jax.configs.common` the same way.
"""
