"""The recipe registry: a config's ``recipe`` key names the module that trains and evaluates it
(``train_and_evaluate(cfg, workdir)``, ``evaluate_workdir(cfg, workdir)``) and the config
sections whose batches are split row-wise over the mesh's ``data`` axis."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

import ml_collections

from jaxrank.configs import ConfigError


class Recipe(NamedTuple):
    module: str
    sharded_batches: tuple[str, ...]
    """Sections whose ``batch_size`` must be a multiple of the data axis (``shard_batch``)."""


RECIPES = {
    "contrastive": Recipe("jaxrank.contrastive.recipe", ("train",)),
    "region_r1": Recipe("jaxrank.region_r1.recipe", ("train", "grounding")),
    "region_r1_mllm": Recipe("jaxrank.region_r1.mllm_recipe", ("sft", "train")),
    "elva": Recipe("jaxrank.elva.recipe", ("train", "contrastive")),
    "elva_generative": Recipe("jaxrank.elva.generative_recipe", ("train", "contrastive", "eval")),
    "rar": Recipe("jaxrank.rar.recipe", ("finetune",)),
}


def recipe_of(cfg: ml_collections.ConfigDict) -> Recipe:
    """The config's registered recipe, or a ConfigError naming the valid ones."""
    name = cfg.get("recipe", None)
    if name not in RECIPES:
        raise ConfigError(f"config key 'recipe' is {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def recipe_module(cfg: ml_collections.ConfigDict) -> ModuleType:
    """The module of the config's recipe, imported on demand (a command pays only for its own
    recipe's imports)."""
    return importlib.import_module(recipe_of(cfg).module)
