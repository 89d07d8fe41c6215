"""ELVA's generative [RET] embedder: the token is added (and refused where a checkpoint has no
room for it), a text-only row's hidden image does not reach its embedding, the contrastive
stage's loss equals a numpy InfoNCE + NLL of the same hidden states, the multi-grain metrics
equal a numpy ranking of the same embeddings, and the recipe runs from the command line,
then re-evaluates to the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from elva_generative_tiny import CONFIG, TINY, tiny_config
from fast_xla import fast_compile, subprocess_env
from qwen_checkpoints import tiny_vlm

from jaxrank import parallel
from jaxrank.configs import ConfigError, load_config_file
from jaxrank.data.multigrain import QUERY_SETS, TASKS, MultiGrain
from jaxrank.data.synthetic import World, WorldConfig
from jaxrank.elva.evaluation import multigrain_metrics
from jaxrank.elva.generative_recipe import setup
from jaxrank.elva.ret_contrastive import ret_contrastive_loss
from jaxrank.elva.ret_embedder import RET
from jaxrank.elva.ret_rows import IMAGE, TEXT
from jaxrank.models.lm_scoring import completion_log_probs, hidden_at_token
from jaxrank.models.lora import join_lora
from jaxrank.vlm.base import load_model_and_inputs
from jaxrank.vlm.finetune import with_adapters
from jaxrank.vlm.programs import vlm_prompt


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    cfg = tiny_config("contrastive.batch_size=8", "train.batch_size=8", "eval.batch_size=8")
    _, source, embedder, (graphdef, params) = setup(cfg, tmp_path_factory.mktemp("embedder"))
    model = with_adapters(cfg.lora, graphdef, params, cfg.seed)
    return cfg, source.bench, source.rows, embedder, model


def _hidden_at_ret(embedder, model, host):
    """The rows' [RET] states, teacher-forced with numpy-located [RET] positions."""
    graphdef, adapters, rest = model
    lm_model = join_lora(graphdef, adapters, rest)
    prompt = vlm_prompt(lm_model, host, embedder.base.grid)
    logp, hidden = completion_log_probs(
        lm_model.language_model, prompt, host["completion"], host["completion_mask"]
    )
    return np.asarray(logp, np.float64), np.asarray(hidden, np.float64)


def test_ret_is_one_special_token_and_a_hidden_image_changes_nothing(embedder):
    _, _, rows, embedder, model = embedder
    base = embedder.base
    assert base.token_ids(f"a cat {RET}")[-1] == base.ret_id
    assert base.inputs.tokenizer.convert_ids_to_tokens(base.ret_id) == RET
    row = rows.candidates(np.array([3, 3, 3, 3]), np.array([TEXT, TEXT, IMAGE, IMAGE]))
    row["images"] = row["images"].copy()
    row["images"][1] = 255 - row["images"][1]  # a text row's hidden image, changed
    row["images"][3] = 255 - row["images"][3]  # a shown image, changed
    host = base.prompts(row["instructions"], row["texts"], row["images"], row["has_image"])
    host.update(base.answers(row["summaries"], 5))
    assert (host["completion"][host["completion_mask"]] == base.ret_id).sum() == 4
    image_slots = host["tokens"] == base.inputs.image_token_id
    assert not host["mask"][:2][image_slots[:2]].any()  # hidden from attention
    assert host["mask"][2:][image_slots[2:]].all()
    _, hidden = _hidden_at_ret(embedder, model, host)
    state, found = hidden_at_token(hidden, host["completion"], base.ret_id, host["completion_mask"])
    assert np.asarray(found).all()
    np.testing.assert_array_equal(state[0], state[1])  # the image is not read
    assert np.abs(state[2] - state[3]).max() > 1e-3  # the image is read


def test_a_checkpoint_without_room_for_added_tokens_is_refused(tmp_path):
    tiny_vlm(tmp_path, "qwen2_vl")
    cfg = load_config_file(CONFIG).embedder
    cfg.checkpoint = str(tmp_path)
    mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
    model, inputs = load_model_and_inputs(cfg, tmp_path / "unused", list, 0, mesh, (RET,))
    assert inputs.tokenizer.convert_tokens_to_ids(RET) < model.config.lm.vocab_size
    many = tuple(f"[X{i}]" for i in range(model.config.lm.vocab_size))
    with pytest.raises(ConfigError, match=r"its embedding has \d+ rows, too few"):
        load_model_and_inputs(cfg, tmp_path / "unused", list, 0, mesh, many)


