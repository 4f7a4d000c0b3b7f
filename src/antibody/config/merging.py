"""Merging config sources into the structured schema (OmegaConf), with errors that name the
source: a group file, the root config, the experiment, or the command line.

Each OmegaConf merge copies and re-validates the whole config, so ``merge_sources`` combines
the sources as plain mappings and merges them once; the files' part (the same for every job
of a study) is merged once per process.
"""

from __future__ import annotations

import functools
import json
import re
from enum import Enum

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from antibody.config import schema
from antibody.config.errors import ConfigError
from antibody.config.schema import Config

COMMAND_LINE = "command line"  # where a key=value override comes from, in error messages

# enum member name -> value, to phrase OmegaConf's enum errors in the values users write
_ENUM_VALUES = {
    m.name: m.value
    for obj in vars(schema).values()
    if isinstance(obj, type) and issubclass(obj, Enum) and obj is not Enum
    for m in obj
}


def merge(cfg: DictConfig, data: dict, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, data)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {explain(exc)}") from None


def explain(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    enum_msg = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
    if enum_msg:
        names = [n.strip() for n in enum_msg.group(2).split(",")]
        allowed = [_ENUM_VALUES.get(n, n.lower()) for n in names]
        return f"invalid value '{enum_msg.group(1)}' for '{key}'; allowed values: {allowed}"
    return f"'{key}': {msg}" if key else msg


def structured() -> DictConfig:
    """Config schema in struct mode; free-form dict fields (data.paths) accept any key."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.data.paths, False)
    return cfg


@functools.lru_cache(maxsize=1)
def _schema_template() -> DictConfig:
    """One schema per process: ``OmegaConf.merge`` copies its first argument, so merging
    into this template never changes it."""
    return structured()


def _deep_update(into: dict, data: dict) -> dict:
    """``data`` over ``into`` as OmegaConf merges a mapping: mappings key by key, anything
    else (lists, scalars, None) replaced whole."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value
    return into


def merge_sources(sources: list[tuple[dict, str]]) -> DictConfig:
    """The schema with every (mapping, where) on top, in order. Each OmegaConf merge copies
    and re-validates the whole config (one per source made composing a study's hundreds of
    jobs take minutes), so the sources are combined as plain mappings first and merged in
    ONE OmegaConf merge; the files' part (group files, root, experiment: the same for every
    job of a study) is merged once per process and reused, so a job pays for its command
    line only. If a merge fails, the sources are merged one at a time to name the file (or
    the command line) whose value is wrong."""
    files = [(data, where) for data, where in sources if where != COMMAND_LINE]
    cli = [data for data, where in sources if where == COMMAND_LINE]
    try:
        # the key order is kept (not sorted): it is the YAML order, which saved configs and keys follow
        base = _merged_files(json.dumps([data for data, _ in files], default=str))
        return OmegaConf.merge(base, *cli) if cli else base  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        cfg = structured()
        for data, where in sources:
            cfg = merge(cfg, data, where)  # raises, naming the source
        raise ConfigError(f"config: {explain(exc)}") from None


@functools.lru_cache(maxsize=64)
def _merged_files(files_json: str) -> DictConfig:
    """The schema with the file sources (as JSON, so that the cache can key them) merged in;
    callers never modify it (OmegaConf.merge and to_object copy)."""
    combined: dict = {}
    for data in json.loads(files_json):
        _deep_update(combined, data)
    return OmegaConf.merge(_schema_template(), combined)  # type: ignore[return-value]
