"""Shared helpers for benchmarks: timing by alternating rounds (this machine is noisy) and a markdown table."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable


def time_alternating(fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function, measured in interleaved rounds so load drifts hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def write_json(path: str, obj: object) -> None:
    from whisper_at_jax.io_utils import atomic_write_bytes  # here: worker processes measure their own imports

    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def write_section(doc: str | os.PathLike, begin: str, end: str, text: str, title: str = "") -> None:
    """Replace what lies between the ``begin`` and ``end`` markers of ``doc`` with ``text`` (which holds them), or
    append it (creating the file with ``title``); other sections are left as they are. Written atomically."""
    path = Path(doc)
    cur = path.read_text() if path.is_file() else (f"# {title}\n\n" if title else "")
    if begin in cur and end in cur and cur.index(begin) < cur.index(end):
        new = cur[:cur.index(begin)] + text + cur[cur.index(end) + len(end):]
    else:
        new = cur.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    from whisper_at_jax.io_utils import atomic_write_bytes

    atomic_write_bytes(path, new.encode())
