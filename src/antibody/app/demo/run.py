"""`demo`: the whole attack-and-defence story on one config (default: the embedded model).

    python -m antibody demo [suite=main|controls|baselines] [overrides ...]
    python -m antibody study conf/study/demo.yaml --dry-run    # what a demo would train

Each suite is a study file (conf/study/demo.yaml, demo_controls.yaml, demo_baselines.yaml)
run by the study driver (app/study/run.py): evaluate the base model, align, fine-tune on the
same poisoned upload, evaluate every model; print the table, write `results.json` (or
`results_<suite>.json`) and a PNG bar chart (app/study/models.py).

Every job keeps the run dir the demo always gave it, `runs/<run.name>/<job>/`; a finished
job is reused on a second run (after checking it trained this config), so an interrupted
demo resumes where it stopped. The judge and the evaluation data are built once per
invocation. The folder is the experiment's `run.name` (demo; demo-quick for
`experiment=demo_quick`), so tiny sizes never mix with the full demo's cached jobs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from antibody.app.arguments import pop_arg
from antibody.config import ConfigError, compose
from antibody.config.study import StudyConfig, load_study

SUITES = {"main": "demo.yaml", "controls": "demo_controls.yaml", "baselines": "demo_baselines.yaml"}


def suite_file(suite: str) -> Path:
    from antibody.config.compose import default_conf_dir

    if suite not in SUITES:
        raise ConfigError(f"suite={suite}: choose one of {list(SUITES)}")
    return default_conf_dir() / "study" / SUITES[suite]


def demo_study(args: list[str]) -> tuple[StudyConfig, Path]:
    """The suite's study file with the command line applied: `suite=`, then `experiment=`
    (replaces the file's, e.g. demo_quick) and any other overrides (added to every job)."""
    suite, args = pop_arg(args, "suite")
    study = load_study(suite_file(suite or "main"))
    experiment, args = pop_arg(args, "experiment")
    study = dataclasses.replace(study, experiment=experiment or study.experiment, fixed=[*study.fixed, *args])
    base = compose([f"experiment={study.experiment}", *study.fixed])
    # the demo's folder is named by run.name (the study file's name is the default's, `demo`)
    study = dataclasses.replace(study, name=base.run.name)
    return study, Path(base.run.output_dir) / study.name


def demo_command(args: list[str]) -> int:
    from antibody.app.study.run import drive

    study, root = demo_study(args)
    return drive(study, root, where=f"demo suite={study.suite}")
