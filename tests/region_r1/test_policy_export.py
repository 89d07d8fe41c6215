"""The structured crop policy's export (``region_r1.policy_export``): written and loaded back
without its run, it has the same parameters and computes the same decision and box logits."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from region_r1_tiny import tiny_config

from jaxrank import parallel
from jaxrank.region_r1.policy_export import CONFIG_FILE, load_policy, save_policy
from jaxrank.region_r1.recipe import build_policy


def test_saved_policy_loads_back_and_computes_the_same(tmp_path):
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    policy = build_policy(tiny_config(), mesh)
    # Move every parameter off its initial value (the decision head starts at zero).
    state = nnx.state(policy, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(state))))
    nnx.update(
        policy, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), state)
    )
    save_policy(policy, tmp_path, {"image_size": 48})
    loaded, inputs = load_policy(tmp_path)
    assert loaded.config == policy.config and inputs == {"image_size": 48}
    want = jax.tree.leaves(nnx.to_pure_dict(nnx.state(policy, nnx.Param)))
    got = jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded, nnx.Param)))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 48, 48, 3)).astype(np.float32)
    tokens = rng.integers(1, 40, (2, policy.config.text.max_len)).astype(np.int32)
    forward = nnx.jit(lambda model, x, t: model(x, t))
    a, b = forward(policy, pixels, tokens), forward(loaded, pixels, tokens)
    assert np.abs(np.asarray(a.decision_logits)).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(a.decision_logits), np.asarray(b.decision_logits))
    np.testing.assert_array_equal(np.asarray(a.box_logits), np.asarray(b.box_logits))


def test_a_folder_of_another_kind_is_refused(tmp_path):
    (tmp_path / CONFIG_FILE).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="format"):
        load_policy(tmp_path)
