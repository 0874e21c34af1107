"""Deviceless TPU compilation (whisper_at_jax.tpu): real TPU compiler via libtpu, reduced Whisper, small slices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("libtpu")

from configs import common  # noqa: E402
from whisper_at_jax import parallel, tpu, train as T  # noqa: E402
from whisper_at_jax.heads import make_head  # noqa: E402


def test_bad_topology_names_are_refused_with_the_expected_form():
    for bad in ("v5e", "v9:2x2", "v5e:2x2x2", "garbage", "v4:2x2"):
        with pytest.raises(tpu.TPUError, match="topology"):
            tpu.topology_mesh(bad)
    with pytest.raises(tpu.TPUError, match="libtpu refused"):
        tpu.topology_mesh("v5e:3x3")  # not a multiple of the 2x2 chips of a host


def test_slices_have_one_device_per_chip_and_hosts_as_on_cloud_tpu():
    for name, chips, hosts in (("v5e:2x4", 8, 1), ("v5e:4x4", 16, 4), ("v4:2x2x1", 4, 1), ("v6e:2x2", 4, 1)):
        devs = tpu.topology_devices(name)
        assert (len(devs), len({d.process_index for d in devs})) == (chips, hosts), name


def test_batch_that_does_not_split_over_the_chips_is_refused():
    mesh = tpu.topology_mesh("v5e:4x4")
    with pytest.raises(tpu.TPUError, match="does not split over the 16 chips"):
        tpu.check_batch(40, mesh, "config.batch_size")


def test_cached_step_per_chip_memory_does_not_grow_with_the_global_batch():
    # 16 rows per chip on 4 and on 64 chips (16 hosts): global batch 64 vs 1024. mixup's partner is a roll
    # (augment.partner); a permutation of the global batch made every chip hold all of it.
    c = common.base_config()
    shape = (1, 4, 25, 64)
    head = make_head(c.head.mode, 4, 64, 8)
    temps = []
    for topo, gb in (("v5e:2x2", 64), ("v5e:8x8", 1024)):
        mesh = tpu.topology_mesh(topo)
        steps = T.build_steps(c, mesh, head, T.make_optimizer(c, 10), shape)
        state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             jax.eval_shape(steps.init), steps.state_sharding)
        data = parallel.data_sharding(mesh)
        args = (state, jax.ShapeDtypeStruct((gb,) + shape[1:], jnp.float32, sharding=data),
                jax.ShapeDtypeStruct((gb, 8), jnp.float32, sharding=data))
        rep = tpu.compile_report("cached_train_step", steps.cached, args, topo)
        assert rep["compiled"], rep
        temps.append(rep["memory_bytes"]["temporaries"])
    # a gathered batch would be 16x larger on the 64-chip slice (1024 rows of 25.6 KB = 26 MB more per chip)
    assert temps[1] < 1.25 * temps[0] + (1 << 20), temps
