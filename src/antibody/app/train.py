"""`align` / `finetune` / `repair`: compose the config, run the stage, say where the run went.

The config is composed before antibody.app.stages is imported: that module loads torch
and Lightning (seconds), and a bad key must be reported at once.
"""

from __future__ import annotations

from antibody.app.rundir import RunDir
from antibody.config import Config, compose
from antibody.config.schema import Stage

FINISHED = {Stage.ALIGN: "alignment", Stage.FINETUNE: "fine-tuning", Stage.REPAIR: "repair"}


def run_stage(cfg: Config, stage: Stage) -> RunDir:
    """Any stage: the two that train (app/stages.py), or the repair stage (app/repair.py),
    which does not."""
    if stage is Stage.REPAIR:
        from antibody.app.repair import repair_stage

        return repair_stage(cfg)
    from antibody.app.stages import train_stage

    return train_stage(cfg, stage)


def stage_command(stage: Stage, overrides: list[str]) -> int:
    cfg = compose(overrides)
    run = run_stage(cfg, stage)
    print(f"[antibody] {FINISHED[stage]} finished: {run.path}")
    return 0


def align_command(overrides: list[str]) -> int:
    return stage_command(Stage.ALIGN, overrides)


def finetune_command(overrides: list[str]) -> int:
    return stage_command(Stage.FINETUNE, overrides)


def repair_command(overrides: list[str]) -> int:
    return stage_command(Stage.REPAIR, overrides)
