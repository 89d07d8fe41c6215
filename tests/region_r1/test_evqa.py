"""Region-R1 on released benchmark files. End to end on the E-VQA-format fixture: the CSV's
single-hop rows with their iNaturalist / GLDv2 images, the knowledge-base JSON, a tiny Hugging
Face CLIP as the frozen scorer and a tiny vision-language policy, trained by r-GRPO and
evaluated, through the CLI. InfoSeek's query sets in EchoSight's format.
The pools and labels are checked against numpy ranking with the scorer run separately."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from evqa_fixture import FIXTURE, evqa_paths
from fast_xla import subprocess_env
from hf_checkpoints import tiny_checkpoint
from paths import CONFIGS, FIXTURES

from jaxrank import parallel
from jaxrank.configs import apply_overrides, load_config_file
from jaxrank.data.errors import BadRows
from jaxrank.data.evqa import ImageLayout, load_id2name, read_evqa_csv, read_query_image
from jaxrank.data.wiki_kb import iter_kb
from jaxrank.models.hf import load_pretrained
from jaxrank.models.hf.inputs import pretrained_inputs
from jaxrank.region_r1.benchmark import BenchmarkScorer, query_set

CONFIG = CONFIGS / "region_r1" / "evqa.py"


def _overrides(clip: Path) -> list[str]:
    data = {
        **evqa_paths(),
        "image_size": 48,
        "pool_size": 4,
    }
    tiny = {
        "vocab_size": 400, "width": 32, "depth": 1, "heads": 4, "kv_heads": 2, "mlp_dim": 48,
        "vision_depth": 1, "vision_width": 32, "vision_heads": 2, "patch_size": 8,
    }  # fmt: skip
    values = {
        **{f"data.{k}": v for k, v in data.items()},
        **{f"policy.tiny.{k}": v for k, v in tiny.items()},
        "scorer_checkpoint": clip,
        "scorer_dtype": "float32",
        "policy.checkpoint": "",
        "policy.dtype": "float32",
        "policy.image_size": 48,
        "policy.max_new_tokens": 12,
        "policy.short_system_prompt": True,
        "rl.num_generations": 2,
        "train.batch_size": 2,
        "train.steps": 2,
        "train.checkpoint_every": 1,
        "train.log_every": 1,
        "eval.batch_size": 4,
        # The reference below stretches the full image to the scorer's square, jaxrank's own
        # view; the config's released view (shortest side, centre crop) is tested in
        # tests/test_imaging.py against PIL and the CLIP processor.
        "reward.crop_view": "stretch",
    }
    return [f"--config.{k}={v}" for k, v in values.items()]


@pytest.mark.slow
def test_region_r1_runs_on_the_evqa_fixture(tmp_path):
    clip = tmp_path / "clip"
    tiny_checkpoint(clip, "clip", seed=3)
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG)]
    command += ["--workdir", str(workdir), *_overrides(clip)]
    env = subprocess_env(tmp_path / "xla_cache")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    metrics = report["evaluation"]["evqa"]
    assert "oracle_crop" not in metrics  # no ground-truth boxes in E-VQA
    assert set(metrics) >= {"full", "centre_crop", "random_crop", "policy"}
    # Rows 0-2 are usable; the rest are bad rows, each counted under its reason.
    data = report["train"]["data"]["evqa"]
    assert data["read"] == 5  # rows that parsed; two of them then lack a usable image
    assert data["skipped"] == {
        "malformed_row": 1, "empty_question": 1, "bad_image_id": 1, "unknown_image_id": 1,
        "undecodable_image": 1,
    }  # fmt: skip
    assert all(m["num_queries"] == 3 for m in metrics.values())
    kb = json.loads((workdir / "kb_report.json").read_text())
    assert kb["read"] == 3 and kb["skipped"] == {"malformed_entry": 1}
    # The full image's ranking against numpy, with the scorer run here on the same inputs.
    full = metrics["full"]
    assert full["num_with_positive"] == 3  # K = 4 covers the KB's 3 good entries
    assert full["mrr"] == pytest.approx(_reference_mrr(clip), abs=1e-5)
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert steps[-1] == 2


def _reference_mrr(clip: Path) -> float:
    """MRR of the gold page when each query's full image (resized as the recipe does) ranks
    the knowledge base's text embeddings by cosine, in numpy."""
    bad = BadRows()
    entries = list(iter_kb(FIXTURE / "kb.json", bad))
    layout = ImageLayout(
        FIXTURE / "inaturalist",
        FIXTURE / "landmarks",
        inaturalist_id2name=load_id2name(FIXTURE / "inaturalist" / "val_id2name.json"),
    )
    examples, images = [], []
    for example in read_evqa_csv(FIXTURE / "test.csv", bad):
        image = read_query_image(example, layout, bad)
        if image is not None:
            examples.append(example)
            pil = PIL.Image.fromarray(image).resize((48, 48), PIL.Image.BICUBIC)
            images.append(np.asarray(pil))
    model = load_pretrained(clip).model
    inputs = pretrained_inputs(clip)
    queries = np.asarray(model.encode_image(inputs.pixels(jnp.asarray(np.stack(images)))))
    texts = [f"{e.title}: {e.section_texts[0]}" for e in entries]
    kb = np.asarray(model.encode_text(jnp.asarray(inputs.tokenize(texts))), np.float64)
    kb /= np.linalg.norm(kb, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    urls = [e.url for e in entries]
    ranks = []
    for query, example in zip(queries, examples, strict=True):
        scores = kb @ query
        gold = scores[urls.index(example.wikipedia_urls[0])]
        ranks.append(1 + int((scores > gold).sum()))
    return float(np.mean(1.0 / np.asarray(ranks)))


INFOSEEK = FIXTURES / "infoseek"


def test_infoseek_in_echosights_format_gives_pools_ranked_by_the_scorer(tmp_path):
    """InfoSeek questions in EchoSight's E-VQA-format CSV, OVEN images in the sharded layout:
    each usable query's pool is the knowledge base ranked by the scorer (numpy reference) and
    labels mark its gold page; the missing image is a counted bad row."""
    clip = tmp_path / "clip"
    tiny_checkpoint(clip, "clip", seed=3)
    data = {
        "train_csv": INFOSEEK / "echosight_test_filtered.csv",
        "test_csv": INFOSEEK / "echosight_test_filtered.csv",
        "kb": FIXTURE / "kb.json",
        "oven_root": INFOSEEK / "oven_images",
        "oven_layout": "sharded",
        "image_size": 48,
        "pool_size": 4,
    }
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    overrides += [f"scorer_checkpoint={clip}", "scorer_dtype=float32", "eval.batch_size=4"]
    cfg = apply_overrides(load_config_file(CONFIG.with_name("infoseek.py")), overrides)
    mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
    scorer = BenchmarkScorer(cfg, tmp_path, mesh)
    queries = query_set(cfg, scorer, "test", mesh)
    assert queries["report"]["skipped"] == {"missing_image": 1}
    assert queries["questions"] == [
        "Which country is this bird native to?",
        "How tall is this building in metres?",
        "When was this plant first described?",
    ]
    model, inputs = load_pretrained(clip).model, pretrained_inputs(clip)
    images = jnp.asarray(queries["images"])
    full = np.asarray(model.encode_image(inputs.pixels(images)), np.float64)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    kb = np.asarray(scorer.kb, np.float64)
    expected = np.argsort(-(full @ kb.T), axis=1)
    valid = queries["pool_valid"]
    assert valid[:, :3].all() and not valid[:, 3].any()  # a KB of 3 pages, K = 4
    np.testing.assert_array_equal(queries["pool_ids"][:, :3], expected)
    gold = ["Common_raven", "Menger_Hotel", "Common_sunflower"]
    for row, page in enumerate(gold):
        hit = [scorer.urls[i].endswith(page) for i in queries["pool_ids"][row, :3]]
        np.testing.assert_array_equal(queries["labels"][row, :3], hit)
