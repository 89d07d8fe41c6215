"""ELVA's jitted programs built from abstract models on a mesh, with abstract arguments (nothing
is allocated, so Qwen2-VL-7B and a 5.6M-candidate index compile on a laptop), each from the
recipe's own builders so it is the program a real run compiles:

- ``contrastive``: ``generative_recipe.contrastive_step`` (greedy summaries, then InfoNCE at
  their ``[RET]``), jitted as ``train.stage.Stage`` jits it, the LoRA state donated;
- ``rl_step``: ``generative_recipe.rl_step`` (G sampled summaries of every pool row, their
  ``[RET]`` embeddings and rewards, then token-level GRPO), jitted the same way;
- ``embed``: ``ret_embedder.make_embed`` (a greedy summary, the state at its ``[RET]``);
- ``search``: ``search.planned.search_program``, exact top-k over the candidates' embeddings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from jaxrank import parallel
from jaxrank.elva import generative_recipe
from jaxrank.elva.plan_setting import SEARCH_DEPTH, Setting
from jaxrank.elva.ret_embedder import RetEmbedderBase, make_embed
from jaxrank.models.lora import LoRAConfig, apply_lora, split_lora
from jaxrank.models.vlm import VisionLanguageModel
from jaxrank.perf.plan import abstract, rows
from jaxrank.search.planned import index_tree, search_blocks, search_program
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import abstract_train_state, jit_train_step
from jaxrank.vlm.finetune import language_model_linears
from jaxrank.vlm.programs import abstract_prompts

Program = tuple[Callable, tuple[Any, ...]]
RET_ID, PAD = 151657, 151643  # [RET] in Qwen2-VL's spare rows, <|endoftext|>: types matter only


def recipe_base(grid: tuple[int, int, int]) -> SimpleNamespace:
    """What the recipe's builders read of a ``RetEmbedderBase``: the image grid, the ``[RET]``
    id and its own ``ret_sampling`` (no tokenizer: only the pad id is read)."""
    tokens = SimpleNamespace(
        ret_id=RET_ID, inputs=SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=PAD))
    )
    sampling = functools.partial(RetEmbedderBase.ret_sampling, tokens)
    return SimpleNamespace(grid=grid, ret_id=RET_ID, ret_sampling=sampling)


class Programs:
    """The embedder as abstract arrays on ``mesh`` (LoRA adapters on every linear of the
    language model, the rest frozen: both stages' layout) and its programs at any batch."""

    def __init__(self, cfg: ml_collections.ConfigDict, setting: Setting, mesh: Mesh):
        self.cfg, self.setting, self.mesh = cfg, setting, mesh
        self.data = mesh.shape[parallel.DATA]
        s = setting

        def embedder():
            model = VisionLanguageModel(
                s.embedder, dtype=s.dtype, param_dtype=s.dtype, rngs=nnx.Rngs(0)
            )
            lora = dict(cfg.lora.to_dict(), targets=language_model_linears(model))
            return apply_lora(model, LoRAConfig(**lora), nnx.Rngs(params=0, dropout=1))

        with jax.set_mesh(mesh):
            graphdef, adapters, rest = split_lora(nnx.eval_shape(embedder))
        self.graphdef = graphdef
        self.adapters, self.rest = abstract(adapters, mesh), abstract(rest, mesh)
        self.optimizers = {
            "contrastive": adamw_warmup_cosine(cfg.contrastive),
            "rl_step": adamw_warmup_cosine(cfg.train),
        }
        self.states = {
            k: abstract_train_state(self.adapters, o, mesh) for k, o in self.optimizers.items()
        }
        self.index = index_tree(mesh, s.pool_rows, s.dim, jnp.float32)
        self.base = recipe_base(s.grid)

    def prompts(self, n: int) -> dict[str, jax.ShapeDtypeStruct]:
        """``n`` prompt rows (all devices), as ``Embedder.batch`` places them."""
        s = self.setting
        vision = s.embedder.vision
        return abstract_prompts(self.mesh, n, s.prompt_length, s.patches, vision.patch_dim)

    def contrastive(self, b: int) -> Program:
        """``b`` query-positive pairs per device (2b prompt rows, interleaved)."""
        n, length = 2 * self.data * b, self.setting.summary_tokens + 1
        step = generative_recipe.contrastive_step(self.cfg, self.graphdef, self.base, True)
        state = self.states["contrastive"]
        batch = dict(
            self.prompts(n),
            completion=rows(self.mesh, (n, length), jnp.int32),
            completion_mask=rows(self.mesh, (n, length), jnp.bool_),
            entity=rows(self.mesh, (n,), jnp.int32),
        )
        return jit_train_step(step(self.optimizers["contrastive"]), state), (
            state,
            batch,
            self.rest,
        )

    def rl_step(self, b: int) -> Program:
        """``b`` queries per device, each its pool's prompt rows."""
        embedder = SimpleNamespace(base=self.base)
        optimizer = self.optimizers["rl_step"]
        step = generative_recipe.rl_step(self.cfg, self.graphdef, embedder, optimizer)
        state = self.states["rl_step"]
        batch = self.prompts(self.data * b * self.setting.pool)
        return jit_train_step(step, state), (state, batch, self.rest)

    def embed(self, b: int) -> Program:
        """``b`` rows per device embedded after their greedy summaries."""
        embed = make_embed(self.graphdef, self.base, self.setting.summary_tokens)
        return embed, (self.adapters, self.rest, self.prompts(self.data * b))

    def search(self, b: int) -> Program:
        """The top ``SEARCH_DEPTH`` candidates of ``b`` query rows per data shard (all of them
        replicated, as ``Index.search`` takes them) over the pool's embeddings."""
        return search_program(self.mesh, self.index, self.data * b, SEARCH_DEPTH, "cosine")

    def program(self, name: str, b: int) -> Program:
        return getattr(self, name)(b)

    # their loops write summaries, reading the embedder's weights once per token
    decoders = ("contrastive", "rl_step", "embed")

    def while_trips(self, name: str) -> int:
        """Trips of ``name``'s while loop: a summary's tokens, the search's blocks."""
        if name in self.decoders:
            return self.setting.summary_tokens
        return search_blocks(self.mesh, self.index) if name == "search" else 1
