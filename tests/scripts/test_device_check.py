"""The accelerator check (scripts/device_check.py) in its ``--tiny`` mode, on the CPU: every
part runs the code it runs on a chip, and its numbers hold against the other side of each
comparison (torch's top-k and a float32 reference, transformers' CLIP tower and ``generate``,
the planner's memory model and FLOP counts). The r-GRPO step is its own run, marked slow: its
update compiles for about a minute of CPU time even at one layer per tower."""

import importlib.util
import json
import subprocess
import sys

import pytest
from paths import ROOT

SCRIPT = ROOT / "scripts" / "device_check.py"
COMPARISONS = ("environment", "search_topk", "clip_image", "qwen_decode")


def _script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder, parts):
    out = folder / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--parts", ",".join(parts), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for name, part in result["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"))
    assert list(result["parts"]) == list(parts)
    for name in parts:
        assert name in done.stdout
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("device_check"), COMPARISONS)


def test_the_environment_is_recorded(report):
    env = report["parts"]["environment"]
    assert env["backend"] == "cpu" and env["tiny"]
    assert len(env["devices"]) == 1  # not the test session's 8 virtual devices
    assert {"jax", "flax", "torch", "transformers"} <= set(env["versions"])


@pytest.mark.slow
def test_rgrpo_step_adds_up_and_meets_the_planner(tmp_path):
    step = _run(tmp_path, ["rgrpo_step"])["parts"]["rgrpo_step"]
    programs = step["programs"]
    assert set(programs) == {"judge", "sampler", "update"}
    assert step["queries_per_device"] == step["paper_queries_per_device"] == 4
    assert step["step_s"] == pytest.approx(sum(p["seconds"] for p in programs.values()))
    assert step["matmul_flops"] == sum(p["matmul_flops"] for p in programs.values())
    model = step["planner"]["time_model"]["model_flops"]
    # The jaxpr's matmul count against the planner's formula: the update (policy forward +
    # backward + reference) and the sampler differ only by the terms the formula leaves out.
    for name in ("update", "sampler"):
        assert programs[name]["matmul_flops"] == pytest.approx(model[name], rel=0.5), name
    for name, program in programs.items():  # XLA:CPU's buffers against the analytic model
        analytic = step["planner"]["programs_peak_bytes"][name]
        assert 0.25 < analytic / program["xla_peak_bytes"] < 4, name
    assert step["mfu"] is None  # no bf16 peak for a CPU


def test_search_ids_equal_a_float32_reference(report):
    s = report["parts"]["search_topk"]
    assert s["jaxrank_ids_equal_reference"] == 1.0
    assert s["checked_queries"] == s["queries"]
    # torch's bf16 scores round near-ties together: same rows, possibly another order.
    assert s["torch_recall_of_reference"] >= 0.9
    assert s["speedup"] == pytest.approx(s["torch_s"] / s["jaxrank_s"])


def test_clip_towers_agree(report):
    c = report["parts"]["clip_image"]
    assert c["torch_attention"] == "sdpa" and c["dtype"] == "float32"
    assert c["pooled_max_abs_diff"] < 1e-4 < c["pooled_abs_max"]
    assert c["jaxrank_images_per_s"] > 0 and c["torch_images_per_s"] > 0


def test_greedy_decoding_equals_generate(report):
    d = report["parts"]["qwen_decode"]
    assert set(d["results"]) == {"2", "4"}
    for batch, r in d["results"].items():
        assert r["tokens_equal"] == 1.0, batch
        for side in ("jaxrank", "transformers"):
            assert r[side]["generate_s"] > 0, (batch, side)


def test_a_part_out_of_time_is_recorded_not_fatal():
    record = _script().run_part("environment", tiny=True, budget=0.01)
    assert record["status"] == "timeout" and "budget" in record["error"]


def test_unknown_part_is_refused(capsys):
    assert _script().main(["--tiny", "--parts", "environment,warp_drive"]) == 2
    assert "jaxrank: error: --parts" in capsys.readouterr().err
