"""RAR's setting for ``jaxrank plan``: the few-shot config read at its real size (or ``depth``
layers per tower) and handed to the planner's driver (``perf.planner``) as
``plan_programs.Programs``: the ranking fine-tuning's step, and the evaluation's memory
encoder, class search and the ranker's generation and scoring."""

from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from jaxrank.rar.plan_programs import Programs
from jaxrank.rar.plan_setting import read_setting


def planned_setting(
    cfg: ml_collections.ConfigDict,
    mesh: Mesh,
    depth: int | None = None,
    dtype: str | None = None,
) -> Programs:
    """The planned setting of a RAR config with a released ranker on ``mesh``."""
    return Programs(cfg, read_setting(cfg, depth, dtype), mesh)
