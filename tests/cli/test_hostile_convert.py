"""Hostile inputs, class 1: Hugging Face folders ``jaxrank convert`` cannot read (damaged files,
pickle-only weights, no folder at all). Each is named, exit 2, the folder left as it was."""

import shutil

import pytest
from hf_checkpoints import tiny_checkpoint
from refusals import refused

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    tiny_checkpoint(folder, "clip")
    return folder


@pytest.fixture
def damaged(clip, tmp_path):
    folder = tmp_path / "tiny-clip"
    shutil.copytree(clip, folder)
    return folder


def test_truncated_weights(capsys, damaged):
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(capsys, ["convert", damaged], damaged, culprit=(str(weights), "not a readable"))


def test_weights_not_safetensors(capsys, damaged):
    weights = damaged / "model.safetensors"
    weights.write_bytes(b"<html>rate limited</html>")
    refused(capsys, ["convert", damaged], damaged, culprit=str(weights))


@pytest.mark.parametrize(
    ("text", "culprit"),
    [('{"architectures": ["CLIPModel"', "not valid JSON"), ("[]", "expected a JSON object")],
)
def test_config_json_damaged(capsys, damaged, text, culprit):
    (damaged / "config.json").write_text(text)
    refused(capsys, ["convert", damaged], damaged, culprit=(str(damaged / "config.json"), culprit))


def test_pickle_only_weights_refused_unread(capsys, damaged):
    (damaged / "model.safetensors").unlink()
    (damaged / "pytorch_model.bin").write_bytes(b"not even a pickle: never opened")
    refused(capsys, ["convert", damaged], damaged, culprit=("pytorch_model.bin", "safetensors"))


def test_no_folder(capsys, tmp_path):
    refused(capsys, ["convert", tmp_path / "nope"], tmp_path, culprit="no such checkpoint folder")
    (tmp_path / "weights.bin").write_text("x")
    refused(capsys, ["convert", tmp_path / "weights.bin"], tmp_path, culprit="got a file")
    (tmp_path / "empty").mkdir()
    refused(capsys, ["convert", tmp_path / "empty"], tmp_path, culprit="no config.json")


def test_output_folder_missing(capsys, clip, tmp_path):
    """Refused before loading, so no half of the outputs is written."""
    summary, out = tmp_path / "summary.json", tmp_path / "missing" / "bf16"
    argv = ["convert", clip, "--json", summary, "--out", out]
    refused(capsys, argv, tmp_path, clip, culprit=("--out", str(out)))
