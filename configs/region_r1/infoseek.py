"""Region-R1 as published, on InfoSeek: configs/region_r1/evqa.py's recipe with InfoSeek's
data (validation split, the 100K-entity knowledge-base subset; PAPERS.md §1)."""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

EVQA = Path(__file__).resolve().parent / "evqa.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(EVQA)
    c.data.benchmark = "infoseek"
    c.eval.presets = ("validation",)
    return c
