"""`align` / `finetune`: compose the config, train the stage, say where the run went.

The config is composed before antibody.app.stages is imported: that module loads torch
and Lightning (seconds), and a bad key must be reported at once.
"""

from __future__ import annotations

from antibody.config import compose
from antibody.config.schema import Stage

FINISHED = {Stage.ALIGN: "alignment", Stage.FINETUNE: "fine-tuning"}


def stage_command(stage: Stage, overrides: list[str]) -> int:
    cfg = compose(overrides)
    from antibody.app.stages import train_stage

    run = train_stage(cfg, stage)
    print(f"[antibody] {FINISHED[stage]} finished: {run.path}")
    return 0


def align_command(overrides: list[str]) -> int:
    return stage_command(Stage.ALIGN, overrides)


def finetune_command(overrides: list[str]) -> int:
    return stage_command(Stage.FINETUNE, overrides)
