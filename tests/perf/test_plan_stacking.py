"""The planner with the policy's and the scorer's layers scanned and rematerialised
(``models.layer_stack``): the stacked abstract parameters are the unrolled ones (the same bytes
per device, in fewer leaves), and the analytic model's rematerialised decoder term is one
residual per layer and token plus one layer's saved activations, counted by hand."""

import jax
import pytest

from jaxrank import parallel
from jaxrank.configs import load_config_file
from jaxrank.perf.memory import tree_bytes
from jaxrank.region_r1.plan_programs import Programs
from jaxrank.region_r1.plan_setting import read_setting, update_temporaries

EVQA = "configs/region_r1/evqa.py"


def _programs(scanned: bool) -> Programs:
    cfg = load_config_file(EVQA)
    cfg.policy.scan_layers = cfg.policy.remat = cfg.scorer_scan_layers = scanned
    mesh = parallel.mesh_from_config(cfg.mesh)
    return Programs(cfg, read_setting(cfg, depth=2, dtype="float32"), mesh)


@pytest.fixture(scope="module")
def scanned():
    return _programs(True)


def test_stacked_parameters_are_the_unrolled_ones(scanned):
    unrolled = _programs(False)
    assert scanned.setting.policy.lm.stacking.scan and scanned.setting.policy.lm.stacking.remat
    for name in ("base", "adapters", "scorer"):
        got, want = getattr(scanned, name), getattr(unrolled, name)
        assert tree_bytes(got) == tree_bytes(want), name
        assert len(jax.tree.leaves(got)) < len(jax.tree.leaves(want)), name  # stacked
    # Remat keeps one residual per layer and token, plus one layer's saved activations.
    s, u = scanned.setting, unrolled.setting
    lm, b = s.policy.lm, 1
    tokens = b * s.prompt_length + b * s.group * s.new_tokens
    residuals = lm.depth * tokens * lm.width * 4  # float32
    one_layer = update_temporaries(u, b, 8)["decoder_activations"] / lm.depth
    assert update_temporaries(s, b, 8)["decoder_activations"] == pytest.approx(
        residuals + one_layer
    )
