"""Hugging Face CLIP/SigLIP checkpoints in jaxrank: parity with transformers' PyTorch models on
real photos, sharded placement, export round trips and clear errors on bad checkpoints."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_checkpoints import (
    CLIP_TEXT,
    CLIP_VISION,
    SIGLIP_TEXT,
    SIGLIP_VISION,
    TEXTS,
    jaxrank_outputs,
    photos,
    reference_inputs,
    tiny_checkpoint,
    torch_outputs,
)
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.hf import (
    CheckpointMismatch,
    UnsupportedCheckpoint,
    load_pretrained,
    save_pretrained,
)
from jaxrank.models.hf.files import SafetensorsCheckpoint
from jaxrank.models.presets import tiny_clip, tiny_siglip
from jaxrank.models.text import TextConfig
from jaxrank.parallel import MODEL, make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random tiny two-tower models saved by transformers, with their PyTorch modules."""
    out = {}
    for seed, kind in enumerate(("clip", "clip_legacy", "siglip")):
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = (folder, tiny_checkpoint(folder, kind, seed))
    return out


@pytest.mark.parametrize("kind", ["clip", "clip_legacy", "siglip"])
def test_two_tower_model_matches_transformers_on_real_photos(checkpoints, kind):
    folder, reference = checkpoints[kind]
    family = "siglip" if kind == "siglip" else "clip"
    pixels, ids, mask = reference_inputs(folder, family)
    assert (mask == 0).any() or family == "siglip"  # padding really is masked for CLIP
    want = torch_outputs(reference, pixels, ids, mask, family)

    loaded = load_pretrained(folder)
    assert isinstance(loaded.model, DualEncoder) and loaded.family == family
    got = jaxrank_outputs(loaded.model, pixels, ids, mask)
    for name in ("image", "text"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0, err_msg=name)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5, rtol=1e-5)
    assert loaded.summary()["parameters"] == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_own_preprocessing_and_tokenizer_feed_the_same_embeddings(checkpoints, kind):
    folder, reference = checkpoints[kind]
    pixels, ids, mask = reference_inputs(folder, kind)
    want = torch_outputs(reference, pixels, ids, mask, kind)

    loaded = load_pretrained(folder)
    own_pixels = loaded.image_preprocessor()(photos())
    own_ids, own_mask = loaded.tokenizer()(TEXTS)
    np.testing.assert_array_equal(own_ids, ids)
    np.testing.assert_array_equal(own_mask, mask)
    got = jaxrank_outputs(loaded.model, own_pixels.transpose(0, 3, 1, 2), own_ids, own_mask)
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["text"], want["text"], atol=1e-5, rtol=0)


SINGLE_TOWERS = {
    "CLIPVisionModel": lambda: transformers.CLIPVisionConfig(**CLIP_VISION),
    "CLIPVisionModelWithProjection": lambda: transformers.CLIPVisionConfig(
        **CLIP_VISION, projection_dim=28
    ),
    "CLIPTextModel": lambda: transformers.CLIPTextConfig(**CLIP_TEXT),
    "CLIPTextModelWithProjection": lambda: transformers.CLIPTextConfig(
        **CLIP_TEXT, projection_dim=28
    ),
    "SiglipVisionModel": lambda: transformers.SiglipVisionConfig(**SIGLIP_VISION),
    "SiglipTextModel": lambda: transformers.SiglipTextConfig(**SIGLIP_TEXT),
}


def _single_tower_reference(model, architecture: str, inputs) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    embeds = getattr(out, "image_embeds", None)
    embeds = getattr(out, "text_embeds", embeds)
    embeds = out.pooler_output if embeds is None else embeds
    return (embeds / embeds.norm(dim=-1, keepdim=True)).numpy()


