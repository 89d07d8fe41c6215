"""One process of tests/test_multihost.py: the shared parts on a mesh that spans every process.

    python multihost_worker.py OUT_DIR WORKDIR

The process joins the run its environment describes (``jaxrank.distributed``; none = one
process), then: one contrastive training step through ``trainer.fit`` (its checkpoint written
by every process, then restored), the knowledge base embedded in sharded batches, one Region-R1
r-GRPO step of the structured recipe on a (4, 2) mesh, and a sharded search over an ``Index``
that is also saved and loaded. It writes everything it got to ``OUT_DIR/process_<i>.npz``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from jaxrank import distributed

distributed.initialize()  # before anything touches a device

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from paths import CONFIGS  # noqa: E402
from region_r1_batch import toy_batch  # noqa: E402
from region_r1_tiny import TINY_MODELS  # noqa: E402

from jaxrank import parallel  # noqa: E402
from jaxrank.configs import apply_overrides, load_config_file  # noqa: E402
from jaxrank.contrastive.embedders import knowledge_base, knowledge_base_embeddings  # noqa: E402
from jaxrank.contrastive.encoder import build_model, build_world  # noqa: E402
from jaxrank.contrastive.recipe import make_loss, training_data  # noqa: E402
from jaxrank.region_r1 import recipe as region_r1  # noqa: E402
from jaxrank.region_r1.scorer import untrained_scorer  # noqa: E402
from jaxrank.search import Index  # noqa: E402
from jaxrank.train.checkpoint import Checkpointer  # noqa: E402
from jaxrank.train.step import TrainState, jit_train_step, make_train_step  # noqa: E402
from jaxrank.train.trainer import fit  # noqa: E402

CONTRASTIVE = [  # tests/contrastive/test_recipe.py's tiny config
    "world.num_entities=32",
    "model.width=32",
    "model.depth=1",
    "model.heads=2",
    "model.embed_dim=16",
    "train.batch_size=16",
    "train.data_threads=1",
    "eval.batch_size=16",
]
REGION_R1 = [*TINY_MODELS, "train.batch_size=8", "rl.num_generations=4"]


def flat(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    """A pytree's leaves as host arrays named by their key paths (gathered across processes)."""
    leaves = jax.tree_util.tree_flatten_with_path(parallel.to_host(tree))[0]
    return {f"{prefix}/{jax.tree_util.keystr(path)}": np.asarray(x) for path, x in leaves}


def local_rows(n: int) -> slice:
    """This process's contiguous block of a global batch of ``n`` rows (its data shards)."""
    per_process = n // jax.process_count()
    return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def contrastive_step(workdir: Path) -> dict[str, np.ndarray]:
    """One step of the recipe's own loss, data and placement through the shared trainer (each
    process reads its slice of the batch), then the step-1 checkpoint restored."""
    cfg = apply_overrides(load_config_file(CONFIGS / "contrastive" / "synthetic.py"), CONTRASTIVE)
    mesh = parallel.make_mesh(-1, 1)
    world = build_world(cfg)
    graphdef, params = nnx.split(build_model(cfg, mesh), nnx.Param)
    optimizer = optax.sgd(0.5)  # compares gradients, not Adam's near-sign of them
    create = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))
    out = flat("contrastive/initial", params)
    state = create(params)
    step_fn = jit_train_step(make_train_step(make_loss(graphdef, cfg), optimizer), state)
    kb = parallel.put_replicated(knowledge_base(world, cfg), mesh)
    with jax.set_mesh(mesh):
        state = fit(
            workdir=workdir,
            state=state,
            step_fn=step_fn,
            data=training_data(world, cfg),
            place_batch=lambda b: parallel.shard_batch(b, mesh),
            total_steps=1,
            log_every=1,
            checkpoint_every=1,
            frozen=kb,
            samples_per_step=cfg.train.batch_size,
        )
        out |= flat("contrastive/trained", state.params)
        with Checkpointer(workdir / "checkpoints") as checkpointer:
            step, restored, extra = checkpointer.restore(state)  # onto its shardings
        out |= flat("contrastive/restored", restored.params)
        out["contrastive/restored_step"] = np.asarray([step, int(restored.step)])
        out["contrastive/restored_iterator"] = np.asarray(json.dumps(extra, sort_keys=True))
        embeddings = knowledge_base_embeddings(graphdef, state.params, world, cfg, mesh)
    out["contrastive/kb_pair"] = embeddings["pair"]
    return out


def region_r1_step() -> dict[str, np.ndarray]:
    """tests/region_r1/test_recipe.py's fused r-GRPO step on a (4, 2) mesh: groups split over
    ``data``, weights over ``model``; each process places its block of the batch's rows."""
    cfg = apply_overrides(load_config_file(CONFIGS / "region_r1" / "synthetic.py"), REGION_R1)
    mesh = parallel.make_mesh(4, 2)
    scorer, scorer_params = untrained_scorer(cfg, mesh)
    graphdef, params = nnx.split(region_r1.build_policy(cfg, mesh), nnx.Param)
    optimizer = optax.sgd(0.5)
    with jax.set_mesh(mesh):
        reference = jax.jit(lambda p: jax.tree.map(jax.numpy.copy, p))(params)
        state = jax.jit(lambda p: TrainState.create(p, optimizer, cfg.seed))(params)
    out = flat("region_r1/initial", params)

    batch, kb = toy_batch(cfg)
    mine = jax.tree.map(lambda x: x[local_rows(8)], batch)
    frozen = {"kb": parallel.put_replicated(kb, mesh), "scorer": scorer_params, "ref": reference}
    step = jit_train_step(region_r1.make_step(cfg, graphdef, scorer, optimizer), state)
    with jax.set_mesh(mesh):
        state, metrics = step(state, parallel.shard_batch(mine, mesh), frozen)
    out |= flat("region_r1/trained", state.params)
    out |= flat("region_r1/metrics", jax.device_get(metrics))
    return out


def search(workdir: Path) -> dict[str, np.ndarray]:
    """A cosine index built in several chunks over the 8 data shards, searched, saved (by
    process 0) and loaded back by every process."""
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((300, 24)).astype(np.float32)
    queries = rng.standard_normal((13, 24)).astype(np.float32)
    ids = 2**40 + 3 * np.arange(300, dtype=np.int64)
    options = {"metric": "cosine", "mesh": parallel.make_mesh(-1, 1), "block_rows": 16}
    index = Index.from_array(rows, ids, chunk_rows=64, **options)
    found = index.search(queries, 7)
    index.save(workdir / "index.safetensors")
    loaded = Index.load(workdir / "index.safetensors", mesh=options["mesh"], block_rows=16)
    again = loaded.search(queries, 7)
    return {
        "search/ids": found.ids,
        "search/scores": found.scores,
        "search/loaded_ids": again.ids,
        "search/loaded_scores": again.scores,
    }


def main(out_dir: Path, workdir: Path) -> None:
    assert jax.device_count() == 8, jax.devices()
    workdir.mkdir(parents=True, exist_ok=True)
    out = {"processes": np.asarray([jax.process_count(), jax.local_device_count()])}
    parts = {
        "contrastive": lambda: contrastive_step(workdir / "contrastive"),
        "region_r1": region_r1_step,
        "search": lambda: search(workdir),
    }
    for name, part in parts.items():
        started = time.perf_counter()
        out |= part()
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    np.savez(out_dir / f"process_{jax.process_index()}.npz", **out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
