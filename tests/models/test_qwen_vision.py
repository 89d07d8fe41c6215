"""The Qwen2-VL / Qwen2.5-VL vision towers and image processor against transformers: tiny random
checkpoints saved by transformers load (single device and sharded) and give the reference's image
tokens; real photos pre-process to the reference's patches and grids."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import photos
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxrank.models.hf.errors import CheckpointMismatch
from jaxrank.models.hf.qwen_vision import load_vision_tower
from jaxrank.models.hf.qwen_vl_processor import (
    QwenVLImageProcessor,
    image_token_count,
    smart_resize,
)
from jaxrank.models.qwen_vision import token_layout
from jaxrank.parallel import MODEL, make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TEXT = {
    "vocab_size": 64,
    "hidden_size": 44,
    "intermediate_size": 56,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 1e4},
}
# Odd sizes: head_dim 20 (5 rotary frequencies per axis) and 12 (3), 3 heads, patch size 4.
# Qwen2.5-VL: windows of 16 pixels = 2x2 merged tokens, so the two photos have 9 and 8 windows
# (4 of them partial); block 1 attends to the whole image.
VISION = {
    "qwen2_vl": {
        "depth": 2,
        "embed_dim": 40,
        "hidden_size": 44,
        "mlp_ratio": 2,
        "num_heads": 2,
        "patch_size": 4,
    },
    "qwen2_5_vl": {
        "depth": 3,
        "hidden_size": 36,
        "intermediate_size": 52,
        "num_heads": 3,
        "patch_size": 4,
        "out_hidden_size": 44,
        "window_size": 16,
        "fullatt_block_indexes": [1],
    },
}
# Outputs of magnitude ~10: far from zero, yet float32 rounding stays well inside 1e-4.
INIT = 0.2
TINY_PROCESSOR = {"patch_size": 4, "merge_size": 2, "min_pixels": 32 * 32, "max_pixels": 48 * 48}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):
    """(folder, PyTorch model) of a tiny random VL model saved by transformers."""
    torch.manual_seed(0)
    t = transformers
    config_class, model_class = {
        "qwen2_vl": (t.Qwen2VLConfig, t.Qwen2VLForConditionalGeneration),
        "qwen2_5_vl": (t.Qwen2_5_VLConfig, t.Qwen2_5_VLForConditionalGeneration),
    }[request.param]
    vision = {**VISION[request.param], "initializer_range": INIT}
    model = model_class(config_class(vision_config=vision, text_config=TEXT)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    t.Qwen2VLImageProcessorPil(**TINY_PROCESSOR).save_pretrained(folder)
    return folder, model


def _photo_batch(folder):
    """Two photos of different sizes through transformers' processor: (patches, grids)."""
    reference = transformers.Qwen2VLImageProcessorPil.from_pretrained(folder)
    out = reference(photos()[:2], return_tensors="np")
    return out["pixel_values"], tuple(map(tuple, out["image_grid_thw"].tolist()))


def _frames_batch(folder):
    """Random patches of a two-frame clip and an image: attention stays within each frame."""
    grids = ((2, 4, 6), (1, 6, 4))
    vision = transformers.AutoConfig.from_pretrained(folder).vision_config
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    patches = np.random.default_rng(0).normal(size=(sum(np.prod(grids, axis=1)), width))
    return patches.astype(np.float32), grids


def _same_grid_batch(folder):
    """Random patches of three images of one grid: the tower's leading-image-axis path."""
    grids = ((1, 6, 8),) * 3
    vision = transformers.AutoConfig.from_pretrained(folder).vision_config
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    patches = np.random.default_rng(1).normal(size=(sum(np.prod(grids, axis=1)), width))
    return patches.astype(np.float32), grids


def _reference(model, patches, grids) -> np.ndarray:
    with torch.no_grad():
        out = model.model.visual(torch.tensor(patches), grid_thw=torch.tensor(grids))
    return out.pooler_output.numpy()


# One jitted function (grids static), so equal towers and inputs reuse one compilation.
_apply = jax.jit(lambda tower, patches, grids: tower(patches, grids), static_argnums=2)


def _tokens(tower, patches, grids) -> np.ndarray:
    return np.asarray(_apply(tower, jnp.asarray(patches), grids))


