"""The data check and the reproduction script: on this machine (no datasets, no weights)
``scripts/reproduce.sh`` lists exactly what each setting lacks and exits 1; on the E-VQA-format
fixture the check counts usable queries and bad rows as the readers do and draws a gallery."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from evqa_fixture import evqa_paths
from hf_checkpoints import tiny_checkpoint
from paths import CONFIGS, ROOT

from jaxrank.cli.data_check import check_data, write_check
from jaxrank.cli.reproduce import TARGETS
from jaxrank.configs import apply_overrides, load_config_file

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TFDS_DATA_DIR=str(ROOT / "no_such_tfds_dir"))


def _reproduce(*args: str) -> subprocess.CompletedProcess:
    """The script users run (it checks the virtual environment first)."""
    command = ["bash", str(ROOT / "scripts" / "reproduce.sh"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)


def _jaxrank_reproduce(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jaxrank.cli.main", "reproduce", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)


def test_reproduce_lists_what_is_missing_and_exits_nonzero(tmp_path):
    done = _reproduce("region_r1_evqa", "--workdir", str(tmp_path / "run"))
    assert done.returncode == 1, done.stderr[-2000:]
    out = done.stdout
    expected = [
        "E-VQA train CSV: /data/evqa/train.csv",
        "E-VQA test CSV: /data/evqa/test.csv",
        "E-VQA knowledge base: /data/evqa/encyclopedic_kb_wiki.json",
        "iNaturalist 2021 images: /data/evqa/inaturalist",
        "Google Landmarks v2 images: /data/evqa/landmarks",
        "iNat train id2name: /data/evqa/inaturalist/train_id2name.json",
        "iNat val id2name: /data/evqa/inaturalist/val_id2name.json",
        "scorer checkpoint: openai/clip-vit-large-patch14-336",
        "policy checkpoint: Qwen/Qwen2.5-VL-3B-Instruct",
    ]
    assert "missing (9):" in out
    for line in expected:
        assert f"  - {line}\n      get it: " in out
    assert not (tmp_path / "run").exists()  # nothing was started

    done = _jaxrank_reproduce("rar_fewshot", "--workdir", str(tmp_path / "rar"))
    assert done.returncode == 1
    assert "shots: oxford_pets train" in done.stdout and "tfds build" in done.stdout
    assert "ranker pool: stanford_cars train" in done.stdout
    done = _jaxrank_reproduce("rar_fewshot_coop", "--workdir", str(tmp_path / "coop"))
    assert done.returncode == 1 and "  - CoOp data root: (not set)\n" in done.stdout
    done = _jaxrank_reproduce("no_such_target")
    assert done.returncode == 2 and "unknown target 'no_such_target'" in done.stderr


def test_every_target_names_a_config_and_its_source():
    for name, target in TARGETS.items():
        assert (CONFIGS / target.config).exists(), name
        assert target.paper and "PAPERS.md" in target.source


def test_data_check_on_the_evqa_fixture(tmp_path):
    clip = tmp_path / "clip"
    tiny_checkpoint(clip, "clip", seed=0)
    overrides = [f"data.{k}={v}" for k, v in evqa_paths().items()]
    overrides += [f"scorer_checkpoint={clip}", "policy.checkpoint="]
    cfg = apply_overrides(load_config_file(CONFIGS / "region_r1" / "evqa.py"), overrides)
    check = check_data(cfg, samples=2)
    assert check.missing == []
    test = check.counts["test"]
    assert test["usable"] == 3 and test["read"] == 5
    assert test["skipped"] == {
        "malformed_row": 1, "empty_question": 1, "bad_image_id": 1, "unknown_image_id": 1,
        "undecodable_image": 1,
    }  # fmt: skip
    assert check.counts["kb"]["entries"] == 3
    assert check.counts["kb"]["skipped"] == {"malformed_entry": 1}
    write_check(check, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "data_check.json").read_text())
    assert written["counts"]["test"]["usable"] == 3
    assert (tmp_path / "out" / "data_check.png").stat().st_size > 1000

    missing = apply_overrides(cfg, ["data.kb=/nowhere/kb.json"])
    check = check_data(missing)
    assert [m["what"] for m in check.missing] == ["E-VQA knowledge base"]
    assert check.counts == {}  # nothing is read until everything is there


def test_infoseek_and_mbeir_list_their_files(tmp_path):
    done = _jaxrank_reproduce("region_r1_infoseek", "--workdir", str(tmp_path / "run"))
    assert done.returncode == 1
    for line in ("InfoSeek train CSV", "InfoSeek knowledge base", "OVEN images"):
        assert f"  - {line}: /data/infoseek/" in done.stdout
    done = _jaxrank_reproduce("elva_mbeir", "--workdir", str(tmp_path / "run"))
    assert done.returncode == 1 and "M-BEIR: /data/M-BEIR" in done.stdout
    assert "embedder checkpoint: Qwen/Qwen2-VL-7B-Instruct" in done.stdout
    assert "MRBench (the paper's 43.2) is not released" in done.stdout
