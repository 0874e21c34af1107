"""Atomic writes: a temporary file (or folder) beside the target, renamed over it when complete.

A killed writer leaves either the old target or the new one, never a torn one, and no temporary entry. What is
written gets the permissions ``open()`` / ``mkdir()`` would give it (``mkstemp`` and ``mkdtemp`` make owner-only
entries). Every atomic write of the project goes through this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file name beside ``path`` for writers that want a name (``np.save``, a ``TFRecordWriter``,
    ``savefig``): renamed over ``path`` when the block completes, deleted when it raises.

    ``suffix`` ends the temporary name, for writers that pick a format by it or append one (``np.save`` adds
    ``.npy`` unless the name ends with it: pass ``".tmp.npy"``).
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (text: ``text.encode("utf-8")``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill: when the block completes it takes ``path``'s place (an existing
    folder there is replaced), when it raises it is deleted. Only the folder's top-level entries are expected."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
