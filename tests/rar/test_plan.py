"""RAR's published few-shot setting planned (configs/rar/fewshot.py: Qwen2-VL-2B ranker with
LoRA, scanned + rematerialised layers; CLIP ViT-B/16 memory encoder; ImageNet's 16,000 shots
in the class memory): every program of its two stages compiled at real widths and two layers
(float32, where XLA:CPU keeps every buffer at the program's dtype) on the suite's 8 virtual CPU
devices, against the analytic memory model, and its sizes and one term worked by hand."""

import pytest

from jaxrank import parallel
from jaxrank.configs import load_config_file
from jaxrank.perf import plan, planner
from jaxrank.rar.plan import planned_setting

FEWSHOT = "configs/rar/fewshot.py"
TOLERANCE = 0.15  # analytic peak within 15% of XLA's, per program
# search.planned's model of the class search (1,024 queries, every one of the 16,000 rows
# deep, as ClassMemory.top_classes asks) counts exact_block_topk's chunk candidates for all k,
# 32 x k per query, where a block of 2,016 rows yields at most the block's; XLA's peak is the
# merge (four [queries, devices x k] buffers): analytic 2.36x XLA's (docs/SCALING.md). Checked
# as an upper bound only: it may not undercount.


@pytest.fixture(scope="module")
def two_layers():
    """The setting at two layers per tower, each stage's programs compiled once at the
    config's batches; no chip, so nothing else compiles."""
    cfg = load_config_file(FEWSHOT)
    assert cfg.ranker.scan_layers and cfg.ranker.remat and cfg.lora.dropout > 0
    setting = planned_setting(cfg, parallel.mesh_from_config(cfg.mesh), depth=2, dtype="float32")
    return setting, planner.plan_setting(setting, [])


def test_the_setting_reads_the_config(two_layers):
    setting, result = two_layers
    s = setting.setting
    # 448 px -> a 32 x 32 patch grid, 256 image tokens; with the prompt text, bucket 512
    assert (s.grid, s.prompt_length, s.new_tokens, s.k) == ((1, 32, 32), 512, 96, 5)
    assert (s.memory_rows, s.encoder.embed_dim, s.search_queries) == (16_000, 512, 1024)
    assert {name: st["per_device_batch"] for name, st in result["stages"].items()} == {
        "finetune": 8,
        "evaluation": 8,
    }


def test_every_program_compiles_and_the_model_is_within_tolerance(two_layers):
    _, result = two_layers
    programs = result["programs"]
    assert set(programs) == {"update", "embed", "search", "generate", "score"}
    for name, row in programs.items():
        if name == "search":
            assert row["analytic_over_xla"] >= 1 - TOLERANCE
        else:
            assert row["analytic_over_xla"] == pytest.approx(1.0, abs=TOLERANCE), name
        # arguments are counted exactly (XLA rounds a few scalars)
        counted = sum(row["analytic"]["arguments"].values())
        assert counted == pytest.approx(row["xla"]["arguments"], abs=512), name
    assert programs["update"]["xla"]["aliased"] > 0  # the train state is updated in place


def test_the_class_memory_and_dropout_words_by_hand(two_layers):
    """The index: 16,000 rows over 8 devices, 2,000 a device padded to whole 32-row chunks
    (2,016), float32 vectors of 512 and a float32 bias. The update's hoisted dropout words:
    two 32-bit words per element of the MLP (8,960) and residual (1,536) inputs of the
    8 x (512 + 96) tokens, as XLA's u32[8,608,8960] and u32[8,608,1536] pairs hold them."""
    _, result = two_layers
    assert result["stages"]["evaluation"]["resident"]["class_memory"] == 2016 * (512 + 1) * 4
    update = result["programs"]["update"]["analytic"]["temporaries"]
    assert update["decoder_dropout_bits"] == 2 * 4 * 8 * 608 * (8960 + 1536)


def test_each_stage_holds_what_the_recipe_keeps(two_layers):
    _, result = two_layers
    finetune, evaluation = result["stages"]["finetune"], result["stages"]["evaluation"]
    assert set(finetune["resident"]) == {"ranker_base", "train_state", "memory_encoder"}
    assert set(evaluation["resident"]) == {
        "ranker_base",
        "adapters",
        "memory_encoder",
        "class_memory",
    }
    # the ranker's base is the same weights in both stages; the train state adds the AdamW
    # moments to the adapters (two float32 copies)
    assert finetune["resident"]["ranker_base"] == evaluation["resident"]["ranker_base"]
    assert finetune["resident"]["train_state"] > 3 * evaluation["resident"]["adapters"]
    # the fine-tuning stage is its update: resident trees plus the update's transient part
    assert finetune["analytic_peak"] == pytest.approx(finetune["xla_peak"], rel=TOLERANCE)


def test_the_update_model_holds_at_four_times_the_batch(two_layers):
    """32 examples a device (the planner's largest-batch search goes there): the MLP's
    backward buffers and the heap's packing grow with the batch as XLA's do."""
    setting, _ = two_layers
    compiled = plan.compile_program(*setting.program("update", 32), setting.mesh)
    analytic = setting.estimate("update", 32, 1)
    assert analytic.peak / compiled.peak == pytest.approx(1.0, abs=TOLERANCE)
