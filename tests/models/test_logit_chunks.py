"""Chunked token log-probs (``lm_scoring.head_log_probs``'s ``chunk``) against the plain path
that holds all [R, N, V] logits: the log-probs and their gradients with respect to the LoRA
adapters agree at float32 precision, for chunks that do and do not divide the completion
length, through the shared-prefix (GRPO's groups) and the full-sequence paths, with a tied and
an untied output head (Qwen2.5-VL-3B ties its head; Qwen2-VL-7B does not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.models.lm import CausalLM, LMConfig
from jaxrank.models.lm_prompt import Prompt, left_pad
from jaxrank.models.lm_scoring import completion_log_probs
from jaxrank.models.lora import LoRAConfig, LoRALinear, apply_lora, join_lora, split_lora

PROMPTS, NEW, TEMPERATURE = 2, 7, 0.7


def _policy(tie: bool):
    config = LMConfig(
        vocab_size=50, width=32, depth=1, heads=4, kv_heads=2, mlp_dim=48, tie_embeddings=tie
    )
    model = apply_lora(CausalLM(config, rngs=nnx.Rngs(0)), LoRAConfig(4, 8.0), nnx.Rngs(1))
    for i, (_, layer) in enumerate(nnx.iter_graph(model)):
        if isinstance(layer, LoRALinear):  # non-zero adapters, so every gradient flows
            layer.lora_b[...] = jax.random.normal(jax.random.key(i), layer.lora_b.shape) * 0.3
    return split_lora(model)


CHUNKS = (0, 3, 4)  # 0: the plain path; 3 and 4 leave a padded last chunk of 7 positions


def _log_probs_and_grads(tie: bool, group: int):
    """Per chunk size: the log-probs and the gradients of a weighted sum of them with respect
    to every adapter, one jitted program for all sizes."""
    graphdef, adapters, base = _policy(tie)
    tokens, mask = left_pad([[3, 7, 9], [11, 2]], length=4)
    prompt = Prompt.from_tokens(tokens, mask)
    if group == 1:  # one completion per prompt row: the full-sequence path
        prompt = prompt.repeat(4)
    rows = PROMPTS * 4
    completion = jax.random.randint(jax.random.key(2), (rows, NEW), 0, 50)
    completion_mask = jnp.arange(NEW)[None] < jnp.asarray([7, 5, 7, 1, 6, 7, 3, 7])[:, None]
    weights = jax.random.normal(jax.random.key(3), (rows, NEW))

    def weighted(adapters, chunk):
        lm = join_lora(graphdef, adapters, base)
        logp, _ = completion_log_probs(
            lm, prompt, completion, completion_mask, TEMPERATURE, group=group, logit_chunk=chunk
        )
        return (logp * weights).sum(), logp

    def every_chunk(adapters):
        grad = jax.value_and_grad(weighted, has_aux=True)
        return [grad(adapters, chunk) for chunk in CHUNKS]

    results = jax.jit(every_chunk)(adapters)
    return [
        (np.asarray(logp), [np.asarray(g) for g in jax.tree.leaves(grads)])
        for (_, logp), grads in results
    ], np.asarray(completion_mask)


@pytest.mark.parametrize(("tie", "group"), [(True, 4), (False, 1)])
def test_chunked_log_probs_and_lora_gradients_equal_the_plain_path(tie, group):
    results, mask = _log_probs_and_grads(tie, group)
    (logp, grads), chunked = results[0], results[1:]
    assert np.all(logp[mask] < 0) and np.all(logp[~mask] == 0)
    assert all(np.abs(g).max() > 0 for g in grads)
    for chunk, (got, got_grads) in zip(CHUNKS[1:], chunked, strict=True):
        np.testing.assert_allclose(got, logp, rtol=1e-5, atol=1e-5, err_msg=f"{chunk=}")
        assert len(got_grads) == len(grads)
        for g, want in zip(got_grads, grads, strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5, err_msg=f"{chunk=}")
