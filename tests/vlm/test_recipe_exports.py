"""``jaxrank export`` of the three LoRA-trained VLMs from real run folders: Region-R1's MLLM crop
policy, ELVA's generative [RET] embedder and RAR's LoRA-fine-tuned ranker, each trained by
``jaxrank train`` at tiny sizes (a step or two per stage, every stage of the recipe run). The
merged checkpoint (transformers) and the adapter (peft on the base it names) compute jaxrank's
logits and last hidden states of the trained run to 1e-5 on two image prompts; the exported
tokenizer is the run's (ELVA's [RET] at the same id, the chat template).

Measured on such runs (float32, CPU, transformers 5.23): max |logits| difference 3.5e-7 to
5.3e-7 (logits up to ~0.5), max |hidden| difference 2.4e-6 to 4.3e-6 (hidden states after the
final RMSNorm up to ~3), merged and adapter alike; transformers' eager attention instead of sdpa
gives the same (RAR: 3.3e-7 / 2.1e-6), and jaxrank's "highest" matmul precision is CPU's default
(bit-identical logits). What remains is float32 summation order, well inside 1e-5.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from fast_xla import subprocess_env
from paths import CONFIGS

from jaxrank import parallel
from jaxrank.cli.export import run_config
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
            "eval.num_queries=4", "eval.batch_size=4",
        ),
    ),
}  # fmt: skip
QUESTIONS = ["which object is red?", f"a longer question about the picture {RET}"]


def _train(recipe: str, workdir, cache) -> None:
    config, section, _, overrides = RECIPES[recipe]
    tiny = [f"{section}.tiny.{size}" for size in QWEN_TINY]
    argv = [sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(config)]
    argv += ["--workdir", str(workdir), *(f"--config.{o}" for o in (*tiny, *overrides))]
    subprocess.run(argv, env=subprocess_env(cache), check=True, timeout=600)


@pytest.fixture(scope="module", params=sorted(RECIPES))
def run(request, tmp_path_factory):
    """A finished tiny run of the recipe (``jaxrank train`` on one CPU device), its trained
    model as the exporter restores it, two prompts and jaxrank's outputs on them."""
    recipe = request.param
    root = tmp_path_factory.mktemp(recipe)
    workdir = root / "run"
    _train(recipe, workdir, root / "xla_cache")
    cfg = run_config(workdir)
    module, function = RECIPES[recipe][2].split(":")
    restore = getattr(importlib.import_module(module), function)
    trained = restore(cfg, workdir, parallel.make_mesh(data=1, devices=jax.devices()[:1]))
    batch = parity.prompt_batch(trained, QUESTIONS, trained.base.image_size)
    return recipe, workdir, trained, batch, parity.jaxrank_outputs(trained, batch)


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
