"""Hugging Face checkpoints where users meet them: ``jaxrank convert`` and a config that names a
pretrained encoder (``model.pretrained``), checked against transformers' PyTorch outputs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from contrastive_tiny import CONFIG, TINY
from fast_xla import fast_compile
from flax import nnx
from hf_checkpoints import tiny_checkpoint
from paths import CONFIGS

from jaxrank import parallel
from jaxrank.cli import main as cli
from jaxrank.configs import ConfigError, apply_overrides, load_config_file
from jaxrank.contrastive.embedders import knowledge_base_embeddings
from jaxrank.contrastive.encoder import encoder_inputs, restore, setup
from jaxrank.contrastive.recipe import train_and_evaluate
from jaxrank.models.hf import load_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return folder, tiny_checkpoint(folder, "clip", seed=7)


def test_convert_reports_and_writes_bfloat16_copy(clip_folder, tmp_path, capsys):
    folder, reference = clip_folder
    summary_path, out = tmp_path / "summary.json", tmp_path / "bf16"
    argv = ["convert", str(folder), "--json", str(summary_path), "--out", str(out)]
    assert cli.main([*argv, "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert "CLIPModel (clip)" in printed and "| vision" in printed and "| text" in printed

    summary = json.loads(summary_path.read_text())
    assert summary["parameters"] == sum(p.numel() for p in reference.parameters())
    assert summary["dtype"] == "bfloat16" and summary["vision"]["heads"] == 3
    assert summary["tensors_loaded"] == len(reference.state_dict())

    copy = transformers.CLIPModel.from_pretrained(out, dtype=torch.bfloat16)
    for name, tensor in reference.state_dict().items():
        want = tensor.to(torch.bfloat16)
        assert torch.equal(copy.state_dict()[name], want), name


def test_convert_errors_exit_2_with_one_message(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert cli.main(["convert", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxrank: error:") and "BertModel" in err and "Traceback" not in err


def _pretrained_config(folder, *extra):
    overrides = [*TINY, "world.num_entities=16", f"model.pretrained={folder}", *extra]
    return apply_overrides(load_config_file(CONFIG), overrides)


def test_config_with_pretrained_encoder_embeds_like_transformers(clip_folder):
    folder, reference = clip_folder
    cfg = _pretrained_config(folder)
    mesh = parallel.make_mesh()
    _, world, graphdef, params = setup(cfg, mesh)
    with jax.set_mesh(mesh):
        got = knowledge_base_embeddings(graphdef, params, world, cfg, mesh)

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(world.entity_texts(), padding="max_length", max_length=16, truncation=True)
    inputs = encoder_inputs(cfg)
    images = world.entity_images(world.config.image_size)
    pixels = np.asarray(inputs.pixels(jnp.asarray(images))).transpose(0, 3, 1, 2)
    with torch.no_grad():
        text = reference.get_text_features(
            input_ids=torch.tensor(encoded["input_ids"]),
            attention_mask=torch.tensor(encoded["attention_mask"]),
        )
        image = reference.get_image_features(pixel_values=torch.tensor(pixels))
    text = getattr(text, "pooler_output", text)
    image = getattr(image, "pooler_output", image)
    for name, want in (("text", text), ("image", image)):
        want = (want / want.norm(dim=-1, keepdim=True)).numpy()
        np.testing.assert_allclose(got[name], want, atol=1e-5, rtol=0, err_msg=name)
    assert inputs.image_size == 30 and inputs.mean == pytest.approx((0.4815, 0.4578, 0.4082), 1e-3)


def test_fine_tuning_starts_from_the_checkpoint(clip_folder, tmp_path):
    folder, _ = clip_folder
    cfg = _pretrained_config(folder, "train.steps=3", "train.checkpoint_every=3")
    with fast_compile():  # almost all compilation: the 8-device step, evaluation, loading
        results = train_and_evaluate(cfg, tmp_path / "run")
        _, _, trained = restore(cfg, tmp_path / "run")
        start = nnx.state(load_pretrained(folder).model, nnx.Param)
    assert 0.0 <= results["default"]["full"]["pair"]["recall@1"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)

    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        nnx.to_pure_dict(trained),
        nnx.to_pure_dict(start),
    )
    changes = jax.tree.leaves(moved)
    assert 0 < max(changes) < 0.1  # moved from the checkpoint by a few small Adam steps


def test_pretrained_family_must_match_the_config(clip_folder):
    folder, _ = clip_folder
    cfg = _pretrained_config(folder, "model.family=siglip")
    with pytest.raises(ConfigError, match=r"needs a two-tower model of model.family='siglip'"):
        setup(cfg, parallel.make_mesh())


def test_zero_step_run_serves_the_checkpoint_as_a_frozen_scorer(clip_folder, tmp_path):
    """Region-R1 with ``scorer.model.pretrained`` and ``scorer.train.steps=0``: the scorer is
    the checkpoint itself, with its input size and normalisation."""
    from jaxrank.region_r1.scorer import Scorer

    folder, reference = clip_folder
    cfg = load_config_file(CONFIGS / "region_r1" / "synthetic.py")
    cfg.scorer = _pretrained_config(folder, "train.steps=0")
    mesh = parallel.make_mesh()
    with fast_compile():  # almost all compilation: a zero-step run, evaluated, and loading
        scorer = Scorer(cfg, tmp_path, mesh)
        start = nnx.to_pure_dict(nnx.state(load_pretrained(folder).model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(scorer.params), start)
    assert scorer.input_size == 30 and scorer.kb.shape == (16, 24)

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 30, 30, 3)).astype(np.float32)
    got = scorer.embed(scorer.params, jnp.asarray(pixels))
    inputs = encoder_inputs(cfg.scorer)
    normalized = np.asarray(inputs.normalize(jnp.asarray(pixels))).transpose(0, 3, 1, 2)
    with torch.no_grad():
        want = reference.get_image_features(pixel_values=torch.tensor(normalized))
    want = getattr(want, "pooler_output", want)
    want = (want / want.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
