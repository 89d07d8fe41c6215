"""Region-R1 as published, on InfoSeek: configs/region_r1/evqa.py's recipe with InfoSeek's
data (PAPERS.md §1: the validation split, 71,335 queries in the paper; the 100K-entity
knowledge-base subset).

It reads InfoSeek as EchoSight released it for retrieval (DATA_FORMATS.md §2): the questions
converted to E-VQA's CSV format (``infoseek_train_filtered.csv``, and
``infoseek_test_filtered.csv``, which holds the validation split), with OVEN image ids and gold
Wikipedia urls, and the 100K knowledge base in E-VQA's JSON format. Images are OVEN's, under
``data.oven_root``: EchoSight keeps them flat (``<root>/<id>.jpg``), oven_eval's downloader
sharded (``<root>/<first two digits>/<id>.jpg``). The native InfoSeek files (QA jsonl, the
``*_withkb`` join, Wiki6M) have their own readers in ``jaxrank/data/infoseek.py``.
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
            "train_csv": f"{root}/infoseek_train_filtered.csv",
            "test_csv": f"{root}/infoseek_test_filtered.csv",  # the validation split
            "kb": f"{root}/infoseek_100k_wiki.zip",  # or the unpacked .json
            "oven_root": f"{root}/oven_images",
            "oven_layout": "flat",  # "sharded": <root>/<first two digits>/<id>.<ext>
            "image_size": 448,
            "max_train_queries": 0,
            "max_test_queries": 0,
            "strict": False,
            "pool_size": 20,
        }
    )
    return c
