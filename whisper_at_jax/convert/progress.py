"""Optional progress bars for the readers: silent inside the library, switched on by ``scripts/convert.py``.

A module switch rather than a parameter threaded through every reader keeps ``resolve``'s signature (used by
``load_model``) unchanged; converting large-v3 (3 GB) is the case where a user wants to see it move.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

_enabled = False


def enable(on: bool = True) -> None:
    """Show tqdm bars (on stderr) while checkpoints are read and converted."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def track(total: int, desc: str, unit: str = "tensor", unit_scale: bool = False) -> Iterator[Callable[[int], None]]:
    """Yields ``step(n=1)``; a tqdm bar when enabled, a no-op otherwise."""
    if not _enabled:
        yield lambda n=1: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr, leave=False,
              dynamic_ncols=True) as bar:
        yield bar.update
