"""Training configs: Python files with ``get_config(arg)`` (ml_collections), loaded by ``scripts/train.py --config``."""
