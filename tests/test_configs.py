import json

import pytest

from jaxrank import configs
from jaxrank.train.workdir import WorkdirError, prepare_workdir

CONFIG_FILE = """
import ml_collections

def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.name = "x" if arg is None else arg
    c.train = ml_collections.ConfigDict(dict(lr=1e-3, steps=10, loss="softmax", ks=(1, 5)))
    c.model = ml_collections.ConfigDict(dict(width=64, use_bias=True, dropout=None))
    return c
"""


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG_FILE)
    return path


def test_load_and_override_keeps_types(config_path):
    cfg = configs.load_config_file(config_path)
    configs.apply_overrides(
        cfg,
        [
            "train.lr=1",
            "train.steps=20",
            "model.use_bias=false",
            "train.ks=[1,10]",
            "train.loss=sigmoid",
            "model.dropout=0.1",
        ],
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 20
    assert cfg.model.use_bias is False
    assert cfg.train.ks == (1, 10)
    assert cfg.train.loss == "sigmoid"
    assert cfg.model.dropout == 0.1


def test_config_arg_is_passed(config_path):
    assert configs.load_config_file(config_path, "big").name == "big"


def test_unknown_key_lists_valid_keys(config_path):
    cfg = configs.load_config_file(config_path)
    with pytest.raises(configs.ConfigError) as info:
        configs.apply_overrides(cfg, ["train.lrr=1"])
    message = str(info.value)
    assert "'train.lrr'" in message and "'lrr' is not a key of train" in message
    for key in ("train.lr", "train.steps", "model.width", "seed"):
        assert key in message


def test_wrong_type_and_group_and_syntax_errors(config_path):
    cfg = configs.load_config_file(config_path)
    with pytest.raises(configs.ConfigError, match="expects int"):
        configs.apply_overrides(cfg, ["train.steps=abc"])
    with pytest.raises(configs.ConfigError, match="is a group"):
        configs.apply_overrides(cfg, ["train=3"])
    with pytest.raises(configs.ConfigError, match=r"key\.path=value"):
        configs.apply_overrides(cfg, ["train.steps"])


def test_bad_config_files(tmp_path):
    with pytest.raises(configs.ConfigError, match="does not exist"):
        configs.load_config_file(tmp_path / "missing.py")
    (tmp_path / "nofn.py").write_text("x = 1\n")
    with pytest.raises(configs.ConfigError, match="no get_config"):
        configs.load_config_file(tmp_path / "nofn.py")
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    with pytest.raises(configs.ConfigError, match="failed to import"):
        configs.load_config_file(tmp_path / "broken.py")


def test_workdir_needs_parent_and_same_config(tmp_path, config_path):
    cfg = configs.load_config_file(config_path)
    with pytest.raises(WorkdirError, match="parent folder"):
        prepare_workdir(tmp_path / "no" / "such" / "run", cfg)
    run = prepare_workdir(tmp_path / "run", cfg)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 10
    prepare_workdir(tmp_path / "run", cfg)  # same config: resume is allowed
    changed = configs.apply_overrides(cfg.copy_and_resolve_references(), ["train.steps=11"])
    with pytest.raises(WorkdirError, match=r"train\.steps: 10 -> 11"):
        prepare_workdir(tmp_path / "run", changed)


def test_folder_from_before_stacking_keys_is_re_entered(tmp_path, config_path):
    """A folder whose config predates ``model.scan_layers`` / ``model.remat`` (absent: unrolled)
    is re-entered by the config that names them False, and refused by one that scans."""
    old = configs.load_config_file(config_path)
    prepare_workdir(tmp_path / "run", old)
    new = configs.load_config_file(config_path)
    new.model.scan_layers = new.model.remat = False
    prepare_workdir(tmp_path / "run", new)
    assert "scan_layers" not in json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    new.model.scan_layers = True
    with pytest.raises(WorkdirError, match=r"model\.scan_layers: '<absent>' -> True"):
        prepare_workdir(tmp_path / "run", new)