def test_contrastive_loss_is_infonce_plus_summary_nll(embedder):
    _, _, rows, embedder, model = embedder
    base = embedder.base
    pairs = rows.candidates(np.array([5, 5, 9, 9, 9, 9]), np.array([IMAGE, TEXT] * 3))
    pairs["entity"] = np.array([5, 5, 9, 9, 9, 9])  # the third pair repeats entity 9
    host = base.prompts(pairs["instructions"], pairs["texts"], pairs["images"], pairs["has_image"])
    host.update(base.answers(pairs["summaries"], 5))
    host["entity"] = pairs["entity"]
    # The model's own summaries: here the reference ones, so both passes read the same rows.
    host["summary"], host["summary_mask"] = host["completion"], host["completion_mask"]
    graphdef, adapters, rest = model
    tau, weight = 0.1, 0.5
    loss_fn = ret_contrastive_loss(graphdef, base.grid, base.ret_id, tau, weight)
    with fast_compile():
        loss, metrics = jax.jit(loss_fn)(adapters, host, jax.random.key(0), rest)
        logp, hidden = _hidden_at_ret(embedder, model, host)
    tokens, mask = host["completion"], host["completion_mask"]
    at = [np.flatnonzero((tokens[r] == base.ret_id) & mask[r])[-1] for r in range(6)]
    emb = hidden[np.arange(6), at]
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    q, c = emb[0::2], emb[1::2]
    logits = q @ c.T / tau
    labels = pairs["entity"][0::2]
    same = (labels[:, None] == labels[None, :]).astype(float)
    target = same / same.sum(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    infonce = -(target * log_softmax).sum(axis=1).mean()
    nll = -logp.sum() / mask.sum()
    assert float(metrics["infonce"]) == pytest.approx(infonce, rel=1e-4)
    assert float(metrics["summary_nll"]) == pytest.approx(nll, rel=1e-4)
    assert float(loss) == pytest.approx(infonce + weight * nll, rel=1e-4)


def test_multigrain_metrics_equal_a_numpy_ranking():
    bench = MultiGrain(World(WorldConfig(num_entities=96, image_size=16)), 1)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2, 96, 8))
    table /= np.linalg.norm(table, axis=-1, keepdims=True)
    embedded = {}
    for name in QUERY_SETS:
        for task in range(len(TASKS)):
            entity = rng.integers(0, 96, 10)
            keys = table[int(TASKS[task] == "i->t")]
            queries = keys[entity] + rng.normal(scale=0.8, size=(10, 8))
            embedded[(name, task)] = (queries, entity)
    got = multigrain_metrics(bench, embedded, table, (1, 5))
    for (name, task), (queries, entity) in embedded.items():
        keys = table[int(TASKS[task] == "i->t")]
        margin = queries @ keys.T - np.sum(queries * keys[entity], axis=1)[:, None]
        margin[np.arange(len(entity)), entity] = 1.0  # the positive itself
        assert np.abs(margin).min() > 1e-4  # no near-tie that float32 could order either way
        rank = (margin[:, :] > 0).sum(axis=1) - 1  # keys above the positive
        for k in (1, 5):
            assert got[f"{name}/{TASKS[task]}/recall@{k}"] == pytest.approx(np.mean(rank < k))


def _train_cmd(workdir):
    overrides = [f"--config.{o}" for o in TINY]
    return [
        sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG),
        "--workdir", str(workdir), *overrides,
        "--config.contrastive.steps=3", "--config.contrastive.batch_size=4",
        "--config.contrastive.log_every=1", "--config.rl_data.queries_per_task=2",
        "--config.rl.num_generations=2", "--config.train.steps=2", "--config.train.batch_size=2",
        "--config.train.log_every=1", "--config.train.eval_every=1",
        "--config.eval.num_queries=4", "--config.eval.batch_size=16",
    ]  # fmt: skip


@pytest.mark.slow
def test_the_generative_recipe_runs_and_re_evaluates_alike(tmp_path):
    env = subprocess_env(tmp_path / "xla_cache")
    workdir = tmp_path / "run"
    subprocess.run(_train_cmd(workdir), env=env, check=True, timeout=900)
    report = json.loads((workdir / "report.json").read_text())
    assert [row["step"] for row in report["curve"]] == [0, 1, 2]
    assert 0.0 <= report["rl"]["ret_rate"] <= 1.0
    assert (workdir / "contrastive" / "checkpoints" / "3").exists()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert {"train/complete", "train/reward"} <= set(rows[-1])
    evaluate = [*_train_cmd(workdir)]
    evaluate[evaluate.index("train")] = "eval"
    subprocess.run(evaluate, env=env, check=True, timeout=900)
    again = json.loads((workdir / "report.json").read_text())
    assert again["rl"] == report["rl"] and again["contrastive"] == report["contrastive"]
