"""Compose a run configuration from ``conf/`` groups, an experiment and CLI overrides.

Order (later wins): structured defaults -> group files selected by ``conf/config.yaml``
(or by the experiment's ``defaults``, or by ``group=option`` on the command line) ->
the experiment's deltas -> ``key=value`` overrides. Unknown keys are rejected with the
nearest valid key; YAML problems name the file and line; then ``validate`` checks every
range before anything expensive runs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib.resources
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from antibody.config.errors import ConfigError
from antibody.config.merging import COMMAND_LINE, explain, merge, merge_sources, structured
from antibody.config.precision import resolve_precision
from antibody.config.schema import Config
from antibody.config.sizes import size_problems
from antibody.infra.files import parse_yaml

GROUPS = ("model", "data", "task", "method", "trainer", "logger", "attack", "experiment")
# Groups whose YAML describes one node of Config; `experiment` is root-level deltas.
NODE_GROUPS = {g: g for g in GROUPS if g != "experiment"}


def default_conf_dir() -> Path:
    """The config groups: the repository's top-level `conf/`, installed as the package
    `antibody.conf` (pyproject.toml maps it), so a non-editable install finds them too."""
    try:
        root = importlib.resources.files("antibody.conf")
    except ModuleNotFoundError:
        # `src/` on sys.path without an install that maps conf/ (PYTHONPATH=src, or an
        # editable install made before the mapping): the checkout's own conf/
        return Path(__file__).resolve().parents[3] / "conf"
    return Path(str(root))  # a regular package on disk: its folder


# ---------------------------------------------------------------------------
# YAML reading with file:line errors
# ---------------------------------------------------------------------------


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    walk(root, ())
    return lines


def read_yaml(path: Path) -> tuple[dict, dict[tuple[str, ...], int]]:
    """Read a YAML mapping; errors name the file and line. Group files are read once per
    process and their contents (a fresh copy for each caller) reused: a study composes
    hundreds of jobs from the same few files."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    data, lines = _parsed(path, text)
    return copy.deepcopy(data), lines


@functools.lru_cache(maxsize=256)
def _parsed(path: Path, text: str) -> tuple[dict, dict[tuple[str, ...], int]]:
    data = parse_yaml(text, path)  # the text is parsed again below for key lines
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of keys, got {type(data).__name__}")
    return data, _key_lines(text)


# ---------------------------------------------------------------------------
# Unknown-key checking against the dataclass schema
# ---------------------------------------------------------------------------


def _schema_fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _nearest(name: str, options: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.0)
    if not match:
        return ""
    full = f"{prefix}.{match[0]}" if prefix else match[0]
    return f"; did you mean '{full}'?"


def check_keys(
    data: dict,
    cls: type,
    prefix: str,
    where: str,
    lines: Optional[dict[tuple[str, ...], int]] = None,
    line_prefix: tuple[str, ...] = (),
) -> None:
    """Raise ConfigError for the first key in `data` that `cls` does not define."""
    spec = _schema_fields(cls)
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        lp = (*line_prefix, str(key))
        if key not in spec:
            line = (lines or {}).get(lp)
            loc = f"{where}:{line}" if line else where
            raise ConfigError(
                f"{loc}: unknown config key '{full}'{_nearest(str(key), list(spec), prefix)}"
            )
        sub = spec[key]
        if is_dataclass(sub) and isinstance(value, dict):
            check_keys(value, sub, full, where, lines, lp)


def resolve_key_type(path: list[str]) -> Any:
    """Type of a dotted key in Config, or raise ConfigError with the nearest key."""
    cls: Any = Config
    walked: list[str] = []
    for part in path:
        if not (isinstance(cls, type) and is_dataclass(cls)):
            # dict-valued fields (e.g. data.paths) accept any sub-key
            return Any
        spec = _schema_fields(cls)
        if part not in spec:
            full = ".".join([*walked, part])
            raise ConfigError(
                f"command line: unknown config key '{full}'"
                f"{_nearest(part, list(spec), '.'.join(walked))}"
            )
        walked.append(part)
        cls = spec[part]
    return cls


# ---------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------


def _group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _check_probe_model(conf_dir: Path, cfg: Config) -> None:
    options = _group_options(conf_dir, "model")
    if cfg.eval.probe_model not in options:
        raise ConfigError(f"eval.probe_model={cfg.eval.probe_model!r}: no such model option; choose one of "
                          f"{options}{_nearest(cfg.eval.probe_model, options)}")


