"""Config composition, provenance and every config error path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from antibody.config import ConfigError, compose, load_saved, to_container, to_yaml
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
    # the default run is the root config's defaults list and nothing else: the same config
    # as naming each of its options, and the model it names is the embedded SmolLM2
    defaults = yaml.safe_load((default_conf_dir() / "config.yaml").read_text())["defaults"]
    named = [f"{group}={option}" for group, option in defaults.items() if option is not None]
    assert to_container(cfg) == to_container(compose(named))
    assert (cfg.model.name, cfg.method.name, cfg.trainer.accelerator, cfg.logger.kind.value) == (
        "smollm2-135m-instruct", "antibody", "cpu", "csv")
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
    assert "lambda_mode: cosine_ema" in path.read_text()  # enum values, not names
    assert load_saved(path) == cfg


def _leaves(data: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every leaf of a YAML mapping by key path (lists are leaves)."""
    out: dict[tuple[str, ...], object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_leaves(value, (*prefix, str(key))))
        else:
            out[(*prefix, str(key))] = value
    return out


def _at(container: dict, path: tuple[str, ...]):
    for key in path:
        container = container[key]
    return container


def _differences(cfg: Config, leaves: dict[tuple[str, ...], object], prefix: tuple[str, ...] = ()) -> list[str]:
    from antibody.config.precision import AUTO, auto_precision

    plain = to_container(cfg)
    # a file's precision "auto" composes to what it stands for (tests/test_precision_auto.py)
    leaves = {p: auto_precision(cfg.trainer.accelerator) if (*prefix, *p) == ("trainer", "precision") and v == AUTO
              else v for p, v in leaves.items()}
    return [
        f"{'.'.join((*prefix, *path))}: file {want!r}, composed {_at(plain, (*prefix, *path))!r}"
        for path, want in leaves.items()
        if _at(plain, (*prefix, *path)) != want
    ]