@pytest.mark.parametrize("architecture", list(SINGLE_TOWERS))
def test_single_tower_models_match_transformers(tmp_path, architecture):
    torch.manual_seed(3)
    reference = getattr(transformers, architecture)(SINGLE_TOWERS[architecture]()).eval()
    reference.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.architecture == architecture
    rng = np.random.default_rng(0)
    if "Vision" in architecture:
        size = reference.config.image_size
        pixels = rng.standard_normal((3, 3, size, size)).astype(np.float32)
        want = _single_tower_reference(reference, architecture, {"pixel_values": pixels})
        got = loaded.model(jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    else:
        vocab = reference.config.vocab_size
        ids = rng.integers(3, vocab - 1, (3, 9))
        ids[:, -1] = reference.config.eos_token_id if "CLIP" in architecture else 1
        want = _single_tower_reference(reference, architecture, {"input_ids": ids})
        got = loaded.model(jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_one_tower_of_a_two_tower_checkpoint(checkpoints):
    folder, reference = checkpoints["clip"]
    pixels, ids, mask = reference_inputs(folder, "clip")
    want = torch_outputs(reference, pixels, ids, mask, "clip")
    image = load_pretrained(folder, tower="image")
    text = load_pretrained(folder, tower="text")
    assert image.skipped and all(not n.startswith("vision_model.") for n in image.skipped)
    got_image = image.model(jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    got_text = text.model(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got_image), want["image"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(got_text), want["text"], atol=1e-5, rtol=0)


# bf16 parameters and compute: each embedding stays within this cosine distance of float32's
# and each logit within this fraction of the logit range (measured by scripts/hf_parity.py:
# at most 7e-5 and 0.017, see docs/hf_encoders.md).
BF16_MIN_COSINE = 0.999
BF16_LOGIT_TOLERANCE = 0.03


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_bfloat16_stays_close_to_float32_reference(checkpoints, kind):
    folder, reference = checkpoints[kind]
    pixels, ids, mask = reference_inputs(folder, kind)
    want = torch_outputs(reference, pixels, ids, mask, kind)
    loaded = load_pretrained(folder, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(loaded.model, nnx.Param))
    assert {leaf.dtype for leaf in params} == {jnp.dtype(jnp.bfloat16)}
    got = jaxrank_outputs(loaded.model, pixels, ids, mask)
    for name in ("image", "text"):
        cosine = np.sum(got[name] * want[name], axis=-1)
        assert cosine.min() > BF16_MIN_COSINE, (name, cosine)
    spread = want["logits"].max() - want["logits"].min()
    assert np.abs(got["logits"] - want["logits"]).max() < BF16_LOGIT_TOLERANCE * spread

    mixed = load_pretrained(folder, compute_dtype=jnp.bfloat16)  # float32 weights, bf16 compute
    params = jax.tree.leaves(nnx.state(mixed.model, nnx.Param))
    assert {leaf.dtype for leaf in params} == {jnp.dtype(jnp.float32)}
    got = jaxrank_outputs(mixed.model, pixels, ids, mask)
    assert np.sum(got["image"] * want["image"], axis=-1).min() > BF16_MIN_COSINE


def test_sharded_load_places_slices_and_matches_single_device(checkpoints, monkeypatch):
    folder, reference = checkpoints["siglip"]
    pixels, ids, mask = reference_inputs(folder, "siglip")
    want = torch_outputs(reference, pixels, ids, mask, "siglip")

    reads = []
    original = SafetensorsCheckpoint.read

    def recording_read(self, name, index=None):
        value = original(self, name, index)
        reads.append((name, value.shape))
        return value

    monkeypatch.setattr(SafetensorsCheckpoint, "read", recording_read)
    mesh = make_mesh(data=4, model=2)
    loaded = load_pretrained(folder, mesh=mesh)

    fc1 = loaded.model.image.tower.encoder.blocks[0].mlp.fc1.kernel[...]
    out_proj = loaded.model.text.tower.encoder.blocks[1].attn.out_proj.kernel[...]
    assert fc1.sharding.spec == P(None, MODEL) and out_proj.sharding.spec == P(MODEL, None)
    full = reference.vision_model.encoder.layers[0].mlp.fc1.weight.detach().numpy().T
    for shard in fc1.addressable_shards:  # every device holds exactly its slice
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
    fc1_name = "vision_model.encoder.layers.0.mlp.fc1.weight"
    fc1_reads = [shape for name, shape in reads if name == fc1_name]
    assert fc1_reads and all(shape == (72 // 2, 48) for shape in fc1_reads)  # halves only

    with jax.set_mesh(mesh):
        got = jaxrank_outputs(loaded.model, pixels, ids, mask)
    for name in ("image", "text", "logits"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-5, err_msg=name)


def test_sharded_safetensors_index_loads(checkpoints, tmp_path):
    folder, reference = checkpoints["clip"]
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    whole = nnx.to_pure_dict(nnx.state(load_pretrained(folder).model))
    sharded = nnx.to_pure_dict(nnx.state(load_pretrained(tmp_path).model))
    jax.tree.map(np.testing.assert_array_equal, whole, sharded)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    "config",
    [
        tiny_clip(image_size=24, patch_size=6, width=36, heads=3, vocab_size=50, embed_dim=20),
        tiny_siglip(image_size=24, patch_size=8, width=40, heads=5, vocab_size=50),
    ],
    ids=["clip", "siglip"],
)
def test_export_round_trip_through_transformers(tmp_path, config):
    model = DualEncoder(config, rngs=nnx.Rngs(4))
    folder = save_pretrained(model, tmp_path / "exported")
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    reference = getattr(transformers, architecture).from_pretrained(folder).eval()

    rng = np.random.default_rng(1)
    size = config.vision.image_size
    pixels = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    ids = rng.integers(1, 49, (3, config.text.max_len))
    ids[:, 5] = config.text.eos_token_id if config.text.eos_token_id is not None else 0
    mask = (np.arange(config.text.max_len) < 6).astype(np.int64)[None].repeat(3, 0)
    family = "siglip" if architecture.startswith("Siglip") else "clip"
    if family == "siglip":
        mask = np.ones_like(ids)
    want = torch_outputs(reference, pixels, ids, mask, family)
    got = jaxrank_outputs(model, pixels, ids, mask)
    for name in ("image", "text", "logits"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-5, err_msg=name)

    reloaded = load_pretrained(folder).model
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        nnx.to_pure_dict(nnx.state(reloaded, nnx.Param)),
    )


def test_export_replaces_an_earlier_sharded_export(tmp_path):
    model = DualEncoder(tiny_clip(), rngs=nnx.Rngs(0))
    save_pretrained(model, tmp_path, max_shard_bytes=30_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert load_pretrained(tmp_path).loaded > 0


def test_export_refuses_a_layout_transformers_cannot_express(tmp_path):
    config = tiny_clip()
    mean_pooled = config.__class__(
        **{**config.__dict__, "text": TextConfig(128, 16, 64, 2, 4, 256, pool="mean")}
    )
    with pytest.raises(UnsupportedCheckpoint, match="neither CLIP nor SigLIP"):
        save_pretrained(DualEncoder(mean_pooled, rngs=nnx.Rngs(0)), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def editable_clip(checkpoints, tmp_path):
    """A copy of the tiny CLIP checkpoint whose tensors a test may edit."""
    folder, _ = checkpoints["clip"]
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    return tmp_path, load_file(tmp_path / "model.safetensors")


def _rewrite(folder, tensors):
    save_file(tensors, folder / "model.safetensors", {"format": "pt"})


def test_wrong_shape_names_both_shapes_and_the_tensor(editable_clip):
    folder, tensors = editable_clip
    name = "text_model.encoder.layers.1.mlp.fc1.weight"
    tensors[name] = tensors[name][:, :-1]
    _rewrite(folder, tensors)
    message = rf"{name}: checkpoint shape \[52, 39\] does not fit .*of shape \[40, 52\]"
    with pytest.raises(CheckpointMismatch, match=message):
        load_pretrained(folder)


def test_missing_tensor_is_named_unless_ignored(editable_clip):
    folder, tensors = editable_clip
    name = "vision_model.post_layernorm.bias"
    kept = tensors.pop(name)
    _rewrite(folder, tensors)
    with pytest.raises(CheckpointMismatch, match=rf"missing tensors: {name}"):
        load_pretrained(folder)
    loaded = load_pretrained(folder, ignore_missing=True)
    assert loaded.missing == (name,)
    assert loaded.model.image.tower.post_norm.bias[...].shape == kept.shape


def test_unused_tensor_is_named_unless_ignored(editable_clip):
    folder, tensors = editable_clip
    tensors["vision_model.extra_head.weight"] = np.zeros((2, 2), np.float32)
    tensors["text_model.embeddings.position_ids"] = np.arange(16)[None]  # old buffers: fine
    _rewrite(folder, tensors)
    with pytest.raises(CheckpointMismatch, match=r"unused tensors: vision_model\.extra_head"):
        load_pretrained(folder)
    assert load_pretrained(folder, ignore_unused=True).ignored == (
        "vision_model.extra_head.weight",
    )


def test_pickle_only_checkpoint_is_refused(editable_clip):
    folder, tensors = editable_clip
    torch.save({k: torch.tensor(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"pytorch_model\.bin; jaxrank loads safetensors only"):
        load_pretrained(folder)


def test_unsupported_architecture_and_missing_tower(editable_clip):
    folder, _ = editable_clip
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(ValueError, match=r"tower='video'.*holds only \['image', 'text'\]"):
        load_pretrained(folder, tower="video")
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedCheckpoint, match=r"architectures=\['BertModel'\].*CLIPModel"):
        load_pretrained(folder)


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        load_pretrained("no-such-org/no-such-clip")
