"""A study's cells and the jobs they need, each job keyed by a hash of what it trains.

A cell is (row, axis values, seed): align -> fine-tune -> (repair ->) evaluate. Jobs are shared:
- an alignment job is keyed by the resolved config with everything alignment does not read
  left out (the fine-tuning stage, the upload and its attack, evaluation settings, run
  bookkeeping), so cells that differ only in p, n, the attack or the fine-tuning method share
  one aligned model. That alignment never reads `data.user` or `attack` holds because the
  split builder serves the user's demands after the alignment and D_harm demands
  (`data/plan.py`, ALLOCATION_ORDER; `tests/test_study.py` and `tests/test_attacks.py` check
  the splits are equal);
- a fine-tuning job is keyed by its resolved config (the repair stage left out) and its
  alignment job's key, so cells that differ only in their repair share one fine-tuned model;
- a repair job (when the row's `repair` overrides or its fine-tuning config name a repair
  method) is keyed by its repair settings and its fine-tuning job's key;
- a model is evaluated once, in its job's run dir (`eval/`); a base-model row (`align:
  null`) trains nothing and is evaluated in `base-<key>` (the config without method,
  trainer, run and evaluation settings).
Run dirs are `runs/<study>/align-<key>`, `runs/<study>/ft-<key>` and `repair-<key>`, so a finished job is
found again by any later study or invocation with the same config. A row may name its run
dirs instead (config/study.py); a named job's config is checked against the finished run's
(study.train_job), since its name, unlike a key, does not say what it trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from antibody.config import Config, ConfigError, compose, to_yaml
from antibody.config.schema import Stage
from antibody.config.study import StudyConfig

KEY_CHARS = 12


def _blank(cfg: Config, **groups) -> Config:
    return dataclasses.replace(cfg, **groups)


def align_key(cfg: Config) -> str:
    """Hash of what an alignment run trains: the config without the fine-tuning and repair
    stages, the upload and the attack that builds it, the evaluation settings and the run's
    name, folder and init."""
    from antibody.config.schema import (
        AttackConfig,
        DataConfig,
        EvalConfig,
        FinetuneStageConfig,
        RepairStageConfig,
        RunConfig,
    )

    base = _blank(cfg, eval=EvalConfig(), attack=AttackConfig(),
                  run=RunConfig(seed=cfg.run.seed),
                  data=dataclasses.replace(cfg.data, user=DataConfig().user),
                  method=dataclasses.replace(cfg.method, finetune=FinetuneStageConfig(), repair=RepairStageConfig()))
    return hashlib.sha1(to_yaml(base).encode()).hexdigest()[:KEY_CHARS]


def finetune_key(cfg: Config, init_key: str) -> str:
    """Hash of what a fine-tuning run trains: its whole config (not its name, folder,
    evaluation settings or repair stage) and the alignment it starts from."""
    from antibody.config.schema import EvalConfig, RepairStageConfig, RunConfig

    base = _blank(cfg, eval=EvalConfig(), run=RunConfig(seed=cfg.run.seed),
                  method=dataclasses.replace(cfg.method, repair=RepairStageConfig()))
    return hashlib.sha1(f"{init_key}|{to_yaml(base)}".encode()).hexdigest()[:KEY_CHARS]


def repair_key(cfg: Config, init_key: str) -> str:
    """Hash of what a repair run does: its repair settings and the data and model it reads
    (the config without the other stages, evaluation and run bookkeeping), and the
    fine-tuning run it repairs."""
    from antibody.config.schema import AlignStageConfig, EvalConfig, FinetuneStageConfig, RunConfig

    base = _blank(cfg, eval=EvalConfig(), run=RunConfig(seed=cfg.run.seed),
                  method=dataclasses.replace(cfg.method, name="", align=AlignStageConfig(),
                                             finetune=FinetuneStageConfig()))
    return hashlib.sha1(f"{init_key}|{to_yaml(base)}".encode()).hexdigest()[:KEY_CHARS]


def model_key(cfg: Config) -> str:
    """Hash of what an untrained model's evaluation reads besides its settings: the model and
    the data (the evaluation prompts are drawn from the same pools as the training splits)."""
    from antibody.config.schema import EvalConfig, MethodConfig, RunConfig, TrainerConfig

    base = _blank(cfg, eval=EvalConfig(), run=RunConfig(), method=MethodConfig(), trainer=TrainerConfig())
    return hashlib.sha1(to_yaml(base).encode()).hexdigest()[:KEY_CHARS]


PREFIX = {Stage.ALIGN: "align", Stage.FINETUNE: "ft", Stage.REPAIR: "repair", None: "base"}


@dataclass(frozen=True)
class Job:
    stage: Optional[Stage]  # None: nothing to train (the base model, evaluated as it is)
    key: str
    overrides: tuple[str, ...]  # composed into the job's config (run dir and init included)
    init_from: Optional[str] = None  # the key of the job it starts from (alignment, fine-tuning)
    run_name: Optional[str] = None  # the row's explicit run-dir name; default: prefix and key
    # the overrides composed, once, when the study is planned: the driver, the dry run, the
    # reports and the trial entry read it instead of composing again (not part of equality)
    config: Optional[Config] = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.run_name or f"{PREFIX[self.stage]}-{self.key}"


@dataclass(frozen=True)
class Cell:
    row: str
    values: tuple[tuple[str, Any], ...]  # (axis key, value) in the study's axis order
    seed: int
    align: Optional[Job]  # None: the base model (`base`)
    finetune: Optional[Job]
    base: Optional[Job] = None
    repair: Optional[Job] = None  # after fine-tuning; None: the fine-tuned model is served as it is

    @property
    def model_job(self) -> Job:
        """The job whose model the cell evaluates."""
        job = self.repair or self.finetune or self.align or self.base
        assert job is not None, "a cell evaluates a model"
        return job

    def label(self) -> dict:
        return {"row": self.row, **{k: v for k, v in self.values}, "seed": self.seed}


def _value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _matches(row: str, values: tuple[tuple[str, Any], ...], seed: int, only: dict[str, str]) -> bool:
    label = {"row": row, **{k: _value(v) for k, v in values}, "seed": str(seed)}
    return all(label.get(k) == v for k, v in only.items())


def selected(cell: Cell, only: dict[str, str]) -> bool:
    """Whether `--only` (parse_only's {"row" | axis key | "seed": value}) selects the cell."""
    return _matches(cell.row, cell.values, cell.seed, only)


def plan(study: StudyConfig, root: Path, only: Optional[dict[str, str]] = None) -> list[Cell]:
    """Every cell of the study (those matching `only`: {"row" | axis key | "seed": value}),
    with its jobs; composing each job's config validates every override first."""
    keys = list(study.axes)
    cells: list[Cell] = []
    planned: dict[tuple, Job] = {}  # rows sharing an alignment compose it once

    def _job(stage: Optional[Stage], overrides: list[str], name: Optional[str], init_from: Optional[str] = None) -> Job:
        key = (stage, tuple(overrides), name, init_from)
        if key not in planned:
            planned[key] = _new_job(stage, overrides, name, init_from)
        return planned[key]

    for row_name, row in study.rows.items():
        for combo in itertools.product(*(study.axes[k] for k in keys)):
            values = tuple(zip(keys, combo, strict=True))
            for seed in study.seeds:
                if only and not _matches(row_name, values, seed, only):
                    continue
                # `experiment` may be an axis (model x task tables): it comes first, as a group must
                experiment = dict(values).get("experiment", study.experiment)
                base = ([f"experiment={experiment}"] if experiment else []) + list(study.fixed)
                axis = [f"{k}={_value(v)}" for k, v in values if k != "experiment"]
                common = [*base, *axis, f"run.seed={seed}", f"run.output_dir={root}"]
                if row.align is None:
                    cells.append(Cell(row_name, values, seed, None, None, base=_job(None, common, row.name)))
                    continue
                a_name = row.name if row.finetune is None else row.align_name
                align = _job(Stage.ALIGN, [*common, *row.align], a_name)
                finetune = repair = None
                if row.finetune is not None:
                    f_over = [*common, *row.finetune, f"run.init_from={root / align.name}"]
                    finetune = _job(Stage.FINETUNE, f_over, None, init_from=align.key)
                    repairs = _repairs(row.repair, job_config(finetune))
                    if row.name and not repairs:  # the row's name is its model's: the fine-tuned one
                        finetune = _job(Stage.FINETUNE, f_over, row.name, init_from=align.key)
                    if repairs:
                        r_over = [*common, *row.finetune, *(row.repair or []), f"run.init_from={root / finetune.name}"]
                        repair = _job(Stage.REPAIR, r_over, row.name, init_from=finetune.key)
                cells.append(Cell(row_name, values, seed, align, finetune, repair=repair))
    _check_names(cells)
    return cells


def _repairs(overrides: Optional[list[str]], finetune: Config) -> bool:
    """Whether a row has a repair job: its `repair` overrides are given, or its fine-tuning
    config names a repair method (a conf/method file of a combination)."""
    from antibody.config.schema import RepairMethod

    return overrides is not None or finetune.method.repair.method is not RepairMethod.NONE


def _new_job(stage: Optional[Stage], overrides: list[str], name: Optional[str],
             init_from: Optional[str] = None) -> Job:
    from antibody.config.validate import validate

    cfg = compose(overrides)
    key = (align_key(cfg) if stage is Stage.ALIGN else finetune_key(cfg, init_from or "") if stage is Stage.FINETUNE
           else repair_key(cfg, init_from or "") if stage is Stage.REPAIR else model_key(cfg))
    job = Job(stage, key, (), init_from=init_from, run_name=name)
    # the run name is the last override, and no key depends on it: set it on the composed config
    named = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=job.name))
    validate(named)
    return dataclasses.replace(job, overrides=(*overrides, f"run.name={job.name}"), config=named)


