"""ELVA's generative embedder on the host side (PAPERS.md §2): a vision-language model with the
``[RET]`` token, prompted with the paper's instruction to summarise its input and then write
``[RET]``, whose last hidden state there is the embedding.

Every prompt row has one image slot, so a batch of mixed inputs (image, text, or both) is one
compiled program: a text-only input's image tokens are masked out of attention, so the model
reads no image for it (the slot costs its vision-tower pass, nothing else).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrank.elva.generative_embedding import ret_embeddings
from jaxrank.models.lora import join_lora
from jaxrank.rl.sampler import Completions, SamplingSettings, generate
from jaxrank.vlm.base import VLMBase, load_model_and_inputs
from jaxrank.vlm.programs import vlm_prompt

RET = "[RET]"
SUMMARY_REQUEST = (
    "Analyze and summarize the key information of the above input. Finally, append the special "
    "token [RET] to represent the entire input."
)
BASE_DIR = "embedder_base"  # the tiny embedder's tokenizer and image processor, in the workdir


def prompt_text(instruction: str, text: str) -> str:
    """The paper's prompt after the image: ``<instruction> {text}. <summary request>``."""
    body = " ".join(part for part in (instruction, text) if part)
    return f"{body}. {SUMMARY_REQUEST}"


@dataclasses.dataclass
class RetEmbedderBase(VLMBase):
    """The embedder's model before LoRA, and its prompts, targets and sampling."""

    ret_id: int = -1

    def prompts(
        self,
        instructions: Sequence[str],
        texts: Sequence[str],
        images: np.ndarray,
        has_image: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The batch of one prompt row per input (``VLMBase.encode``); rows whose
        ``has_image`` is False get their image tokens masked out."""
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}]
            for t in map(prompt_text, instructions, texts)
        ]
        batch = self.encode(conversations, images)
        hidden_image = (batch["tokens"] == self.inputs.image_token_id) & ~np.asarray(
            has_image, bool
        )[:, None]
        batch["mask"] = batch["mask"] & ~hidden_image
        return batch

    def answers(self, summaries: Sequence[str], length: int) -> dict[str, np.ndarray]:
        """Teacher-forced completions ``[B, length]``: each summary then ``[RET]``."""
        return self.targets(summaries, length, end=self.ret_id)

    def ret_sampling(self, max_new_tokens: int, temperature: float) -> SamplingSettings:
        """Sampling that stops at ``[RET]`` (``temperature`` 0: greedy)."""
        return SamplingSettings(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_tokens=(self.ret_id,),
            pad_id=self.inputs.tokenizer.pad_token_id,
        )


def build_embedder(
    section: ml_collections.ConfigDict,
    folder: Path,
    corpus: Sequence[str],
    seed: int,
    mesh: jax.sharding.Mesh,
) -> RetEmbedderBase:
    """``section.checkpoint`` with ``[RET]`` added, or the tiny random model of
    ``section.tiny`` whose tokenizer (trained on ``corpus`` and the prompts, kept in
    ``folder``) has ``[RET]``."""
    texts = lambda: [SUMMARY_REQUEST, *corpus]
    model, inputs = load_model_and_inputs(section, folder, texts, seed, mesh, (RET,))
    return RetEmbedderBase(
        model,
        inputs,
        section.image_size,
        ret_id=inputs.tokenizer.convert_tokens_to_ids(RET),
    )


def summarise(
    lm: Any, prompt: Any, key: jax.Array, settings: SamplingSettings, ret_id: int
) -> Completions:
    """A summary of at most ``settings.max_new_tokens`` tokens per prompt row, ended by
    ``[RET]``: the model's own where it wrote one (a stop token), else appended after the cap.
    Completions are ``[B, max_new_tokens + 1]``."""
    out = generate(lm, prompt, key, settings, 1)
    pad = jnp.full((out.tokens.shape[0], 1), settings.pad_id, out.tokens.dtype)
    tokens = jnp.concatenate([out.tokens, pad], axis=1)
    mask = jnp.concatenate([out.mask, jnp.zeros_like(pad, bool)], axis=1)
    wrote = ((out.tokens == ret_id) & out.mask).any(axis=1)
    at_end = jax.nn.one_hot(out.lengths, tokens.shape[1], dtype=bool) & ~wrote[:, None]
    log_probs = jnp.concatenate([out.log_probs, jnp.zeros(pad.shape, out.log_probs.dtype)], 1)
    return Completions(
        jnp.where(at_end, ret_id, tokens), log_probs, mask | at_end, out.lengths + ~wrote
    )


def make_embed(graphdef: nnx.GraphDef, base: RetEmbedderBase, summary_tokens: int):
    """``embed(params, rest, batch) -> (unit embeddings [B, W], wrote [RET] itself [B])``,
    jitted: a greedy ``summarise``, then the hidden state at its ``[RET]``. ``params`` are
    LoRA adapters over ``rest``."""
    settings = base.ret_sampling(summary_tokens, 0.0)
    grid = base.grid

    @jax.jit
    def embed(adapters: Any, rest: Any, batch: dict[str, Any]):
        model = nnx.view(join_lora(graphdef, adapters, rest), deterministic=True)
        lm, prompt = model.language_model, vlm_prompt(model, batch, grid)
        completions = summarise(lm, prompt, jax.random.key(0), settings, base.ret_id)
        embedded, _ = ret_embeddings(lm, prompt, completions, base.ret_id, 1.0, 1)
        wrote = completions.lengths <= summary_tokens
        return embedded, wrote

    return embed
