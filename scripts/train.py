#!/usr/bin/env python3
"""Train a Whisper-AT head on a frozen Whisper encoder.

    python scripts/train.py --config configs/esc50.py:tiny.en --config.data.fold=1 --config.workdir=runs/esc_f1
    python scripts/train.py --config configs/audioset2m.py:large-v1 --config.data.tfrecords=/data/as2m

Multi-host: start one process per host with the same command (``jax.distributed.initialize()`` picks up Cloud TPU /
Slurm / Kubernetes when WAT_DISTRIBUTED=1), or give ``--coordinator_address host:port --num_processes N
--process_id I``. Re-running the same command in the same workdir resumes from its latest checkpoint.
On SIGTERM (preemption) every host saves a checkpoint at one agreed step and exits with status 75.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/NAME.py[:ARG])", lock_config=True)
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")


def main(argv):
    del argv
    from absl import logging as absl_logging

    # Orbax logs every save step at INFO through absl; keep ours at INFO and theirs at WARNING.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("whisper_at_jax").setLevel(logging.INFO)
    from whisper_at_jax import parallel

    config = _CONFIG.value
    # Before anything touches a device.
    parallel.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value,
                                          heartbeat_timeout_s=config.get("heartbeat_timeout_s") if config else None)
    from whisper_at_jax.convert import CheckpointError
    from whisper_at_jax.data import DataError
    from whisper_at_jax.train import EXIT_PREEMPTED, Preempted, TrainError, train

    if config is None:
        raise app.UsageError("--config is required")
    try:
        result = train(config)
    except (TrainError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:  # a complete checkpoint is saved: re-running the same command resumes there
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    summary = {k: v for k, v in result.items() if k not in ("head_params",)}
    print(summary)
    return 0


def _help_requested(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "-?", "--helpshort", "--helpfull") for a in argv[1:])


if __name__ == "__main__":
    if _help_requested(sys.argv):  # absl's help exits with status 1; asking for help is not an error
        flags.FLAGS.mark_as_parsed()
        print(__doc__.strip() + "\n\nflags:\n" + flags.FLAGS.main_module_help())
        sys.exit(0)
    flags.mark_flag_as_required("config")
    from whisper_at_jax.extras import missing_extra_exits

    with missing_extra_exits():
        app.run(main)
