"""Region-R1's setting for ``jaxrank plan``: the MLLM config read at its real size (or
``depth`` layers per tower) and handed to the planner's driver (``perf.planner``) as
``plan_programs.Programs``."""

from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from jaxrank.region_r1.plan_programs import Programs
from jaxrank.region_r1.plan_setting import read_setting


def planned_setting(
    cfg: ml_collections.ConfigDict,
    mesh: Mesh,
    depth: int | None = None,
    dtype: str | None = None,
) -> Programs:
    """The planned setting of a Region-R1 MLLM config on ``mesh``."""
    return Programs(cfg, read_setting(cfg, depth, dtype), mesh)
