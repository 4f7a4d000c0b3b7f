"""Every row count a config asks for, in integer arithmetic on the decimals it wrote.

Pure arithmetic on the config, so it lives here: compose checks the counts against the hub
datasets' sizes (antibody.config.sizes) before any work, and the data plan
(antibody.data.plan) allocates exactly these counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from antibody.config.attack import UploadKind, attack_spec
from antibody.config.schema import Config, FinetuneMethod, finetune_method


def floor_share(share: float, n: int) -> int:
    """floor(share * n) on the decimal the config wrote: 0.29 * 100 is 28.999999999999996
    in floats, but the user meant 29. repr() gives the shortest decimal that round-trips."""
    return math.floor(Fraction(repr(float(share))) * int(n))


def upload_rows(cfg: Config) -> tuple[int, str]:
    """The research upload's row count and the key that sets it: data.user.n for the task
    upload (poison and the attacks built on it), attack.n for an attack that replaces it
    (harmful_only, identity_shift)."""
    if attack_spec(cfg.attack.name).upload is UploadKind.TASK_POISON:
        return cfg.data.user.n, "data.user.n"
    return cfg.attack.n, "attack.n"


def safeinstr_count(cfg: Config) -> int:
    """SafeInstr's demonstrations: floor(share * the upload's rows); 0 when the method is not SafeInstr."""
    if finetune_method(cfg.method.finetune) is not FinetuneMethod.SAFEINSTR:
        return 0
    return floor_share(cfg.method.finetune.safeinstr.share, upload_rows(cfg)[0])


@dataclass
class SplitCounts:
    """Every row count the config asks for, in integer arithmetic."""

    eval_harmful: int
    eval_benign: int
    eval_task: int
    align_harmful: int
    align_prose: int
    align_task: int
    harmful: int
    user_harmful: int
    user_prose: int
    user_task: int
    eval_harmful_second: int = 0
    eval_benign_edgy: int = 0
    safeinstr: int = 0  # safety demonstrations taken from the alignment split's refusal rows
    user_persona: int = 0  # attack=identity_shift: its project-written conversations
    # attack=refusal_prefix: harmful rows the attacker holds out to choose its prefix on
    attack_held_out: int = 0

    @classmethod
    def from_config(cls, cfg: Config) -> SplitCounts:
        d = cfg.data
        user_harmful = floor_share(d.user.p, d.user.n)
        user_benign = d.user.n - user_harmful
        user_prose = floor_share(d.user.benign_prose_share, user_benign)
        user_persona = 0
        spec = attack_spec(cfg.attack.name)
        upload = spec.upload
        if upload is UploadKind.HARMFUL_ONLY:  # attack.n harmful rows and nothing else
            user_harmful, user_benign, user_prose = cfg.attack.n, 0, 0
        elif upload is UploadKind.PERSONA:  # attack.n persona conversations and nothing else
            user_harmful, user_benign, user_prose, user_persona = 0, 0, 0, cfg.attack.n
        if d.user.path:  # a provider's own upload (data/upload.py) replaces the research rows
            user_harmful = user_benign = user_prose = 0
        return cls(
            eval_harmful=d.eval.n_harmful,
            eval_benign=d.eval.n_benign,
            eval_task=d.eval.n_task,
            align_harmful=d.alignment.n_harmful,
            align_prose=floor_share(d.alignment.benign_prose_ratio, d.alignment.n_harmful),
            align_task=floor_share(d.alignment.benign_task_ratio, d.alignment.n_harmful),
            harmful=d.alignment.n_harmful_answers,
            user_harmful=user_harmful,
            user_prose=user_prose,
            user_task=user_benign - user_prose,
            eval_harmful_second=d.eval.n_harmful_second,
            eval_benign_edgy=d.eval.n_benign_edgy,
            safeinstr=safeinstr_count(cfg),
            user_persona=user_persona,
            attack_held_out=cfg.attack.held_out if "held_out" in spec.reads else 0,
        )
