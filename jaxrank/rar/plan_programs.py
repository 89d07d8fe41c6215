"""The jitted programs of RAR's fine-tuning and evaluation built from abstract models on a
mesh, with abstract arguments (nothing is allocated), each from the recipe's own functions:

- ``update``: the ranking fine-tuning's step (``train.stage.supervised`` over
  ``vlm.finetune.answer_nll_loss``, jitted by ``train.step.jit_train_step``), the LoRA
  adapters and their AdamW state donated;
- ``embed``: the memory encoder's image tower (``memory_encoder.image_tower``) on one
  evaluation batch. The recipe jits it on host arrays with weights loaded without a mesh, so it
  runs the whole batch on one device: compiled replicated, every device holds what that one
  does;
- ``search``: the class memory's exact search (``search.planned.search_program``) of one
  ``Index.search`` chunk of queries, every row deep (``ClassMemory.top_classes``' default);
- ``generate``: the ranker's greedy answer (``vlm.programs.make_sampler``, one completion per
  query);
- ``score``: the ranker's score path (``ranker.make_scorer``: each of the k shown names'
  opening after the prompt).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from jaxrank import parallel
from jaxrank.models.dual_encoder import ImageEncoder
from jaxrank.models.lora import split_lora
from jaxrank.models.vlm import VisionLanguageModel
from jaxrank.perf.memory import Estimate, tree_bytes
from jaxrank.perf.plan import abstract, rows
from jaxrank.perf.planner import Program, Stage, batch_arguments
from jaxrank.rar.memory_encoder import image_tower
from jaxrank.rar.plan_setting import Setting, estimate
from jaxrank.rar.ranker import make_scorer
from jaxrank.rl.sampler import SamplingSettings
from jaxrank.search.planned import (
    index_tree,
    search_blocks,
    search_program,
    search_temporaries,
)
from jaxrank.train.optim import adamw_warmup_cosine
from jaxrank.train.stage import supervised
from jaxrank.train.step import abstract_train_state, jit_train_step
from jaxrank.vlm.finetune import answer_nll_loss, with_adapters
from jaxrank.vlm.programs import abstract_prompts, make_sampler

EOS, PAD = 151645, 151643  # Qwen's <|im_end|> and <|endoftext|>; only their type matters here
# Steps of the fine-tuning's schedule: the paper's ~30K ranking examples (PAPERS.md §3) at the
# config's batch. Its length changes no shape; the optimiser needs one.
FINETUNE_EXAMPLES = 30_000


class Programs:
    """The setting's models as abstract arrays on ``mesh`` and its programs at any per-device
    batch, in two stages (``perf.planner.PlannedSetting``): the fine-tuning step at
    ``finetune.batch_size``, and the evaluation's programs, one after another, at
    ``eval.batch_size``."""

    def __init__(self, cfg: ml_collections.ConfigDict, setting: Setting, mesh: Mesh):
        self.setting, self.mesh, self.cfg = setting, mesh, cfg
        self.data = mesh.shape[parallel.DATA]
        s = setting

        def ranker():
            model = VisionLanguageModel(
                s.ranker, dtype=s.dtype, param_dtype=s.dtype, rngs=nnx.Rngs(cfg.seed)
            )
            graphdef, params = nnx.split(model, nnx.Param)
            return nnx.merge(*with_adapters(cfg.lora, graphdef, params, cfg.seed))

        def encoder():
            e = s.encoder
            embed = e.embed_dim if e.vision_projection else None
            return ImageEncoder(
                e.vision,
                embed,
                e.projection_bias,
                dtype=e.dtype,
                param_dtype=e.param_dtype,
                rngs=nnx.Rngs(0),
            )

        with jax.set_mesh(mesh):
            graphdef, adapters, rest = split_lora(nnx.eval_shape(ranker))
            encoder_graphdef, encoder_params = nnx.split(nnx.eval_shape(encoder))
        self.graphdef = graphdef
        self.adapters, self.rest = abstract(adapters, mesh), abstract(rest, mesh)
        self.encoder_graphdef, self.encoder = encoder_graphdef, abstract(encoder_params, mesh)
        section = cfg.finetune.copy_and_resolve_references()
        section.steps = -(-FINETUNE_EXAMPLES // s.finetune_batch)
        self.optimizer = adamw_warmup_cosine(section)
        self.state = abstract_train_state(self.adapters, self.optimizer, mesh)
        self.index = index_tree(mesh, s.memory_rows, s.encoder.embed_dim, s.index_dtype)
        self.stages = (
            Stage("finetune", ("update",), s.finetune_batch),
            Stage("evaluation", ("embed", "search", "generate", "score"), s.eval_batch),
        )

    def trees(self) -> dict[str, Any]:
        """Every tree that stays on a device through a stage, by name."""
        return {
            "ranker_base": self.rest,
            "train_state": self.state,
            "adapters": self.adapters,
            "memory_encoder": self.encoder,
            "class_memory": self.index,
        }

    def resident(self, stage: str) -> dict[str, Any]:
        """What stays on a device through ``stage``. The recipe loads the memory encoder
        before fine-tuning (its default device keeps it throughout); the fine-tuning holds the
        ranker's base and the train state, the evaluation the base, the trained adapters and
        the class memory's index."""
        names = {
            "finetune": ("ranker_base", "train_state", "memory_encoder"),
            "evaluation": ("ranker_base", "adapters", "memory_encoder", "class_memory"),
        }[stage]
        trees = self.trees()
        return {name: trees[name] for name in names}

    def resident_trees(self, name: str) -> list[Any]:
        trees = self.trees()
        return [trees[tree] for tree in READS[name]]

    def prompts(self, b: int) -> dict[str, jax.ShapeDtypeStruct]:
        """One prompt batch, ``b`` rows per data shard."""
        s = self.setting
        vision = s.ranker.vision
        return abstract_prompts(
            self.mesh, self.data * b, s.prompt_length, s.patches, vision.patch_dim
        )

    def update(self, b: int) -> Program:
        s, n = self.setting, self.data * b
        loss = answer_nll_loss(self.graphdef, s.grid, adapters=True)
        step = jit_train_step(supervised(loss)(self.optimizer), self.state)
        batch = dict(
            self.prompts(b),
            completion=rows(self.mesh, (n, s.new_tokens), jnp.int32),
            completion_mask=rows(self.mesh, (n, s.new_tokens), jnp.bool_),
        )
        return step, (self.state, batch, self.rest)

    def embed(self, b: int) -> Program:
        side = self.setting.encoder.vision.image_size
        pixels = jax.ShapeDtypeStruct(
            (self.data * b, side, side, 3), jnp.float32, sharding=parallel.replicated(self.mesh)
        )
        return image_tower(self.encoder_graphdef), (self.encoder, pixels)

    def search(self, b: int) -> Program:
        """``b`` is unused: ``Index.search`` takes the queries in chunks of its own size."""
        s = self.setting
        return search_program(self.mesh, self.index, s.search_queries, s.memory_rows, "cosine")

    def generate(self, b: int) -> Program:
        s = self.setting
        settings = SamplingSettings(s.new_tokens, 0.0, stop_tokens=(EOS,), pad_id=PAD)
        sample = make_sampler(self.graphdef, settings, 1, s.grid)
        key = jax.ShapeDtypeStruct(
            (), jax.random.key(0).dtype, sharding=parallel.replicated(self.mesh)
        )
        free = rows(self.mesh, (self.data * b, 1), jnp.int32)
        return sample, (self.adapters, self.rest, self.prompts(b), key, free)

    def score(self, b: int) -> Program:
        s, n = self.setting, self.data * b * self.setting.k
        openings = {
            "completion": rows(self.mesh, (n, s.opening_length), jnp.int32),
            "completion_mask": rows(self.mesh, (n, s.opening_length), jnp.bool_),
        }
        scorer = make_scorer(self.graphdef, s.grid)
        return scorer, (self.adapters, self.rest, self.prompts(b), openings)

    def program(self, name: str, b: int) -> Program:
        return getattr(self, name)(b)

    decoders = ("generate",)  # its loop reads the ranker's weights once per new token

    def while_trips(self, name: str) -> int:
        """Trips of ``name``'s while loop: the answer's tokens, the search's blocks."""
        if name == "generate":
            return self.setting.new_tokens
        return search_blocks(self.mesh, self.index) if name == "search" else 1

    def estimate(self, name: str, b: int, model: int) -> Estimate:
        """The analytic model (``plan_setting``; the search's from ``search.planned``) with
        the resident trees it reads and its batch counted exactly."""
        trees = self.trees()
        if name == "search":  # a cosine search reads no bias; XLA drops the argument
            trees["class_memory"] = self.index["vectors"]
        arguments = {tree: float(tree_bytes(trees[tree])) for tree in READS[name]}
        arguments["batch"] = batch_arguments(self, name, b)
        s = self.setting
        if name == "search":
            temporaries = search_temporaries(self.mesh, self.index, s.search_queries, s.memory_rows)
            return Estimate(arguments, temporaries)
        rows_of = self.data * b if name == "embed" else b
        return estimate(s, name, rows_of, arguments, model)

    def summary(self) -> dict[str, Any]:
        return summary_of(self.setting)


READS = {
    "update": ("train_state", "ranker_base"),
    "embed": ("memory_encoder",),
    "search": ("class_memory",),
    "generate": ("adapters", "ranker_base"),
    "score": ("adapters", "ranker_base"),
}


def summary_of(s: Setting) -> dict[str, Any]:
    """The setting as JSON-ready sizes."""
    lm, v, e = s.ranker.lm, s.ranker.vision, s.encoder.vision
    fields = dataclasses.asdict(s)
    for key in ("ranker", "encoder", "lora", "dtype", "index_dtype"):
        fields.pop(key)
    return {
        "ranker": f"LM {lm.depth} x {lm.width} (MLP {lm.mlp_dim}, vocab {lm.vocab_size}); "
        f"vision {v.depth} x {v.width}",
        "memory_encoder": f"ViT {e.depth} x {e.width} at {e.image_size} px, "
        f"embedding {s.encoder.embed_dim}",
        "dtype": s.dtype.name,
        "lora_rank": s.lora.rank,
        **fields,
        "grid": list(s.grid),
    }
