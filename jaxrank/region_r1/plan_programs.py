"""Region-R1's published setting for the planner (``perf.planner.PlannedSetting``): the three
jitted programs of one MLLM step (``mllm_step.GRPOStep``) and the first-stage search that builds
the pools, from abstract models on a mesh with abstract arguments: nothing is allocated, so a
3B policy and a 2M-page knowledge base compile on a laptop.

- ``update``: ``train.step.make_train_step`` over ``rl.token_grpo``'s loss (per-token
  log-probs from ``vlm.programs``), the LoRA adapters and their AdamW state donated;
- ``sampler``: ``vlm.programs.make_sampler``, G completions per query (prefill, then the decode
  loop over the KV cache);
- ``judge``: ``r_grpo.make_judge``, the scorer's image tower on every crop and full image, the
  pools' scores, rewards and advantages;
- ``search`` (stage ``retrieval``): the exact top-K pages of an evaluation batch's query
  embeddings over the knowledge base (``search.planned``).

The models are built inside ``jax.set_mesh`` under ``nnx.eval_shape``, so every parameter
carries the sharding its module annotates, as ``models.hf``'s loaders place them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from jaxrank import parallel
from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.inputs import EncoderInputs
from jaxrank.models.lora import apply_lora, split_lora
from jaxrank.models.vlm import VisionLanguageModel
from jaxrank.perf.memory import Estimate, tree_bytes
from jaxrank.perf.plan import abstract, rows
from jaxrank.perf.planner import Program, Stage, batch_arguments
from jaxrank.region_r1 import r_grpo
from jaxrank.region_r1.kb_rows import kb_layout, kb_sharding, padded_rows
from jaxrank.region_r1.plan_setting import Setting, estimate
from jaxrank.rl.sampler import SamplingSettings
from jaxrank.rl.token_grpo import make_token_grpo_loss
from jaxrank.search.planned import (
    index_tree,
    search_blocks,
    search_program,
    search_temporaries,
)
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.step import abstract_train_state, make_train_step
from jaxrank.vlm.programs import abstract_prompts, completion_log_probs_fn, make_sampler

EOS, PAD = 151645, 151643  # Qwen's <|im_end|> and <|endoftext|>; only their type matters here


class Programs:
    """The setting's models as abstract arrays on ``mesh`` and its programs at any per-device
    batch, in two stages: the r-GRPO step (``update``, ``sampler``, ``judge``) at the
    training batch, and the first-stage search at the evaluation batch."""

    def __init__(self, cfg: ml_collections.ConfigDict, setting: Setting, mesh: Mesh):
        self.setting, self.mesh, self.cfg = setting, mesh, cfg
        self.data = mesh.shape[parallel.DATA]
        s = setting

        def policy():
            model = VisionLanguageModel(
                s.policy, dtype=s.dtype, param_dtype=s.dtype, rngs=nnx.Rngs(0)
            )
            return apply_lora(model, s.lora, nnx.Rngs(params=0, dropout=1))

        with jax.set_mesh(mesh):
            graphdef, adapters, base = split_lora(nnx.eval_shape(policy))
            scorer = nnx.eval_shape(lambda: DualEncoder(s.scorer, rngs=nnx.Rngs(0)))
        self.graphdef = graphdef
        self.adapters, self.base = abstract(adapters, mesh), abstract(base, mesh)
        self.optimizer = adamw_warmup_cosine(cfg.train)
        self.state = abstract_train_state(self.adapters, self.optimizer, mesh)
        scorer_graphdef, scorer_params = nnx.split(scorer, nnx.Param)
        self.scorer_graphdef, self.scorer = scorer_graphdef, abstract(scorer_params, mesh)
        layout = kb_layout(cfg)
        kb_shape = (padded_rows(max(s.kb_rows, 1), mesh, layout), s.scorer.embed_dim)
        self.kb = jax.ShapeDtypeStruct(kb_shape, jnp.float32, sharding=kb_sharding(mesh, layout))
        self.index = index_tree(mesh, max(s.kb_rows, 1), s.scorer.embed_dim, jnp.float32)
        self.stages = (
            Stage("step", ("update", "sampler", "judge"), s.batch),
            Stage("retrieval", ("search",), s.eval_batch),
        )

    def resident(self, stage: str) -> dict[str, Any]:
        """What stays on a device through ``stage``: for the step, the policy's base weights,
        the train state (adapters, AdamW moments), the scorer and the knowledge base (all of
        it, or 1/devices of its rows: ``kb_layout``); for the retrieval, the search index."""
        if stage == "retrieval":
            return {"index": self.index}
        return {
            "policy_base": self.base,
            "train_state": self.state,
            "scorer": self.scorer,
            "knowledge_base": self.kb,
        }

    decoders = ("sampler",)  # its loop reads the policy's weights once per new token

    def while_trips(self, name: str) -> int:
        """Trips of ``name``'s while loop: the sampler's new tokens, the search's blocks."""
        if name == "sampler":
            return self.setting.new_tokens
        return search_blocks(self.mesh, self.index) if name == "search" else 1

    def resident_trees(self, name: str) -> list[Any]:
        return {
            "update": [self.state, self.base],
            "sampler": [self.adapters, self.base],
            "judge": [self.kb, self.scorer, self.base],
            "search": [self.index],
        }[name]

    def prompts(self, b: int) -> dict[str, jax.ShapeDtypeStruct]:
        """One prompt batch, ``b`` rows per data shard."""
        s = self.setting
        vision = s.policy.vision
        return abstract_prompts(
            self.mesh, self.data * b, s.prompt_length, s.patches, vision.patch_dim
        )

    def update(self, b: int) -> Program:
        s = self.setting
        n, completions = self.data * b, self.data * b * s.group
        log_probs = completion_log_probs_fn(s.grid, s.group, s.temperature, s.logit_chunk)
        loss = make_token_grpo_loss(self.graphdef, log_probs, r_grpo.grpo_config(self.cfg).grpo)
        batch = dict(
            self.prompts(b),
            completion=rows(self.mesh, (completions, s.new_tokens), jnp.int32),
            completion_mask=rows(self.mesh, (completions, s.new_tokens), jnp.bool_),
            old_log_probs=rows(self.mesh, (completions, s.new_tokens), jnp.float32),
            advantages=rows(self.mesh, (n, s.group), jnp.float32),
        )
        step = jax.jit(make_train_step(loss, self.optimizer), donate_argnums=0)
        return step, (self.state, batch, self.base)

    def sampler(self, b: int) -> Program:
        s = self.setting
        settings = SamplingSettings(s.new_tokens, s.temperature, stop_tokens=(EOS,), pad_id=PAD)
        sample = make_sampler(self.graphdef, settings, s.group, s.grid)
        key = jax.ShapeDtypeStruct(
            (), jax.random.key(0).dtype, sharding=parallel.replicated(self.mesh)
        )
        forced = rows(self.mesh, (self.data * b * s.group, 1), jnp.int32)
        return sample, (self.adapters, self.base, self.prompts(b), key, forced)

    def judge(self, b: int) -> Program:
        s, n = self.setting, self.data * b
        size = s.scorer.vision.image_size
        inputs = EncoderInputs(size, (0.5,) * 3, (0.5,) * 3, tokenize=None)  # shapes only
        graphdef = self.scorer_graphdef

        def embed(params, pixels):
            return nnx.merge(graphdef, params).encode_image(inputs.normalize(pixels))

        judge = r_grpo.make_judge(embed, r_grpo.grpo_config(self.cfg), size, kb_layout(self.cfg))
        judge = jax.jit(judge)
        batch = {
            "images": rows(self.mesh, (n, s.image_size, s.image_size, 3), jnp.uint8),
            "pool_ids": rows(self.mesh, (n, s.pool), jnp.int32),
            "labels": rows(self.mesh, (n, s.pool), jnp.float32),
            "pool_valid": rows(self.mesh, (n, s.pool), jnp.bool_),
            "boxes": rows(self.mesh, (n, 4), jnp.float32),
        }
        decision = rows(self.mesh, (n, s.group), jnp.int32)
        boxes = rows(self.mesh, (n, s.group, 4), jnp.float32)
        frozen = {"kb": self.kb, "scorer": self.scorer, "base": self.base}
        return judge, (decision, boxes, batch, frozen)

    def search(self, b: int) -> Program:
        """The top pool-size pages of ``b`` queries per data shard (replicated: every device
        scans its rows for all of them)."""
        return search_program(self.mesh, self.index, self.data * b, self.setting.pool)

    def program(self, name: str, b: int) -> Program:
        programs = {"update": self.update, "sampler": self.sampler, "judge": self.judge}
        return {**programs, "search": self.search}[name](b)

    def persistent_arguments(self, name: str) -> dict[str, int]:
        """The resident trees ``name`` reads, bytes per device (the judge reads the scorer's
        image tower only; XLA drops the unused text tower from its arguments)."""
        if name == "update":
            return {"policy_base": tree_bytes(self.base), "train_state": tree_bytes(self.state)}
        if name == "sampler":
            return {"policy_base": tree_bytes(self.base), "adapters": tree_bytes(self.adapters)}
        if name == "search":
            return {"index": tree_bytes(self.index)}
        image = {k: v for k, v in self.scorer.items() if k != "text"}
        return {"scorer_image_tower": tree_bytes(image), "knowledge_base": tree_bytes(self.kb)}

    def estimate(self, name: str, b: int, model: int) -> Estimate:
        """The analytic model (``plan_setting``; the search's from ``search.planned``) with
        the arguments counted exactly."""
        arguments = dict(self.persistent_arguments(name))
        arguments["batch"] = batch_arguments(self, name, b)
        if name == "search":
            queries = self.data * b
            return Estimate(
                arguments, search_temporaries(self.mesh, self.index, queries, self.setting.pool)
            )
        return estimate(self.setting, name, b, arguments, model)

    def summary(self) -> dict[str, Any]:
        s = self.setting
        lm, v = s.policy.lm, s.policy.vision
        return {
            "policy": f"LM {lm.depth} x {lm.width} (MLP {lm.mlp_dim}, vocab {lm.vocab_size}); "
            f"vision {v.depth} x {v.width}",
            "scorer": f"ViT {s.scorer.vision.depth} x {s.scorer.vision.width} at "
            f"{s.scorer.vision.image_size} px",
            "dtype": s.dtype.name,
            **{
                k: getattr(s, k)
                for k in ("group", "prompt_length", "new_tokens", "pool", "kb_rows", "batch")
            },
            "grid": list(s.grid),
            "lora_rank": s.lora.rank,
        }
