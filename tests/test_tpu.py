"""Deviceless TPU compilation (whisper_at_jax.tpu): the real TPU compiler via libtpu, on a reduced Whisper (the
architecture of tiny.en at a smaller width and depth, from ``ModelDimensions``) and small slices, so that every
TPU test together stays within a few minutes on a 2-core CPU. ``benchmarks/tpu_aot.py`` compiles the real sizes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("libtpu")

from whisper_at_jax.configs import common  # noqa: E402
from whisper_at_jax import augment, parallel, tpu, train as T  # noqa: E402
from whisper_at_jax.api import compute_dtype  # noqa: E402
from whisper_at_jax.heads import make_head  # noqa: E402
from whisper_at_jax.model import Whisper, dims_for, param_shapes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: tiny.en's architecture, narrower and shallower (compile time grows with both; the programs do not change)
REDUCED = dataclasses.replace(dims_for("tiny.en"), n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                              n_text_state=64, n_text_head=2, n_text_layer=2)


def test_bad_topology_names_are_refused_with_the_expected_form():
    for bad in ("v5e", "v9:2x2", "v5e:2x2x2", "garbage", "v4:2x2"):
        with pytest.raises(tpu.TPUError, match="topology"):
            tpu.topology_mesh(bad)
    with pytest.raises(tpu.TPUError, match="libtpu refused"):
        tpu.topology_mesh("v5e:3x3")  # not a multiple of the 2x2 chips of a host


def test_slices_have_one_device_per_chip_and_hosts_as_on_cloud_tpu():
    for name, chips, hosts in (("v5e:2x4", 8, 1), ("v5e:4x4", 16, 4), ("v4:2x2x1", 4, 1), ("v4:2x2x2", 8, 2),
                               ("v6e:2x2", 4, 1)):
        devs = tpu.topology_devices(name)
        assert (len(devs), len({d.process_index for d in devs})) == (chips, hosts), name


def test_batch_that_does_not_split_over_the_chips_is_refused():
    mesh = tpu.topology_mesh("v5e:4x4")
    with pytest.raises(tpu.TPUError, match="does not split over the 16 chips"):
        tpu.check_batch(40, mesh, "config.batch_size")


def _cached_step_report(topology: str, global_batch: int) -> dict:
    c = common.base_config()
    shape = (1, 4, 25, 64)
    mesh = tpu.topology_mesh(topology)
    steps = T.build_steps(c, mesh, make_head(c.head.mode, 4, 64, 8), T.make_optimizer(c, 10), shape)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         jax.eval_shape(steps.init), steps.state_sharding)
    data = parallel.data_sharding(mesh)
    args = (state, jax.ShapeDtypeStruct((global_batch,) + shape[1:], jnp.float32, sharding=data),
            jax.ShapeDtypeStruct((global_batch, 8), jnp.float32, sharding=data))
    return tpu.compile_report("cached_train_step", steps.cached, args, topology, global_batch)


@pytest.mark.slow
def test_a_batch_gathered_onto_every_chip_is_detected(monkeypatch):
    # the check the training tests rely on, shown to fire: a data-dependent permutation of the sharded batch as
    # mixup's partner (what the trainer did before augment.partner became a roll) gathers the whole batch
    monkeypatch.setattr(augment, "partner", lambda x: x[jnp.argsort(x.reshape(x.shape[0], -1)[:, 0])])
    assert _cached_step_report("v5e:2x2", 64)["batch_all_gathers"] >= 1


def _config(global_batch: int):
    c = common.base_config()
    c.data.clip_seconds = 2.0  # 100 encoder frames: the same programs as 10 s, compiled faster
    c.batch_size = c.eval_batch_size = global_batch
    return c


def test_the_default_encoder_dtype_is_bf16_on_a_tpu_and_fp32_elsewhere():
    def matmuls(dtype: str) -> dict:
        c = _config(8)
        c.encoder_dtype = dtype
        tp = tpu.TrainPrograms(c, "v5e:2x2", REDUCED, n_classes=8)
        return tpu.matmul_flops(tp.steps.encode.lower(tp.encoder, tp._batch(8, tp.samples)).as_text())

    assert _config(8).encoder_dtype == "auto"
    auto, fp32 = matmuls("auto"), matmuls("float32")
    # on the slice: the encoder's matmuls (2-s clips: 200 mel frames) in one bf16 pass, the log-mel front end
    # fp32 at HIGHEST; with float32 the same matmuls all take six passes
    assert auto["1"] == pytest.approx(8 * _encoder_flops(REDUCED, 200), rel=1e-12)
    assert fp32 == {"6": pytest.approx(auto["1"] + auto["6"], rel=1e-12)}
    assert compute_dtype("auto", jax.devices("cpu")) == jnp.float32


@pytest.mark.parametrize("small,large", [("v5e:2x2", "v5e:4x4"), ("v4:2x2x1", "v4:2x2x2")])
@pytest.mark.slow
def test_train_steps_compile_for_multi_host_slices_with_per_chip_memory_independent_of_the_global_batch(
        small, large):
    # 2 rows per chip on 4 chips (one host) and on 16 (v5e, 4 hosts) or 8 (v4, 2 hosts)
    per_chip, totals = 2, {}
    for topo in (small, large):
        chips = len(tpu.topology_devices(topo))
        tp = tpu.TrainPrograms(_config(per_chip * chips), topo, REDUCED, n_classes=8)
        for program in ("online_train_step", "cached_train_step"):
            rep = tp.report(program)
            assert rep["compiled"] and rep["fits"], rep
            assert rep["per_chip_batch"] == per_chip
            assert rep["batch_all_gathers"] == 0, (topo, program)
            totals[topo, program] = rep["memory_bytes"]
    for program in ("online_train_step", "cached_train_step"):
        a, b = totals[small, program], totals[large, program]
        # the same per-chip work: arguments and outputs equal; temporaries within 10% (the collectives' buffers
        # differ with the slice's shape); a gathered batch would multiply them by the number of chips
        assert (a["arguments"], a["outputs"]) == (b["arguments"], b["outputs"]), (program, a, b)
        assert b["temporaries"] <= 1.1 * a["temporaries"] + (1 << 16), (program, a, b)


@pytest.mark.slow
def test_tags_only_and_batched_transcription_programs_compile_for_a_single_host_slice():
    reps = tpu.inference_programs(REDUCED, "v5e:2x4", per_chip_batch=1, dtype="bfloat16", n_classes=8)
    assert [r["program"] for r in reps] == list(tpu.INFERENCE_PROGRAMS)
    for r in reps:
        assert r["compiled"] and r["fits"], r
        assert r.get("batch_all_gathers", 0) == 0, r["program"]
    est = tpu.inference_estimate(reps)
    # tags only skips the decoder: more audio per hour than transcript + tags, which skips the aligner
    assert est["tags_only_audio_hours_per_hour"] > est["transcript_and_tags_audio_hours_per_hour"] > \
        est["with_word_timestamps_audio_hours_per_hour"] > 0


def test_step_sums_hold_no_copy_of_the_block_outputs():
    """The tag step sums read a window's block outputs in place: at large-v2's size (8 windows a chip, bf16: 0.9 GiB
    of arguments) the temporaries stay below the fp32 sums they produce, not the several fp32 copies of the whole
    [B, L, T, d] array (7.4 GiB) that a pad-and-slice formulation took. Abstract shapes: nothing is allocated."""
    from whisper_at_jax.tagging import step_sums

    mesh = tpu.topology_mesh("v5e:2x4")
    data = parallel.data_sharding(mesh)
    d, b = dims_for("large-v2"), 8 * mesh.devices.size
    args = (jax.ShapeDtypeStruct((b, d.n_audio_layer, 1500, d.n_audio_state), jnp.bfloat16, sharding=data),
            jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data), jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data))
    rep = tpu.compile_report("step_sums", jax.jit(step_sums), args, "v5e:2x4", b)
    mem = rep["memory_bytes"]
    assert rep["compiled"] and mem["temporaries"] <= mem["outputs"], mem


def _encoder_flops(d, frames: int) -> float:
    """2 x multiply-adds of the encoder on ``frames`` mel frames: the two convolutions (kernel 3), then per block
    the q/k/v/out projections, the attention scores and their weighted sum, and the 4x MLP."""
    t, w = frames // 2, d.n_audio_state
    convs = 2 * frames * 3 * d.n_mels * w + 2 * t * 3 * w * w
    block = 2 * (4 * t * w * w + 2 * t * t * w + 2 * t * w * 4 * w)
    return convs + d.n_audio_layer * block


@pytest.mark.slow
def test_encoder_flops_agree_with_the_analytic_count():
    dims = dataclasses.replace(REDUCED, n_audio_state=256, n_audio_head=4)  # wide enough for matmuls to dominate
    (rep,) = tpu.inference_programs(dims, "v5e:2x2", per_chip_batch=1, programs=("encode",), n_classes=8)
    analytic = _encoder_flops(dims, 3000)
    # the compiler's count adds the elementwise work (LayerNorm, GELU, softmax) to the matmuls
    assert rep["flops"] * rep["chips"] / rep["windows"] == pytest.approx(analytic, rel=0.10)
    # the matmuls parsed from the lowered program are the analytic ones; bf16 operands: one MXU pass each
    assert rep["matmul_flops"] == {"1": pytest.approx(analytic * rep["windows"], rel=1e-12)}
    assert rep["mxu_passes"] == 1


@pytest.mark.parametrize("dtype,passes", [("bfloat16", 1), ("float32", 6)])
def test_matmul_passes_follow_the_encoder_dtype(dtype, passes):
    # lowered for the slice (the accelerator encoder program), not compiled: the precision is in the program already
    mesh = tpu.topology_mesh("v5e:2x2")
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    module = Whisper(REDUCED, dtype=jnp.dtype(dtype))
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), param_shapes(REDUCED))
    mel = jax.ShapeDtypeStruct((4, REDUCED.n_mels, 3000), jnp.float32, sharding=data)
    text = jax.jit(lambda p, m: module.apply({"params": p}, m, method="encode")).lower(params, mel).as_text()
    assert tpu.matmul_flops(text) == {str(passes): pytest.approx(4 * _encoder_flops(REDUCED, 3000), rel=1e-12)}


def test_batch_search_finds_the_largest_fitting_batch_from_two_compiles_and_a_check():
    # a stand-in for the compiler with memory 10 + 3 * batch and 1000 bytes of HBM: the largest fit is 330
    calls = []

    def report_at(b):
        calls.append(b)
        total = 10 + 3 * b
        return {"compiled": total <= 1200, "fits": total <= 1000, "total_bytes": total, "hbm_bytes": 1000}

    found = tpu.largest_per_chip_batch(report_at, 4, limit=4096)
    assert found["per_chip_batch"] == 328 and calls == [4, 8, 328]  # rounded down to a multiple of 8
    assert found["linear_fit_bytes"] == {"fixed": 10, "per_row": 3}
    assert tpu.largest_per_chip_batch(report_at, 4, limit=64)["per_chip_batch"] == 64
    assert tpu.largest_per_chip_batch(report_at, 1024, limit=4096)["per_chip_batch"] == 256  # halved until it fits


@pytest.mark.slow
def test_compile_only_cli_writes_the_report_and_trains_nothing(tmp_path):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" / "esc50.py"),
           f"--config.workdir={tmp_path / 'run'}", "--config.batch_size=8", "--config.eval_batch_size=8",
           "--compile_only=v5e:2x2", f"--compile_report={out}", "--nobatch_search", "--train_clips=1600",
           "--eval_clips=400"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    plan = json.loads(out.read_text())
    assert plan["chips"] == 4 and plan["topology"] == "v5e:2x2"
    assert all(r["compiled"] and r["fits"] for r in plan["programs"])
    assert "not measurements" in p.stdout
    est = plan["estimate"]
    assert est["steps_per_full_pass"] == 200 and est["cached"]["recipe_s"] > 0
    assert not (tmp_path / "run" / "checkpoints").exists()
