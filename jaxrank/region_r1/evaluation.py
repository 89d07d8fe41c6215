"""Region-R1's evaluation: the trained policy against the paper's baselines on held-out queries.

Every strategy is an action per query (decision + box) scored by the same frozen scorer on the
same first-stage pool, all in one jitted call per batch: FULL image, centre crop, random crop,
oracle crop (the ground-truth box), the untrained policy (one sampled action) and the trained
policy (greedy). Random draws are keyed by query index, so results do not depend on the batch
size or the device count.

Failed crops. A REGION box that is empty after clamping (or not finite) is scored with the full
image and counted in ``invalid_boxes``. The released evaluation (taco-group/Region-R1
``src/evaluate_cropping.py``) instead drops a sample whose crop raises (a side under one pixel,
``rerank.released_crop_fails``) from every average; ``released_skips`` counts those, and
``eval.skip_failed_crops`` (default False) drops them as it does. The scorer sees crops as
``reward.crop_view`` says, as in training; ``eval.positives`` picks graded labels' positives
(``metrics.positives``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxrank import metrics, retrieval_eval
from jaxrank.data.gallery import render_gallery
from jaxrank.region_r1 import baselines, rerank
from jaxrank.region_r1.action import FULL, REGION, bins_to_boxes, mode, sample_boxes
from jaxrank.region_r1.kb_rows import kb_layout, pool_rows
from jaxrank.rl.sampling import sample_decisions
from jaxrank.train import report

BASELINES = ("full", "centre_crop", "random_crop", "oracle_crop")
POLICY = "policy"

# (policies, batch, per-query keys [B]) -> decisions [B, S] and boxes [B, S, 4] in pixels, one
# column per policy strategy; traced inside the evaluator's jit.
PolicyActions = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, jax.Array]]
# (query set, host batch) -> more host arrays for the batch (e.g. prompts tokenised per batch).
HostInputs = Callable[[dict[str, Any], dict[str, np.ndarray]], dict[str, np.ndarray]]


def strategy_names(sampled: dict[str, Any]) -> tuple[str, ...]:
    """The structured policy's strategies: the sampled policies (e.g. untrained) in key order,
    as jit flattens a dict, then the trained policy (greedy)."""
    return (*sorted(sampled), POLICY)


def structured_policy_actions(cfg, policy) -> PolicyActions:
    """``policies = {"trained": params, "sampled": {name: params}}``: each sampled policy takes
    one action drawn from it, the trained one its mode (``strategy_names`` order)."""

    def actions(policies, batch, keys):
        images, tokens = batch["images"], batch["tokens"]
        num_bins = cfg.policy.num_bins
        trained_decision, trained_bins = mode(policy(policies["trained"], images, tokens))

        def sample_one(k, out):
            decision_key, box_key = jax.random.split(k)
            return sample_decisions(decision_key, out.decision_logits, 1)[0], sample_boxes(
                out, box_key, 1
            )[0]

        sampled = policies["sampled"]
        drawn = [
            jax.vmap(sample_one)(keys, policy(sampled[name], images, tokens))
            for name in sorted(sampled)
        ]
        drawn.append((trained_decision, trained_bins))
        width = images.shape[2]
        decisions = jnp.stack([d for d, _ in drawn], axis=1)
        boxes = jnp.stack([bins_to_boxes(b, width, num_bins) for _, b in drawn], axis=1)
        return decisions, boxes

    return actions


def _baseline_actions(cfg, batch, keys):
    """Decisions ``[B, 4]`` and boxes ``[B, 4, 4]`` of the ``BASELINES``."""
    images = batch["images"]
    b, height, width = images.shape[:3]
    random_box = jax.vmap(
        lambda k: baselines.random_boxes(
            jax.random.fold_in(k, 1), (), height, width, tuple(cfg.eval.random_fraction)
        )
    )(keys)
    full_box = jnp.broadcast_to(jnp.asarray([0, 0, width, height], jnp.float32), (b, 4))
    centre = baselines.centre_boxes((b,), height, width, cfg.eval.centre_fraction)
    region = jnp.full((b,), REGION, jnp.int32)
    decisions = [jnp.full((b,), FULL, jnp.int32), region, region, region]
    boxes = [full_box, centre, random_box, batch["boxes"]]
    return jnp.stack(decisions, axis=1), jnp.stack(boxes, axis=1)


def make_evaluator(cfg, policy_actions: PolicyActions, scorer):
    @jax.jit
    def evaluate_batch(policies, frozen, batch):
        key = jax.random.key(cfg.seed)
        keys = jax.vmap(lambda row: jax.random.fold_in(key, row))(batch["rows"])
        base_decisions, base_boxes = _baseline_actions(cfg, batch, keys)
        policy_decisions, policy_boxes = policy_actions(policies, batch, keys)
        decisions = jnp.concatenate([base_decisions, policy_decisions], axis=1)
        boxes = jnp.concatenate([base_boxes, policy_boxes.astype(jnp.float32)], axis=1)
        pool = pool_rows(frozen["kb"], batch["pool_ids"], kb_layout(cfg))
        scored = rerank.score_actions(
            lambda pixels: scorer.embed(frozen["scorer"], pixels),
            batch["images"],
            decisions,
            boxes,
            pool,
            scorer.input_size,
            _setting(cfg.get("reward"), "crop_view", "stretch"),
        )
        return {
            "scores": scored.scores,
            "base": scored.base,
            "decision": decisions,
            "boxes": boxes,
            "box_valid": scored.box_valid,
            "crop_fails": scored.crop_fails,
        }

    return evaluate_batch


def _setting(section: ml_collections.ConfigDict | None, key: str, default: Any) -> Any:
    return section.get(key, default) if section is not None else default


def strategy_metrics(
    scores: np.ndarray,
    base: np.ndarray,
    decision: np.ndarray,
    box_valid: np.ndarray,
    labels: np.ndarray,
    pool_valid: np.ndarray,
    ks: tuple[int, ...],
    crop_fails: np.ndarray | None = None,
    positives: str = "any",
    skip_failed_crops: bool = False,
) -> dict[str, float]:
    """The paper's metrics for one strategy over a query set, plus how often it crops when the
    full image already ranks a positive first and when it does not, and the failed crops of
    both conventions (module doc). ``skip_failed_crops`` averages over the other queries."""
    region = decision == REGION
    skipped = region & (np.zeros_like(region) if crop_fails is None else crop_fails)
    num_queries = len(labels)
    if skip_failed_crops:
        keep = ~skipped
        scores, base, decision, box_valid = (
            scores[keep],
            base[keep],
            decision[keep],
            box_valid[keep],
        )
        labels, pool_valid, region = labels[keep], pool_valid[keep], region[keep]
    summary = metrics.ranking_report(scores, labels, pool_valid, ks, positives)
    relevant = metrics.positives(labels, pool_valid, positives)
    full_first = np.asarray(metrics.recall_at_k(base, relevant, 1, pool_valid)) > 0
    out = {k: float(v) for k, v in summary.items() if k != "num_with_positive"}
    out.update(
        {
            "num_queries": num_queries,
            "num_with_positive": int(summary["num_with_positive"]),
            "num_empty_pools": int((~pool_valid).all(axis=1).sum()),
            "crop_rate": float(region.mean()),
            "crop_rate_full_first": float(region[full_first].mean()) if full_first.any() else 0.0,
            "crop_rate_full_not_first": (
                float(region[~full_first].mean()) if (~full_first).any() else 0.0
            ),
            "invalid_boxes": int((region & ~box_valid).sum()),
            "released_skips": int(skipped.sum()),
        }
    )
    return out


def evaluate(
    cfg: ml_collections.ConfigDict,
    policy_names: tuple[str, ...],
    policy_actions: PolicyActions,
    policies: Any,
    frozen: dict[str, Any],
    scorer,
    query_sets: dict[str, dict[str, Any]],
    mesh: jax.sharding.Mesh,
    batch_keys: tuple[str, ...] = ("tokens",),
    prepare: HostInputs | None = None,
) -> dict[str, Any]:
    """Per query set (name -> ``region_r1.query_set``): each strategy's metrics (the
    ``BASELINES``, then ``policy_names``, whose actions ``policy_actions`` gives), and the
    first queries' actions of the last policy for the gallery. ``batch_keys`` are the query
    set's arrays the policies read besides images, boxes and pools; ``prepare`` adds arrays
    the host makes per batch."""
    evaluate_batch = make_evaluator(cfg, policy_actions, scorer)
    names = ("images", "boxes", "pool_ids", *batch_keys, "rows")
    results: dict[str, Any] = {}
    for preset, queries in query_sets.items():
        rows = np.arange(len(queries["images"]), dtype=np.int32)

        def host_batch(*arrays, queries=queries):
            batch = dict(zip(names, arrays, strict=True))
            return ({**batch, **prepare(queries, batch)} if prepare else batch,)

        out = retrieval_eval.embed_in_batches(
            lambda batch: evaluate_batch(policies, frozen, batch),
            [*(queries[k] for k in names[:-1]), rows],
            cfg.eval.batch_size,
            mesh,
            prepare=host_batch,
        )
        per_strategy = {
            name: strategy_metrics(
                out["scores"][:, s],
                out["base"],
                out["decision"][:, s],
                out["box_valid"][:, s],
                queries["labels"],
                queries["pool_valid"],
                tuple(cfg.eval.ks),
                out["crop_fails"][:, s],
                _setting(cfg.get("eval"), "positives", "any"),
                _setting(cfg.get("eval"), "skip_failed_crops", False),
            )
            for s, name in enumerate((*BASELINES, *policy_names))
        }
        if not queries.get("has_boxes", True):  # no ground-truth box: no oracle crop
            del per_strategy["oracle_crop"]
        results[preset] = {
            "metrics": per_strategy,
            "gallery": {
                "images": queries["images"][: cfg.eval.gallery_queries],
                "true_boxes": queries["boxes"][: cfg.eval.gallery_queries],
                "questions": queries["questions"][: cfg.eval.gallery_queries],
                "decision": out["decision"][: cfg.eval.gallery_queries, -1],
                "boxes": out["boxes"][: cfg.eval.gallery_queries, -1],
            },
        }
    return results


COLUMNS = {
    "mrr": "MRR",
    "ndcg": "NDCG",
    "recall@1": "R@1",
    "recall@5": "R@5",
    "recall@10": "R@10",
    "cond_recall@1": "CondR@1",
    "cond_recall@5": "CondR@5",
    "crop_rate_full_first": "crop% (full 1st)",
    "crop_rate_full_not_first": "crop% (full not 1st)",
    "invalid_boxes": "invalid boxes",
    "released_skips": "released skips",
}


def _rows(per_strategy: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        {"strategy": name, **{label: m[key] for key, label in COLUMNS.items() if key in m}}
        for name, m in per_strategy.items()
    ]


def _gallery(path: Path, preset: str, gallery: dict[str, Any]) -> Path:
    images = gallery["images"]
    full = np.asarray([0, 0, images.shape[2], images.shape[1]], np.float32)
    boxes = np.where((gallery["decision"] == FULL)[:, None], full, gallery["boxes"])
    titles = [
        f"{q}\npolicy: {'FULL' if d == FULL else 'REGION'}"
        for q, d in zip(gallery["questions"], gallery["decision"], strict=True)
    ]
    return render_gallery(images, gallery["true_boxes"], titles, path, pred_boxes=boxes)


def write_report(
    workdir: Path,
    cfg: ml_collections.ConfigDict,
    results: dict[str, Any],
    info: dict[str, Any],
    title: str = "Region-R1 on the synthetic world",
) -> None:
    """report.json, report.md (a table per preset), training curves, bars and galleries."""
    plots = [
        report.plot_curves(
            workdir / "metrics.jsonl",
            ["train/reward", "train/cond_r1", "train/region_rate", "train/kl"],
            workdir / "training.png",
            "r-GRPO training (sampled actions)",
        ),
        report.plot_bars(
            {
                preset: {s: m["cond_recall@1"] for s, m in r["metrics"].items()}
                for preset, r in results.items()
            },
            workdir / "cond_recall_at_1.png",
            "CondR@1 on held-out queries",
            "CondR@1",
        ),
    ]
    plots += [
        _gallery(workdir / f"gallery_{preset}.png", preset, r["gallery"])
        for preset, r in results.items()
    ]
    metrics_only = {preset: r["metrics"] for preset, r in results.items()}
    profile = info.get("step_profile") or {}  # the compiled MLLM step is not split in parts
    counts = " / ".join(str(next(iter(m.values()))["num_queries"]) for m in metrics_only.values())
    lines = [
        f"# {title}",
        "",
        f"{counts} held-out queries ({', '.join(metrics_only)}); first-stage pools of "
        f"K={cfg.data.pool_size}; policy trained {info['steps']} r-GRPO steps (batch "
        f"{cfg.train.batch_size} queries x G={cfg.rl.num_generations}) in "
        f"{info['train_seconds']:.0f} s on {info['devices']}.",
        "",
    ]
    for preset, per_strategy in metrics_only.items():
        lines += [
            f"## {preset}",
            "",
            report.table(_rows(per_strategy), ["strategy", *COLUMNS.values()]),
            "",
        ]
    if profile:
        table = report.table([profile], list(profile))
        lines += ["## Step time (ms per part of the step)", "", table]
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots if p is not None), ""]
    report.write_report(workdir, {"evaluation": metrics_only, "train": info}, "\n".join(lines))
    strategies = next(iter(metrics_only.values()))
    summary = [
        {"strategy": s, **{p: metrics_only[p][s]["cond_recall@1"] for p in metrics_only}}
        for s in strategies
    ]
    print("CondR@1 on held-out queries")
    print(report.table(summary, ["strategy", *metrics_only], fmt="simple"))
    print(f"report: {workdir / 'report.md'}")
