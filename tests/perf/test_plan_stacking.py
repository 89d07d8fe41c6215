"""The planner with the policy's and the scorer's layers scanned and rematerialised
(``models.layer_stack``): the stacked abstract parameters are the unrolled ones (the same bytes
per device, in fewer leaves), and the analytic model's rematerialised terms counted by hand: one
residual per layer and token kept, and one layer running as a phase of its own."""

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
    # Remat keeps one residual per layer and token; one layer running is a phase of its own.
    s, u = scanned.setting, unrolled.setting
    lm, b = s.policy.lm, 1
    tokens = b * s.prompt_length + b * s.group * s.new_tokens
    kept = update_temporaries(s, b)
    assert kept["decoder_layer_inputs"] == pytest.approx(lm.depth * tokens * lm.width * 4)
    assert "decoder_activations" in update_temporaries(u, b)
    # The vision tower holds the device's own images (1 query: one image of 32 x 32 patches
    # of width 1280, 2 layers), not the global batch's 8; a decoder layer is the widest phase.
    v = s.policy.vision
    assert kept["vision_layer_inputs"] == pytest.approx(v.depth * 32 * 32 * v.width * 4)
    assert "decoder_layer" in kept and "vision_layer" not in kept and "logits" not in kept
