"""``jaxrank export`` of the three LoRA-trained VLMs from real run folders: Region-R1's MLLM crop
policy, ELVA's generative [RET] embedder and RAR's LoRA-fine-tuned ranker, each trained by
``jaxrank train`` at tiny sizes (a step or two per stage, every stage of the recipe run). The
merged checkpoint (transformers) and the adapter (peft on the base it names) compute jaxrank's
logits and last hidden states of the trained run to 1e-5 on two image prompts; the exported
tokenizer is the run's (ELVA's [RET] at the same id, the chat template). RAR's run trains two
layers per tower scanned and rematerialised (``ranker.scan_layers``, ``ranker.remat``: stacked
adapters, exported per layer), the others unrolled; RAR's restored on a (data 4, model 2) mesh
exports the same bytes as on one device.

Measured on such runs (float32, CPU, transformers 5.23): max |logits| difference 3.4e-7 to
7.3e-7 (logits up to ~0.5), max |hidden| difference 2.4e-6 to 5.0e-6 (hidden states after the
final RMSNorm up to ~3; RAR's scanned two-layer ranker the largest), merged and adapter alike;
transformers' eager attention instead of sdpa gave the same (an unrolled one-layer RAR ranker:
3.3e-7 / 2.1e-6), and jaxrank's "highest" matmul precision is CPU's default (bit-identical
logits). What remains is float32 summation order, well inside 1e-5.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
from fast_xla import subprocess_env
from jax.sharding import PartitionSpec as P
from paths import CONFIGS

from jaxrank import parallel
from jaxrank.cli.export import export_run, run_config
from jaxrank.elva.ret_embedder import RET
from jaxrank.models.lm_scoring import hidden_at_token

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
import vlm_export_parity as parity  # noqa: E402  (imports torch, transformers and peft)

QWEN_TINY = ("vocab_size=400", "width=32", "depth=1", "mlp_dim=48", "vision_depth=1")
QWEN_TINY += ("vision_width=32", "vision_heads=2")
# config, the model's config section, the exporter's restore, and the smallest run: every
# stage one or two steps at full learning rate from step 0 (warmup 0), so the adapters move.
RECIPES = {
    "region_r1_mllm": (
        CONFIGS / "region_r1" / "mllm_synthetic.py",
        "policy",
        "jaxrank.region_r1.export:trained_mllm_policy",
        (
            "scorer.model.width=32", "scorer.model.depth=1", "scorer.model.heads=2",
            "scorer.model.embed_dim=16", "scorer.world.num_entities=32", "scorer.train.steps=2",
            "scorer.train.batch_size=8", "scorer.train.warmup_steps=0",
            "scorer.eval.num_queries=4", "scorer.eval.batch_size=4",
            "scorer.eval.presets=('clean',)", "data.train_queries_per_preset=4",
            "data.pool_size=4", "policy.image_size=48", "policy.max_new_tokens=8",
            "lora.rank=4", "sft.steps=2", "sft.batch_size=4", "sft.warmup_steps=0",
            "train.steps=2", "train.batch_size=2", "train.warmup_steps=0",
            "train.learning_rate=1e-2", "train.profile_repeats=0", "rl.num_generations=2",
            "eval.num_queries=2", "eval.batch_size=2", "eval.presets=('moderate',)",
        ),
    ),
    "elva_generative": (
        CONFIGS / "elva" / "generative_synthetic.py",
        "embedder",
        "jaxrank.elva.export:trained_embedder",
        (
            "world.num_entities=128", "world.image_size=16", "embedder.image_size=16",
            "embedder.summary_tokens=4", "benchmark.min_fine_neighbours=1", "lora.rank=4",
            "mining.threshold=1.5", "contrastive.steps=2", "contrastive.batch_size=4",
            "contrastive.warmup_steps=0", "rl_data.queries_per_task=2",
            "rl.num_generations=2", "train.steps=2", "train.batch_size=2",
            "train.warmup_steps=0", "train.learning_rate=1e-2", "eval.num_queries=4",
            "eval.batch_size=16",
        ),
    ),
    "rar": (
        CONFIGS / "rar" / "digits.py",
        "ranker",
        "jaxrank.rar.export:trained_ranker",
        (
            "data.image_size=16", "ranker.image_size=16", "ranker.max_new_tokens=8",
            "finetune.train=lora", "lora.rank=4", "finetune.epochs=0.02",
            "finetune.sets_per_image=2", "finetune.warmup_steps=0", "eval.shots=(1,)",
            "eval.num_queries=4", "eval.batch_size=4", "ranker.tiny.depth=2",
            "ranker.tiny.vision_depth=2", "ranker.scan_layers=True", "ranker.remat=True",
        ),
    ),
}  # fmt: skip
SCANNED = "rar"
QUESTIONS = ["which object is red?", f"a longer question about the picture {RET}"]


def _train(recipe: str, workdir, cache) -> None:
    config, section, _, overrides = RECIPES[recipe]
    tiny = [f"{section}.tiny.{size}" for size in QWEN_TINY]
    argv = [sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(config)]
    argv += ["--workdir", str(workdir), *(f"--config.{o}" for o in (*tiny, *overrides))]
    subprocess.run(argv, env=subprocess_env(cache), check=True, timeout=600)


def _restore(recipe: str, workdir, mesh):
    module, function = RECIPES[recipe][2].split(":")
    return getattr(importlib.import_module(module), function)(run_config(workdir), workdir, mesh)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(recipe)``: a finished tiny run of the recipe (``jaxrank train`` on one CPU
    device), trained once per module on first use, its trained model as the exporter restores
    it, two prompts and jaxrank's outputs on them."""
    done = {}

    def run(recipe: str):
        if recipe not in done:
            root = tmp_path_factory.mktemp(recipe)
            workdir = root / "run"
            _train(recipe, workdir, root / "xla_cache")
            trained = _restore(recipe, workdir, parallel.make_mesh(1, 1, jax.devices()[:1]))
            batch = parity.prompt_batch(trained, QUESTIONS, trained.base.image_size)
            done[recipe] = recipe, workdir, trained, batch, parity.jaxrank_outputs(trained, batch)
        return done[recipe]

    return run


