"""Device mesh and sharding helpers for data-parallel head training (the modern replacement of ``pmap``).

One 1-D mesh axis ``"data"`` spans every device of every host. Batches are sharded along it, the (small) head
params and optimizer state are replicated, and XLA inserts the gradient all-reduce. Multi-host runs call
:func:`maybe_initialize_distributed` before anything touches a device.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that ask for a multi-process run (ours first; JAX_* are what jax.distributed itself reads
# on some clusters). Cloud TPU / Slurm / Kubernetes are detected by jax.distributed.initialize() with no arguments;
# WAT_DISTRIBUTED=1 asks for exactly that.
_ENV_COORD = ("WAT_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
_ENV_NPROC = ("WAT_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_PID = ("WAT_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names: Sequence[str]) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, *, platform: str | None = None,
                                 heartbeat_timeout_s: int | None = None) -> bool:
    """Start ``jax.distributed`` when arguments or environment variables ask for a multi-process run.

    Must run before any JAX computation or device query. Arguments override the environment
    (``WAT_COORDINATOR_ADDRESS`` / ``WAT_NUM_PROCESSES`` / ``WAT_PROCESS_ID``, or the ``JAX_*`` equivalents);
    ``WAT_DISTRIBUTED=1`` calls ``jax.distributed.initialize()`` with no arguments (cluster auto-detection).
    On CPU the cross-process collectives use gloo (the default CPU client has none).

    ``heartbeat_timeout_s``: a process silent this long counts as dead and every other process stops with an
    error (JAX's default, 100 s, when None).

    Returns True when this process is part of a multi-process run.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or _env(_ENV_COORD)
    if num_processes is None and _env(_ENV_NPROC) is not None:
        num_processes = int(_env(_ENV_NPROC))
    if process_id is None and _env(_ENV_PID) is not None:
        process_id = int(_env(_ENV_PID))
    auto = os.environ.get("WAT_DISTRIBUTED", "") not in ("", "0")
    if coordinator_address is None and not auto:
        if num_processes not in (None, 1):
            raise ValueError(f"num_processes={num_processes} needs a coordinator address "
                             "(--coordinator_address or WAT_COORDINATOR_ADDRESS)")
        return False
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError("a coordinator address needs num_processes and process_id too "
                         f"(got num_processes={num_processes}, process_id={process_id})")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} out of range for {num_processes} processes")
    platform = platform or os.environ.get("JAX_PLATFORMS", "") or ""
    if platform.split(",")[0] in ("cpu", ""):
        # Harmless on accelerators (only the CPU client reads it); required for CPU collectives across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {} if heartbeat_timeout_s is None else {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
    if coordinator_address is None:
        jax.distributed.initialize(**kw)
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, **kw)
    return jax.process_count() > 1


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """1-D ``("data",)`` mesh over ``devices`` (default: every device of every process).

    Auto axis types keep classic GSPMD propagation (the JAX default is now Explicit axes, under which
    ``with_sharding_constraint`` and implicit resharding raise).
    """
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    devices = list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (head params, optimizer state, step, RNG)."""
    return NamedSharding(mesh, P())


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Rows of a global batch that this process feeds; the batch must split evenly over devices and hosts."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ValueError(f"global batch {global_batch} does not split evenly over {n_dev} devices")
    n_proc = jax.process_count()
    return global_batch // n_proc


def to_global(local: Any, sharding: NamedSharding) -> Any:
    """Process-local numpy rows (this host's contiguous slice of the global batch) -> global ``jax.Array``s.

    ``local`` is an array or a tree of them (e.g. a reader batch): each numeric leaf becomes one global array
    (leading dimension = the sum over hosts); string leaves (ids) stay host-local.
    """
    def one(x: Any) -> Any:
        arr = np.asarray(x)
        return x if arr.dtype.kind in "USO" else jax.make_array_from_process_local_data(sharding, arr)

    return jax.tree.map(one, local)


def process_allgather(tree: Any) -> Any:
    """Global (possibly multi-host) arrays -> full numpy arrays on every host (eval logits for mAP)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