def stage_method(cfg: Config, stage: Stage) -> str:
    """The method a job of ``stage`` runs (the fine-tuning one as its weighting names it)."""
    from antibody.config.schema import finetune_method

    if stage is Stage.REPAIR:
        return cfg.method.repair.method.value
    return cfg.method.align.method.value if stage is Stage.ALIGN else finetune_method(cfg.method.finetune).value


def job_config(job: Job) -> Config:
    """The job's resolved config, composed when ``plan`` made the job (the only maker of jobs)."""
    assert job.config is not None, f"job {job.name} was not made by plan()"
    return job.config


def _check_names(cells: list[Cell]) -> None:
    """One run dir per job and one job per run dir: rows that name their run dirs must give
    a shared job (same config) one name, and different jobs different names."""
    names: dict[tuple, set[str]] = {}
    keys: dict[str, set[tuple]] = {}
    for cell in cells:
        for job in (cell.align, cell.finetune, cell.repair, cell.base):
            if job is not None:
                names.setdefault((job.stage, job.key), set()).add(job.name)
                keys.setdefault(job.name, set()).add((job.stage, job.key))
    for (stage, key), found in names.items():
        if len(found) > 1:
            raise ConfigError(f"study: one {PREFIX[stage]} job (key {key}) is given several run dirs {sorted(found)}; "
                              "rows sharing a job must name it alike")
    for name, found in keys.items():
        if len(found) > 1:
            raise ConfigError(f"study: run dir {name!r} is named for {len(found)} different jobs; "
                              "each job needs its own name")


