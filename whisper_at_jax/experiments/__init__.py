"""The experiments of docs/results.md as library code; ``scripts/esc50.py``, ``scripts/noise_experiment.py`` and
``scripts/make_demo.py`` are their command lines.

- :mod:`.esc50`: ESC-50 folders, taps through the trainer's extraction, five-fold cross-validation of heads and
  the linear probe, the results file;
- :mod:`.default_head`: the recipe of the shipped heads (ESC-50 clean + with speech mixed under every clip);
- :mod:`.noise`: the paper's Figure 1 (upper): WER and tag accuracy as ESC-50 noise is mixed under speech;
- :mod:`.sounds`: espeak-ng speech, the synthesised backgrounds of the demo, mixing at an SNR.
"""
