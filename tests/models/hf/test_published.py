"""The recorded architectures of the papers' checkpoints: translated by the loaders' own
functions, they add up to the hub's published parameter counts, and a local config.json wins."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.models.dual_encoder import DualEncoder
from jaxrank.models.hf import published
from jaxrank.models.hf.errors import UnsupportedCheckpoint
from jaxrank.models.vlm import VisionLanguageModel


def parameter_count(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def decoder_params(vocab, width, depth, kv_width, mlp, tied) -> int:
    """A Qwen2 decoder counted by hand: q/k/v with biases, o, SwiGLU, two norms per layer."""
    attention = width * (width + 2 * kv_width) + (width + 2 * kv_width) + width * width
    layer = attention + 3 * width * mlp + 2 * width
    return vocab * width * (1 if tied else 2) + depth * layer + width


@pytest.mark.parametrize(
    ("repo", "decoder"),
    [
        (published.QWEN2_5_VL_3B, decoder_params(151936, 2048, 36, 2 * 128, 11008, True)),
        (published.QWEN2_VL_7B, decoder_params(152064, 3584, 28, 4 * 128, 18944, False)),
        (published.QWEN2_VL_2B, decoder_params(151936, 1536, 28, 2 * 128, 8960, True)),
    ],
)
def test_vlm_presets_add_up_to_the_published_sizes(repo, decoder):
    config = published.vlm_preset(repo)
    model = nnx.eval_shape(lambda: VisionLanguageModel(config, rngs=nnx.Rngs(0)))
    assert parameter_count(model.language_model) == decoder
    total = parameter_count(model)
    assert total == pytest.approx(published.PUBLISHED_PARAMS[repo], rel=0.01)


def test_qwen2_5_vl_vision_tower_resolves_to_the_checkpoint_shapes():
    """The sizes config.json leaves to transformers' defaults: the released tensors' shapes
    (32 blocks of 1280 wide, gated MLP of 3420, 112-px windows, four full-attention blocks)."""
    vision = published.vlm_preset(published.QWEN2_5_VL_3B).vision
    assert (vision.depth, vision.width, vision.heads, vision.mlp_dim) == (32, 1280, 16, 3420)
    assert (vision.window_size, vision.fullatt_block_indexes) == (112, (7, 15, 23, 31))
    assert vision.out_width == 2048


@pytest.mark.parametrize("repo", [published.CLIP_VIT_B16, published.CLIP_VIT_L14_336])
def test_clip_presets_add_up_to_the_published_sizes(repo):
    config = published.dual_encoder_preset(repo, jnp.bfloat16, jnp.float32)
    model = nnx.eval_shape(lambda: DualEncoder(config, rngs=nnx.Rngs(0)))
    assert parameter_count(model) == pytest.approx(published.PUBLISHED_PARAMS[repo], rel=0.01)
    assert (config.dtype, config.param_dtype) == (jnp.bfloat16, jnp.float32)


def test_a_local_config_json_takes_precedence(tmp_path):
    fields = dict(published.CONFIG_JSON[published.QWEN2_VL_2B], num_hidden_layers=3)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert published.vlm_preset(tmp_path).lm.depth == 3


def test_an_unknown_hub_id_is_a_clear_error():
    with pytest.raises(UnsupportedCheckpoint, match="no recorded architecture"):
        published.vlm_preset("someone/unknown-vlm")


def test_reduced_depth_keeps_widths_and_a_full_attention_block():
    config = published.vlm_preset(published.QWEN2_5_VL_3B)
    small = published.at_depth(config, 2)
    assert (small.lm.depth, small.vision.depth, small.vision.fullatt_block_indexes) == (2, 2, (1,))
    assert (small.lm.width, small.vision.width) == (config.lm.width, config.vision.width)
    scorer = published.dual_encoder_preset(published.CLIP_VIT_L14_336, jnp.float32, jnp.float32)
    clip = published.at_depth(scorer, 1)
    assert (clip.vision.depth, clip.text.depth, clip.vision.width) == (1, 1, 1024)
