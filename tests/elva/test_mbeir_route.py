"""ELVA's generative recipe on M-BEIR's released formats (the fixture tree): the rows follow the
files (instructions by qid, hidden images for text inputs, bad rows counted), UniIR's Recall@K
equals a numpy ranking of the same embeddings, and the recipe runs from the command line
end to end with a tiny random embedder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from fast_xla import subprocess_env
from paths import CONFIGS, FIXTURES

from jaxrank.configs import ConfigError, apply_overrides, load_config_file
from jaxrank.data import mbeir
from jaxrank.data.errors import DataError
from jaxrank.elva.mbeir_rows import MBEIRRows, pairs_of, recall_report

ROOT = FIXTURES / "mbeir"
CONFIG = CONFIGS / "elva" / "mbeir.py"
PAIRS = "('mscoco/task3', 'cirr/task7', 'webqa/task1')"


def _data(*extra: str):
    cfg = load_config_file(CONFIG)
    return apply_overrides(cfg, [f"data.root={ROOT}", f"data.pairs={PAIRS}", *extra]).data


def test_rows_follow_the_files_and_bad_rows_are_counted():
    rows = MBEIRRows(_data(), "test", 16)
    names = [p.name for p in rows.pairs]
    assert names == ["mscoco/task3", "cirr/task7", "webqa/task1"]
    coco = rows.pairs[0]
    assert [q.qid for q in coco.queries] == ["9:1", "9:4"]  # the fixture's usable rows
    skipped = rows.bad.report()["skipped"]
    assert skipped["missing_image"] >= 1 and skipped["bad_line"] >= 1
    queries = rows.query_rows(coco.queries)
    prompts = rows.instructions[(9, "image", "text")]
    assert all(i in prompts for i in queries["instructions"])
    assert queries["has_image"].all() and queries["images"].shape == (2, 16, 16, 3)
    texts = rows.candidate_rows(coco, coco.dids)
    assert not texts["has_image"].any() and texts["texts"][0] == coco.pool[coco.dids[0]].txt
    assert rows.positive(coco, coco.queries[0]) == coco.dids.index("9:2")


def _fixture_with_bad_rows(tmp_path):
    """The fixture plus an instruction row for no task's modalities (video), and two queries
    in MSCOCO's file: one of a dataset (id 7) with no instruction row, one whose qrels name no
    relevant candidate."""
    root = tmp_path / "mbeir"
    shutil.copytree(ROOT, root)
    with (root / "instructions" / "query_instructions.tsv").open("a") as f:
        f.write("video\ttext\tMSCOCO\t9\tFind the clip.\n")
    image = "mbeir_images/mscoco_images/val2014/COCO_val2014_000000000001.jpg"
    queries = [
        {"qid": "7:20", "query_img_path": image},
        {"qid": "9:21", "query_img_path": image},
    ]
    with (root / "query" / "test" / "mbeir_mscoco_task3_test.jsonl").open("a") as f:
        for query in queries:
            row = {**query, "query_txt": None, "query_modality": "image", "task_id": 3}
            row |= {"query_src_content": None, "pos_cand_list": ["9:2"], "neg_cand_list": []}
            f.write(json.dumps(row) + "\n")
    with (root / "qrels" / "test" / "mbeir_mscoco_task3_test_qrels.txt").open("a") as f:
        f.write("7:20 0 9:2 1 3\n9:21 0 9:3 0 3\n")  # 9:21's only listed one is not relevant
    return root


def test_unmatched_instructions_and_queries_without_a_positive_are_counted(tmp_path):
    root = _fixture_with_bad_rows(tmp_path)
    rows = MBEIRRows(_data(f"data.root={root}"), "test", 16)
    skipped = rows.bad.report()["skipped"]
    before = MBEIRRows(_data(), "test", 16).bad.report()["skipped"]
    added = {k: n - before.get(k, 0) for k, n in skipped.items() if n != before.get(k, 0)}
    assert added == {"unknown_task": 1, "no_instruction": 1, "no_positive": 1}
    assert (9, "video", "text") not in rows.instructions
    assert [q.qid for q in rows.pairs[0].queries] == ["9:1", "9:4"]  # as without the rows
    tsv = root / "instructions" / "query_instructions.tsv"
    header, *_, video = tsv.read_text().splitlines(keepends=True)
    tsv.write_text(header + video)  # the fixture's own bad rows would raise first
    with pytest.raises(DataError, match=r"unknown_task: row \(9, 'video', 'text'\)"):
        MBEIRRows(_data(f"data.root={root}", "data.strict=True"), "test", 16)


def test_unknown_pair_is_refused():
    with pytest.raises(ConfigError, match="not one of M-BEIR's evaluation pairs"):
        pairs_of(_data("data.pairs=('mscoco/task9',)"))


def test_recall_equals_a_numpy_ranking_of_the_same_embeddings():
    rows = MBEIRRows(_data(), "test", 16)
    rng = np.random.default_rng(0)
    table: dict[str, np.ndarray] = {}

    def embed(batch):  # a fixed random unit vector per distinct input
        out = []
        for text, image in zip(batch["texts"], batch["images"], strict=True):
            key = f"{text}|{int(image.astype(np.int64).sum())}"
            if key not in table:
                v = rng.normal(size=8)
                table[key] = v / np.linalg.norm(v)
            out.append(table[key])
        return np.stack(out)

    got = recall_report(rows, embed)
    for pair in rows.pairs:
        q = embed(rows.query_rows(pair.queries))
        c = embed(rows.candidate_rows(pair, pair.dids))
        for k in mbeir.RECALL_CUTOFFS[(pair.dataset, pair.task)]:
            hits = []
            for query, scores in zip(pair.queries, q @ c.T, strict=True):
                top = {pair.dids[i] for i in np.argsort(-scores, kind="stable")[:k]}
                hits.append(float(bool(top & set(pair.qrels[query.qid].dids))))
            assert got[f"mbeir/{pair.name}/recall@{k}"] == pytest.approx(np.mean(hits))
    headline = [got[f"mbeir/{p.name}/recall@5"] for p in rows.pairs]
    assert got["mbeir/avg/recall@headline"] == pytest.approx(np.mean(headline))


@pytest.mark.slow
def test_the_recipe_runs_on_the_fixture(tmp_path):
    overrides = [
        f"data.root={ROOT}", f"data.pairs={PAIRS}", "data.train_split=test",
        "data.rl_fraction=1.0", "embedder.checkpoint=", "embedder.dtype=float32",
        "embedder.image_size=16", "embedder.summary_tokens=4", "embedder.tiny.vocab_size=300",
        "embedder.tiny.width=32", "embedder.tiny.depth=1", "embedder.tiny.mlp_dim=48",
        "embedder.tiny.vision_depth=1", "embedder.tiny.vision_width=32",
        "contrastive.train=all", "contrastive.steps=2", "contrastive.batch_size=4",
        "contrastive.log_every=1", "lora.rank=4", "mining.n_hard=1", "mining.n_random=1",
        "mining.threshold=1.5", "rl.num_generations=2", "train.steps=2", "train.batch_size=2",
        "train.log_every=1", "train.eval_every=2", "eval.batch_size=8", "mesh.model=1",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG),
        "--workdir", str(tmp_path / "run"), *(f"--config.{o}" for o in overrides),
    ]  # fmt: skip
    subprocess.run(command, env=subprocess_env(tmp_path / "xla"), check=True, timeout=900)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [row["step"] for row in report["curve"]] == [0, 2]
    for pair in ("mscoco/task3", "cirr/task7", "webqa/task1"):
        assert 0.0 <= report["rl"][f"mbeir/{pair}/recall@5"] <= 1.0
    assert report["data"]["test"]["skipped"]["missing_image"] >= 1
    assert "ELVA-7B average: 58.7" in (tmp_path / "run" / "report.md").read_text()
