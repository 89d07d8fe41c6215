"""RAR's recipe: the digits and their split against scikit-learn's arrays, the pixel memory
against numpy, the ranker's prompts, answers and score path against separate teacher-forced
passes, LoRA ranking fine-tuning (only the adapters move, the NLL falls), and the CLI pipeline
run straight, re-evaluated, and SIGKILLed mid fine-tuning then resumed to the same report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from fast_xla import fast_compile, subprocess_env
from flax import nnx
from kill_and_resume import sigkill_after
from paths import CONFIGS
from skimage import data as skimage_data

from jaxrank import parallel
from jaxrank.configs import ConfigError, apply_overrides, load_config_file
from jaxrank.data.arrays import array_batches
from jaxrank.data.fewshot_tfds import load_split, sample_shots, split_labels
from jaxrank.data.labelled_images import DIGIT_NAMES, digits, partition
from jaxrank.rar import recipe as rar
from jaxrank.rar.class_memory import ClassMemory
from jaxrank.rar.data import load_data
from jaxrank.rar.detection import rank_boxes
from jaxrank.rar.detection_crops import detection_crops, detection_top_classes
from jaxrank.rar.memory_encoder import memory_embedder
from jaxrank.rar.ranker import answer_text, build_ranker, make_scorer
from jaxrank.rar.ranking_text import ranking_prompt
from jaxrank.train.stage import Stage, supervised
from jaxrank.vlm.finetune import answer_nll_loss, with_adapters
from jaxrank.vlm.programs import completion_log_probs_fn

CONFIG = CONFIGS / "rar" / "digits.py"
FEWSHOT = CONFIG.with_name("fewshot.py")
TINY = (
    "data.image_size=16",
    "ranker.image_size=16",
    "ranker.tiny.vocab_size=300",
    "ranker.tiny.width=32",
    "ranker.tiny.depth=1",
    "ranker.tiny.mlp_dim=48",
    "ranker.tiny.vision_depth=1",
    "ranker.tiny.vision_width=32",
    "ranker.tiny.vision_heads=2",
)


def tiny_config(*overrides: str) -> ml_collections.ConfigDict:
    return apply_overrides(load_config_file(CONFIG), [*TINY, *overrides])


@pytest.fixture(scope="module")
def ranker(tmp_path_factory):
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    return build_ranker(tiny_config(), tmp_path_factory.mktemp("ranker"), DIGIT_NAMES, mesh)


def test_digits_are_sklearns_scans_split_per_class():
    from sklearn.datasets import load_digits

    data = digits(8)  # no resampling at the scans' own size
    source = load_digits()
    np.testing.assert_array_equal(data.labels, source.target)
    ink = 255 - data.images[..., 0].astype(float)
    np.testing.assert_allclose(ink, source.images * 255 / 16, atol=0.5)
    assert (data.images[..., 0] == data.images[..., 2]).all()
    parts = partition(data, (0.5, 0.25), seed=3)
    rows = [set(map(tuple, p.images.reshape(len(p), -1).tolist())) for p in parts]
    assert sum(map(len, parts)) == len(data)
    for c in range(10):
        sizes = [int((p.labels == c).sum()) for p in parts]
        total = int((data.labels == c).sum())
        assert sizes[0] == round(total / 2) and sizes[1] == round(total / 4)
    assert len(rows[0] & rows[2]) < 5  # disjoint rows (a few scans are exact duplicates)
    with pytest.raises(ValueError, match="fractions"):
        partition(data, (0.8, 0.3), 0)


def test_pixel_memory_is_the_images_correlation():
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    embed = memory_embedder(ml_collections.ConfigDict({"encoder": "pixels", "dtype": "float32"}))
    rows = embed(images)
    flat = images.reshape(5, -1).astype(float)
    np.testing.assert_allclose(rows @ rows.T, np.corrcoef(flat), atol=1e-5)


def _names(rows):
    return [[DIGIT_NAMES[c] for c in row] for row in rows]


def test_prompt_answer_and_reading_round_trip(ranker):
    shown = _names([[3, 8, 5, 0, 9], [1, 7, 2, 4, 6]])
    images = digits(16).images[:2]
    batch = ranker.prompts(images, shown)
    decoded = ranker.inputs.tokenizer.decode(batch["tokens"][0][batch["mask"][0]])
    assert ranking_prompt(shown[0]) in decoded
    assert (batch["tokens"] == ranker.inputs.image_token_id).sum(axis=1).tolist() == [1, 1]
    ranked = _names([[8, 3, 0, 9, 5], [4, 6, 1, 2, 7]])
    answers = ranker.answers(ranked, 32)
    readings = ranker.read(answers["completion"], answers["completion_mask"], shown)
    assert [[s[i] for i in r.order] for s, r in zip(shown, readings, strict=True)] == ranked
    assert {r.outcome for r in readings} == {"ranked"}
    # Each score-path opening is how the answer ranking that class first begins.
    openings = ranker.openings(shown, 8)
    for row, name in enumerate(n for names in shown for n in names):
        full = ranker.token_ids(answer_text([name, "x"]))
        opening = openings["completion"][row][openings["completion_mask"][row]]
        assert full[: len(opening)] == opening.tolist()


@fast_compile()
def test_score_path_equals_teacher_forced_openings(ranker):
    graphdef, adapters, rest = with_adapters(
        tiny_config().lora, *nnx.split(ranker.model, nnx.Param), seed=0
    )
    adapters = jax.tree.map(lambda a: a + 0.05, adapters)  # adapters that change the model
    shown = _names([[3, 8, 5, 0, 9], [1, 7, 2, 4, 6]])
    batch = ranker.prompts(digits(16).images[5:7], shown)
    openings = ranker.openings(shown, 8)
    scores = np.asarray(make_scorer(graphdef, ranker.grid)(adapters, rest, batch, openings))
    teacher_forced = completion_log_probs_fn(ranker.grid, 1, 1.0)
    log_probs = jax.jit(lambda batch: teacher_forced(nnx.merge(graphdef, adapters, rest), batch))
    for j in range(5):
        rows = [b * 5 + j for b in range(2)]
        one = {
            **batch,
            "completion": openings["completion"][rows],
            "completion_mask": openings["completion_mask"][rows],
        }
        expected = np.asarray(log_probs(one)).sum(axis=1)
        np.testing.assert_allclose(scores[:, j], expected, rtol=1e-5, atol=1e-5)


@fast_compile()
def test_lora_finetuning_moves_only_adapters_and_lowers_the_nll(ranker, tmp_path):
    cfg = tiny_config()
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    graphdef, params = nnx.split(ranker.model, nnx.Param)
    # A random model's logits are near uniform (tied embeddings of scale 0.02 after a unit
    # norm) and no adapter can sharpen them; a pretrained model's are sharp. Sharpen them.
    final_norm = "['language_model']['norm']"
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: 20 * x if jax.tree_util.keystr(path).startswith(final_norm) else x, params
    )
    graphdef, adapters, rest = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    images = digits(16).images[:8]
    shown = _names([[i % 10, (i + 1) % 10, (i + 2) % 10] for i in range(8)])
    batch = ranker.prompts(images, shown)
    batch.update(ranker.answers([s[::-1] for s in shown], 24))
    loss = jax.jit(answer_nll_loss(graphdef, ranker.grid, adapters=True))
    section = ml_collections.ConfigDict(
        {
            "steps": 40,
            "batch_size": 8,
            "learning_rate": 1e-2,
            "warmup_steps": 2,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "log_every": 10,
            "checkpoint_every": 40,
        }
    )
    before = float(loss(adapters, batch, jax.random.key(0), rest)[0])
    stage = lambda: Stage(
        section, tmp_path, adapters, supervised(loss), seed=0, mesh=mesh, frozen=rest
    )
    trained = stage().run(array_batches({"row": np.arange(8)}, 8, 0), place=lambda _: batch).params
    after = float(loss(trained, batch, jax.random.key(0), rest)[0])
    assert after < 0.5 * before, (before, after)
    again = stage().run(None).params
    for x, y in zip(jax.tree.leaves(trained), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(x, y)  # a finished stage is restored, not retrained
    # The base is untouched: the adapters zeroed give the base model's loss back.
    zero = jax.tree.map(np.zeros_like, trained)
    base_loss = answer_nll_loss(
        *nnx.split(ranker.model, nnx.Param)[:1], ranker.grid, adapters=False
    )
    np.testing.assert_allclose(
        float(loss(zero, batch, jax.random.key(0), rest)[0]),
        float(base_loss(params, batch, jax.random.key(0), None)[0]),
        rtol=1e-5,
    )


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.source='cifar'"):
        load_data(tiny_config("data.source=cifar"))
    assert rar.k_for(tiny_config(), 4) == 4 and rar.k_for(tiny_config(), 8) == 5


def _train_cmd(workdir: Path) -> list[str]:
    overrides = [f"--config.{o}" for o in TINY]
    return [
        sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG),
        "--workdir", str(workdir), *overrides,
        "--config.finetune.epochs=0.03", "--config.finetune.checkpoint_every=3",
        "--config.finetune.log_every=1", "--config.eval.shots=(1, 2)",
        "--config.eval.num_queries=40", "--config.eval.batch_size=20",
        "--config.ranker.max_new_tokens=12",
    ]  # fmt: skip


@pytest.mark.slow
def test_pipeline_then_sigkill_and_resume_end_alike(tmp_path):
    env = subprocess_env(tmp_path / "xla_cache")
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), env=env, check=True, timeout=600)
    report = json.loads((straight / "report.json").read_text())
    rows = report["rows"]
    assert [r["shots"] for r in rows] == [1, 2] and report["info"]["finetune_steps"] == 7
    for r in rows:
        assert r["knn"] <= r["truth_in_top_k"] and r["rar_generate"] <= r["truth_in_top_k"]
        assert sum(r["answers"][o] for o in ("ranked", "no_list", "truncated")) <= 40
    assert (straight / "accuracy.png").exists()
    evaluate = _train_cmd(straight)
    evaluate[evaluate.index("train")] = "eval"
    subprocess.run(evaluate, env=env, check=True, timeout=600)
    assert json.loads((straight / "report.json").read_text())["rows"] == rows

    killed = tmp_path / "killed"
    sigkill_after(_train_cmd(killed), killed / "finetune" / "checkpoints" / "3", env)
    assert not (killed / "report.json").exists()
    subprocess.run(_train_cmd(killed), env=env, check=True, timeout=600)
    assert json.loads((killed / "report.json").read_text())["rows"] == rows
    logs = [
        [(r["step"], r["train/loss"]) for r in map(json.loads, (d / "metrics.jsonl").open())]
        for d in (straight / "finetune", killed / "finetune")
    ]
    assert logs[0] == logs[1]


class JaxrankDigitsTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's digits as a TFDS dataset: shots, queries and the ranker's pool."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS: ClassVar = {"train": range(0, 300), "test": range(300, 340), "ranker": range(340, 540)}

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(DIGIT_NAMES)),
            "index": tfds.features.Scalar(dtype=np.int64),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(rows) for split, rows in self.SPLITS.items()}

    def _generate_examples(self, rows):
        data = digits(16)
        for i in rows:  # PIL images: TFDS encodes numpy arrays with TensorFlow
            image = PIL.Image.fromarray(data.images[i])
            yield i, {"image": image, "label": int(data.labels[i]), "index": i}


@fast_compile()
def test_tfds_dataset_through_the_pipeline(tmp_path):
    """A TFDS dataset read by name (array_record, no TensorFlow) gives the memories, queries
    and ranker pool the recipe runs on: the same images as the source, shots as sampled."""
    JaxrankDigitsTiny(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    name = "jaxrank_digits_tiny"
    cfg = apply_overrides(load_config_file(FEWSHOT), [
        *TINY, f"data.name={name}", f"data.data_dir={tmp_path}", f"data.finetune_name={name}",
        "data.finetune_split=ranker", "memory.encoder=pixels", "ranker.checkpoint=",
        "ranker.dtype=float32", "ranker.max_new_tokens=12", "ranker.opening_length=8",
        "eval.shots=(1, 2)", "eval.batch_size=16", "finetune.epochs=0.01",
        "finetune.batch_size=8", "finetune.train=all",
    ])  # fmt: skip
    data = load_data(cfg)
    source = digits(16)
    for part, rows in ((data.test, range(300, 340)), (data.ranker_pool, range(340, 540))):
        assert len(part) == len(rows) and part.names == DIGIT_NAMES
        written = source.images[list(rows)].reshape(len(rows), -1)
        read = part.images.reshape(len(part), -1)
        same = (read[:, None] == written[None]).all(axis=-1)  # [read, written]
        assert same.any(axis=1).all()  # every image read was written (TFDS shuffles them)
        found = np.asarray(rows)[same.argmax(axis=1)]
        np.testing.assert_array_equal(part.labels, source.labels[found])
    train_labels = split_labels(load_split(name, "train", tmp_path))
    for shots in (1, 2):
        assert np.bincount(data.shots[shots].labels).tolist() == [shots] * 10
        picked = sample_shots(train_labels, shots, cfg.seed)
        np.testing.assert_array_equal(data.shots[shots].labels, train_labels[picked])
    rows = rar.train_and_evaluate(cfg, tmp_path / "run")
    assert [r["shots"] for r in rows] == [1, 2]
    assert all("knn_with_ranker_pool" in r for r in rows)  # the pool has the test's classes
    for r in rows:
        assert r["knn"] <= r["truth_in_top_k"] and r["rar_score"] <= r["truth_in_top_k"]


@fast_compile()
def test_detection_mode_ranks_each_boxs_retrieved_names(ranker):
    """Boxes on a real photograph: the crops and their image -> text candidates are
    ``detection_crops``' and ``detection_top_classes``'; each box's predictions are what the
    ranker gives that crop alone."""
    cfg = tiny_config("eval.batch_size=4", "ranker.max_new_tokens=12")
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    graphdef, adapters, rest = with_adapters(cfg.lora, *nnx.split(ranker.model, nnx.Param), seed=0)
    adapters = jax.tree.map(lambda a: a + 0.05, adapters)
    programs = rar.RankerPrograms(cfg, ranker, graphdef, adapters, rest, mesh)
    image = np.asarray(PIL.Image.fromarray(skimage_data.astronaut()).resize((128, 128)))
    images = np.stack([image, image[:, ::-1]])
    boxes = np.array([[[10, 10, 60, 70], [70, 20, 120, 90], [0, 90, 40, 128]]] * 2, np.float32)
    embed = memory_embedder(ml_collections.ConfigDict({"encoder": "pixels", "dtype": "f4"}))
    names = DIGIT_NAMES  # any ten names; the memory rows are random unit vectors
    rows = np.random.default_rng(0).normal(size=(10, 16 * 16 * 3)).astype(np.float32)
    memory = ClassMemory.from_embeddings(
        rows / np.linalg.norm(rows, axis=1, keepdims=True), np.arange(10)
    )
    out = rank_boxes(programs, images, boxes, memory, embed, names, k=5, size=16, sigma=2.0)

    crops = np.asarray(detection_crops(images, boxes, 16, 2.0))
    np.testing.assert_array_equal(out["crops"], np.clip(np.round(crops), 0, 255))
    classes, _ = detection_top_classes(embed, memory, out["crops"], 5)
    np.testing.assert_array_equal(out["classes"], classes)
    np.testing.assert_array_equal(out["retrieval"], classes[..., 0])
    for b, n in np.ndindex(2, 3):
        rankings, best = programs(out["crops"][b, n][None], classes[b, n][None], names)
        assert out["rar_generate"][b, n] == classes[b, n, rankings[0].prediction]
        assert out["rar_score"][b, n] == classes[b, n, best[0]]
