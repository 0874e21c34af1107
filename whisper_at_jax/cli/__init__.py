"""The command lines: one module per ``scripts/NAME.py``, each with ``main(argv) -> exit status``; the scripts
only call them. ``whisper-at-jax`` (setup.py's console script) is :func:`whisper_at_jax.cli.infer.main`."""