def _group_file(conf_dir: Path, group: str, option: str) -> Path:
    path = conf_dir / group / f"{option}.yaml"
    if not path.is_file():
        options = _group_options(conf_dir, group)
        raise ConfigError(
            f"{group}={option}: no such option; choose one of {options}"
            f"{_nearest(option, options)}"
        )
    return path


def group_option(group: str, option: str, conf_dir: Optional[Path] = None) -> Any:
    """One option of a node group as its schema node, e.g. ``("task", "gsm8k")`` -> the
    TaskConfig of conf/task/gsm8k.yaml over the schema's defaults: what the selection
    composes to before an experiment or the command line changes it. The group files are
    the one source of their values (the evaluation tasks read a task's defaults here)."""
    if group not in NODE_GROUPS:
        raise ConfigError(f"'{group}' is not a node config group{_nearest(group, list(NODE_GROUPS))}")
    path = _group_file(Path(conf_dir) if conf_dir is not None else default_conf_dir(), group, option)
    data, lines = read_yaml(path)
    node = _schema_fields(Config)[NODE_GROUPS[group]]
    check_keys(data, node, NODE_GROUPS[group], str(path), lines)
    return OmegaConf.to_object(merge(OmegaConf.structured(node), data, str(path)))


def parse_overrides(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split CLI arguments into group selections and dotted key overrides."""
    selections: dict[str, str] = {}
    dotlist: list[str] = []
    for arg in overrides:
        arg = arg[2:] if arg.startswith("--") else arg  # W&B agents may pass --key=value
        if "=" not in arg:
            raise ConfigError(f"command line: '{arg}' is not of the form key=value")
        key, value = arg.split("=", 1)
        if key in GROUPS:
            selections[key] = value
        else:
            dotlist.append(f"{key}={value}")
    return selections, dotlist


def compose(overrides: Optional[list[str]] = None, conf_dir: Optional[Path] = None) -> Config:
    """Return a validated Config object (a dataclass instance)."""
    conf_dir = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    selections, dotlist = parse_overrides(list(overrides or []))

    root_path = conf_dir / "config.yaml"
    root, root_lines = read_yaml(root_path)
    defaults = dict(root.pop("defaults", {}) or {})
    unknown = set(defaults) - set(GROUPS)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(
            f"{root_path}:{root_lines.get(('defaults', name), 1)}: unknown config group "
            f"'{name}'{_nearest(name, list(GROUPS))}"
        )

    experiment_name = selections.get("experiment", defaults.get("experiment"))
    experiment: dict = {}
    exp_lines: dict = {}
    exp_path: Optional[Path] = None
    if experiment_name:
        exp_path = _group_file(conf_dir, "experiment", experiment_name)
        experiment, exp_lines = read_yaml(exp_path)
        for group, option in dict(experiment.pop("defaults", {}) or {}).items():
            if group not in NODE_GROUPS:
                raise ConfigError(
                    f"{exp_path}: unknown config group '{group}'{_nearest(group, list(NODE_GROUPS))}"
                )
            defaults[group] = option
    defaults.update({k: v for k, v in selections.items() if k != "experiment"})

    sources: list[tuple[dict, str]] = []
    for group, node in NODE_GROUPS.items():
        option = defaults.get(group)
        if not option:
            continue
        path = _group_file(conf_dir, group, str(option))
        data, lines = read_yaml(path)
        check_keys(data, _schema_fields(Config)[node], node, str(path), lines)
        sources.append(({node: data}, str(path)))

    check_keys(root, Config, "", str(root_path), root_lines)
    sources.append((root, str(root_path)))
    if experiment:
        check_keys(experiment, Config, "", str(exp_path), exp_lines)
        sources.append((experiment, str(exp_path)))
    for item in dotlist:
        resolve_key_type(item.split("=", 1)[0].split("."))
    if dotlist:
        try:
            cli = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"command line: {explain(exc)}") from None
        sources.append((cli, COMMAND_LINE))
    cfg = merge_sources(sources)

    try:
        obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {explain(exc)}") from None
    from antibody.config.attack_rules import apply_attack
    from antibody.config.validate import validate

    # once, here: an attack's changes and what precision "auto" stands for are then saved
    obj = resolve_precision(apply_attack(obj))
    validate(obj)
    _check_upload_overrides(obj, dotlist)
    # the probe backbone names a model option: a typo fails here, before any work
    _check_probe_model(conf_dir, obj)
    # counts larger than a hub dataset's split fail here, with no download and no model
    problems = size_problems(obj)
    if problems:
        raise ConfigError("; ".join(problems))
    return obj


# what only the research upload reads: with a provider's file they would be silently ignored
_RESEARCH_UPLOAD_KEYS = ("n", "p", "harmful_answer_source", "benign_prose_share")


def _check_upload_overrides(cfg: Config, dotlist: list[str]) -> None:
    """A command line that sets a research-upload key beside data.user.path is refused: the
    file's rows are the upload, so the key would change nothing (experiment files may keep
    their n and p: only what the caller typed is checked)."""
    if not cfg.data.user.path:
        return
    for item in dotlist:
        key = item.split("=", 1)[0]
        if key in {f"data.user.{k}" for k in _RESEARCH_UPLOAD_KEYS}:
            raise ConfigError(
                f"command line: {key} has no effect with data.user.path={cfg.data.user.path} (the file's rows "
                "are the upload; n, p and the sources describe the research upload only): drop one of them"
            )


def _omitted(obj: Any, f: dataclasses.Field) -> bool:
    if not f.metadata.get("omit_when_default"):
        return False
    if "omitted_value" in f.metadata:  # a key whose default changed (config/upload.py, omit_when)
        return getattr(obj, f.name) == f.metadata["omitted_value"]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(obj, f.name) == default


def _fill_omitted(cls: type, data: dict) -> None:
    """Put back, in a saved config's mapping, the keys written as omitted under `omit_when`:
    absent, they mean the value they were left out for, not today's default."""
    for f in fields(cls):
        if "omitted_value" in f.metadata and f.name not in data:
            data[f.name] = _plain(f.metadata["omitted_value"])
        sub = data.get(f.name)
        hint = _nested_dataclass(cls, f)
        if hint is not None and isinstance(sub, dict):
            _fill_omitted(hint, sub)


