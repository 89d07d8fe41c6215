"""The ELVA recipe: one RL step on 8 devices equals one device (query sampled alone, or the
candidates too, embedded row by row as the table has them), negatives mined as numpy ranks them,
and the two-stage pipeline from the command line (report, curve, SIGKILL then resume)."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from fast_xla import fast_compile, subprocess_env
from flax import nnx
from kill_and_resume import sigkill_after
from paths import CONFIGS
from same_updates import assert_same_updates

from jaxrank import parallel
from jaxrank.configs import ConfigError, apply_overrides, load_config_file
from jaxrank.contrastive.embedders import knowledge_base
from jaxrank.contrastive.encoder import build_model
from jaxrank.data.multigrain import TASKS
from jaxrank.elva import recipe as elva
from jaxrank.elva.negatives import mine
from jaxrank.search.errors import SearchError
from jaxrank.train.step import TrainState

CONFIG = CONFIGS / "elva" / "synthetic.py"
TINY = [
    "world.num_entities=96",
    "world.image_size=32",
    "benchmark.min_fine_neighbours=1",
    "model.width=32",
    "model.depth=1",
    "model.heads=2",
    "model.embed_dim=16",
    "mining.n_hard=4",
    "mining.n_random=4",
    "rl.num_generations=4",
    "train.batch_size=8",
    "contrastive.batch_size=16",
]


def tiny_config(*extra):
    return apply_overrides(load_config_file(CONFIG), [*TINY, *extra])


@fast_compile()  # its time is almost all compilation
def one_step(mesh, policy_samples="query"):
    # the encoder re-embeds the candidates too
    cfg = tiny_config("candidates=current", f"policy_samples={policy_samples}")
    bench = elva.benchmark(cfg)
    graphdef, encoder = nnx.split(build_model(cfg, mesh), nnx.Param)
    head_graphdef, head = elva.build_head(cfg, cfg.model.embed_dim, mesh)
    optimizer = optax.sgd(0.5)  # compares gradients, not Adam's near-sign of them
    params = {"encoder": encoder, "head": head}
    state = TrainState.create(jax.tree.map(lambda x: x.copy(), params), optimizer, cfg.seed)
    parts = [elva.rows(cfg, bench.queries("train", t, "standard", 2)) for t in range(len(TASKS))]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    rng = np.random.default_rng(0)
    batch["negatives"] = (batch["entity"][:, None] + rng.integers(1, 96, (8, 6))) % 96
    frozen = {
        "kb": parallel.put_replicated(knowledge_base(bench.world, cfg), mesh),
        "table": None,  # unused: the candidates are re-embedded
        "reference": encoder,
        "reference_log_scale": head["log_scale"][...],
    }
    step = jax.jit(elva.make_rl_step(cfg, graphdef, head_graphdef, optimizer))
    with jax.set_mesh(mesh):
        state, metrics = step(state, parallel.shard_batch(batch, mesh), frozen)
    return jax.device_get((params, state.params, metrics))


@functools.cache
def single_device_step(policy_samples="query"):
    return one_step(parallel.make_mesh(1, 1, jax.devices()[:1]), policy_samples)


@pytest.mark.parametrize("policy_samples", ["query", "all"])
def test_sharded_rl_step_equals_single_device(policy_samples):
    """On a 4x2 mesh: groups split over data (two queries per device), weights over model;
    with the query's embedding sampled alone, or the candidates' too."""
    initial, single_params, single_metrics = single_device_step(policy_samples)
    _, params, metrics = one_step(parallel.make_mesh(4, 2), policy_samples)
    assert single_metrics["reward_std"] > 0  # the rollouts differ, so the update is real
    for key in ("loss", "reward", "kl", "sampled_top1"):
        np.testing.assert_allclose(metrics[key], single_metrics[key], rtol=1e-5, atol=1e-6)
    assert_same_updates(initial, params, single_params)


def test_pool_embeddings_are_the_tables_rows():
    """A sampled rollout embeds only each row's positive and negatives: the same vectors as the
    whole knowledge base's table, in the modality the row's task retrieves."""
    cfg = tiny_config("candidates=current", "policy_samples=all")
    mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
    bench = elva.benchmark(cfg)
    graphdef, encoder = nnx.split(build_model(cfg, mesh), nnx.Param)
    kb = knowledge_base(bench.world, cfg)
    batch = {"task": np.array([0, 1, 2, 3, 1]), "entity": np.array([3, 5, 7, 9, 11])}
    batch["negatives"] = np.array([[1, 2], [40, 41], [0, 95], [10, 20], [12, 13]])
    pool = jax.jit(elva.pool_embedder(graphdef, cfg))(encoder, kb, batch)
    table = np.asarray(jax.jit(elva.candidate_embedder(graphdef, cfg))(encoder, kb))
    ids = np.concatenate([batch["entity"][:, None], batch["negatives"]], axis=1)
    expected = table[(batch["task"] == 1).astype(int)[:, None], ids]
    np.testing.assert_allclose(pool, expected, atol=1e-5)
    assert elva.samples_candidates(cfg)
    with pytest.raises(ConfigError, match='needs candidates="current"'):
        elva.samples_candidates(tiny_config("policy_samples=all"))
    with pytest.raises(ConfigError, match="policy_samples='some'"):
        elva.samples_candidates(tiny_config("policy_samples=some"))


def test_mined_negatives_are_numpys_top_others_then_random():
    cfg = tiny_config("mining.threshold=0.8")
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2, 40, 8)).astype(np.float32)
    table /= np.linalg.norm(table, axis=-1, keepdims=True)
    instances = {"task": np.array([0, 1, 2, 3, 1, 0]), "entity": np.array([3, 5, 7, 9, 11, 13])}
    queries = table[(instances["task"] == 1).astype(int), instances["entity"]]
    queries = queries + 0.3 * rng.normal(size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
    negatives = mine(instances, queries, table, cfg, mesh)
    assert negatives.shape == (6, 8)
    for row, (task, entity) in enumerate(zip(instances["task"], instances["entity"], strict=True)):
        scores = table[int(task == 1)] @ queries[row]
        order = [i for i in np.argsort(-scores) if i != entity and scores[i] <= 0.8]
        assert negatives[row, :4].tolist() == order[:4]
        assert entity not in negatives[row] and len(set(negatives[row].tolist())) == 8
    with pytest.raises(SearchError, match="fewer than 4 hard negatives"):
        mine(instances, queries, table, tiny_config("mining.threshold=-1.0"), mesh)


def _train_cmd(workdir):
    overrides = [f"--config.{o}" for o in TINY]
    return [
        sys.executable, "-m", "jaxrank.cli.main", "train", "--config", str(CONFIG),
        "--workdir", str(workdir), *overrides,
        "--config.contrastive.steps=4", "--config.contrastive.log_every=2",
        "--config.mining.threshold=1.5",  # an untrained encoder scores many entries > 0.99
        "--config.rl_data.queries_per_task=8", "--config.eval.num_queries=8",
        "--config.train.steps=6", "--config.train.log_every=1",
        "--config.train.checkpoint_every=2", "--config.train.eval_every=3",
    ]  # fmt: skip


@pytest.mark.slow
def test_pipeline_then_sigkill_and_resume_end_alike(tmp_path):
    env = subprocess_env(tmp_path / "xla_cache")  # shared by the three runs
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), env=env, check=True, timeout=600)
    report = json.loads((straight / "report.json").read_text())
    assert [row["step"] for row in report["curve"]] == [0, 3, 6]
    for name in ("standard", "multigrain"):
        for k in (1, 5, 10):
            per_task = [report["rl"][f"{name}/{t}/recall@{k}"] for t in TASKS]
            assert report["rl"][f"{name}/avg/recall@{k}"] == pytest.approx(np.mean(per_task))
    assert (straight / "contrastive" / "checkpoints" / "4").exists()
    assert {p.name for p in straight.glob("*.png")} >= {"training.png", "grain_sensitivity.png"}
    evaluate = [*_train_cmd(straight)]
    evaluate[evaluate.index("train")] = "eval"
    subprocess.run(evaluate, env=env, check=True, timeout=600)
    again = json.loads((straight / "report.json").read_text())
    assert again["rl"] == report["rl"] and again["contrastive"] == report["contrastive"]

    killed = tmp_path / "killed"
    sigkill_after(_train_cmd(killed), killed / "checkpoints" / "4", env)
    assert not (killed / "report.json").exists()
    subprocess.run(_train_cmd(killed), env=env, check=True, timeout=600)
    resumed = json.loads((killed / "report.json").read_text())
    assert resumed["curve"] == report["curve"]
    logs = [
        [(r["step"], r["train/loss"]) for r in map(json.loads, (d / "metrics.jsonl").open())]
        for d in (straight, killed)
    ]
    assert logs[0] == logs[1]
