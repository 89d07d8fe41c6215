"""ELVA's generative embedding on a tiny LoRA decoder: the [RET] embeddings equal a separate
teacher-forced pass read with numpy, the rollout's scores, rewards and advantages follow from
them, and one token-level GRPO update raises the log-probs of the rollouts with positive
advantages relative to the others."""

from __future__ import annotations

import jax
import numpy as np
import optax
from fast_xla import fast_compile
from flax import nnx
from same_updates import assert_same_updates

from jaxrank import parallel
from jaxrank.elva import generative_embedding
from jaxrank.elva.reward import ELVARewardConfig, elva_reward
from jaxrank.models.lm import CausalLM, LMConfig
from jaxrank.models.lm_prompt import Prompt, left_pad
from jaxrank.models.lm_scoring import completion_log_probs
from jaxrank.models.lora import LoRAConfig, apply_lora, join_lora, split_lora
from jaxrank.rl.grpo import GRPOConfig, compute_advantages
from jaxrank.rl.sampler import SamplingSettings
from jaxrank.train.step import TrainState, jit_train_step

CONFIG = LMConfig(vocab_size=12, width=32, depth=1, heads=4, kv_heads=2, mlp_dim=48)
RET = 5  # the [RET] token of this tiny vocabulary
POOL, G = 4, 4  # query, positive, two negatives; G rollouts
GRPO = GRPOConfig(num_generations=G, advantage="grpo", beta=0.2)
REWARD = ELVARewardConfig()
SETTINGS = SamplingSettings(max_new_tokens=40, temperature=1.5, stop_tokens=(RET,))


def _prompt() -> Prompt:
    rows = [[1, 2, 3], [4, 6], [7, 8, 9], [10, 2], [3, 3, 4], [6, 7], [8], [9, 10, 11]]
    tokens, mask = left_pad(rows, length=4)
    return Prompt.from_tokens(tokens, mask)


def _model() -> CausalLM:
    return apply_lora(CausalLM(CONFIG, rngs=nnx.Rngs(0)), LoRAConfig(4, 8.0), nnx.Rngs(1))


@nnx.jit
def _rollout(model, prompt, key):
    return generative_embedding.rollout(model, prompt, key, SETTINGS, POOL, RET, GRPO, REWARD)


def test_embeddings_scores_and_rewards_follow_from_the_ret_states():
    model, prompt = _model(), _prompt()
    out = jax.device_get(_rollout(model, prompt, jax.random.key(3)))
    tokens, mask = np.asarray(out.completions.tokens), np.asarray(out.completions.mask)
    # Independent read: one full teacher-forced pass per completion, [RET] located with numpy.
    _, hidden = completion_log_probs(model, prompt.repeat(G), tokens, mask, 1.5)
    hidden = np.asarray(hidden, np.float64)
    found = ((tokens == RET) & mask).any(axis=1)
    want = np.empty((len(tokens), CONFIG.width))
    for row in range(len(tokens)):
        hits = np.flatnonzero((tokens[row] == RET) & mask[row])
        at = hits[-1] if len(hits) else tokens.shape[1] - 1
        want[row] = hidden[row, at] / np.linalg.norm(hidden[row, at])
    want = want.reshape(2, POOL, G, -1)
    np.testing.assert_allclose(out.embeddings, want, atol=2e-5)

    complete = found.reshape(2, POOL, G).all(axis=1)
    assert complete.any() and not complete.all()  # both kinds of rollout are scored
    np.testing.assert_array_equal(out.complete, complete)
    positive = np.einsum("bgw,bgw->bg", want[:, 0], want[:, 1])
    negative = np.einsum("bgw,bngw->bgn", want[:, 0], want[:, 2:])
    np.testing.assert_allclose(out.positive_scores, positive, atol=2e-5)
    np.testing.assert_allclose(out.negative_scores, negative, atol=2e-5)
    rewards = np.where(complete, elva_reward(positive, negative, REWARD), -1.0)
    np.testing.assert_allclose(out.rewards, rewards, atol=2e-5)
    np.testing.assert_allclose(out.advantages, compute_advantages(rewards, "grpo"), atol=1e-4)
    per_completion = np.asarray(out.completion_advantages).reshape(2, POOL, G)
    for item in range(POOL):
        np.testing.assert_array_equal(per_completion[:, item], out.advantages)


def _step(mesh):
    """One generative-embedding GRPO step on ``mesh``: (adapters before, after, metrics)."""
    graphdef, adapters, base = split_lora(_model())
    optimizer = optax.sgd(0.5)
    before = jax.device_get(adapters)
    state, base = parallel.put_replicated((TrainState.create(adapters, optimizer, 0), base), mesh)
    make = generative_embedding.make_step
    step = make(
        graphdef, generative_embedding.text_prompt, SETTINGS, POOL, RET, GRPO, REWARD, optimizer
    )
    prompt = _prompt()
    batch = parallel.shard_batch({"tokens": prompt.tokens, "mask": prompt.mask}, mesh)
    with jax.set_mesh(mesh):
        state, metrics = jit_train_step(step, state)(state, batch, base)
    return before, jax.device_get(state.params), jax.device_get(metrics), (graphdef, base)


def test_grpo_step_favours_the_rollouts_with_positive_advantages():
    mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
    before, after, metrics, (graphdef, base) = _step(mesh)
    assert np.isfinite(metrics["loss"]) and metrics["complete"] > 0
    # The step's rollout, rebuilt outside with the key the step derives from its state.
    key = jax.random.split(jax.random.fold_in(jax.random.key(0), 0))[0]
    model, prompt = join_lora(graphdef, before, base), _prompt()
    out = _rollout(model, prompt, key)
    np.testing.assert_allclose(metrics["reward"], out.rewards.mean(), rtol=1e-5)

    def sequence_logp(adapters):
        policy = join_lora(graphdef, adapters, base)
        logp, _ = completion_log_probs(
            policy, prompt, out.completions.tokens, out.completions.mask, 1.5, group=G
        )
        return np.asarray(logp.sum(axis=1)).reshape(-1, G)

    change = sequence_logp(after) - sequence_logp(before)
    advantages = np.asarray(out.completion_advantages)
    assert (advantages > 0).any() and (advantages < 0).any()
    assert change[advantages > 0].mean() > change[advantages < 0].mean() + 1e-3


@fast_compile()  # its time is almost all compilation
def _sharded_and_single():
    single = _step(parallel.make_mesh(1, 1, jax.devices()[:1]))
    return single, _step(parallel.make_mesh(4, 2))


def test_sharded_step_equals_single_device():
    """Prompt rows split over data (a query's pool straddles devices), weights over model."""
    (before, single, single_metrics, _), (_, sharded, metrics, _) = _sharded_and_single()
    for key in ("loss", "reward", "complete", "kl"):
        np.testing.assert_allclose(metrics[key], single_metrics[key], rtol=1e-5, atol=1e-7)
    assert_same_updates(before, sharded, single)
