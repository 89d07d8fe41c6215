"""A LoRA-trained Qwen2.5-VL written by ``jaxrank.vlm.export`` (what ``jaxrank export`` writes
for Region-R1's policy, RAR's ranker and ELVA's embedder) against transformers and PEFT in
PyTorch: the merged checkpoint and the PEFT adapter applied to the base give jaxrank's logits,
and the merged one generates jaxrank's greedy tokens; a model with no checkpoint behind it (the
recipes' tiny random ones) is written with a config of its own and loads back into jaxrank
with the same parameters. The adapters cover every linear, the vision tower's packed qkv
included; a model whose layers are scanned exports what the unrolled one does. Tolerance 1e-5
in float32."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from qwen_checkpoints import jaxrank_inputs, reference_inputs, tiny_vlm
from safetensors.numpy import load_file

from jaxrank.models.hf.qwen2_vl import load_vlm
from jaxrank.models.hf.qwen_vl_inputs import QwenVLInputs
from jaxrank.models.layer_stack import UNROLLED, Stacking
from jaxrank.models.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora, split_lora
from jaxrank.rl.sampler import SamplingSettings, generate
from jaxrank.vlm.base import VLMBase, add_special_tokens
from jaxrank.vlm.export import TrainedVLM, write_adapter, write_merged

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
ATOL = 1e-5  # float32 both sides; what remains is summation order (vlm_export_parity.py)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2_5_vl")
    reference, processor = tiny_vlm(folder, "qwen2_5_vl")
    return folder, type(reference), processor


def _trained(folder, checkpoint: bool, stacking: Stacking = UNROLLED) -> TrainedVLM:
    """The checkpoint with rank-2 adapters on every linear, B drawn at random (as training
    leaves it), and a [RET] token added to the tokenizer (ELVA's)."""
    model = load_vlm(folder, stacking=stacking).model
    apply_lora(model, LoRAConfig(rank=2, alpha=6.0), nnx.Rngs(0))
    keys = iter(jax.random.split(jax.random.key(1), 200))
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, LoRALinear):
            layer.lora_b[...] = jax.random.normal(next(keys), layer.lora_b.shape) * 0.2
    graphdef, adapters, rest = split_lora(model)
    inputs = QwenVLInputs.from_pretrained(folder)
    add_special_tokens(inputs.tokenizer, ["[RET]"])
    return TrainedVLM(
        VLMBase(model, inputs, 48),
        graphdef,
        adapters,
        rest,
        checkpoint=str(folder) if checkpoint else "",
        inputs_folder=folder,
        adapters_trained=True,
        base_is_checkpoint=checkpoint,
    )


def _logits(model, batch) -> np.ndarray:
    forward = jax.jit(lambda m, *x: m(*x, grids=batch.grids).logits)
    return np.asarray(
        forward(model, batch.tokens, batch.mask, batch.positions, jnp.asarray(batch.patches))
    )


def _compare(torch_model, trained, folder, processor) -> None:
    want_inputs = reference_inputs(processor, True)
    with torch.no_grad():
        want = torch_model(**want_inputs).logits.numpy()
    batch = jaxrank_inputs(folder, True)
    shift = batch.tokens.shape[1] - want.shape[1]
    real = want_inputs["attention_mask"].numpy().astype(bool)
    got = _logits(trained.model(), batch)[:, shift:]
    base = _logits(trained.model(adapters=False), batch)[:, shift:]
    assert np.abs(got - base)[real].max() > 0.05  # the adapters matter
    np.testing.assert_allclose(got[real], want[real], atol=ATOL, rtol=0)