def test_every_group_option_composes_to_its_file_values():
    """`group=option` yields every value written in conf/<group>/<option>.yaml; an experiment
    yields its deltas and, for keys it does not set, the values of the options it selects."""
    import yaml

    conf = default_conf_dir()
    wrong: list[str] = []
    for group in ("model", "data", "task", "method", "trainer", "logger", "experiment"):
        for path in sorted((conf / group).glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            cfg = compose([f"{group}={path.stem}"])
            if group != "experiment":
                wrong += [f"{group}={path.stem}: {d}" for d in _differences(cfg, _leaves(data), (group,))]
                continue
            selected = data.pop("defaults", None) or {}
            deltas = _leaves(data)
            wrong += [f"experiment={path.stem}: {d}" for d in _differences(cfg, deltas)]
            for sub, option in selected.items():
                option_leaves = _leaves(yaml.safe_load((conf / sub / f"{option}.yaml").read_text()) or {})
                kept = {p: v for p, v in option_leaves.items() if (sub, *p) not in deltas}
                wrong += [f"experiment={path.stem} ({sub}={option}): {d}" for d in _differences(cfg, kept, (sub,))]
    assert not wrong, "\n".join(wrong)


# What a provenance comment must name: the paper, the released scripts/code, our own choice
# or measurement, or a page under docs/.
SOURCE_WORDS = re.compile(r"\bpaper\b|\breleased\b|\bours\b|docs/|\bcalibration\b|\bmeasured\b", re.I)
_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


def _comment(line: str) -> str:
    """The comment part of a YAML line ('' when none); conf/ quotes never contain '#'."""
    if line.lstrip().startswith("#"):
        return line.lstrip()[1:]
    match = re.search(r"\s#(.*)$", line)
    return match.group(1) if match else ""


def _numeric_values(node, path=()):
    """(key path, 0-based line) of every int/float scalar in a composed YAML node."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _numeric_values(value, (*path, str(key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _numeric_values(item, (*path, str(i)))
    elif isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS:
        yield path, node.start_mark.line


def unsourced_numbers(conf: Path) -> list[tuple[str, str, str]]:
    """(file, key, where) of every numeric default in conf/ whose own line, or the comment
    block right above it, names no source. Sweep files are search grids, not defaults."""
    import yaml

    offenders = []
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if rel.parts[0] == "sweep":
            continue
        lines = path.read_text().splitlines()
        for keys, line in _numeric_values(yaml.compose(path.read_text())):
            comments = [_comment(lines[line])]
            above = line - 1
            while above >= 0 and lines[above].lstrip().startswith("#"):
                comments.append(_comment(lines[above]))
                above -= 1
            if not any(SOURCE_WORDS.search(c) for c in comments):
                offenders.append((rel.as_posix(), ".".join(keys), f"{rel}:{line + 1}: {lines[line].strip()}"))
    return offenders


def test_source_check_finds_unsourced_numbers(tmp_path):
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "x.yaml").write_text(
        "align:\n"
        "  rho: 0.1  # released scripts\n"
        "  # ours: measured on the embedded model\n"
        "  # (second comment line)\n"
        "  lr: 1.0e-4\n"
        "  lam: 5.0  # a number nobody explains\n"
        "  user: {n: 20, p: 0.2}\n"
        "  name: x  # strings need no source\n"
    )
    assert unsourced_numbers(tmp_path) == [
        ("method/x.yaml", "align.lam", "method/x.yaml:6: lam: 5.0  # a number nobody explains"),
        ("method/x.yaml", "align.user.n", "method/x.yaml:7: user: {n: 20, p: 0.2}"),
        ("method/x.yaml", "align.user.p", "method/x.yaml:7: user: {n: 20, p: 0.2}"),
    ]


def test_every_numeric_default_cites_its_source():
    """Every numeric value in every conf/ file carries a comment, on its line or right above
    it, naming its source (paper, released scripts, ours, docs/...)."""
    offenders = [where for _, _, where in unsourced_numbers(default_conf_dir())]
    assert not offenders, f"{len(offenders)} numeric defaults without a source:\n" + "\n".join(offenders)


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


# ---------------------------------------------------------------------------
# trainer.* and logger.mode: checked at compose, against Lightning's and W&B's own names
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("override", "key", "named"),
    [
        ("trainer.precision=fp16", "trainer.precision='fp16'", ["bf16-mixed", "32-true", "16-true", "64-true"]),
        ("trainer.accelerator=gpuu", "trainer.accelerator='gpuu'", ["auto", "gpu", "cpu", "cuda"]),
        ("trainer.strategy=dpp", "trainer.strategy='dpp'", ["auto", "ddp", "ddp_spawn", "fsdp"]),
        ("logger.mode=onlin", "logger.mode='onlin'", ["online", "offline", "disabled"]),
    ],
)
def test_unknown_trainer_and_logger_names_fail_at_compose(override, key, named):
    with pytest.raises(ConfigError) as err:
        compose(["experiment=tiny", override])
    msg = str(err.value)
    assert msg.startswith(f"{key} is not allowed; choose one of ")
    assert all(re.search(rf"(^|[ ,]){re.escape(n)}(,|$)", msg.split("choose one of ")[1]) for n in named), msg


def test_allowed_names_are_lightnings_and_wandbs():
    """The lists are the installed packages' own (not typed here): every registered
    strategy and accelerator, every precision Lightning's connector accepts."""
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from antibody.config.validate import trainer_choices

    c = trainer_choices()
    assert set(get_args(_PRECISION_INPUT_STR)) | {"16", "32", "64", "bf16"} == set(c.precision)
    assert set(StrategyRegistry.available_strategies()) | {"auto"} == set(c.strategy)
    assert set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"} == set(c.accelerator)
    assert {"online", "offline", "disabled"} <= set(c.logger_mode)


def test_the_common_choices_checked_without_lightning_are_lightnings_own():
    """validate.COMMON_CHOICES (checked without importing Lightning and wandb) is a subset of
    what the installed packages accept, with the same alias conversions; a value outside it
    is still checked against them."""
    from antibody.config.validate import COMMON_CHOICES, trainer_choices

    c = trainer_choices()
    for field in ("precision", "accelerator", "strategy", "logger_mode"):
        assert set(getattr(COMMON_CHOICES, field)) <= set(getattr(c, field)), field
    assert COMMON_CHOICES.aliases.items() <= c.aliases.items()
    with pytest.raises(ConfigError, match="trainer.strategy='nope' is not allowed; choose one of auto, .*fsdp"):
        compose(["experiment=tiny", "trainer.strategy=nope"])


@pytest.mark.parametrize("precision", ["16-mixed", "16"])  # "16" is Lightning's alias of 16-mixed
@pytest.mark.parametrize("method", ["antibody", "booster", "vaccine", "sft"])
def test_fp16_mixed_precision_is_refused_at_compose(precision, method):
    with pytest.raises(ConfigError) as err:
        compose(["experiment=tiny", f"method={method}", f"trainer.precision={precision}"])
    msg = str(err.value)
    assert f"trainer.precision='{precision}' (16-mixed" in msg and "bf16-mixed" in msg and "32-true" in msg


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true", "transformer-engine"])
def test_weight_casting_precisions_are_refused_for_a_quantised_model(precision):
    with pytest.raises(ConfigError, match=rf"trainer.precision='{precision}' re-casts .* model.quantization=nf4"):
        compose(["experiment=tiny", "model.quantization=nf4", f"trainer.precision={precision}"])
    # unquantised: Lightning's business, and kept as asked
    assert compose(["experiment=tiny", f"trainer.precision={precision}"]).trainer.precision == precision


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        # the option files' settings (conf/trainer/gpu.yaml, ddp.yaml, conf/model/llama2-7b.yaml)
        (["trainer=gpu"], {"trainer.accelerator": "gpu", "trainer.precision": "bf16-mixed"}),
        (["trainer=ddp"], {"trainer.strategy": "ddp", "trainer.devices": 4, "trainer.precision": "bf16-mixed"}),
        (["trainer=gpu", "model=llama2-7b"], {"model.quantization": "nf4", "trainer.precision": "bf16-mixed"}),
        (["logger=wandb"], {"logger.kind": "wandb"}),
        # Lightning's aliases are accepted as written, not rewritten
        (["trainer.precision=bf16"], {"trainer.precision": "bf16"}),
        (["trainer.precision=32"], {"trainer.precision": "32"}),
        (["trainer.strategy=fsdp"], {"trainer.strategy": "fsdp"}),
        (["trainer.accelerator=cuda"], {"trainer.accelerator": "cuda"}),
        (["logger.mode=disabled"], {"logger.mode": "disabled"}),
        (["model.quantization=nf4", "trainer.precision=32-true"], {"model.quantization": "nf4",
                                                                    "trainer.precision": "32-true"}),
    ],
)
def test_valid_trainer_settings_compose(overrides, want):
    # accepted, and the composed config holds what was asked (no validator "fixes" a value)
    cfg = to_container(compose(["experiment=tiny", *overrides]))
    got = {}
    for key in want:
        node = cfg
        for part in key.split("."):
            node = node[part]
        got[key] = node
    assert got == want


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true"])
def test_spawning_strategies_are_refused_at_compose(strategy):
    with pytest.raises(ConfigError, match=rf"trainer.strategy='{strategy}' trains in spawned processes.*strategy=ddp"):
        compose(["experiment=tiny", f"trainer.strategy={strategy}"])


