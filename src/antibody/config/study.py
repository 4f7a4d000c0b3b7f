"""A study file (`conf/study/<name>.yaml`): named method rows x axes x seeds.

    name: embedded_main            # runs/<name>/ holds every job and the results
    experiment: demo               # the experiment every cell starts from (optional)
    fixed: [data.user.n=200]       # overrides of every job
    reference: sft -> sft          # the row the paired comparisons are against
    seeds: [1, 2, 3]               # run.seed of every job of a cell
    axes:                          # the cartesian product of these values, per row
      data.user.p: [0.05, 0.1, 0.2]
    rows:
      sft -> sft:
        align: [method.align.method=sft]
        finetune: [method.finetune.weighting=uniform]
      sft alignment alone:
        align: [method.align.method=sft]
        finetune: null             # the aligned model is evaluated as it is

Unknown keys are refused with file and line, like every config group; each cell's
overrides are composed (and so validated) before any job runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from antibody.config.errors import ConfigError


@dataclass
class StudyRow:
    align: list[str] = field(default_factory=list)  # overrides of the alignment job
    # overrides of the fine-tuning job; None: no fine-tuning (the aligned model is the cell's model)
    finetune: Optional[list[str]] = field(default_factory=list)


@dataclass
class StudyConfig:
    name: str = ""
    experiment: Optional[str] = None
    fixed: list[str] = field(default_factory=list)
    reference: Optional[str] = None
    seeds: list[int] = field(default_factory=lambda: [42])
    axes: dict[str, list[Any]] = field(default_factory=dict)
    rows: dict[str, StudyRow] = field(default_factory=dict)


def load_study(path: Path) -> StudyConfig:
    """The study file, checked: known keys only (file:line of the first unknown one), a
    name, at least one row and seed, every axis with values, the reference among the rows."""
    from antibody.config.compose import check_keys, read_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} not found")
    data, lines = read_yaml(path)
    check_keys(data, StudyConfig, "", str(path), lines)
    for name, row in (data.get("rows") or {}).items():
        if isinstance(row, dict):
            check_keys(row, StudyRow, f"rows.{name}", str(path), lines, ("rows", str(name)))
    try:
        study: StudyConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudyConfig), data))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {exc.msg}") from None
    if not study.name or "/" in study.name:
        raise ConfigError(f"{path}: `name` must be a non-empty name without '/' (it names runs/<name>/)")
    if not study.rows:
        raise ConfigError(f"{path}: `rows` is empty; name at least one method row")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"{path}: `seeds` must be a non-empty list of distinct integers, got {study.seeds}")
    for key, values in study.axes.items():
        if not values:
            raise ConfigError(f"{path}: axis {key!r} has no values")
    if study.reference is not None and study.reference not in study.rows:
        raise ConfigError(f"{path}: reference {study.reference!r} is not a row; rows: {sorted(study.rows)}")
    return study
