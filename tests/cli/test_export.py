"""``jaxrank export`` on a short real contrastive run: the exported CLIP checkpoint computes in
transformers' PyTorch model what jaxrank's encoder computes, loads back into jaxrank with the
same parameters, is byte-identical when the run's parameters sit on a 4x2 (data, model) mesh,
and carries a model card; bad input ends in one ``jaxrank: error:`` line with nothing written,
and so does an export from a run folder that a training run holds (its lock), read-only or
not; a read-only finished run exports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from contrastive_tiny import tiny_config
from fast_xla import fast_compile, subprocess_env
from flax import nnx
from lock_holder import held
from refusals import refused

from jaxrank import parallel
from jaxrank.cli import main as cli
from jaxrank.cli.export import export_run
from jaxrank.contrastive.encoder import restore
from jaxrank.contrastive.recipe import train_and_evaluate
from jaxrank.models.hf import load_pretrained
from jaxrank.train.workdir import HOLDER_FILE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _unit(features) -> np.ndarray:
    """transformers' features (a tensor, or an output whose pooler_output holds them), unit
    length as jaxrank's encoders return them."""
    x = getattr(features, "pooler_output", features).numpy()
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step contrastive run (8 virtual devices), and its encoder restored on one."""
    workdir = tmp_path_factory.mktemp("run") / "contrastive"
    cfg = tiny_config("train.steps=2")
    with fast_compile():
        train_and_evaluate(cfg, workdir)
    mesh = parallel.make_mesh(data=1, devices=jax.devices()[:1])
    _, graphdef, params = restore(cfg, workdir, mesh)
    return workdir, nnx.merge(graphdef, params)


def test_exported_clip_computes_what_jaxrank_does(run, tmp_path):
    workdir, model = run
    out = tmp_path / "clip"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    reference = transformers.CLIPModel.from_pretrained(out).eval()
    rng = np.random.default_rng(0)
    size = model.config.vision.image_size
    pixels = rng.normal(size=(3, size, size, 3)).astype(np.float32)
    ids = rng.integers(4, model.config.text.vocab_size, (3, model.config.text.max_len))
    ids[:, 5] = model.config.text.eos_token_id  # CLIP pools at the end-of-text token
    with torch.no_grad():
        want_image = reference.get_image_features(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))
        )
        # The export moved the end-of-text token from id 2 (transformers' legacy rule) to a
        # new last row; the card says so.
        moved = np.where(ids == 2, model.config.text.vocab_size, ids)
        want_text = reference.get_text_features(input_ids=torch.from_numpy(moved))
    want_image, want_text = (_unit(w) for w in (want_image, want_text))
    got_image = np.asarray(model.encode_image(pixels))
    got_text = np.asarray(model.encode_text(ids))
    np.testing.assert_allclose(got_image, want_image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_text, want_text, atol=1e-5, rtol=0)
    # Back into jaxrank: the same parameters, bit for bit.
    loaded = load_pretrained(out).model
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    table = params["text"]["tower"]["token_embedding"]
    table["embedding"] = np.concatenate([table["embedding"], table["embedding"][2:3]])
    want = jax.tree.leaves(params)
    got = jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded, nnx.Param)))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    card = (out / "README.md").read_text()
    assert f"replace id 2 by {model.config.text.vocab_size}" in card
    assert "Recall" in card or "R@1" in card
    assert "jaxrank export --workdir" in card and '"recipe": "contrastive"' in card


def test_a_model_axis_run_exports_the_same_bytes(run, tmp_path):
    """The run's checkpoint restored onto a (data 4, model 2) mesh of 8 virtual devices (in
    process: orbax places each parameter sharded) exports byte-identical files."""
    workdir, _ = run
    one = export_run(workdir, tmp_path / "one", mesh=parallel.make_mesh(1, 1, jax.devices()[:1]))
    mesh = parallel.make_mesh(data=4, model=2)
    sharded = export_run(workdir, tmp_path / "sharded", mesh=mesh)
    for name in ("model.safetensors", "config.json"):
        assert (one / name).read_bytes() == (sharded / name).read_bytes()


def test_bad_input_is_one_error_line_and_writes_nothing(run, tmp_path, capsys):
    workdir, _ = run
    out = tmp_path / "out"
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.json").write_text((workdir / "config.json").read_text())
    cases = {
        "no such run folder": ["--workdir", str(tmp_path / "missing")],
        "no checkpoint": ["--workdir", str(untrained)],
        "holds no policy": ["--workdir", str(workdir), "--what", "policy"],
        "written as merged": ["--workdir", str(workdir), "--format", "adapter"],
    }
    for expected, argv in cases.items():
        assert cli.main(["export", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("jaxrank: error:") and expected in err[0]
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["CLIPModel"]


def test_a_run_folder_in_use_is_refused(run, tmp_path, capsys):
    """A process holding the run folder's lock (as ``jaxrank train`` does while it trains):
    the export is refused naming it, writes nothing, and succeeds once the holder is gone."""
    workdir, _ = run
    out = tmp_path / "out"
    with held(workdir) as proc:
        info = json.loads((workdir / HOLDER_FILE).read_text())
        holder = f"process {proc.pid} on host {socket.gethostname()}, started {info['started']}"
        argv = ["export", "--workdir", workdir, "--out", out]
        refused(capsys, argv, workdir, out, culprit=(holder, "is in use"))
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert not (workdir / HOLDER_FILE).exists()


# ``jaxrank export`` twice in one process (its start is most of the cost): at once, and again
# after a line on stdin; each prints its exit status.
EXPORT_TWICE = (
    "import sys\n"
    "from jaxrank.cli import main as cli\n"
    "argv = ['export', '--workdir', sys.argv[1], '--out', sys.argv[2]]\n"
    "print(cli.main(argv), flush=True)\n"
    "sys.stdin.readline()\n"
    "print(cli.main(argv), flush=True)\n"
)


def _exporter_without_write_access(workdir, out, cache) -> subprocess.Popen:
    """``EXPORT_TWICE`` in a process that file modes bind: as root, one without the
    capabilities that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    argv = [sys.executable, "-c", EXPORT_TWICE, str(workdir), str(out)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *argv]
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.Popen(argv, env=subprocess_env(cache), text=True, **pipes)


def test_a_read_only_run_folder_is_read_under_its_lock(run, tmp_path):
    """A copy of the finished run, every file and folder made read-only: refused while a
    training run holds its lock (taken before the chmod), naming it, nothing written; then the
    same files as an export from the writable folder."""
    workdir, _ = run
    frozen = tmp_path / "frozen"
    shutil.copytree(workdir, frozen)
    want = export_run(workdir, tmp_path / "want", mesh=parallel.make_mesh(1, 1, jax.devices()[:1]))
    out = tmp_path / "out"
    paths = [frozen, *frozen.rglob("*")]
    try:
        with held(frozen) as holder:
            for path in paths:
                path.chmod(path.stat().st_mode & ~0o222)
            proc = _exporter_without_write_access(frozen, out, tmp_path / "xla_cache")
            refused = proc.stdout.readline().strip()
            assert not out.exists()
        printed, err = proc.communicate("\n", timeout=300)  # "wrote OUT", then the status
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)
    assert (refused, printed.split()[-1]) == ("2", "0"), err
    error = [line for line in err.splitlines() if line.startswith("jaxrank: error:")]
    assert len(error) == 1 and f"is in use by process {holder.pid}" in error[0], err
    for name in ("model.safetensors", "config.json"):
        assert (out / name).read_bytes() == (want / name).read_bytes()