@pytest.mark.parametrize(
    "batch", [_photo_batch, _frames_batch, _same_grid_batch], ids=["photos", "frames", "same grid"]
)
def test_tower_matches_transformers(checkpoint, batch):
    folder, reference = checkpoint
    patches, grids = batch(folder)
    want = _reference(reference, patches, grids)
    loaded = load_vision_tower(folder)
    config = loaded.config
    if config.window_size is not None:  # windows really split the images
        layout = token_layout(grids, config.spatial_merge_size, config.window_units)
        assert len(np.unique(layout.windows)) > len(np.unique(layout.frames))
    got = _tokens(loaded.model, patches, grids)
    assert got.shape == (sum(image_token_count(g, 2) for g in grids), 44)
    assert np.abs(want).max() > 3.0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_sharded_load_matches(checkpoint):
    folder, reference = checkpoint
    patches, grids = _photo_batch(folder)
    want = _reference(reference, patches, grids)
    mesh = make_mesh(data=4, model=2)
    loaded = load_vision_tower(folder, mesh=mesh)
    block = loaded.model.blocks[0]
    assert block.attn.q_proj.kernel[...].sharding.spec == P(None, MODEL)
    assert block.attn.proj.kernel[...].sharding.spec == P(MODEL, None)
    with jax.set_mesh(mesh):
        got = _tokens(loaded.model, patches, grids)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bfloat16_parameters_compute_in_bfloat16(checkpoint):
    folder, reference = checkpoint
    patches, grids = _photo_batch(folder)
    want = _reference(reference, patches, grids)
    got = _tokens(load_vision_tower(folder, dtype=jnp.bfloat16).model, patches, grids)
    assert got.dtype == jnp.bfloat16
    error = np.abs(got.astype(np.float32) - want).max()
    assert error < 0.05 * np.abs(want).max()


def _rewritten(folder, out, edit):
    """A copy of checkpoint ``folder`` in ``out`` with its tensors passed through ``edit``."""
    shutil.copy(folder / "config.json", out / "config.json")
    tensors = safetensors_numpy.load_file(folder / "model.safetensors")
    safetensors_numpy.save_file(edit(tensors), out / "model.safetensors")
    return out


def test_loads_the_transformers_4_layout(checkpoint, tmp_path):
    """Checkpoints written by transformers 4.52-4.57 hold ``model.visual.*`` tensors."""
    folder, reference = checkpoint

    def renamed(tensors):
        def name(n: str) -> str:
            if n.startswith("visual."):
                return f"model.{n}"
            return n.replace("model.", "model.language_model.", 1)

        return {name(n): v for n, v in tensors.items()}

    patches, grids = _photo_batch(folder)
    loaded = load_vision_tower(_rewritten(folder, tmp_path, renamed))
    got = _tokens(loaded.model, patches, grids)
    np.testing.assert_allclose(got, _reference(reference, patches, grids), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda ts: {
                **ts,
                "visual.blocks.0.attn.qkv.weight": ts["visual.blocks.0.attn.qkv.weight"][1:],
            },
            "shape mismatches: visual.blocks.0.attn.qkv.weight: checkpoint shape",
        ),
        (
            lambda ts: {n: v for n, v in ts.items() if n != "visual.merger.mlp.2.bias"},
            "missing tensors: visual.merger.mlp.2.bias",
        ),
        (
            lambda ts: {**ts, "visual.blocks.9.norm1.weight": ts["visual.merger.ln_q.weight"]},
            "unused tensors: visual.blocks.9.norm1.weight",
        ),
    ],
    ids=["shape", "missing", "unused"],
)
def test_mismatched_checkpoint_is_refused(checkpoint, tmp_path, edit, message):
    folder, _ = checkpoint
    with pytest.raises(CheckpointMismatch, match=message):
        load_vision_tower(_rewritten(folder, tmp_path, edit))


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    for height in (10, 27, 28, 42, 300, 451, 1000, 4000):
        for width in (14, 55, 56, 70, 512, 600, 3001):
            if max(height, width) > 200 * min(height, width):
                continue
            for limits in ((56 * 56, 28 * 28 * 1280), (100 * 100, 200 * 200)):
                assert smart_resize(height, width, 28, *limits) == ref(height, width, 28, *limits)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010)


def _hub_style_processor(folder):
    """A processor config as the hub's Qwen2-VL checkpoints have it (top-level min/max pixels,
    default patch size 14), with max_pixels low enough that the photos are scaled down."""
    config = {
        "min_pixels": 56 * 56,
        "max_pixels": 448 * 448,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config))


def _tiny_processor(folder):
    transformers.Qwen2VLImageProcessorPil(**TINY_PROCESSOR).save_pretrained(folder)


@pytest.mark.parametrize("write", [_hub_style_processor, _tiny_processor], ids=["hub", "tiny"])
def test_processor_matches_transformers(tmp_path, write):
    write(tmp_path)
    # Real photos (one grayscale), plus a small crop that min_pixels scales up.
    images = photos()
    images.append(Image.fromarray(np.asarray(images[1])[:20, :30]))
    want = transformers.Qwen2VLImageProcessorPil.from_pretrained(tmp_path)(
        images, return_tensors="np"
    )
    processor = QwenVLImageProcessor.from_pretrained(tmp_path)
    patches, grids = processor(images)
    assert grids == [tuple(g) for g in want["image_grid_thw"].tolist()]
    assert len(set(grids)) > 2  # the photos keep their own sizes
    np.testing.assert_array_equal(patches, want["pixel_values"])
    resized = [processor.patch_size * np.array(g[1:]) for g in grids]
    areas = [int(np.prod(r)) for r in resized]
    assert max(areas) <= processor.max_pixels and min(areas) >= processor.min_pixels
    assert areas[-1] > 20 * 30  # the crop was scaled up


def test_unsupported_processor_settings_name_the_key(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_pad": True}))
    with pytest.raises(ValueError, match="do_pad"):
        QwenVLImageProcessor.from_pretrained(tmp_path)
