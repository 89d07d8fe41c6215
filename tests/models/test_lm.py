"""The Qwen2 decoder against transformers' PyTorch ``Qwen2ForCausalLM``: a checkpoint saved by
transformers loads (single device and sharded) and gives the same logits."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from qwen_checkpoints import QWEN2

from jaxrank.models.hf.errors import CheckpointMismatch, UnsupportedCheckpoint
from jaxrank.models.hf.export_decoder import save_decoder
from jaxrank.models.hf.qwen2 import load_causal_lm
from jaxrank.models.lm import LMConfig
from jaxrank.models.lm_prompt import Prompt, left_pad
from jaxrank.parallel import DATA, MODEL, fully_sharded, make_mesh
from jaxrank.rl.sampler import Sampler, SamplingSettings

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def qwen2(request, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(**QWEN2, tie_word_embeddings=request.param)
    model = transformers.Qwen2ForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(folder)
    return folder, model


def _batch():
    """Two sequences, the second right-padded by 3 tokens."""
    ids = np.random.default_rng(0).integers(0, 97, (2, 11))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    return ids, mask


def _reference(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


def test_logits_match_transformers(qwen2):
    folder, reference = qwen2
    ids, mask = _batch()
    want = _reference(reference, ids, mask)
    loaded = load_causal_lm(folder)
    assert loaded.config == LMConfig(
        97, 48, 2, 6, 2, 72, rope_theta=10000.0, tie_embeddings=reference.config.tie_word_embeddings
    )
    out = jax.jit(lambda m, *x: m(*x))(loaded.model, jnp.asarray(ids), jnp.asarray(mask))
    logits, hidden = out.logits, out.hidden
    assert hidden.shape == (2, 11, 48) and np.abs(want).max() > 1.0
    real = mask.astype(bool)  # padded positions' outputs are not defined by either side
    np.testing.assert_allclose(np.asarray(logits)[real], want[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fsdp", [False, True], ids=["tp", "fsdp+tp"])
def test_sharded_load_matches(qwen2, fsdp):
    folder, reference = qwen2
    ids, mask = _batch()
    want = _reference(reference, ids, mask)
    mesh = make_mesh(data=4, model=2)
    loaded = load_causal_lm(folder, mesh=mesh, fsdp=fsdp)
    attn = loaded.model.layers[0].self_attn
    data = DATA if fsdp else None  # fsdp: the largest dimension the model axis leaves whole
    assert attn.q_proj.kernel[...].sharding.spec == P(data, MODEL)
    assert attn.o_proj.kernel[...].sharding.spec == P(MODEL, data)
    with jax.set_mesh(mesh):
        logits = jax.jit(lambda m, *x: m(*x).logits)(
            loaded.model, jnp.asarray(ids), jnp.asarray(mask)
        )
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], want[real], atol=1e-4, rtol=0)


def test_greedy_decoding_matches_transformers_generate(qwen2):
    folder, reference = qwen2
    sequences = [[5, 9, 2, 7, 7, 1, 40], [3, 4, 50], [11, 12, 13, 14, 90]]
    tokens, mask = left_pad(sequences, length=8)
    with torch.no_grad():
        want = reference.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, 8:].numpy()
    sampler = Sampler(load_causal_lm(folder).model, SamplingSettings(6, temperature=0.0))
    got = sampler(Prompt.from_tokens(tokens, mask), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got.tokens), want)


def test_fully_sharded_spec_picks_the_largest_free_dimension():
    assert fully_sharded(P(None, MODEL), (48, 72), 4) == P(DATA, MODEL)
    assert fully_sharded(P(), (8, 6), 2) == P(DATA, None)
    assert fully_sharded(P(), (6, 8), 4) == P(None, DATA)  # 6 is not divisible by 4
    assert fully_sharded(P(), (6,), 4) == P()  # nothing divisible: stays replicated
    assert fully_sharded(P(MODEL), (8,), 1) == P(MODEL)


def test_export_loads_in_transformers(qwen2, tmp_path):
    """A changed model written back (2 shards) is what transformers then computes."""
    folder, _ = qwen2
    model = load_causal_lm(folder).model
    kernel = model.layers[1].mlp.up_proj.kernel
    kernel[...] = kernel[...] * 1.5 + 0.01
    out = save_decoder(model, tmp_path / "export", base=folder, max_shard_bytes=40_000)
    assert len(list(out.glob("model-*.safetensors"))) > 1
    exported = transformers.Qwen2ForCausalLM.from_pretrained(out).eval()
    ids, mask = _batch()
    want = _reference(exported, ids, mask)
    got = jax.jit(lambda m, *x: m(*x).logits)(model, jnp.asarray(ids), jnp.asarray(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_decoder(model, folder, base=folder)


def test_config_that_disagrees_with_the_weights_is_refused(qwen2, tmp_path):
    """A config claiming a wider MLP than the weights: the error names the tensor and shapes
    before anything is read."""
    folder, _ = qwen2
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    config["intermediate_size"] = 80
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatch, match=r"model\.layers\.0\.mlp\.down_proj\.weight"):
        load_causal_lm(edited)
    with pytest.raises(UnsupportedCheckpoint, match="architectures"):
        config["architectures"] = ["LlamaForCausalLM"]
        (edited / "config.json").write_text(json.dumps(config))
        load_causal_lm(edited)
