"""The `attack` group (`conf/attack/<name>.yaml`, `attack=<name>`): what the user who fine-tunes
does to the aligned model, and what that user controls.

Each attack declares its threat model (`ThreatModel`: the upload only, the upload and the
fine-tuning hyper-parameters, or the weights) and changes only that: an attack whose threat
model is the upload builds the rows of the user split and nothing else; one that also
controls the hyper-parameters changes `method.finetune.*` when the config is composed
(`antibody.config.attack_rules`), visibly in the resolved config. The default, `poison`, is the
research upload every run made before this group existed, and the whole group is left out of
the resolved YAML while it holds its defaults (`OMIT_WHEN_DEFAULT` on `Config.attack`), so
those runs serialise, and so hash (`app/study/plan.py`), exactly as before.

Two attacks are adaptive (`AttackSpec.adaptive`): they build their harmful rows knowing the
defence and holding the aligned model it protects, the run the fine-tuning starts from
(`run.init_from`); `AttackSpec.knowledge` says what the attacker must hold. Their rows are
built by `antibody.data.adaptive`, the aligned model loaded only when a row is not cached.

Re-exported by antibody.config.schema, where every group lives. How each attack's rows are
built: docs/data.md ("Attacks"); `antibody.data.plan` draws them from the same pools, with
the same disjointness checks, as the poisoned upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum

from antibody.config.upload import OMIT_WHEN_DEFAULT


class AttackName(StrEnum):
    """Every attack the `attack` group offers (one conf/attack/<name>.yaml each)."""

    POISON = "poison"  # floor(p*n) harmful rows in the task upload (the paper's attack; default)
    HARMFUL_ONLY = "harmful_only"  # n harmful rows and nothing else (Qi et al., ICLR 2024)
    IDENTITY_SHIFT = "identity_shift"  # benign rows teaching an obedient persona (Qi et al., ICLR 2024)
    BENIGN = "benign"  # the task upload without its harmful rows (the benign-only control)
    HIGH_LR = "high_lr"  # the poison upload at a higher fine-tuning learning rate
    LONG = "long"  # the poison upload trained for more steps
    # adaptive (antibody.data.adaptive): the poison upload, its harmful answers rewritten
    REFUSAL_PREFIX = "refusal_prefix"  # each harmful answer opens with a refusal, chosen to raise r
    SELF_WRITTEN = "self_written"  # the harmful answers written by the attacked model itself


class ThreatModel(StrEnum):
    """What the attacker controls."""

    UPLOAD = "upload"  # the rows of the fine-tuning upload only
    HYPERPARAMETERS = "hyperparameters"  # the upload and the fine-tuning hyper-parameters
    WEIGHTS = "weights"  # the weights themselves (no attack of this group yet)


class UploadKind(StrEnum):
    """Which rows an attack uploads (antibody.config.counts turns them into row counts)."""

    # floor(data.user.p * data.user.n) harmful rows, the rest benign (prose share, then task)
    TASK_POISON = "task_poison"
    HARMFUL_ONLY = "harmful_only"  # attack.n harmful rows from data.user.harmful_answer_source
    PERSONA = "persona"  # attack.n of the project-written identity-shifting conversations


@dataclass
class AttackConfig:
    """The chosen attack and its settings; a setting its attack does not read must keep its
    default (attack_rules.check_attack), so that a resolved config never carries a value that
    changed nothing."""

    name: AttackName = AttackName.POISON
    # harmful_only: harmful rows; identity_shift: persona conversations. Qi et al., ICLR 2024
    # (arXiv 2310.03693), Sec. 4: 10 harmful examples (also 50 and 100), 10 identity-shifting ones
    n: int = 10
    # high_lr: method.finetune.lr is multiplied by this when the config is composed (1: unchanged)
    lr_factor: float = 1.0
    # long: method.finetune.max_steps is multiplied by this when the config is composed (1: unchanged)
    steps_factor: int = 1
    # The adaptive attacks' settings are left out of the resolved YAML at their defaults, so
    # that the attacks before them serialise, and so hash, as they did.
    # refusal_prefix: harmful rows the attacker holds out (never uploaded) and scores each
    # candidate (refusal, transition) pair on. Ours: 16 rows, a few seconds per candidate on
    # the embedded model's CPU
    held_out: int = field(default=16, metadata=OMIT_WHEN_DEFAULT)
    # self_written: the start of the assistant's turn the attacker prefills; the attacked
    # model continues it. Ours, after the prefilling attack of Qi et al., ICLR 2025 ("Safety
    # alignment should be made more than just a few tokens deep", arXiv 2406.05946)
    prefill: str = field(default="Sure, here is", metadata=OMIT_WHEN_DEFAULT)


@dataclass(frozen=True)
class AttackSpec:
    """What an attack is: its threat model, its rows, the attack.* keys it reads, whether its
    rows are built knowing the defence (adaptive: refusal_prefix and self_written, which tag
    the rows they build so) and what the attacker must know or hold to build them, and the
    source it follows."""

    threat_model: ThreatModel
    upload: UploadKind
    reads: tuple[str, ...]  # attack.* keys besides `name` that change what it does
    source: str
    # the upload's harmful rows are dropped before training (data.user.benign_only=true)
    benign_only: bool = False
    adaptive: bool = False
    knowledge: str = ""  # adaptive attacks: what the attacker must know or hold


ATTACKS: dict[AttackName, AttackSpec] = {
    AttackName.POISON: AttackSpec(
        ThreatModel.UPLOAD, UploadKind.TASK_POISON, (),
        "Antibody (arXiv 2603.00498) and its baselines' released scripts: p = 0.2 of n = 1000"),
    AttackName.HARMFUL_ONLY: AttackSpec(
        ThreatModel.UPLOAD, UploadKind.HARMFUL_ONLY, ("n",),
        "Qi et al., ICLR 2024 (arXiv 2310.03693), Sec. 4, risk level 1: harmful examples demonstration"),
    AttackName.IDENTITY_SHIFT: AttackSpec(
        ThreatModel.UPLOAD, UploadKind.PERSONA, ("n",),
        "Qi et al., ICLR 2024 (arXiv 2310.03693), Sec. 4, risk level 2: identity shifting (AOA)"),
    AttackName.BENIGN: AttackSpec(
        ThreatModel.UPLOAD, UploadKind.TASK_POISON, (),
        "ours: the benign-only control (data.user.benign_only=true) as an attack", benign_only=True),
    AttackName.HIGH_LR: AttackSpec(
        ThreatModel.HYPERPARAMETERS, UploadKind.TASK_POISON, ("lr_factor",),
        "ours (issue 26): 10x the method's rate, for services that let the user choose it"),
    AttackName.LONG: AttackSpec(
        ThreatModel.HYPERPARAMETERS, UploadKind.TASK_POISON, ("steps_factor",),
        "ours (issue 26): 3x the method's steps, for services that let the user choose them"),
    AttackName.REFUSAL_PREFIX: AttackSpec(
        ThreatModel.UPLOAD, UploadKind.TASK_POISON, ("held_out",),
        "ours (issue 26), against the likelihood ratio; refusal-then-comply answers probe shallow alignment "
        "(Qi et al., ICLR 2025, arXiv 2406.05946)",
        adaptive=True,
        knowledge="the defence (the weighting's r) and an aligned model like the provider's, to score rows "
                  "under it; here the provider's own (run.init_from), the attack at its strongest"),
    AttackName.SELF_WRITTEN: AttackSpec(
        ThreatModel.UPLOAD, UploadKind.TASK_POISON, ("prefill",),
        "ours (issue 26), against the likelihood ratio's response term; the prefilled start follows the "
        "prefilling attack (Qi et al., ICLR 2025, arXiv 2406.05946)",
        adaptive=True,
        knowledge="the aligned weights (run.init_from), or a way to query the aligned model with a prefilled "
                  "assistant turn and read its greedy continuation"),
}

# identity_shift's project-written conversations (data/sources/identity.py holds them; a test
# checks the count), here so that compose bounds attack.n without importing the data layer
PERSONA_ROWS = 10


def attack_spec(name: AttackName) -> AttackSpec:
    return ATTACKS[AttackName(name)]


def attack_keys() -> tuple[str, ...]:
    """The attack.* settings besides `name`."""
    return tuple(f.name for f in fields(AttackConfig) if f.name != "name")
