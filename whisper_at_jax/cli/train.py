"""Train a Whisper-AT head on a frozen Whisper encoder.

    python scripts/train.py --config configs/esc50.py:tiny.en --config.data.fold=1 --config.workdir=runs/esc_f1
    python scripts/train.py --config configs/audioset2m.py:large-v1 --config.data.tfrecords=/data/as2m

Multi-host: start one process per host with the same command (``jax.distributed.initialize()`` picks up Cloud TPU /
Slurm / Kubernetes when WAT_DISTRIBUTED=1), or give ``--coordinator_address host:port --num_processes N
--process_id I``. Re-running the same command in the same workdir resumes from its latest checkpoint.
On SIGTERM (preemption) every host saves a checkpoint at one agreed step and exits with status 75.

Before a pod run, compile it for the slice on any machine (libtpu: ``pip install -e ".[tpu]"``; no TPU needed):

    python scripts/train.py --config configs/audioset2m.py:large-v2 --config.batch_size=4096 \
        --config.eval_batch_size=1024 --compile_only=v5e:16x16

compiles the run's train step (the config's mode; ``--compile_programs=all``: online and cached), eval and
weight averaging with the config's global batch over every chip, state placed as in a run; prints per-chip memory
against HBM, FLOPs and roofline times, searches the largest per-chip batch that fits, estimates the recipe's time
(roofline lower bounds) and writes it all as JSON (``--compile_report``, default WORKDIR/compile_only/TOPOLOGY.json).
Nothing is trained and no data is read.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/NAME.py[:ARG])", lock_config=True)
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
_COMPILE_ONLY = flags.DEFINE_string("compile_only", None, "TPU topology (e.g. v5e:16x16): compile every training "
                                    "program for that slice and report memory, FLOPs and estimates; train nothing")
_COMPILE_REPORT = flags.DEFINE_string("compile_report", None, "--compile_only's JSON report "
                                      "(default WORKDIR/compile_only/TOPOLOGY.json)")
_COMPILE_PROGRAMS = flags.DEFINE_enum("compile_programs", "run", ["run", "all"], "--compile_only: the programs "
                                      "of the config's mode (run) or both modes' (all)")
_TRAIN_CLIPS = flags.DEFINE_integer("train_clips", None, "--compile_only: training clips for the estimates "
                                    "(default AudioSet-2M's, 1,953,082)")
_EVAL_CLIPS = flags.DEFINE_integer("eval_clips", None, "--compile_only: eval clips for the estimates "
                                   "(default AudioSet's eval set, 19,185)")
_BATCH_SEARCH = flags.DEFINE_bool("batch_search", True, "--compile_only: also find the largest per-chip batch "
                                  "of the train steps that fits (a few more compiles)")


def compile_only(config, topology: str) -> int:
    import json

    from whisper_at_jax import io_utils, tpu
    from whisper_at_jax.model import dims_for

    try:
        dims = dims_for(str(config.model))
        programs = tpu.TRAIN_PROGRAMS if _COMPILE_PROGRAMS.value == "all" else None
        plan = tpu.training_plan(config, topology, dims, search_batch=_BATCH_SEARCH.value, programs=programs,
                                 train_clips=_TRAIN_CLIPS.value or tpu.AUDIOSET_2M_TRAIN_CLIPS,
                                 eval_clips=_EVAL_CLIPS.value or tpu.AUDIOSET_EVAL_CLIPS, log=print)
    except (tpu.TPUError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(tpu.format_estimate(plan["estimate"]))
    out = Path(_COMPILE_REPORT.value or Path(config.workdir) / "compile_only" / f"{topology.replace(':', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    io_utils.atomic_write_bytes(out, json.dumps(plan, indent=1).encode())
    print(f"report: {out}")
    return 0 if all(r.get("compiled") and r["fits"] for r in plan["programs"]) else 1


def _run(argv: list[str]) -> int:
    del argv
    from absl import logging as absl_logging

    # Orbax logs every save step at INFO through absl; keep ours at INFO and theirs at WARNING.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("whisper_at_jax").setLevel(logging.INFO)
    from whisper_at_jax import parallel

    config = _CONFIG.value
    if _COMPILE_ONLY.value:
        if config is None:
            raise app.UsageError("--config is required")
        return compile_only(config, _COMPILE_ONLY.value)
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


def main(argv: list[str] | None = None) -> int:
    """``scripts/train.py``: parse the absl flags in ``argv`` (default ``sys.argv[1:]``) and train, or compile only;
    returns the exit status (0; 1: a compiled program does not fit; 2: an error; 75: preempted, resumable)."""
    argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    if _help_requested(argv):  # absl's help exits with status 1; asking for help is not an error
        flags.FLAGS.mark_as_parsed()
        print(f"usage: {Path(argv[0]).name} --config FILE[:ARG] [--config.FIELD=VALUE ...] [flags]\n\n"
              + __doc__.strip() + "\n\nflags:\n" + flags.FLAGS.module_help(__name__))
        raise SystemExit(0)
    flags.mark_flag_as_required("config")
    if any(a.startswith("--compile_only") for a in argv[1:]):
        # compiling for a slice needs no accelerator of this machine (and must not claim a local TPU)
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from whisper_at_jax.extras import missing_extra_exits

    with missing_extra_exits():
        try:
            app.run(_run, argv=argv)
        except SystemExit as e:  # app.run exits with _run's status
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