def test_merged_checkpoint_computes_and_generates_what_jaxrank_does(checkpoint, tmp_path):
    folder, model_class, processor = checkpoint
    trained = _trained(folder, checkpoint=True)
    out = tmp_path / "merged"
    write_merged(trained, out)
    exported = model_class.from_pretrained(out).eval()
    _compare(exported, trained, folder, processor)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("[RET]") == len(tokenizer) - 1
    assert tokenizer.chat_template == processor.tokenizer.chat_template
    # Greedy decoding: transformers' generate on the export, jaxrank's sampler on the adapters.
    want_inputs = reference_inputs(processor, True)
    with torch.no_grad():
        width = want_inputs["input_ids"].shape[1]
        want = exported.generate(**want_inputs, max_new_tokens=5, do_sample=False)[:, width:]
    batch = jaxrank_inputs(folder, True)

    def run(model, tokens, mask, positions, patches):
        prompt = model.prompt(tokens, mask, positions, patches, batch.grids)
        settings = SamplingSettings(max_new_tokens=5, temperature=0.0)
        return generate(model.language_model, prompt, jax.random.key(0), settings).tokens

    got = jax.jit(run)(trained.model(), batch.tokens, batch.mask, batch.positions, batch.patches)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_peft_adapter_on_the_base_computes_what_jaxrank_does(checkpoint, tmp_path):
    folder, model_class, processor = checkpoint
    trained = _trained(folder, checkpoint=True)
    out = tmp_path / "adapter"
    write_adapter(trained, out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == pytest.approx(6.0)
    assert config["base_model_name_or_path"] == str(folder)
    qkv = "model.visual.blocks.0.attn.qkv"
    assert qkv in config["target_modules"] and config["rank_pattern"][qkv] == 6
    assert "model.language_model.layers.0.self_attn.q_proj" in config["target_modules"]
    assert not (out / "base").exists()
    base = model_class.from_pretrained(folder).eval()
    adapted = peft.PeftModel.from_pretrained(base, out).eval()
    _compare(adapted, trained, folder, processor)


def test_a_model_without_checkpoint_is_written_with_its_own_config(checkpoint, tmp_path):
    """The tiny recipes' case: no base checkpoint, so the config comes from the model's own
    and the tokenizer and processor from the run's inputs folder; an adapter export writes
    that base beside it."""
    folder, model_class, processor = checkpoint
    trained = _trained(folder, checkpoint=False)
    merged_out, adapter_out = tmp_path / "merged", tmp_path / "adapter"
    write_merged(trained, merged_out)
    _compare(model_class.from_pretrained(merged_out).eval(), trained, folder, processor)
    merged = merge_lora(trained.model())
    back = load_vlm(merged_out).model
    want = jax.tree.leaves(nnx.to_pure_dict(nnx.state(merged, nnx.Param)))
    got = jax.tree.leaves(nnx.to_pure_dict(nnx.state(back, nnx.Param)))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    write_adapter(trained, adapter_out)
    config = json.loads((adapter_out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((adapter_out / "base").resolve())
    base = model_class.from_pretrained(adapter_out / "base").eval()
    _compare(peft.PeftModel.from_pretrained(base, adapter_out).eval(), trained, folder, processor)


def _stacked(adapters) -> dict:
    """Unrolled adapters in a scanned model's layout: each ``(..., layers|blocks, i, ...)``
    path stacked over i (the vision merger's, in no stack, kept)."""
    groups: dict = {}
    for path, value in traverse_util.flatten_dict(nnx.to_pure_dict(adapters)).items():
        cut = next((j for j, key in enumerate(path) if isinstance(key, int)), None)
        if cut is None:
            groups[path] = np.asarray(value)
        else:
            groups.setdefault((*path[:cut], *path[cut + 1 :]), {})[path[cut]] = np.asarray(value)
    stacked = {
        path: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v
        for path, v in groups.items()
    }
    return traverse_util.unflatten_dict(stacked)


def test_a_scanned_models_adapter_is_the_unrolled_ones(checkpoint, tmp_path):
    """Layers stacked for scan (``*.scan_layers``: one adapted linear per stack, A and B with a
    leading layer axis) export per layer under PEFT's names: the same adapter folder (and the
    same merged tensors) as the unrolled model with the same adapters, and peft applies it to
    compute jaxrank's logits."""
    folder, model_class, processor = checkpoint
    unrolled = _trained(folder, checkpoint=True)
    scanned = _trained(folder, checkpoint=True, stacking=Stacking(scan=True))
    nnx.replace_by_pure_dict(scanned.adapters, _stacked(unrolled.adapters))
    for trained, name in ((unrolled, "unrolled"), (scanned, "scanned")):
        write_adapter(trained, tmp_path / name)
        write_merged(trained, tmp_path / f"{name}_merged")
    merged = [
        load_file(tmp_path / f"{n}_merged" / "model.safetensors") for n in ("unrolled", "scanned")
    ]
    assert sorted(merged[0]) == sorted(merged[1])
    for name in merged[0]:
        np.testing.assert_array_equal(merged[1][name], merged[0][name], err_msg=name)
    want, got = (
        load_file(tmp_path / name / "adapter_model.safetensors") for name in ("unrolled", "scanned")
    )
    assert sorted(got) == sorted(want)
    assert "base_model.model.model.language_model.layers.1.mlp.up_proj.lora_A.weight" in got
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    config = lambda name: json.loads((tmp_path / name / "adapter_config.json").read_text())
    assert config("scanned") == config("unrolled")
    base = model_class.from_pretrained(folder).eval()
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "scanned").eval()
    _compare(adapted, scanned, folder, processor)
