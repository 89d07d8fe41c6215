"""The planner: its helpers against hand-worked numbers, Region-R1's E-VQA setting as shipped
(scanned + rematerialised layers, chunked log-probs) compiled at real widths and two layers
(float32, where XLA:CPU keeps every buffer at the program's dtype) against the analytic memory
model, the analytic-only plan, a setting too large for a chip reported as such, and the
``jaxrank plan`` command's table and JSON."""

import json

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from jaxrank.cli.main import main
from jaxrank.configs import load_config_file
from jaxrank.perf import memory, plan
from jaxrank.region_r1.plan import plan_setting

EVQA = "configs/region_r1/evqa.py"
TOLERANCE = 0.15  # analytic peak within 15% of XLA's, per program (docs/SCALING.md)


def test_largest_batch_by_hand():
    peak = lambda b: 10 + 3 * b
    assert plan.largest_batch(peak, 40) == 10  # 10 + 30 = 40 fits, 43 does not
    assert plan.largest_batch(peak, 12) == 0
    assert plan.largest_batch(peak, 1e9, limit=64) == 64


def test_shard_bytes_round_an_uneven_split_up():
    mesh = AbstractMesh((2, 8), ("data", "model"))
    leaf = jax.ShapeDtypeStruct(
        (3420, 1280), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("model", None))
    )
    assert memory.shard_shape(leaf) == (428, 1280)  # ceil(3420 / 8)
    assert memory.tree_bytes([leaf, jax.ShapeDtypeStruct((5,), jnp.float32)]) == (
        428 * 1280 * 2 + 5 * 4
    )


def test_verdict_headroom_in_gib():
    v = plan.verdict(20 * plan.GIB, "v5e")
    assert (v["fits"], v["memory_gib"], v["headroom_gib"]) == (False, 16.0, -4.0)
    assert plan.verdict(20 * plan.GIB, "h100")["headroom_gib"] == 60.0


@pytest.fixture(scope="module")
def evqa_two_layers():
    """The E-VQA setting as shipped (scanned, rematerialised layers; chunked log-probs), its
    three programs compiled at the config's batch; no chip, so nothing else compiles."""
    cfg = load_config_file(EVQA)
    assert cfg.policy.scan_layers and cfg.policy.remat and cfg.policy.logit_chunk > 0
    return plan_setting(cfg, [], depth=2, dtype="float32")


def _analytic_plan(chips):
    return plan_setting(
        load_config_file(EVQA), chips, depth=2, dtype="float32", compile_programs=False
    )


def test_analytic_model_matches_xla_within_tolerance(evqa_two_layers):
    result = evqa_two_layers
    assert result["mesh"] == {"data": 8, "model": 1} and result["per_device_batch"] == 4
    for name, row in result["programs"].items():
        assert row["analytic_over_xla"] == pytest.approx(1.0, abs=TOLERANCE), name
    # Arguments are counted exactly: the policy's base weights, float32, as XLA holds them.
    update = result["programs"]["update"]
    assert update["analytic"]["arguments"]["policy_base"] == result["resident"]["policy_base"]
    assert update["xla"]["aliased"] > 0  # the donated train state is updated in place


def test_the_analytic_plan_compiles_nothing_and_agrees(evqa_two_layers):
    quick = _analytic_plan([])
    for name, row in quick["programs"].items():
        assert "xla" not in row
        assert row["analytic"] == evqa_two_layers["programs"][name]["analytic"], name
    assert quick["step"] == {"analytic_peak": evqa_two_layers["step"]["analytic_peak"]}


def test_a_setting_that_cannot_fit_is_reported_not_crashed(evqa_two_layers):
    v5e = _analytic_plan(["v5e"])["chips"]["v5e"]
    assert not v5e["fits"] and v5e["headroom_gib"] < 0
    assert 0 < v5e["largest_batch"] < 4  # fewer queries per chip than the config's 4 fit
    assert v5e["mesh"]["data"] * v5e["mesh"]["model"] == 8 and v5e["mesh"]["model"] > 1
    assert evqa_two_layers["step"]["xla_peak"] > plan.chip_memory("v5e")  # XLA agrees


def test_plan_command_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--config", EVQA, "--chip", "h100", "--depth", "1", "--json", str(out)]
    assert main([*argv, "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    for word in ("update", "sampler", "judge", "step", "h100", "largest batch"):
        assert word in printed
    result = json.loads(out.read_text())
    assert set(result["programs"]) == {"update", "sampler", "judge"}
    assert result["chips"]["h100"]["largest_batch"] >= 1
    assert result["command"]["depth"] == 1


def test_plan_command_answers_from_the_analytic_model_alone(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--config", EVQA, "--chip", "v5e", "--depth", "2", "--analytic"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "analytic peak" in printed and "XLA" not in printed
    result = json.loads(out.read_text())
    assert result["command"]["analytic"] and "xla_peak" not in result["step"]
