"""The crop policy's evaluation reads completions on the device (``mllm_evaluation``): on the
same completions, its per-query actions and every reported metric equal the host-parsed path's
(``tests/helpers/mllm_host_eval.py``, ``crop_tool.parse_completion``); and the recipe's
evaluation, greedy decoding included, equals that path's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from fast_xla import fast_compile
from mllm_host_eval import evaluate as host_evaluate
from mllm_host_eval import evaluate_parsed
from mllm_tiny import POOL, QUESTIONS, ColourScorer, judged_batch, step_config, update_inputs

from jaxrank import parallel
from jaxrank.region_r1 import evaluation, mllm_evaluation
from jaxrank.region_r1.crop_tool import CALL_OPEN, NO_CROP, REGION
from jaxrank.region_r1.mllm_policy import completion_text
from jaxrank.region_r1.tool_reader import ToolReader

QUERIES = 6  # two batches of 4, the second padded
CALL = lambda *box: completion_text(REGION, box)
TRUNCATED = CALL_OPEN + '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2'
QUOTED = CALL_OPEN + '{"arguments": {"bbox_2d": [" 4", "6 ", 30.5, "4.4e1"]}}</tool_call>'
# Per policy (warm start, trained), one completion per query, in the 48-pixel model frame:
# valid, out-of-range, inverted, zero-height and whole-frame boxes, several calls, quoted
# numbers, truncation, no call at all.
TEXTS = (
    [NO_CROP, CALL(3.4, 5.6, 40, 47.5), CALL(40, 40, 60, 60), CALL(30, 30, 10, 10), TRUNCATED,
     "the red one"],
    [CALL(0, 0, 48, 48), CALL(1, 1, 20, 20) + CALL(5, 5, 30, 30), QUOTED, NO_CROP,
     CALL(10, 12, 11, 12), CALL(8, 8, 24, 40)],
)  # fmt: skip


def eval_config() -> ml_collections.ConfigDict:
    cfg = step_config()
    cfg.eval = {
        "batch_size": 4,
        "ks": (1, 2),
        "centre_fraction": 0.5,
        "random_fraction": (0.3, 0.7),
        "gallery_queries": 5,
        "positives": "any",
        "skip_failed_crops": False,
    }
    return cfg


def query_sets() -> dict[str, dict]:
    queries = {k: v for k, v in judged_batch(QUERIES).items() if k != "rows"}
    queries["questions"] = [QUESTIONS[i % len(QUESTIONS)] for i in range(QUERIES)]
    return {"held_out": queries}


def _frozen(rest=None) -> dict:
    return {"kb": jnp.asarray(POOL), "scorer": None, "base": rest}


def _assert_same_results(got, want):
    for name, result in want.items():
        assert got[name]["metrics"].keys() == result["metrics"].keys()
        for strategy, metrics in result["metrics"].items():
            assert got[name]["metrics"][strategy] == pytest.approx(metrics, rel=1e-6), strategy
        for key in ("decision", "boxes"):
            np.testing.assert_allclose(got[name]["gallery"][key], result["gallery"][key])


@fast_compile()  # its time is almost all compilation
def test_in_graph_reading_equals_host_parsing_on_the_same_completions(base):
    cfg, mesh = eval_config(), parallel.make_mesh(1, 1, jax.devices()[:1])
    written = [base.targets(texts, 64) for texts in TEXTS]
    tokens = np.stack([w["completion"] for w in written])  # [policy, query, token]
    mask = np.stack([w["completion_mask"] for w in written])

    def replay(policy, rest, batch):  # what each policy wrote for the batch's queries
        del rest
        return jnp.asarray(tokens)[policy, batch["rows"]], jnp.asarray(mask)[policy, batch["rows"]]

    reader = ToolReader.from_tokenizer(base.inputs.tokenizer)
    actions = mllm_evaluation.policy_actions(cfg, base, reader, replay)
    policies = {"base": None, "adapters": (0, 1)}
    sets = query_sets()
    batch = {"images": sets["held_out"]["images"], "rows": np.arange(QUERIES)}
    decisions, boxes = jax.jit(actions)(policies, batch, None)
    size = batch["images"].shape[1:3]
    for p in range(2):
        want_decisions, want_boxes, _ = base.read(tokens[p], mask[p], size)
        np.testing.assert_array_equal(decisions[:, p], want_decisions)
        np.testing.assert_allclose(boxes[:, p], want_boxes, rtol=1e-6)
    assert (decisions == REGION).sum() == 8  # the calls the parser reads

    names = mllm_evaluation.POLICIES
    with jax.set_mesh(mesh):
        got = evaluation.evaluate(
            cfg, names, actions, policies, _frozen(), ColourScorer(), sets, mesh, ()
        )
        completions = {"held_out": [(tokens[p], mask[p]) for p in range(2)]}
        want = evaluate_parsed(
            cfg, base, completions, _frozen(), ColourScorer(), query_sets(), mesh
        )
    metrics = want["held_out"]["metrics"]
    assert (
        metrics["policy"]["invalid_boxes"] == 1
        and metrics["warm_start_policy"]["invalid_boxes"] == 1
    )
    _assert_same_results(got, want)


@fast_compile()
def test_recipe_evaluation_equals_the_host_parsed_path(base):
    cfg, mesh = eval_config(), parallel.make_mesh(1, 1, jax.devices()[:1])
    graphdef, adapters, rest, _ = update_inputs(base, cfg)
    reader = ToolReader.from_tokenizer(base.inputs.tokenizer)
    scorer, frozen = ColourScorer(), _frozen(rest)
    with jax.set_mesh(mesh):
        got = mllm_evaluation.evaluate(
            cfg, base, graphdef, reader, adapters, rest, frozen, scorer, query_sets(), mesh
        )
        want = host_evaluate(
            cfg, base, graphdef, adapters, rest, frozen, scorer, query_sets(), mesh
        )
    _assert_same_results(got, want)
