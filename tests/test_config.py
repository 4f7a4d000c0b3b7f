"""Config composition, provenance and every config error path."""

from __future__ import annotations

from pathlib import Path

import pytest

from antibody.config import ConfigError, compose, load_saved, to_yaml
from antibody.config.compose import default_conf_dir
from antibody.config.schema import (
    AlignMethod,
    Config,
    LambdaMode,
    ModelSource,
    SourceName,
    Weighting,
)


def test_default_composes_embedded_antibody():
    cfg = compose([])
    assert isinstance(cfg, Config)
    assert cfg.model.source is ModelSource.EMBEDDED
    assert cfg.method.align.method is AlignMethod.ANTIBODY
    assert cfg.method.finetune.weighting is Weighting.LIKELIHOOD_RATIO
    assert cfg.task.name is SourceName.ARITHMETIC


def test_group_selection_and_dotted_override():
    cfg = compose(["method=sft", "model=tiny-llama", "method.align.rho=0.3", "data.user.p=0.1"])
    assert cfg.method.align.method is AlignMethod.SFT
    assert cfg.model.source is ModelSource.TINY
    assert cfg.method.align.rho == pytest.approx(0.3)
    assert cfg.data.user.p == pytest.approx(0.1)


def test_wandb_agent_style_double_dash_overrides():
    cfg = compose(["--method.align.lambda_mode=cosine_ema", "--data.user.n=50"])
    assert cfg.method.align.lambda_mode is LambdaMode.COSINE_EMA
    assert cfg.data.user.n == 50


def test_experiment_holds_deltas_and_cli_wins():
    base = compose(["model=tiny-llama"])
    exp = compose(["experiment=tiny"])
    assert exp.model.source is ModelSource.TINY  # experiment selected the group option
    assert exp.data.user.n == 20 and base.data.user.n != 20
    assert exp.method.align.lambda_mode == base.method.align.lambda_mode  # untouched keys stay
    assert compose(["experiment=tiny", "data.user.n=7"]).data.user.n == 7


def test_paper_scale_configs_compose():
    cfg = compose(["model=llama2-7b", "data=beavertails", "task=gsm8k", "trainer=gpu"])
    assert cfg.model.path == "meta-llama/Llama-2-7b-hf"
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (32, 4)  # released scripts
    assert cfg.model.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert cfg.data.user.n == 1000 and cfg.data.max_length == 256
    assert compose(["model=gemma2-9b"]).model.attn_implementation == "eager"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("method.align.rhoo=1", "unknown config key 'method.align.rhoo'; did you mean 'method.align.rho'"),
        ("dat.user.p=0.1", "unknown config key 'dat'; did you mean 'data'"),
        ("model=llama3", "model=llama3: no such option"),
        ("method.align.lambda_mode=sharp", "allowed values: ['kkt', 'cosine_ema', 'constant']"),
        ("data.user.p=1.5", "data.user.p=1.5 is out of range; allowed: [0, 1]"),
        ("data.user.p=-0.1", "data.user.p=-0.1 is out of range; allowed: [0, 1]"),
        ("data.user.n=0", "data.user.n=0 is out of range; allowed: [1, inf]"),
        ("method.align.rho=-0.1", "method.align.rho=-0.1 is out of range; allowed: [0, inf]"),
        ("method.finetune.tau=0", "method.finetune.tau=0.0 is out of range; allowed: (0, inf]"),
        ("method.align.ema_momentum=1", "allowed: [0, 1)"),
        ("model.dtype=float64", "model.dtype='float64' is not allowed"),
        ("data.user.n=abc", "data.user.n"),
        ("novalue", "is not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, expected):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert expected in str(err.value)


def _conf_copy(tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "conf"
    shutil.copytree(default_conf_dir(), dst)
    return dst


def test_unknown_key_in_yaml_names_file_and_line(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "experiment" / "bad.yaml").write_text("data:\n  user:\n    n: 10\n    pp: 0.1\n")
    with pytest.raises(ConfigError) as err:
        compose(["experiment=bad"], conf_dir=conf)
    msg = str(err.value)
    assert "bad.yaml:4" in msg and "'data.user.pp'" in msg and "did you mean 'data.user.p'" in msg


def test_invalid_yaml_names_file_and_line(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "method" / "broken.yaml").write_text("name: x\nalign:\n  rho: [0.1\n")
    with pytest.raises(ConfigError) as err:
        compose(["method=broken"], conf_dir=conf)
    assert "broken.yaml:" in str(err.value) and "invalid YAML" in str(err.value)


def test_range_error_from_yaml_file(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "experiment" / "neg.yaml").write_text("method:\n  align:\n    rho: -1.0\n")
    with pytest.raises(ConfigError, match=r"method.align.rho=-1.0 is out of range"):
        compose(["experiment=neg"], conf_dir=conf)


def test_saved_config_round_trips(tmp_path):
    cfg = compose(["experiment=tiny", "method.align.rho=0.25"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert "lambda_mode: kkt" in path.read_text()  # enum values, not names
    assert load_saved(path) == cfg


def test_every_group_option_composes():
    conf = default_conf_dir()
    for group in ("model", "data", "task", "method", "trainer", "logger", "experiment"):
        for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
            compose([f"{group}={option}"])


def test_defaults_cite_their_source():
    """Every numeric default in a method/model/data group file that comes from the paper
    carries a comment naming its source (a cheap guard against unexplained numbers)."""
    text = (default_conf_dir() / "method" / "antibody.yaml").read_text()
    for key in ("rho", "lambda2", "tau"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:"))
        assert "#" in line, f"{key} in method/antibody.yaml has no source comment"


def test_sweep_files_use_valid_keys():
    """Every parameter a sweep passes must be a key (or group) the CLI accepts."""
    import yaml

    from antibody.config.compose import GROUPS, resolve_key_type

    for path in (default_conf_dir() / "sweep").glob("*.yaml"):
        sweep = yaml.safe_load(path.read_text())
        assert "${args_no_hyphens}" in sweep["command"], path
        for key in sweep["parameters"]:
            if key not in GROUPS:
                resolve_key_type(key.split("."))