def jobs_of(cells: list[Cell]) -> list[Job]:
    """Every distinct job, alignments first, then fine-tunings, then repairs (each once, in
    the cells' order)."""
    out: dict[str, Job] = {}
    for stage in (Stage.ALIGN, Stage.FINETUNE, Stage.REPAIR):
        for cell in cells:
            job = {Stage.ALIGN: cell.align, Stage.FINETUNE: cell.finetune, Stage.REPAIR: cell.repair}[stage]
            if job is not None:
                out.setdefault(job.name, job)
    return list(out.values())


def parse_only(text: Optional[str], study: StudyConfig) -> Optional[dict[str, str]]:
    """`--only row=sft,p=0.2` -> {"row": "sft", "data.user.p": "0.2"}: keys are `row`,
    `seed` or an axis, named in full or by its last part when that is unambiguous."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not key:
            raise ConfigError(f"--only {text!r}: expected key=value[,key=value...]")
        if key not in ("row", "seed") and key not in study.axes:
            matches = [a for a in study.axes if a.rsplit(".", 1)[-1] == key]
            if len(matches) != 1:
                allowed = ["row", "seed", *study.axes]
                raise ConfigError(f"--only {key}={value}: {key!r} is not a unique row/seed/axis; allowed: {allowed}")
            key = matches[0]
        if key == "row" and value not in study.rows:
            raise ConfigError(f"--only row={value}: no such row; rows: {sorted(study.rows)}")
        out[key] = value
    return out
