"""`SafetyDataModule`: every split of both stages, built once, checked before any cost.

Splits (`Split`):
- ``alignment``: harmful prompts -> long refusals, mixed with benign prose -> the base
  model's helpful answers and task rows (counts per harmful row from cfg.data.alignment).
  Why the mix: aligning on refusals plus maths alone taught the pilot model "not maths ->
  refuse" (100% refusal of benign prose; offline-assets.md, calibration).
- ``harmful`` (D_harm): harmful prompt -> harmful answer; used only for the flatness term.
- ``user``: floor(p*n) harmful rows + the rest benign (prose share, then the task),
  shuffled; ``user_benign_only`` is the same upload without its harmful rows (a control).
- ``eval_harmful``, ``eval_benign``, ``eval_task``: held-out evaluation prompts.

How prompts are split (ours):
- BY PROMPT, never by row: a normalised prompt (`Record.prompt_key`) belongs to one split;
  all rows of a source that share a prompt (PyRIT has several answers per objective) go to
  that split together. One exception is the paper's design: when D_harm is drawn from one
  of the alignment prompt sources (RepNoise's BeaverTails refusal file), D_harm is "the
  same prompts with harmful answers" (method.md), so those two splits may share prompts.
- Allocation order: evaluation splits, then the provider's splits (alignment, D_harm),
  then the user upload. Evaluation prompts therefore do not move when training settings
  change, and the provider's splits do not depend on the user settings: a fine-tuning
  run recomputes exactly the alignment split its alignment run used and keeps clear of it.
- Within a pool, prompts are ordered by a hash of (data.seed, prompt): a seeded shuffle
  that keeps its order when the pool grows.
- A row whose prompt already belongs to another split (the same normalised text in another
  source) is removed and counted as a duplicate; so are repeated (prompt, response) rows.
  A final check raises DataError if a prompt is in an evaluation and a training split.

Model-written rows (benign prose answers, generated harmful answers, generated refusals)
come last: their prompts are reserved like any other (pool checks included, DataError
naming the config key, its value and the largest valid value) before the generator is
called at all, and only the reserved prompts are answered. The sources drop answers that
decline or are empty, so a few spare prompts are reserved (GENERATION_SPARE) and, if
still short, more are drawn from the same pool (only then can the provider's splits
depend on the user settings, since those draws come after the user's reservations).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import Config, SourceName
from antibody.data.collate import BatchCollator, EncodedRow, encode_records, pad_token_id_of
from antibody.data.records import Record, normalise_text
from antibody.data.sources.benign_prose import benign_prose_prompts
from antibody.data.sources.generated import HARMFUL_PROMPT_POOL_SOURCES
from antibody.data.sources.refusals import alignment_refusals
from antibody.data.sources.registry import SourceContext, TextGenerator, load_source
from antibody.data.streams import AlignItems, CyclingSampler, FinetuneItems, Shard, StepStream, StreamKind

log = logging.getLogger(__name__)


class Stage(StrEnum):
    ALIGN = "align"
    FINETUNE = "finetune"


class Split(StrEnum):
    ALIGNMENT = "alignment"
    HARMFUL = "harmful"
    USER = "user"
    USER_BENIGN_ONLY = "user_benign_only"
    EVAL_HARMFUL = "eval_harmful"
    EVAL_BENIGN = "eval_benign"
    EVAL_TASK = "eval_task"


EVAL_SPLITS = (Split.EVAL_HARMFUL, Split.EVAL_BENIGN, Split.EVAL_TASK)
# Splits that must not be empty; user_benign_only is empty when p = 1, which is legal.
REQUIRED_SPLITS = (Split.ALIGNMENT, Split.HARMFUL, Split.USER, *EVAL_SPLITS)
# The training stream of each stage.
STAGE_TRAIN_SPLIT = {Stage.ALIGN: Split.ALIGNMENT, Stage.FINETUNE: Split.USER}

# Model-written sources, answered for the prompts we reserve for them. GENERATED_HARMFUL
# answers the harmful requests of HARMFUL_PROMPT_POOL_SOURCES (its one definition);
# BENIGN_PROSE answers its own prompt list.
GENERATED_SOURCES = frozenset({SourceName.BENIGN_PROSE, SourceName.GENERATED_HARMFUL})
# Spare prompts reserved per model-written split: 10% + 2 (ours). The base SmolLM2 declines
# 0-2% of harmful prompts (offline-assets.md) and the sources drop declined/empty answers.
GENERATION_SPARE = (0.1, 2)
# Rows tagged with one of these meta["split"] values (hub test/validation splits) are never
# trained on; the task's tagged rows are the only candidates for eval_task.
HELD_OUT_SPLIT_TAGS = frozenset({"test", "validation", "eval"})


def floor_share(share: float, n: int) -> int:
    """floor(share * n) on the decimal the config wrote: 0.29 * 100 is 28.999999999999996
    in floats, but the user meant 29. repr() gives the shortest decimal that round-trips."""
    return math.floor(Fraction(repr(float(share))) * int(n))


def spare(count: int) -> int:
    return math.ceil(count * GENERATION_SPARE[0]) + GENERATION_SPARE[1] if count else 0


# ---------------------------------------------------------------------------
# Pools: which rows a demand may use
# ---------------------------------------------------------------------------


def _held_out(rec: Record) -> bool:
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


POOL_FILTERS: dict[PoolKind, Callable[[Record], bool]] = {
    PoolKind.HARMFUL_PROMPT_EVAL: lambda r: r.is_harmful,
    PoolKind.HARMFUL_PROMPT: lambda r: r.is_harmful and not _held_out(r),
    PoolKind.HARMFUL_ANSWER: lambda r: r.is_harmful and bool(r.response.strip()) and not _held_out(r),
    PoolKind.BENIGN_PROMPT_EVAL: lambda r: not r.is_harmful,
    PoolKind.BENIGN_PROMPT: lambda r: not r.is_harmful and not _held_out(r),
    PoolKind.TASK_TRAIN: lambda r: not r.is_harmful and bool(r.response.strip()) and not _held_out(r),
    PoolKind.TASK_HELD_OUT: lambda r: not r.is_harmful and r.target is not None and _held_out(r),
    PoolKind.TASK_EVAL: lambda r: not r.is_harmful and r.target is not None,
}


@dataclass
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
    max_value: Optional[Callable[[int], str]] = None  # largest valid `key` given the pool


@dataclass
class SplitStats:
    duplicates_removed: int = 0  # prompt already in another split (same text elsewhere)
    repeated_rows_removed: int = 0  # same prompt and response twice in a pool
    excluded: int = 0  # excluded prompts skipped
    answers_dropped: int = 0  # model answers the source dropped (declined or empty)


@dataclass
class _Group:
    key: str
    rows: list[Record]
    repeated: int


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

    @classmethod
    def from_config(cls, cfg: Config) -> SplitCounts:
        d = cfg.data
        user_harmful = floor_share(d.user.p, d.user.n)
        user_benign = d.user.n - user_harmful
        user_prose = floor_share(d.user.benign_prose_share, user_benign)
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
        )


def _order_key(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}\x1f{key}".encode()).digest()[:8], "big")


def _largest_n(n: int, needed: Callable[[int], int], available: int) -> int:
    """Largest n' <= n whose demand `needed(n')` fits `available` (demands grow with n)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if needed(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


# Order in which demands are served (see the module docstring).
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
)


# ---------------------------------------------------------------------------
# Building the splits
# ---------------------------------------------------------------------------


class SplitBuilder:
    """Allocates prompts to splits (see the module docstring); one instance per build."""

    def __init__(
        self,
        cfg: Config,
        cache_dir: Path,
        generator: Optional[TextGenerator],
        generator_settings: dict,
        exclude_prompts: Iterable[str] = (),
    ):
        self.cfg = cfg
        self.seed = cfg.data.seed
        self.cache_dir = Path(cache_dir)
        self.generator = generator
        self.generator_settings = dict(generator_settings)
        self.exclude = {normalise_text(p) for p in exclude_prompts}
        self.counts = SplitCounts.from_config(cfg)
        self._rows: dict[SourceName, list[Record]] = {}
        self.owner: dict[str, Split] = {}  # prompt key -> split that owns it
        self.consumed: set[str] = set()  # uids of rows taken (or set aside) by an owning split
        self.stats = {s: SplitStats() for s in Split}
        self.shared: set[frozenset] = set()  # split pairs that were allowed to share prompts

    # -- sources -------------------------------------------------------------

    def context(self, **kwargs) -> SourceContext:
        return SourceContext(
            data=self.cfg.data,
            task=self.cfg.task,
            seed=self.seed,
            cache_dir=self.cache_dir,
            generator=self.generator,
            generator_settings=self.generator_settings,
            **kwargs,
        )

    def rows(self, name: SourceName) -> list[Record]:
        """A source's rows, loaded once; model-written sources give their prompts only."""
        if name not in self._rows:
            if name is SourceName.BENIGN_PROSE:
                self._rows[name] = benign_prose_prompts(self.seed)
            elif name is SourceName.GENERATED_HARMFUL:
                raise ConfigError(
                    "generated_harmful has no prompt list of its own; it answers reserved prompts"
                )
            else:
                self._rows[name] = load_source(name, self.context())
        return self._rows[name]

    def groups(self, demand: Demand) -> list[_Group]:
        keep = POOL_FILTERS[demand.kind]
        by_key: dict[str, _Group] = {}
        seen: set[tuple[str, str]] = set()
        for name in demand.sources:
            for rec in self.rows(name):
                if not keep(rec):
                    continue
                key = rec.prompt_key()
                group = by_key.setdefault(key, _Group(key, [], 0))
                ident = (key, normalise_text(rec.response))
                if ident in seen:
                    group.repeated += 1
                    continue
                seen.add(ident)
                group.rows.append(rec)
        return sorted(by_key.values(), key=lambda g: _order_key(self.seed, g.key))

    # -- allocation ----------------------------------------------------------

    def _usable(self, demand: Demand, group: _Group) -> tuple[str, list[Record]]:
        """('ok' | 'consumed' | 'duplicate' | 'excluded', the rows concerned)."""
        owner = self.owner.get(group.key)
        if owner is demand.split:
            return "consumed", []  # already in this split (e.g. via another of its demands)
        if owner is not None and owner not in demand.may_share:
            fresh = [r for r in group.rows if r.uid not in self.consumed]
            return ("duplicate", fresh) if fresh else ("consumed", [])
        if demand.excludable and group.key in self.exclude:
            return "excluded", group.rows
        return "ok", (group.rows[:1] if demand.one_per_prompt else group.rows)

    def available(self, demand: Demand, groups: list[_Group]) -> int:
        return sum(len(rows) for status, rows in (self._usable(demand, g) for g in groups) if status == "ok")

    def check(self, demand: Demand, available: int, note: str = "") -> None:
        if demand.count <= available:
            return
        where = ", ".join(s.value for s in demand.sources)
        note = f" {note}" if note else ""
        if available == 0:
            raise DataError(
                f"split '{demand.split.value}' would be empty: no usable {demand.kind.value} in "
                f"[{where}] for {demand.key}={demand.value}{note}"
            )
        largest = f"; the largest valid value is {demand.max_value(available)}" if demand.max_value else ""
        raise DataError(
            f"{demand.key}={demand.value}: split '{demand.split.value}' needs {demand.count} "
            f"{demand.kind.value} from [{where}] but only {available} are available (prompts owned by "
            f"other splits removed){note}{largest}"
        )

    def take(self, demand: Demand, extra: int = 0, note: str = "") -> list[Record]:
        """The first `count` (+ up to `extra` spare) usable rows, after the pool check."""
        groups = self.groups(demand)
        available = self.available(demand, groups)
        self.check(demand, available, note)
        want = min(demand.count + extra, available)
        stats = self.stats[demand.split]
        taken: list[Record] = []
        for g in groups:
            if len(taken) >= want:
                break
            status, rows = self._usable(demand, g)
            if status == "duplicate":
                stats.duplicates_removed += len(rows)
                self.consumed.update(r.uid for r in rows)  # count each removed row once
            elif status == "excluded":
                stats.excluded += len(rows)
            elif status == "ok":
                stats.repeated_rows_removed += g.repeated
                if self.owner.setdefault(g.key, demand.split) is not demand.split:
                    self.shared.add(frozenset({self.owner[g.key], demand.split}))
                # the whole group leaves the pool: its other rows must not reach another split
                self.consumed.update(r.uid for r in g.rows)
                taken.extend(dataclasses.replace(r, meta=dict(r.meta)) for r in rows[: want - len(taken)])
        return taken

    def answer(self, demand: Demand, reserved: list[Record]) -> list[Record]:
        """Model-written answers for the first `count` reserved prompts; where the source
        drops answers (declined or empty), the spare reserved prompts are answered next,
        then more prompts are drawn from the pool. Only answered prompts are generated."""
        rows: list[Record] = []
        queue = list(reserved)
        stats = self.stats[demand.split]
        while True:
            deficit = demand.count - len(rows)
            if deficit <= 0:
                return rows[: demand.count]
            if not queue:
                note = f"({stats.answers_dropped} model answers were dropped as refusals or empty)"
                queue = self.take(dataclasses.replace(demand, count=deficit), spare(deficit), note=note)
            batch, queue = queue[:deficit], queue[deficit:]
            answered = load_source(demand.answered_by, self.context(prompts=batch, limit=len(batch)))  # type: ignore[arg-type]
            if len(answered) < len(batch):
                stats.answers_dropped += len(batch) - len(answered)
                log.warning(
                    "%s: the source dropped %d of %d model answers",
                    demand.key,
                    len(batch) - len(answered),
                    len(batch),
                )
            rows += [dataclasses.replace(r, meta=dict(r.meta)) for r in answered]

    # -- the plan ------------------------------------------------------------

    def demands(self) -> dict[str, Demand]:
        d, c, task = self.cfg.data, self.counts, self.cfg.task.name
        a, u = d.alignment, d.user
        user_value = f"{u.n} (p={u.p}, benign_prose_share={u.benign_prose_share})"

        def user_max(part: Callable[[int], int]) -> Callable[[int], str]:
            return lambda avail: str(_largest_n(u.n, part, avail))

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

        def answer_demand(split: Split, source: SourceName, count: int, key: str, value, **kw) -> Demand:
            if source is SourceName.GENERATED_HARMFUL:  # reserve prompts now, answer later
                return Demand(
                    split,
                    HARMFUL_PROMPT_POOL_SOURCES,
                    PoolKind.HARMFUL_PROMPT,
                    count,
                    key,
                    value,
                    one_per_prompt=True,
                    answered_by=source,
                    **kw,
                )
            return Demand(split, (source,), PoolKind.HARMFUL_ANSWER, count, key, value, **kw)

        shares_alignment = a.harmful_answer_source in a.harmful_prompt_sources
        prose = (SourceName.BENIGN_PROSE,)
        return {
            "eval_harmful": Demand(
                Split.EVAL_HARMFUL,
                tuple(d.eval.harmful_prompt_sources),
                PoolKind.HARMFUL_PROMPT_EVAL,
                c.eval_harmful,
                "data.eval.n_harmful",
                d.eval.n_harmful,
                one_per_prompt=True,
                excludable=True,
                max_value=same,
            ),
            "eval_task": Demand(
                Split.EVAL_TASK,
                (task,),
                PoolKind.TASK_HELD_OUT,
                c.eval_task,
                "data.eval.n_task",
                d.eval.n_task,
                one_per_prompt=True,
                max_value=same,
            ),
            "eval_benign": Demand(
                Split.EVAL_BENIGN,
                prose,
                PoolKind.BENIGN_PROMPT_EVAL,
                c.eval_benign,
                "data.eval.n_benign",
                d.eval.n_benign,
                one_per_prompt=True,
                max_value=same,
            ),
            "align_harmful": Demand(
                Split.ALIGNMENT,
                tuple(a.harmful_prompt_sources),
                PoolKind.HARMFUL_PROMPT,
                c.align_harmful,
                "data.alignment.n_harmful",
                a.n_harmful,
                one_per_prompt=True,
                max_value=same,
            ),
            "align_task": Demand(
                Split.ALIGNMENT,
                (task,),
                PoolKind.TASK_TRAIN,
                c.align_task,
                "data.alignment.benign_task_ratio",
                a.benign_task_ratio,
                max_value=ratio_max,
            ),
            "align_prose": Demand(
                Split.ALIGNMENT,
                prose,
                PoolKind.BENIGN_PROMPT,
                c.align_prose,
                "data.alignment.benign_prose_ratio",
                a.benign_prose_ratio,
                one_per_prompt=True,
                answered_by=SourceName.BENIGN_PROSE,
                max_value=ratio_max,
            ),
            "harmful": answer_demand(
                Split.HARMFUL,
                a.harmful_answer_source,
                c.harmful,
                "data.alignment.n_harmful_answers",
                a.n_harmful_answers,
                max_value=same,
                may_share=frozenset({Split.ALIGNMENT}) if shares_alignment else frozenset(),
            ),
            "user_harmful": answer_demand(
                Split.USER,
                u.harmful_answer_source,
                c.user_harmful,
                "data.user.n",
                user_value,
                excludable=True,
                max_value=user_max(user_harmful),
            ),
            "user_task": Demand(
                Split.USER,
                (task,),
                PoolKind.TASK_TRAIN,
                c.user_task,
                "data.user.n",
                user_value,
                max_value=user_max(user_task),
            ),
            "user_prose": Demand(
                Split.USER,
                prose,
                PoolKind.BENIGN_PROMPT,
                c.user_prose,
                "data.user.n",
                user_value,
                one_per_prompt=True,
                answered_by=SourceName.BENIGN_PROSE,
                max_value=user_max(user_prose),
            ),
        }

    def _checked_demands(self) -> dict[str, Demand]:
        cfg, dem = self.cfg, self.demands()
        if cfg.task.name in GENERATED_SOURCES:
            raise ConfigError(f"task.name={cfg.task.name.value} is not a task source (it has no targets)")
        for key, names in (
            ("data.alignment.harmful_prompt_sources", cfg.data.alignment.harmful_prompt_sources),
            ("data.eval.harmful_prompt_sources", cfg.data.eval.harmful_prompt_sources),
        ):
            bad = [n.value for n in names if n in GENERATED_SOURCES]
            if bad:
                raise ConfigError(
                    f"{key}: {bad} are model-written answer sources, not harmful prompt sources"
                )
        for key, name in (
            ("data.alignment.harmful_answer_source", cfg.data.alignment.harmful_answer_source),
            ("data.user.harmful_answer_source", cfg.data.user.harmful_answer_source),
        ):
            if name is SourceName.BENIGN_PROSE:
                raise ConfigError(f"{key}=benign_prose is benign; choose a harmful answer source")
        # the task's held-out rows, if the source tags any; else its one pool is split by prompt
        task_rows = self.rows(cfg.task.name)
        if not any(_held_out(r) for r in task_rows):
            dem["eval_task"].kind = PoolKind.TASK_EVAL
        return dem

    def build(self) -> dict[Split, list[Record]]:
        dem = self._checked_demands()
        # 1. Allocation, pool checks included; model-written demands reserve prompts only.
        taken = {
            name: self.take(dem[name], spare(dem[name].count) if dem[name].answered_by else 0)
            if dem[name].count
            else []
            for name in ALLOCATION_ORDER
        }
        # 2. Only now the model writes: answers for the reserved prompts, then refusals.
        for name in ALLOCATION_ORDER:
            demand = dem[name]
            if demand.answered_by is not None and demand.count:
                taken[name] = self.answer(demand, taken[name])
        align_harmful = self._alignment_refusals(taken["align_harmful"])

        user = taken["user_harmful"] + taken["user_prose"] + taken["user_task"]
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed & 0xFFFFFFFFFFFFFFFF, int(StreamKind.USER)])
        )
        rng.shuffle(user)
        splits = {
            Split.ALIGNMENT: align_harmful + taken["align_prose"] + taken["align_task"],
            Split.HARMFUL: taken["harmful"],
            Split.USER: user,
            Split.USER_BENIGN_ONLY: [r for r in user if not r.is_harmful],
            Split.EVAL_HARMFUL: taken["eval_harmful"],
            Split.EVAL_BENIGN: taken["eval_benign"],
            Split.EVAL_TASK: taken["eval_task"],
        }
        self.verify(splits)
        return splits

    def _alignment_refusals(self, prompts: list[Record]) -> list[Record]:
        """Long refusals in the configured mode (rows with their own file refusal keep it)."""
        mode = self.cfg.data.alignment.refusal_source
        rows = alignment_refusals(prompts, mode, self.context())
        if [r.uid for r in rows] != [r.uid for r in prompts] or any(not r.response.strip() for r in rows):
            raise DataError(
                f"data.alignment.refusal_source={mode.value}: alignment_refusals must return one non-empty "
                f"refusal per prompt, in order ({len(rows)} rows for {len(prompts)} prompts)"
            )
        return rows

    def verify(self, splits: dict[Split, list[Record]]) -> None:
        for split in REQUIRED_SPLITS:
            if not splits[split]:
                raise DataError(f"split '{split.value}' is empty; check the data.* counts and sources")
        check_disjoint(splits, allowed=self.shared)
        for split in (Split.ALIGNMENT, Split.HARMFUL, Split.USER):
            for rec in splits[split]:
                for field_name in ("response", "refusal"):
                    if not getattr(rec, field_name).strip():
                        raise DataError(
                            f"split '{split.value}': row {rec.uid} ({rec.source}) has an empty {field_name}"
                        )


def check_disjoint(splits: dict[Split, list[Record]], allowed: set[frozenset] = frozenset()) -> None:
    """DataError if a prompt is in an evaluation split and a training split (or in two
    training splits, except pairs in `allowed`, or in two evaluation splits)."""
    keys = {
        s: {r.prompt_key() for r in rows} for s, rows in splits.items() if s is not Split.USER_BENIGN_ONLY
    }
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if frozenset({a, b}) in allowed:
                continue
            common = keys[a] & keys[b]
            if common:
                example = sorted(common)[0]
                kind = (
                    "an evaluation and a training split"
                    if (a in EVAL_SPLITS) != (b in EVAL_SPLITS)
                    else "two splits"
                )
                raise DataError(
                    f"{len(common)} prompt(s) are in {kind}: '{a.value}' and '{b.value}' "
                    f"(e.g. {example[:80]!r}); evaluation must be on held-out prompts"
                )


# ---------------------------------------------------------------------------
# The DataModule
# ---------------------------------------------------------------------------


def _as_split(name: Split | str) -> Split:
    try:
        return Split(name)
    except ValueError:
        raise DataError(f"unknown split {name!r}; allowed: {[s.value for s in Split]}") from None


def default_generator_settings(cfg: Config) -> dict:
    """What identifies model-written rows in their cache (the CLI may set its own)."""
    return {
        "model": cfg.model.name,
        "model_path": cfg.model.path,
        "dtype": cfg.model.dtype,
        "prompt_format": cfg.data.prompt_format.value,
        "max_new_tokens": cfg.data.generation_max_new_tokens,
        "decoding": "greedy",
    }


def default_cache_dir() -> Path:
    from antibody.models import cache_root

    return cache_root() / "data"


class SafetyDataModule(L.LightningDataModule):
    """Splits, encodings and the resumable training stream of one stage.

    `generator` must write with the UNALIGNED base model (model-written rows stand for the
    base model's own text); it is called only after every pool check has passed.
    `exclude_prompts` (normalised or raw prompt texts, e.g. a judge's training prompts) are
    kept out of the user's harmful rows and the harmful evaluation prompts.
    `train_split` overrides the stage's training split (e.g. ``user_benign_only``, the control).
    """

    def __init__(
        self,
        cfg: Config,
        tokenizer,
        stage: str = "align",
        generator: Optional[TextGenerator] = None,
        cache_dir: Optional[Path] = None,
        *,
        exclude_prompts: Iterable[str] = (),
        train_split: Optional[Split | str] = None,
    ):
        super().__init__()
        try:
            self.stage = Stage(stage)
        except ValueError:
            raise ConfigError(
                f"stage={stage!r} is not a stage; allowed: {[s.value for s in Stage]}"
            ) from None
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.generator = generator
        self.generator_settings: dict = default_generator_settings(cfg)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.exclude_prompts = tuple(exclude_prompts)
        self.train_split = (
            _as_split(train_split) if train_split is not None else STAGE_TRAIN_SPLIT[self.stage]
        )
        self.pad_token_id = pad_token_id_of(tokenizer)
        self._splits: Optional[dict[Split, list[Record]]] = None
        self._stats: dict[Split, SplitStats] = {}
        self._encoded: dict[Split, list[EncodedRow]] = {}

    # -- building --------------------------------------------------------------

    def setup(self, stage: Optional[str] = None) -> None:
        """Build every split once (later calls are no-ops)."""
        if self._splits is not None:
            return
        builder = SplitBuilder(
            self.cfg,
            self.cache_dir if self.cache_dir is not None else default_cache_dir(),
            self.generator,
            self.generator_settings,
            self.exclude_prompts,
        )
        self._splits = builder.build()
        self._stats = builder.stats

    def _require(self) -> dict[Split, list[Record]]:
        if self._splits is None:
            self.setup()
        return self._splits  # type: ignore[return-value]

    def records(self, split_name: Split | str) -> list[Record]:
        """The split's rows (shared list: do not mutate)."""
        return self._require()[_as_split(split_name)]

    def encoded(self, split_name: Split | str) -> list[EncodedRow]:
        split = _as_split(split_name)
        if split not in self._encoded:
            d = self.cfg.data
            self._encoded[split] = encode_records(
                self.records(split), self.tokenizer, d.prompt_format, d.max_length
            )
        return self._encoded[split]

    # -- streams ---------------------------------------------------------------

    def _shard(self) -> Shard:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return Shard()
        return Shard(int(trainer.global_rank), int(trainer.world_size))

    def _sampler(
        self, split: Split, batch_size: int, key: str, kind: StreamKind, shard: Shard
    ) -> CyclingSampler:
        rows = self.encoded(split)
        if not rows:
            raise DataError(f"split '{split.value}' is empty; it cannot feed a training stream")
        if shard.world_size > 1:
            if batch_size % shard.world_size:
                raise DataError(
                    f"{key}={batch_size} is not divisible by the world size {shard.world_size} "
                    "(the batch size is global; each rank takes batch_size / world_size rows)"
                )
            if len(rows) < batch_size:
                raise DataError(f"split '{split.value}' has {len(rows)} rows, fewer than {key}={batch_size}")
        return CyclingSampler(
            len(rows), batch_size, self.cfg.data.seed, kind, full_batches_only=shard.world_size > 1
        )

    def _align_items(self, shard: Shard) -> AlignItems:
        d = self.cfg.data
        return AlignItems(
            self.encoded(self.train_split),
            self.encoded(Split.HARMFUL),
            self._sampler(
                self.train_split, d.align_batch_size, "data.align_batch_size", StreamKind.ALIGN, shard
            ),
            self._sampler(
                Split.HARMFUL, d.harmful_batch_size, "data.harmful_batch_size", StreamKind.HARMFUL, shard
            ),
            self.pad_token_id,
            shard,
        )

    def _finetune_items(self, shard: Shard) -> FinetuneItems:
        d = self.cfg.data
        sampler = self._sampler(
            self.train_split, d.finetune_batch_size, "data.finetune_batch_size", StreamKind.USER, shard
        )
        return FinetuneItems(self.encoded(self.train_split), sampler, self.pad_token_id, shard)

    def train_stream(self, start: int = 0, shard: Optional[Shard] = None) -> StepStream:
        """The stage's stream from item `start` on (see antibody.data.streams)."""
        builder = _STREAM_ITEMS[self.stage]
        return StepStream(builder(self, shard if shard is not None else self._shard()), start)

    def train_dataloader(self) -> DataLoader:
        """Resumes at the attached module's `stream_position` (items consumed so far)."""
        trainer = getattr(self, "trainer", None)
        start = 0
        if trainer is not None and trainer.lightning_module is not None:
            start = int(getattr(trainer.lightning_module, "stream_position", 0))
        return DataLoader(self.train_stream(start), batch_size=None, num_workers=self.cfg.data.num_workers)

    def eval_dataloader(self, split_name: Split | str) -> DataLoader:
        """Plain, ordered batches of one split (both views), e.g. for losses or probes."""
        return DataLoader(
            self.encoded(split_name),
            batch_size=self.cfg.data.eval_batch_size,
            shuffle=False,
            collate_fn=BatchCollator(self.pad_token_id),
            num_workers=self.cfg.data.num_workers,
        )

    # -- reporting -------------------------------------------------------------

    def summary(self) -> dict:
        """Per split: rows, sources, harmful/benign, mean lengths, duplicates removed."""
        from antibody.data.summary import split_summary

        splits = self._require()
        d = self.cfg.data
        return {
            "prompt_format": d.prompt_format.value,
            "max_length": d.max_length,
            "seed": d.seed,
            "stage": self.stage.value,
            "train_split": self.train_split.value,
            "splits": {
                s.value: split_summary(splits[s], self.encoded(s), self._stats.get(s, SplitStats()))
                for s in Split
            },
        }


_STREAM_ITEMS: dict[Stage, Callable[[SafetyDataModule, Shard], Callable[[int], dict]]] = {
    Stage.ALIGN: SafetyDataModule._align_items,
    Stage.FINETUNE: SafetyDataModule._finetune_items,
}
