"""Optional dependencies: which extra installs each, and the one-line error a CLI gives when one is missing."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

# top-level module -> what installs it
EXTRA_OF_MODULE = {
    "tensorflow": 'pip install -e ".[train]"',
    "tensorflow_datasets": 'pip install -e ".[train]"',
    "tensorboardX": 'pip install -e ".[train]"',
    "sklearn": 'pip install -e ".[train]"',
    "scipy": 'pip install -e ".[train]"',
    "torch": 'pip install torch (only needed to read .pt/.pth/.bin files)',
    "libtpu": 'pip install -e ".[tpu]"',
}


def missing_extra_message(error: ImportError) -> str | None:
    """The one-line message for a missing optional dependency, or None when ``error`` is about something else."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if name not in EXTRA_OF_MODULE:
        return None
    return f"error: this needs the optional package {name!r}, which is not installed: {EXTRA_OF_MODULE[name]}"


@contextlib.contextmanager
def missing_extra_exits() -> Iterator[None]:
    """Around a CLI's main: a missing optional dependency exits 1 with :func:`missing_extra_message`, no traceback."""
    try:
        yield
    except ImportError as e:
        message = missing_extra_message(e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(1)
