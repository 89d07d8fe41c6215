"""RAR's listwise ranking without free generation (issue 9's TPU-friendly option): each
retrieved class is scored by the MLLM's log-probability of writing its name right after the
prompt, so ranking k classes is one teacher-forced pass with fixed shapes. The prompt runs once
per query and its key/value cache serves all k names (``completion_log_probs``' shared prefix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrank.models.lm import CausalLM
from jaxrank.models.lm_prompt import Prompt
from jaxrank.models.lm_scoring import completion_log_probs


def class_log_probs(
    lm: CausalLM,
    prompt: Prompt,
    names: jax.Array,
    names_mask: jax.Array,
    *,
    per_token: bool = True,
) -> jax.Array:
    """Scores ``[B, k]`` of ``names [B*k, L]`` (row b*k + j: query b's j-th class, right-padded,
    ``names_mask`` marking its tokens) after each of the B prompt rows: the mean log-prob per
    token with ``per_token`` (names of different lengths compete fairly), else the sum."""
    rows = names.shape[0]
    if rows % prompt.batch:
        raise ValueError(f"{rows} names do not split evenly over {prompt.batch} prompts")
    k = rows // prompt.batch
    logp, _ = completion_log_probs(lm, prompt, names, names_mask, group=k)
    total = logp.sum(axis=-1)
    if per_token:
        total = total / jnp.maximum(names_mask.sum(axis=-1), 1)
    return total.reshape(prompt.batch, k)


def rank_by_score(scores: jax.Array) -> jax.Array:
    """Candidate indices ``[B, k]``, best first; equal scores keep the retrieval order."""
    return jnp.argsort(-scores, axis=-1, stable=True)
