"""Does ELVA's published setting (configs/elva/mbeir.py: Qwen2-VL-7B with ``[RET]``, LoRA on
the language model, bf16, scanned + rematerialised layers) fit, on what chip: its three stages
for ``jaxrank plan`` (``perf.planner``).

- ``contrastive``: the InfoNCE step at ``contrastive.batch_size`` query-positive pairs;
- ``rl_step``: the GRPO step at ``train.batch_size`` queries, each with its pool (query,
  positive, ``mining.n_hard`` + ``mining.n_random`` negatives) and G rollouts;
- ``evaluation``: embedding ``eval.batch_size`` rows, and the first-stage search of that many
  queries over M-BEIR's candidate pool (``plan_setting.POOL_ROWS``) at the embedding's width.

A stage's batch counts its own unit (pairs, queries, rows); ``program(name, b)`` takes ``b`` of
them per data shard.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from jax.sharding import Mesh

from jaxrank import parallel
from jaxrank.elva.plan_programs import Program, Programs
from jaxrank.elva.plan_setting import SEARCH_DEPTH, TEMPORARIES, read_setting
from jaxrank.perf.memory import Estimate, tree_bytes
from jaxrank.perf.planner import Stage, batch_arguments
from jaxrank.search.planned import search_temporaries


class ELVASetting:
    """``perf.planner.PlannedSetting`` of an ELVA generative config."""

    def __init__(
        self, cfg: ml_collections.ConfigDict, mesh: Mesh, depth: int | None, dtype: str | None
    ):
        self.mesh = mesh
        self.setting = s = read_setting(cfg, depth, dtype)
        self.programs = Programs(cfg, s, mesh)
        self.stages = (
            Stage("contrastive", ("contrastive",), s.contrastive_batch),
            Stage("rl_step", ("rl_step",), s.rl_batch),
            Stage("evaluation", ("embed", "search"), s.eval_batch),
        )

    def summary(self) -> dict[str, Any]:
        s = self.setting
        lm, v = s.embedder.lm, s.embedder.vision
        return {
            "embedder": f"LM {lm.depth} x {lm.width} (MLP {lm.mlp_dim}, vocab {lm.vocab_size}); "
            f"vision {v.depth} x {v.width}",
            "dtype": s.dtype.name,
            "grid": list(s.grid),
            "search_depth": SEARCH_DEPTH,
            **{
                k: getattr(s, k)
                for k in (
                    "prompt_length",
                    "summary_tokens",
                    "contrastive_batch",
                    "group",
                    "pool",
                    "rl_batch",
                    "eval_batch",
                    "pool_rows",
                    "dim",
                )
            },
        }

    def program(self, name: str, b: int) -> Program:
        return self.programs.program(name, b)

    def resident(self, stage: str) -> dict[str, Any]:
        p = self.programs
        if stage == "evaluation":
            return {"embedder_base": p.rest, "adapters": p.adapters, "index": p.index}
        return {"embedder_base": p.rest, "train_state": p.states[stage]}

    def _read(self, name: str) -> dict[str, Any]:
        """The resident trees program ``name`` receives, by name."""
        p = self.programs
        if name == "embed":
            return {"embedder_base": p.rest, "adapters": p.adapters}
        if name == "search":
            return {"index": p.index}
        return {"embedder_base": p.rest, "train_state": p.states[name]}

    def resident_trees(self, name: str) -> list[Any]:
        return list(self._read(name).values())

    def estimate(self, name: str, b: int, model: int) -> Estimate:
        read = self._read(name)
        if name == "search":  # a cosine search reads no bias (l2's); XLA drops the argument
            read = {"index_vectors": read["index"]["vectors"]}
        arguments = {k: tree_bytes(v) for k, v in read.items()}
        arguments["batch"] = batch_arguments(self, name, b)
        if name == "search":
            queries = self.mesh.shape[parallel.DATA] * b
            temporaries = search_temporaries(self.mesh, self.programs.index, queries, SEARCH_DEPTH)
        else:
            temporaries = TEMPORARIES[name](self.setting, b, model)
        return Estimate(arguments, temporaries)


def planned_setting(
    cfg: ml_collections.ConfigDict, mesh: Mesh, depth: int | None = None, dtype: str | None = None
) -> ELVASetting:
    """ELVA's setting on ``mesh`` (``depth``: every tower that many layers, real widths;
    ``dtype``: the compute dtype instead of the config's)."""
    return ELVASetting(cfg, mesh, depth, dtype)