def test_multinode_trainer_composes_and_batches_must_split_over_every_process():
    cfg = compose(["experiment=tiny", "trainer=ddp_multinode", "data.align_batch_size=8",
                   "data.harmful_batch_size=8", "data.finetune_batch_size=16"])
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    with pytest.raises(ConfigError, match=r"data.finetune_batch_size=4 is not divisible by trainer.devices x "
                                          r"trainer.num_nodes = 8"):
        compose(["experiment=tiny", "trainer=ddp_multinode", "data.align_batch_size=8",
                 "data.harmful_batch_size=8", "data.finetune_batch_size=4"])
    with pytest.raises(ConfigError, match="trainer.num_nodes"):
        compose(["experiment=tiny", "trainer.num_nodes=0"])


def test_num_nodes_is_left_out_of_saved_configs_while_one():
    """Runs keyed before trainer.num_nodes existed keep their keys (study_plan hashes to_yaml)."""
    from antibody.config import to_yaml

    assert "num_nodes" not in to_yaml(compose(["experiment=tiny"]))
    assert "num_nodes: 2" in to_yaml(compose(["experiment=tiny", "trainer.num_nodes=2"]))


def test_a_changed_default_keeps_the_runs_made_before_it(tmp_path):
    """data.harmful_answer_filter became `judge` (2026-12): a config on the old `keyword` value
    serialises without the key, as every run did before, and a saved config without the key
    reads back as `keyword`, not as today's default; the new default is written out."""
    from antibody.config.schema import AnswerFilter

    new, old = compose(["experiment=tiny"]), compose(["experiment=tiny", "data.harmful_answer_filter=keyword"])
    assert new.data.harmful_answer_filter is AnswerFilter.JUDGE
    assert "harmful_answer_filter: judge" in to_yaml(new) and "harmful_answer_filter" not in to_yaml(old)
    (tmp_path / "old.yaml").write_text(to_yaml(old))
    (tmp_path / "new.yaml").write_text(to_yaml(new))
    assert load_saved(tmp_path / "old.yaml").data.harmful_answer_filter is AnswerFilter.KEYWORD
    assert load_saved(tmp_path / "new.yaml").data.harmful_answer_filter is AnswerFilter.JUDGE
    assert to_yaml(load_saved(tmp_path / "old.yaml")) == to_yaml(old)
