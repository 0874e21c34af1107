"""The command lines: one module per ``scripts/NAME.py``, each with ``main(argv) -> exit status``; the scripts
only call them."""
