"""Region-R1 as published, on InfoSeek: configs/region_r1/evqa.py's recipe with InfoSeek's
data (PAPERS.md §1: validation split, 71,335 queries; the 100K-entity knowledge-base subset in
E-VQA's KB format; DATA_FORMATS.md §2).

The readers exist (``jaxrank/data/infoseek.py``: QA jsonl, the ``*_withkb`` entity join, OVEN
image paths, Wiki6M; ``wiki_kb.py`` for the 100K KB) and ``jaxrank data check`` reads this
layout; the Region-R1 recipe runs E-VQA only so far and stops on InfoSeek with an error that
says so.
"""

from pathlib import Path

import ml_collections

from jaxrank.configs import load_config_file

EVQA = Path(__file__).resolve().parent / "evqa.py"


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(EVQA)
    root = "/data/infoseek"  # change to where the files are, or override each path
    c.data = ml_collections.ConfigDict(
        {
            "benchmark": "infoseek",
            "train_jsonl": f"{root}/infoseek_train.jsonl",
            "test_jsonl": f"{root}/infoseek_val.jsonl",
            "train_withkb": f"{root}/infoseek_train_withkb.jsonl",
            "test_withkb": f"{root}/infoseek_val_withkb.jsonl",
            "kb": f"{root}/infoseek_kb_100k.json",  # EchoSight's 100K subset, E-VQA format
            "oven_root": f"{root}/oven_images",  # <first two digits>/<image_id>.<ext>
            "image_size": 448,
            "max_train_queries": 0,
            "max_test_queries": 0,
            "strict": False,
            "pool_size": 20,
        }
    )
    return c
