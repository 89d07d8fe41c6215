"""Token-level GRPO through LoRA on a tiny decoder: the loss equals the formula of PAPERS.md §4
computed with numpy from separately recomputed log-probs, the reference is the base model, and
one update lowers the loss and moves the policy towards positive advantages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrank.models.lm import CausalLM, LMConfig
from jaxrank.models.lm_prompt import Prompt, left_pad
from jaxrank.models.lm_scoring import completion_log_probs
from jaxrank.models.lora import LoRAConfig, LoRALinear, apply_lora, join_lora, split_lora
from jaxrank.rl.grpo import GRPOConfig, dr_grpo_advantages
from jaxrank.rl.sampler import SamplingSettings, generate
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.train.step import TrainState, make_train_step

CONFIG = LMConfig(vocab_size=40, width=32, depth=1, heads=4, kv_heads=2, mlp_dim=48)
B, G, NEW = 2, 4, 5
GRPO = GRPOConfig(num_generations=G, beta=0.1, eps_low=0.2, eps_high=0.28)
TEMPERATURE = 1.0


def _policy():
    model = apply_lora(CausalLM(CONFIG, rngs=nnx.Rngs(0)), LoRAConfig(4, 8.0), nnx.Rngs(1))
    for i, (_, layer) in enumerate(nnx.iter_graph(model)):
        if isinstance(layer, LoRALinear):  # trained adapters: the policy differs from the base
            key = jax.random.key(i)
            layer.lora_b[...] = jax.random.normal(key, layer.lora_b.shape) * 0.3
    return model


def _log_probs(model, batch):
    prompt = Prompt.from_tokens(batch["prompt_tokens"], batch["prompt_mask"]).repeat(G)
    log_probs, _ = completion_log_probs(
        model, prompt, batch["completions"], batch["completion_mask"], TEMPERATURE
    )
    return log_probs


def _rollout_batch(model):
    """B prompts x G sampled completions and made-up rewards, as a recipe's rollout builds."""
    tokens, mask = left_pad([[3, 7, 9], [11, 2]], length=4)
    prompt = Prompt.from_tokens(tokens, mask)
    settings = SamplingSettings(max_new_tokens=NEW, temperature=TEMPERATURE, stop_tokens=(0,))
    out = nnx.jit(generate, static_argnums=(3, 4))(model, prompt, jax.random.key(5), settings, G)
    rewards = jnp.asarray([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.2]])
    return {
        "prompt_tokens": tokens,
        "prompt_mask": mask,
        "completions": out.tokens,
        "completion_mask": out.mask,
        "old_log_probs": out.log_probs,
        "advantages": dr_grpo_advantages(rewards),
    }


def _numpy_loss(logp, old, ref, adv, mask, grpo):
    """PAPERS.md §4 per token, then GRPO's sequence mean and the mean over sequences."""
    ratio = np.exp(logp - old)
    a = adv.reshape(-1, 1)
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - grpo.eps_low, 1 + grpo.eps_high) * a)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per_token = -(surrogate - grpo.beta * kl) * mask
    return np.mean(per_token.sum(1) / mask.sum(1))


def test_loss_equals_the_formula_with_the_base_as_reference():
    model = _policy()
    batch = _rollout_batch(model)
    graphdef, adapters, base = split_lora(model)
    # Independent recomputation: the adapted model and a fresh, adapter-free base model.
    logp = np.asarray(_log_probs(model, batch))
    plain = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    ref = np.asarray(_log_probs(plain, batch))
    mask = np.asarray(batch["completion_mask"], np.float64)
    assert mask.sum(1).min() >= 1 and np.abs(logp - ref)[mask > 0].max() > 1e-2
    np.testing.assert_allclose(logp * mask, np.asarray(batch["old_log_probs"]), atol=2e-5)
    # Old log-probs from a different policy, so the ratio and the clipping are exercised.
    old = np.asarray(batch["old_log_probs"]) + np.where(mask > 0, 0.3, 0.0) * np.sign(
        np.random.default_rng(0).standard_normal(mask.shape)
    )
    batch = {**batch, "old_log_probs": jnp.asarray(old, jnp.float32)}
    loss, metrics = jax.jit(make_token_grpo_loss(graphdef, _log_probs, GRPO))(
        adapters, batch, jax.random.key(0), base
    )
    adv = np.asarray(batch["advantages"])
    want = _numpy_loss(logp, old, ref, adv, mask, GRPO)
    np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)
    assert 0 < float(metrics["clip_fraction"]) < 1 and float(metrics["kl"]) > 0


def test_an_update_lowers_the_loss_and_favours_positive_advantages():
    model = _policy()
    batch = _rollout_batch(model)
    graphdef, adapters, base = split_lora(model)
    loss_fn = make_token_grpo_loss(graphdef, _log_probs, GRPO)
    optimizer = optax.sgd(0.05)
    step = jax.jit(make_train_step(loss_fn, optimizer))
    state, metrics = step(TrainState.create(adapters, optimizer, seed=0), batch, base)
    assert float(metrics["grad_norm"]) > 0

    evaluate = jax.jit(lambda params: loss_fn(params, batch, jax.random.key(0), base)[0])
    assert float(evaluate(state.params)) < float(evaluate(adapters))
    before = np.asarray(_log_probs(join_lora(graphdef, adapters, base), batch))
    after = np.asarray(_log_probs(join_lora(graphdef, state.params, base), batch))
    mask = np.asarray(batch["completion_mask"])
    mean_change = ((after - before) * mask).sum(1) / mask.sum(1)
    # The advantage-weighted change of the sequences' mean token log-prob is positive.
    assert float(np.dot(np.asarray(batch["advantages"]).reshape(-1), mean_change)) > 0