def _nested_dataclass(cls: type, f: dataclasses.Field) -> Optional[type]:
    """The dataclass type of a field that holds one (a group, e.g. DataConfig.user), else None."""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        # keys marked omit_when_default (a provider's upload, config/upload.py) are left out
        # at their defaults, so configs without them serialise and hash as before they existed
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if not _omitted(value, f)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_container(cfg: Config) -> dict:
    """Plain dict with enum values as strings (W&B run config, metrics files)."""
    return _plain(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved with every run; `load_saved` reads it back)."""
    return yaml.safe_dump(to_container(cfg), sort_keys=False)


def load_saved(path: Path) -> Config:
    """Re-load a config saved by `to_yaml` (e.g. runs/<name>/config.yaml)."""
    data, lines = read_yaml(Path(path))
    check_keys(data, Config, "", str(path), lines)
    _fill_omitted(Config, data)
    cfg = merge(structured(), data, str(path))
    obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    return obj


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`key=value` overrides on top of a loaded config (e.g. a saved run's), validated.

    Group selections are refused here: they would replace a whole saved group silently.
    """
    selections, dotlist = parse_overrides(list(overrides))
    if selections:
        group = sorted(selections)[0]
        raise ConfigError(
            f"command line: '{group}={selections[group]}' selects a config group, which cannot "
            "change a saved run's config; override single keys instead"
        )
    for item in dotlist:
        if item.startswith("attack."):
            # the attack's changes were made when the run was composed (config/attack_rules.py)
            raise ConfigError(f"command line: {item.split('=', 1)[0]} cannot change a saved run's attack, "
                              "whose rows and hyper-parameters it was trained with; compose a new run instead")
    for item in dotlist:
        resolve_key_type(item.split("=", 1)[0].split("."))
    merged = structured()
    merged = merge(merged, OmegaConf.structured(cfg), "config")
    if dotlist:
        merged = merge(merged, OmegaConf.from_dotlist(dotlist), COMMAND_LINE)
    obj: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    from antibody.config.validate import validate

    obj = resolve_precision(obj)
    validate(obj)
    return obj
