"""RAR's listwise scoring on a tiny decoder: each class's score is the sum (or per-token mean)
of its name's log-probs from a separate full pass over prompt + name, and ranking follows the
scores with ties kept in retrieval order."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.models.lm import CausalLM, LMConfig
from jaxrank.models.lm_prompt import Prompt, left_pad
from jaxrank.models.lm_scoring import completion_log_probs
from jaxrank.rar.class_scoring import class_log_probs, rank_by_score

CONFIG = LMConfig(vocab_size=30, width=32, depth=1, heads=4, kv_heads=2, mlp_dim=48)
K = 3


def _inputs():
    tokens, mask = left_pad([[3, 7, 9], [11, 2]], length=4)
    names = np.array(
        [[4, 5, 0], [6, 0, 0], [7, 8, 9], [10, 0, 0], [12, 13, 0], [4, 4, 4]], np.int32
    )
    return Prompt.from_tokens(tokens, mask), jnp.asarray(names), jnp.asarray(names > 0)


@pytest.mark.parametrize("per_token", [True, False])
def test_scores_equal_the_full_pass_per_name(per_token):
    lm = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    prompt, names, mask = _inputs()
    scores = np.asarray(class_log_probs(lm, prompt, names, mask, per_token=per_token))
    # Reference: each name scored on its own, prompt and name in one teacher-forced pass.
    logp, _ = completion_log_probs(lm, prompt.repeat(K), names, mask)
    logp = np.asarray(logp, np.float64) * np.asarray(mask)
    want = logp.sum(axis=1) / (np.asarray(mask).sum(axis=1) if per_token else 1)
    np.testing.assert_allclose(scores, want.reshape(2, K), atol=1e-5)
    order = np.asarray(rank_by_score(jnp.asarray(scores)))
    np.testing.assert_array_equal(order, np.argsort(-scores, axis=1, kind="stable"))


def test_ties_keep_the_retrieval_order_and_rows_must_split():
    order = rank_by_score(jnp.array([[0.5, 0.9, 0.5, 0.9]]))
    np.testing.assert_array_equal(order, [[1, 3, 0, 2]])
    prompt, names, mask = _inputs()
    with pytest.raises(ValueError, match="split evenly"):
        class_log_probs(CausalLM(CONFIG, rngs=nnx.Rngs(0)), prompt, names[:5], mask[:5])
