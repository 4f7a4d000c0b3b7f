"""The allocation plan: which rows each split demands, from which pools, in which order.

A plan is pure arithmetic on the config: `SplitCounts` (antibody.config.counts, where
compose's size check reads it too) turns the data.* keys into row counts (integer
arithmetic on the decimals the config wrote), and `plan_demands` lists one
`Demand` per (split, part) with the config key to name when its pool is too small. The
builder (`antibody.data.builder`) serves the demands in `ALLOCATION_ORDER`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from antibody.config.attack import UploadKind, attack_spec
from antibody.config.counts import SplitCounts, floor_share
from antibody.config.schema import Config, FinetuneMethod, SourceName, Stage, finetune_method
from antibody.data.records import Record
from antibody.data.sources import source_spec


class Split(StrEnum):
    ALIGNMENT = "alignment"
    HARMFUL = "harmful"
    USER = "user"
    USER_BENIGN_ONLY = "user_benign_only"
    USER_SAFEINSTR = "user_safeinstr"
    USER_SAFEINSTR_BENIGN_ONLY = "user_safeinstr_benign_only"
    EVAL_HARMFUL = "eval_harmful"
    EVAL_BENIGN = "eval_benign"
    EVAL_TASK = "eval_task"
    EVAL_HARMFUL_SECOND = "eval_harmful_second"  # another style of harmful request (optional)
    EVAL_BENIGN_EDGY = "eval_benign_edgy"  # benign prompts that sound sensitive (optional)
    # attack=refusal_prefix: harmful rows the attacker holds out and scores its candidates
    # on (antibody.data.adaptive); never uploaded, trained on or evaluated
    ATTACK_HELD_OUT = "attack_held_out"


EVAL_SPLITS = (Split.EVAL_HARMFUL, Split.EVAL_BENIGN, Split.EVAL_TASK, Split.EVAL_HARMFUL_SECOND,
               Split.EVAL_BENIGN_EDGY)
# Splits made of other splits' rows (a control, SafeInstr's mix): they share prompts with
# their parents by design, so only their disjointness from evaluation is checked.
DERIVED_SPLITS = (Split.USER_BENIGN_ONLY, Split.USER_SAFEINSTR, Split.USER_SAFEINSTR_BENIGN_ONLY)
# Splits that must not be empty; user_benign_only is empty when p = 1, which is legal, and
# the SafeInstr splits are built only when method.finetune.method=safeinstr.
REQUIRED_SPLITS = (Split.ALIGNMENT, Split.HARMFUL, Split.USER, Split.EVAL_HARMFUL, Split.EVAL_BENIGN, Split.EVAL_TASK)
# The training stream of each stage (before the controls and SafeInstr: train_split_for).
STAGE_TRAIN_SPLIT = {Stage.ALIGN: Split.ALIGNMENT, Stage.FINETUNE: Split.USER}

# Spare prompts reserved per model-written split: 10% + 2 (ours). The base SmolLM2 declines
# 0-2% of harmful prompts (docs/data.md) and the sources drop declined/empty answers.
GENERATION_SPARE = (0.1, 2)
# Rows tagged with one of these meta["split"] values (hub test/validation splits) are never
# trained on; the task's tagged rows are the only candidates for eval_task.
HELD_OUT_SPLIT_TAGS = frozenset({"test", "validation", "eval"})


def train_split_for(cfg: Config, stage: Stage) -> Split:
    """The split a stage trains on, as the config says.

    Fine-tuning: the upload (the attack's rows: config/attack.py); under
    method.finetune.method=safeinstr the upload with the safety demonstrations mixed in;
    data.user.benign_only (which attack=benign sets) drops the user's harmful rows
    from either (for SafeInstr, its demonstrations stay: they are the provider's, not the
    user's, so the control differs from the SafeInstr run in the harmful rows only).
    """
    if Stage(stage) is not Stage.FINETUNE:
        return STAGE_TRAIN_SPLIT[Stage(stage)]
    safeinstr = finetune_method(cfg.method.finetune) is FinetuneMethod.SAFEINSTR
    benign_only = cfg.data.user.benign_only
    return {
        (False, False): Split.USER,
        (False, True): Split.USER_BENIGN_ONLY,
        (True, False): Split.USER_SAFEINSTR,
        (True, True): Split.USER_SAFEINSTR_BENIGN_ONLY,
    }[(safeinstr, benign_only)]


def spare(count: int) -> int:
    return math.ceil(count * GENERATION_SPARE[0]) + GENERATION_SPARE[1] if count else 0


def held_out(rec: Record) -> bool:
    return str(rec.meta.get("split", "")).lower() in HELD_OUT_SPLIT_TAGS


class PoolKind(StrEnum):
    HARMFUL_PROMPT_EVAL = "harmful prompts"
    HARMFUL_PROMPT = "harmful training prompts"
    HARMFUL_ANSWER = "harmful (prompt, answer) pairs"
    BENIGN_PROMPT_EVAL = "benign prompts"
    BENIGN_PROMPT = "benign training prompts"
    TASK_TRAIN = "task training rows"
    TASK_HELD_OUT = "held-out task rows (meta split test/validation/eval)"
    TASK_EVAL = "task rows with a target"
    BENIGN_ANSWER = "benign (prompt, answer) pairs"


POOL_FILTERS: dict[PoolKind, Callable[[Record], bool]] = {
    PoolKind.HARMFUL_PROMPT_EVAL: lambda r: r.is_harmful,
    PoolKind.HARMFUL_PROMPT: lambda r: r.is_harmful and not held_out(r),
    PoolKind.HARMFUL_ANSWER: lambda r: r.is_harmful and bool(r.response.strip()) and not held_out(r),
    PoolKind.BENIGN_PROMPT_EVAL: lambda r: not r.is_harmful,
    PoolKind.BENIGN_PROMPT: lambda r: not r.is_harmful and not held_out(r),
    PoolKind.TASK_TRAIN: lambda r: not r.is_harmful and bool(r.response.strip()) and not held_out(r),
    PoolKind.TASK_HELD_OUT: lambda r: not r.is_harmful and r.target is not None and held_out(r),
    PoolKind.TASK_EVAL: lambda r: not r.is_harmful and r.target is not None,
    PoolKind.BENIGN_ANSWER: lambda r: not r.is_harmful and bool(r.response.strip()) and not held_out(r),
}


@dataclass(kw_only=True)
class Demand:
    """`count` rows for `split` from `sources`; `key`/`value` name the config in errors."""

    split: Split
    sources: tuple[SourceName, ...]
    kind: PoolKind
    count: int
    key: str
    value: object
    one_per_prompt: bool = False  # prompt sets (eval, refusal targets): one row per prompt
    may_share: frozenset = frozenset()
    excludable: bool = False  # excluded prompts (e.g. a judge's training set) are skipped
    answered_by: Optional[SourceName] = None  # model-written source answering the prompts
    # answers the reserved prompts instead of a source: (prompts, drop counts) -> rows
    # (attack=self_written: the attacked model, antibody.data.adaptive)
    answer_with: Optional[Callable[[list[Record], dict], list[Record]]] = None
    max_value: Optional[Callable[[int], str]] = None  # largest valid `key` given the pool

    @property
    def model_written(self) -> bool:
        """Its prompts are reserved first and answered by a model once every check passed."""
        return self.answered_by is not None or self.answer_with is not None


def largest_n(n: int, needed: Callable[[int], int], available: int) -> int:
    """Largest n' <= n whose demand `needed(n')` fits `available` (demands grow with n)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if needed(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


# Order in which demands are served (see antibody.data.builder): evaluation first, so its
# prompts do not move when training settings change; then the provider's splits; then the
# user's upload.
ALLOCATION_ORDER = (
    "eval_harmful",
    "eval_task",
    "eval_benign",
    "align_harmful",
    "align_task",
    "align_prose",
    "harmful",
    "user_harmful",
    "user_task",
    "user_prose",
    # an attack's own rows (attack=identity_shift): after the research upload's, so that the
    # default attack's allocation is what it was before attacks existed
    "user_persona",
    # last: optional evaluation sets from their own sources; drawn after every other demand,
    # so that turning them on changes no other split (a prompt a training split holds is
    # skipped, which keeps them held out)
    "eval_harmful_second",
    "eval_benign_edgy",
    # the attacker's own held-out rows (attack=refusal_prefix), after everything else, so
    # that they change no split of any run, evaluation included
    "attack_held_out",
)


def _answer_demand(source: SourceName, **kw) -> Demand:
    """Rows of a harmful-answer source: a model-written source reserves prompts now (from
    the sources it answers) and is answered later; a file-backed one gives its pairs."""
    spec = source_spec(source)
    if spec.model_written:
        sources = spec.prompt_sources or (source,)
        return Demand(sources=sources, kind=PoolKind.HARMFUL_PROMPT, one_per_prompt=True, answered_by=source, **kw)
    return Demand(sources=(source,), kind=PoolKind.HARMFUL_ANSWER, **kw)


def plan_demands(cfg: Config, counts: SplitCounts) -> dict[str, Demand]:
    """One Demand per name of ALLOCATION_ORDER."""
    d, c, task = cfg.data, counts, cfg.task.name
    a, u = d.alignment, d.user
    user_value = f"{u.n} (p={u.p}, benign_prose_share={u.benign_prose_share})"

    def user_max(part: Callable[[int], int]) -> Callable[[int], str]:
        return lambda avail: str(largest_n(u.n, part, avail))

    def user_harmful(n: int) -> int:
        return floor_share(u.p, n)

    def user_prose(n: int) -> int:
        return floor_share(u.benign_prose_share, n - floor_share(u.p, n))

    def user_task(n: int) -> int:
        return n - floor_share(u.p, n) - user_prose(n)

    def ratio_max(avail: int) -> str:
        return f"{avail / a.n_harmful:.4g} (at data.alignment.n_harmful={a.n_harmful})"

    def same(avail: int) -> str:
        return str(avail)

    shares_alignment = a.harmful_answer_source in a.harmful_prompt_sources
    prose = (SourceName.BENIGN_PROSE,)
    user = {"split": Split.USER, "key": "data.user.n", "value": user_value}
    user_harmful_max = user_max(user_harmful)
    if attack_spec(cfg.attack.name).upload is not UploadKind.TASK_POISON:
        # harmful_only, identity_shift: attack.n rows and nothing else; errors name attack.n
        user_harmful_max = same
        user = {"split": Split.USER, "key": "attack.n", "value": f"{cfg.attack.n} (attack={cfg.attack.name.value})"}
    return {
        "eval_harmful": Demand(
            split=Split.EVAL_HARMFUL, sources=tuple(d.eval.harmful_prompt_sources),
            kind=PoolKind.HARMFUL_PROMPT_EVAL, count=c.eval_harmful, key="data.eval.n_harmful",
            value=d.eval.n_harmful, one_per_prompt=True, excludable=True, max_value=same,
        ),
        "eval_task": Demand(
            split=Split.EVAL_TASK, sources=(task,), kind=PoolKind.TASK_HELD_OUT, count=c.eval_task,
            key="data.eval.n_task", value=d.eval.n_task, one_per_prompt=True, max_value=same,
        ),
        "eval_benign": Demand(
            split=Split.EVAL_BENIGN, sources=prose, kind=PoolKind.BENIGN_PROMPT_EVAL, count=c.eval_benign,
            key="data.eval.n_benign", value=d.eval.n_benign, one_per_prompt=True, max_value=same,
        ),
        "align_harmful": Demand(
            split=Split.ALIGNMENT, sources=tuple(a.harmful_prompt_sources), kind=PoolKind.HARMFUL_PROMPT,
            count=c.align_harmful, key="data.alignment.n_harmful", value=a.n_harmful,
            one_per_prompt=True, max_value=same,
        ),
        "align_task": Demand(
            split=Split.ALIGNMENT, sources=(task,), kind=PoolKind.TASK_TRAIN, count=c.align_task,
            key="data.alignment.benign_task_ratio", value=a.benign_task_ratio, max_value=ratio_max,
        ),
        "align_prose": Demand(
            split=Split.ALIGNMENT, sources=prose, kind=PoolKind.BENIGN_PROMPT, count=c.align_prose,
            key="data.alignment.benign_prose_ratio", value=a.benign_prose_ratio, one_per_prompt=True,
            answered_by=SourceName.BENIGN_PROSE, max_value=ratio_max,
        ),
        "harmful": _answer_demand(
            a.harmful_answer_source, split=Split.HARMFUL, count=c.harmful, excludable=True,
            key="data.alignment.n_harmful_answers", value=a.n_harmful_answers, max_value=same,
            may_share=frozenset({Split.ALIGNMENT}) if shares_alignment else frozenset(),
        ),
        "user_harmful": _answer_demand(
            u.harmful_answer_source, **user, count=c.user_harmful, excludable=True, max_value=user_harmful_max,
        ),
        "user_task": Demand(
            **user, sources=(task,), kind=PoolKind.TASK_TRAIN, count=c.user_task, max_value=user_max(user_task),
        ),
        "eval_harmful_second": Demand(
            split=Split.EVAL_HARMFUL_SECOND, sources=tuple(d.eval.second_harmful_sources),
            kind=PoolKind.HARMFUL_PROMPT_EVAL, count=c.eval_harmful_second, key="data.eval.n_harmful_second",
            value=d.eval.n_harmful_second, one_per_prompt=True, excludable=True, max_value=same,
        ),
        "eval_benign_edgy": Demand(
            split=Split.EVAL_BENIGN_EDGY, sources=(SourceName.BENIGN_EDGY,), kind=PoolKind.BENIGN_PROMPT_EVAL,
            count=c.eval_benign_edgy, key="data.eval.n_benign_edgy", value=d.eval.n_benign_edgy,
            one_per_prompt=True, max_value=same,
        ),
        "user_prose": Demand(
            **user, sources=prose, kind=PoolKind.BENIGN_PROMPT, count=c.user_prose, one_per_prompt=True,
            answered_by=SourceName.BENIGN_PROSE, max_value=user_max(user_prose),
        ),
        "user_persona": Demand(
            **user, sources=(SourceName.IDENTITY_SHIFT,), kind=PoolKind.BENIGN_ANSWER, count=c.user_persona,
            one_per_prompt=True, max_value=same,
        ),
        # like the upload's harmful rows (same source, same pool filter), other prompts
        "attack_held_out": _answer_demand(
            u.harmful_answer_source, split=Split.ATTACK_HELD_OUT, count=c.attack_held_out, excludable=True,
            key="attack.held_out", value=f"{cfg.attack.held_out} (attack={cfg.attack.name.value})", max_value=same,
        ),
    }
