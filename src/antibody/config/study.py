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
      sft -> sft -> antidote:
        align: [method.align.method=sft]
        finetune: [method.finetune.weighting=uniform]
        repair: [method.repair.method=antidote]   # the repaired model is evaluated
      sft alignment alone:
        align: [method.align.method=sft]
        finetune: null             # the aligned model is evaluated as it is
      base model:
        align: null                # nothing trained: the base model is evaluated
        finetune: null

Run dirs are named by config hashes; a row may name them instead (`name`: the run dir of
the model it evaluates, `align_name`: of its alignment when it fine-tunes), so that run
dirs written before the study existed (the demo's `runs/demo/align-sft`) are found again.
Names need one cell per row (one seed, one value per axis). Optional parts (the last two
for the demo's study files, `conf/study/demo*.yaml`):

    comparisons:                   # named paired differences: metric of row a - row b, cell
      - {question: attack, a: sft -> sft, b: sft alignment alone, metric: harmful/harmful_score}
                                   # by cell (same axis values and seed), then over seeds
    probe_aligned: true            # the sharpness probe on every aligned model it evaluates
    suite: main                    # results per model, as the demo's tables
    utility_margin: 5.0            # with an `attack` axis: FA points for the utility-bounded
                                   # worst case (study/stress.py; conf/study/stress.yaml)

Unknown keys are refused with file and line, like every config group; each cell's
overrides are composed (and so validated) before any job runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from antibody.config.errors import ConfigError


@dataclass
class StudyRow:
    # overrides of the alignment job; None: no alignment (the base model, with no fine-tuning)
    align: Optional[list[str]] = field(default_factory=list)
    # overrides of the fine-tuning job; None: no fine-tuning (the aligned model is the cell's model)
    finetune: Optional[list[str]] = field(default_factory=list)
    # overrides of a repair job after the fine-tuning (e.g. [method.repair.method=antidote]);
    # None: a repair only if the fine-tuning config names one (a conf/method combination)
    repair: Optional[list[str]] = None
    name: Optional[str] = None  # run dir of the model the row evaluates (default: its hash key)
    align_name: Optional[str] = None  # run dir of its alignment, when the row also fine-tunes


@dataclass
class StudyComparison:
    """A question answered by a paired difference on the same evaluation prompts: `metric` of
    row `a`'s model minus row `b`'s, cell by cell (same axis values and seed). `{task}` in the
    metric stands for the accuracy task of the cell (`{task}/accuracy`)."""

    question: str = ""
    a: str = ""
    b: str = ""
    metric: str = "harmful/harmful_score"


@dataclass
class StudyPaper:
    """A published result the study is set beside: HS (and FA) per row, in %, at the axis
    values `at` (the study's cells compared), from `source` in `setting`. The report compares
    the orderings, and says for each row whether it separates from the reference at all."""

    source: str = ""
    setting: str = ""
    at: dict[str, Any] = field(default_factory=dict)
    hs: dict[str, float] = field(default_factory=dict)
    fa: dict[str, float] = field(default_factory=dict)


@dataclass
class StudyConfig:
    name: str = ""
    experiment: Optional[str] = None
    fixed: list[str] = field(default_factory=list)
    reference: Optional[str] = None
    seeds: list[int] = field(default_factory=lambda: [42])
    axes: dict[str, list[Any]] = field(default_factory=dict)
    rows: dict[str, StudyRow] = field(default_factory=dict)
    comparisons: list[StudyComparison] = field(default_factory=list)
    probe_aligned: bool = False  # sharpness probe (methods.sharpness_probe) of each aligned model
    # a part of the demo (main, controls, baselines): results one line per model in
    # results.json (main) or results_<suite>.json, the block `report` fills on docs/results/
    suite: Optional[str] = None
    paper: Optional[StudyPaper] = None
    # a study with an `attack` axis reports each row's worst case over the attacks and, so that
    # an attack which destroys the model does not count as a win, the worst case over the
    # attacks whose mean FA is at most this many points below the row's FA under `benign`
    # (ours, not calibrated: 5 points; FA's seed std at demo sizes is 0-1.2 points,
    # docs/results/embedded-main.md)
    utility_margin: float = 5.0


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
    if isinstance(data.get("paper"), dict):
        check_keys(data["paper"], StudyPaper, "paper", str(path), lines, ("paper",))
    for i, comparison in enumerate(data.get("comparisons") or []):
        if isinstance(comparison, dict):
            check_keys(comparison, StudyComparison, f"comparisons[{i}]", str(path))
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
    _check_rows(study, path)
    for c in study.comparisons:
        for side in (c.a, c.b):
            if side not in study.rows:
                raise ConfigError(f"{path}: comparison {c.question!r}: {side!r} is not a row; rows: {sorted(study.rows)}")
        if "/" not in c.metric:
            raise ConfigError(f"{path}: comparison {c.question!r}: metric {c.metric!r} is not <task>/<metric>")
    if study.paper is not None:
        _check_paper(study, path)
    if not 0.0 <= study.utility_margin <= 100.0:
        raise ConfigError(f"{path}: utility_margin {study.utility_margin} must be in [0, 100] (FA points)")
    if study.suite is not None and not study.suite.isidentifier():
        raise ConfigError(f"{path}: suite {study.suite!r} must be a plain word (it names results_<suite>.json)")
    return study


def _check_rows(study: StudyConfig, path: Path) -> None:
    """A base-model row trains nothing; explicit run-dir names only where one cell per row
    makes them unique."""
    named = [n for n, r in study.rows.items() if r.name or r.align_name]
    cells_per_row = len(study.seeds) * math.prod(len(v) for v in study.axes.values())
    if named and cells_per_row > 1:
        raise ConfigError(f"{path}: rows {named} name their run dirs, which needs one cell per row "
                          f"(one seed, one value per axis); this study has {cells_per_row}")
    for name, row in study.rows.items():
        if row.align is None and row.finetune is not None:
            raise ConfigError(f"{path}: row {name!r}: `align: null` (the base model) needs `finetune: null`")
        if row.repair is not None and row.finetune is None:
            raise ConfigError(f"{path}: row {name!r}: `repair` repairs a fine-tuned model; this row has `finetune: null`")
        if row.align_name and row.finetune is None:
            raise ConfigError(f"{path}: row {name!r}: `align_name` names the alignment of a fine-tuned "
                              "model; this row's model is its alignment, so name it with `name`")


def _check_paper(study: StudyConfig, path: Path) -> None:
    paper = study.paper
    for part in ("hs", "fa"):
        for row in getattr(paper, part):
            if row not in study.rows:
                raise ConfigError(f"{path}: paper.{part}: {row!r} is not a row; rows: {sorted(study.rows)}")
    for key, value in paper.at.items():
        if key not in study.axes or value not in study.axes[key]:
            raise ConfigError(f"{path}: paper.at: {key}={value} is not a value of the study's axes {study.axes}")
    if len(paper.hs) < 2:
        raise ConfigError(f"{path}: paper.hs needs at least two rows to compare an ordering")