@pytest.fixture(scope="module", params=sorted(RECIPES))
def run(request, runs):
    return runs(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["merged", "adapter"])
def test_export_computes_what_the_run_does(run, fmt, tmp_path):
    recipe, workdir, trained, batch, (logits, hidden) = run
    out = parity.export(workdir, tmp_path / fmt, fmt)
    exported = parity.load_exported(out, fmt)
    want_logits, want_hidden = parity.torch_outputs(
        exported, batch, trained.base.inputs.image_token_id
    )
    real = np.asarray(batch.mask, bool)
    base_logits, _ = parity.jaxrank_outputs(trained, batch, adapters=False)
    assert np.abs(logits - base_logits)[real].max() > 10 * parity.ATOL  # the adapters matter
    # RAR's adapters as trained: stacked [layers, ...] (scanned), the others' one per layer.
    assert any(leaf.ndim == 3 for leaf in jax.tree.leaves(trained.adapters)) == (recipe == SCANNED)
    if fmt == "adapter" and recipe == SCANNED:  # every stacked layer under its own PEFT name
        names = safetensors.numpy.load_file(out / "adapter_model.safetensors")
        config = trained.base.model.config
        for stack, depth in ((".layers.", config.lm.depth), (".blocks.", config.vision.depth)):
            found = {name.split(stack)[1].split(".")[0] for name in names if stack in name}
            assert found == {str(i) for i in range(depth)} and depth == 2, stack
    np.testing.assert_allclose(logits[real], want_logits[real], atol=parity.ATOL, rtol=0)
    np.testing.assert_allclose(hidden[real], want_hidden[real], atol=parity.ATOL, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    run_tokenizer = trained.base.inputs.tokenizer
    assert tokenizer.get_vocab() == run_tokenizer.get_vocab()
    assert tokenizer.chat_template == run_tokenizer.chat_template
    if recipe == "elva_generative":  # the embedding: the unit hidden state at [RET]
        ret = run_tokenizer.convert_tokens_to_ids(RET)
        assert tokenizer.convert_tokens_to_ids(RET) == ret
        got, found = hidden_at_token(hidden, batch.tokens, ret, batch.mask)
        want, _ = hidden_at_token(want_hidden, batch.tokens, ret, batch.mask)
        unit = lambda x: np.asarray(x) / np.linalg.norm(x, axis=-1, keepdims=True)
        assert np.asarray(found).tolist() == [False, True]
        np.testing.assert_allclose(unit(got)[1], unit(want)[1], atol=parity.ATOL, rtol=0)


@pytest.mark.slow
def test_a_model_axis_run_exports_the_same_bytes(runs, tmp_path, monkeypatch):
    """RAR's scanned run restored onto a (data 4, model 2) mesh of 8 virtual devices: its
    weights split over ``model`` as restored (Megatron's MLP: up/gate by output, down by input;
    their LoRA B / A alike), the merged and adapter folders' weights (``base/`` included)
    byte-identical to a one-device restore's."""
    _, workdir, *_ = runs(SCANNED)
    restored = []  # the trees the exporter gathers to the host, as restored
    gather = parallel.to_host
    monkeypatch.setattr(parallel, "to_host", lambda tree: restored.append(tree) or gather(tree))
    meshes = {"one": parallel.make_mesh(1, 1, jax.devices()[:1])}
    meshes["sharded"] = parallel.make_mesh(data=4, model=2)
    for fmt in ("merged", "adapter"):
        one, sharded = (
            export_run(workdir, tmp_path / fmt / n, fmt=fmt, mesh=m) for n, m in meshes.items()
        )
        names = sorted(str(p.relative_to(one)) for p in one.rglob("*.safetensors"))
        assert names == sorted(str(p.relative_to(sharded)) for p in sharded.rglob("*.safetensors"))
        assert len(names) == (1 if fmt == "merged" else 2)  # adapter: + base/model.safetensors
        for name in names:
            assert (one / name).read_bytes() == (sharded / name).read_bytes(), name
    on_eight = {
        jax.tree_util.keystr(path).removesuffix(".value"): leaf.sharding.spec
        for tree in restored
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if len(leaf.sharding.device_set) == 8
    }
    mlp = "['language_model']['layers']['mlp']"  # stacked: [layer, in, out]
    by_output, by_input = P(None, None, "model"), P(None, "model")
    assert on_eight[f"{mlp}['up_proj']['base']['kernel']"] == by_output
    assert on_eight[f"{mlp}['gate_proj']['lora_b']"] == by_output
    assert on_eight[f"{mlp}['down_proj']['base']['kernel']"] == by_input
    assert on_eight[f"{mlp}['down_proj']['lora_a']"] == P(None, "model", None)
