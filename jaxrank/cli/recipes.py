"""The recipe registry: a config's ``recipe`` key names the module that trains and evaluates it
(``train_and_evaluate(cfg, workdir)``, ``evaluate_workdir(cfg, workdir)``)."""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from jaxrank.configs import ConfigError

RECIPES = {
    "contrastive": "jaxrank.contrastive.recipe",
    "region_r1": "jaxrank.region_r1.recipe",
    "region_r1_mllm": "jaxrank.region_r1.mllm_recipe",
    "elva": "jaxrank.elva.recipe",
    "elva_generative": "jaxrank.elva.generative_recipe",
    "rar": "jaxrank.rar.recipe",
}


def recipe_module(cfg: ml_collections.ConfigDict) -> ModuleType:
    """The module of the config's recipe, imported on demand (a command pays only for its own
    recipe's imports)."""
    name = cfg.get("recipe", None)
    if name not in RECIPES:
        raise ConfigError(f"config key 'recipe' is {name!r}; expected one of {sorted(RECIPES)}")
    return importlib.import_module(RECIPES[name])
