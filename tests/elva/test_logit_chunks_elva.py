"""ELVA's RL update with chunked log-probs (``embedder.logit_chunk``, threaded through
``generative_embedding.grpo_loss``) against the plain path that holds every [R, N, V] logit:
the token-level GRPO loss (clipped ratio and k3 KL to the adapters-off reference) and its
gradients with respect to the LoRA adapters agree at float32 precision, for chunks that do and
do not divide the completion length, over G completions of each prompt row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrank.elva.generative_embedding import grpo_loss, text_prompt
from jaxrank.models.lm import CausalLM, LMConfig
from jaxrank.models.lm_prompt import left_pad
from jaxrank.models.lora import LoRAConfig, LoRALinear, apply_lora, split_lora
from jaxrank.rl.grpo import GRPOConfig

G, NEW, TEMPERATURE = 4, 7, 0.7
GRPO = GRPOConfig(num_generations=G, advantage="grpo", beta=0.2)
CHUNKS = (0, 3, 4, 7)  # 0 and 7: every position at once; 3 and 4 pad the last chunk


def _policy():
    config = LMConfig(
        vocab_size=50, width=32, depth=1, heads=4, kv_heads=2, mlp_dim=48, tie_embeddings=False
    )
    model = apply_lora(CausalLM(config, rngs=nnx.Rngs(0)), LoRAConfig(4, 8.0), nnx.Rngs(1))
    for i, (_, layer) in enumerate(nnx.iter_graph(model)):
        if isinstance(layer, LoRALinear):  # non-zero adapters: policy != reference, so KL > 0
            layer.lora_b[...] = jax.random.normal(jax.random.key(i), layer.lora_b.shape) * 0.3
    return split_lora(model)


def _batch() -> dict[str, jax.Array]:
    tokens, mask = left_pad([[3, 7, 9], [11, 2], [4, 4, 8], [30]], length=4)
    rows = tokens.shape[0] * G
    lengths = jnp.asarray([7, 5, 7, 1, 6, 7, 3, 7, 2, 7, 4, 6, 7, 7, 5, 1])
    return {
        "tokens": tokens,
        "mask": mask,
        "completion": jax.random.randint(jax.random.key(2), (rows, NEW), 0, 50),
        "completion_mask": jnp.arange(NEW)[None] < lengths[:, None],
        "advantages": jax.random.normal(jax.random.key(3), (tokens.shape[0], G)),
    }


def test_chunked_rl_loss_and_lora_gradients_equal_the_plain_path():
    graphdef, adapters, base = _policy()
    batch = _batch()

    def every_chunk(adapters):
        out = []
        for chunk in CHUNKS:
            loss = grpo_loss(graphdef, text_prompt, TEMPERATURE, GRPO, chunk)
            grad = jax.value_and_grad(loss, has_aux=True)
            out.append(grad(adapters, batch, jax.random.key(4), base))
        return out

    results = jax.device_get(jax.jit(every_chunk)(adapters))
    (loss, metrics), grads = results[0]
    grads = jax.tree.leaves(grads)
    assert np.isfinite(loss) and metrics["kl"] > 0
    assert grads and all(np.abs(g).max() > 0 for g in grads)
    for chunk, ((got, got_metrics), got_grads) in zip(CHUNKS[1:], results[1:], strict=True):
        np.testing.assert_allclose(got, loss, rtol=1e-5, atol=1e-5, err_msg=f"{chunk=}")
        np.testing.assert_allclose(got_metrics["kl"], metrics["kl"], rtol=1e-5, atol=1e-5)
        got_grads = jax.tree.leaves(got_grads)
        assert len(got_grads) == len(grads)
        for g, want in zip(got_grads, grads, strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5, err_msg=f"{chunk=}")
