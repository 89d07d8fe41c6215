"""Compiling for a TPU slice without one (``perf.tpu_target``, libtpu from scripts/setup_env.sh):
slice names by hand, the first-stage search compiled by XLA's TPU compiler for a v5e slice
against the exact argument bytes and the analytic model (bfloat16 rows stay bfloat16 there,
where XLA:CPU widens them), and ``jaxrank plan --compiler tpu`` without libtpu."""

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxrank.cli.main import main
from jaxrank.perf import plan, tpu_target
from jaxrank.perf.memory import tree_bytes
from jaxrank.search.planned import index_tree, search_program, search_temporaries

needs_libtpu = pytest.mark.skipif(
    not tpu_target.has_libtpu(), reason="libtpu: scripts/setup_env.sh test installs it"
)


def test_slice_names():
    assert tpu_target.topology_name("v5e", 8) == "v5e:2x4"
    assert tpu_target.topology_name("v6e", 64) == "v6e:8x8"
    assert tpu_target.topology_name("v4", 8) == "v4:2x2x2"
    assert tpu_target.topology_name("v5p", 128) == "v5p:4x4x8"
    with pytest.raises(ValueError, match="6 chips"):
        tpu_target.topology_name("v5e", 6)
    with pytest.raises(ValueError, match="no TPU topology"):
        tpu_target.topology_name("h100", 8)


@needs_libtpu
def test_v5e_slice_has_one_device_per_chip():
    mesh = tpu_target.tpu_mesh("v5e", 4, 2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert {d.device_kind for d in mesh.devices.flat} == {"TPU v5 lite"}
    assert tpu_target.tpu_mesh("v4", 8, 1).devices.size == 8  # megacore: a chip, a device


@needs_libtpu
def test_search_compiled_for_v5e_keeps_bfloat16_rows_narrow():
    """2M x 768 bfloat16 rows on 8 chips, 64 queries: XLA:TPU's arguments are the index's
    shards to the byte (plus the queries; the inner product's bias is unused and dropped),
    and its temporaries are the scan's working set, within the analytic model's count, far
    from a float32 copy of the shard that XLA:CPU makes."""
    mesh = tpu_target.tpu_mesh("v5e", 8, 1)
    index = index_tree(mesh, 2_000_000, 768, jax.numpy.bfloat16)
    fn, args = search_program(mesh, index, 64, 20)
    compiled = plan.compile_program(fn, args, mesh)
    exact = tree_bytes(args) - tree_bytes(index["bias"])
    assert compiled.arguments == pytest.approx(exact, abs=512)  # the TPU pads the scalar
    shard_as_float32 = index["vectors"].shape[0] // 8 * 768 * 4
    analytic = sum(search_temporaries(mesh, index, 64, 20).values())
    assert compiled.temporaries <= analytic < shard_as_float32 / 4


def test_tpu_compiler_without_libtpu_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(tpu_target, "has_libtpu", lambda: False)
    argv = ["plan", "--config", "configs/region_r1/evqa.py", "--compiler", "tpu"]
    assert main([*argv, "--chip", "v5e", "--depth", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxrank: error:") and "libtpu" in err[0]


@needs_libtpu
def test_a_program_over_the_chips_memory_is_refused_and_reported():
    """XLA:TPU will not build a program that exceeds the chip's HBM (here a replicated
    24 GiB argument on a 16 GiB v5e); the planner reports it as not fitting, with the bytes
    the compiler says it needed, instead of crashing."""
    mesh = tpu_target.tpu_mesh("v5e", 8, 1)
    everywhere = NamedSharding(mesh, PartitionSpec())
    x = jax.ShapeDtypeStruct((6 * 2**30,), jax.numpy.float32, sharding=everywhere)
    compiled = plan.compile_program(jax.jit(lambda x: (2 * x).sum()), (x,), mesh)
    assert compiled.refusal.startswith("RESOURCE_EXHAUSTED")
    assert compiled.peak > plan.chip_memory("v5e")


def test_a_refusal_message_is_read_for_its_bytes():
    error = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used "
        "20.50G of 15.48G hbm. Exceeded hbm capacity by 5.02G."
    )
    compiled = plan.refused(error, arguments=2**30, seconds=1.0, capacity=15.48 * 2**30)
    assert compiled.peak == int(20.50 * 2**30)
    unknown = plan.refused(RuntimeError("RESOURCE_EXHAUSTED: no figures"), 2**30, 1.0, 16 * 2**30)
    assert unknown.peak == 16 * 2**30 + 1  # just over the chip: does not fit
