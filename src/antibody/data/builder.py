"""The split builder: takes rows from the pools, has the model answer reserved prompts,
and checks disjointness. One SplitBuilder per build; the plan is in antibody.data.plan.

How prompts are split (ours):
- BY PROMPT, never by row: a normalised prompt (`Record.prompt_key`) belongs to one split;
  all rows of a source that share a prompt (PyRIT has several answers per objective) go to
  that split together. One exception is the paper's design: when D_harm is drawn from one
  of the alignment prompt sources (RepNoise's BeaverTails refusal file), D_harm is "the
  same prompts with harmful answers" (docs/method.md), so those two splits may share prompts.
- Allocation order (plan.ALLOCATION_ORDER): evaluation splits, then the provider's splits
  (alignment, D_harm), then the user upload. Evaluation prompts therefore do not move when
  training settings change, and the provider's splits do not depend on the user settings:
  a fine-tuning run recomputes exactly the alignment split its alignment run used.
- Within a pool, prompts are ordered by a hash of (data.seed, prompt): a seeded shuffle
  that keeps its order when the pool grows.
- A row whose prompt already belongs to another split (the same normalised text in another
  source) is removed and counted as a duplicate; so are repeated (prompt, response) rows.
  A final check raises DataError if a prompt is in an evaluation and a training split.
- The user upload is the attack's (config/attack.py): the task upload by default (poison),
  or attack.n harmful rows (harmful_only) or persona conversations (identity_shift) drawn as
  demands of the same plan, so the same pool and disjointness checks hold for every attack.
- The adaptive attacks (refusal_prefix, self_written) rewrite the poison upload's harmful
  rows under the attacked model (`antibody.data.adaptive`: `AdaptiveUpload` is this
  builder's hook); refusal_prefix's held-out rows are a split of their own, drawn last.
- SafeInstr's upload (method.finetune.method=safeinstr) adds floor(share * n) of the
  alignment split's harmful-prompt -> refusal rows to the user's rows: no new prompts are
  drawn, so its demonstrations are disjoint from evaluation like the alignment split.

Model-written rows (benign prose answers, generated harmful answers, generated refusals)
come last: their prompts are reserved like any other (pool checks included) before the
generator is called at all, and only the reserved prompts are answered. The sources drop
answers that decline or are empty, so a few spare prompts are reserved (plan.spare) and,
if still short, more are drawn from the same pool. Without a generator (the DataModule's
setup()), answers are read from the cache that prepare_data() / `build-data` filled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from antibody.config.counts import SplitCounts, floor_share, upload_rows
from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import Config, FinetuneMethod, SourceName, finetune_method
from antibody.data.adaptive import AdaptiveUpload, AttackedModel
from antibody.data.checks import check_disjoint, check_forbidden
from antibody.data.plan import (
    ALLOCATION_ORDER,
    POOL_FILTERS,
    REQUIRED_SPLITS,
    Demand,
    PoolKind,
    Split,
    held_out,
    plan_demands,
    spare,
)
from antibody.data.records import Record, normalise_text
from antibody.data.safeinstr import check_safeinstr_count, safeinstr_upload
from antibody.data.sources import alignment_refusals, load_source, model_written_sources, source_prompts
from antibody.data.sources.answer_filter import NOT_HARMFUL
from antibody.data.sources.registry import SourceContext, TextGenerator
from antibody.data.streams import StreamKind
from antibody.infra.progress import ONCE

log = logging.getLogger(__name__)


@dataclass
class SplitStats:
    duplicates_removed: int = 0  # prompt already in another split (same text elsewhere)
    repeated_rows_removed: int = 0  # same prompt and response twice in a pool
    excluded: int = 0  # excluded prompts skipped
    answers_dropped: int = 0  # model answers the source dropped (declined or empty)
    # of those: answers to harmful prompts the judge did not flag (data.harmful_answer_filter=judge)
    answers_not_harmful: int = 0


@dataclass
class _Group:
    key: str
    rows: list[Record]
    repeated: int


def _order_key(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}\x1f{key}".encode()).digest()[:8], "big")


class SplitBuilder:
    """Allocates prompts to splits (see the module docstring); one instance per build."""

    def __init__(
        self,
        cfg: Config,
        cache_dir: Path,
        generator: Optional[TextGenerator],
        generator_settings: dict,
        exclude_prompts: Iterable[str] = (),
        forbidden_prompts: Iterable[str] = (),
        tokenizer=None,
        answer_judge=None,
        attacked: Optional[AttackedModel] = None,
        writes: Optional[bool] = None,
    ):
        self.cfg = cfg
        self.answer_judge = answer_judge  # data.harmful_answer_filter=judge (answer_filter.AnswerJudge)
        self.tokenizer = tokenizer  # checks an upload's lengths (data.user.path), if given
        self.upload_report = None
        self.seed = cfg.data.seed
        self.cache_dir = Path(cache_dir)
        self.generator = generator
        self.generator_settings = dict(generator_settings)
        self.exclude = {normalise_text(p) for p in exclude_prompts}
        self.forbidden = {normalise_text(p) for p in forbidden_prompts}
        self.counts = SplitCounts.from_config(cfg)
        self._rows: dict[SourceName, list[Record]] = {}
        self.owner: dict[str, Split] = {}  # prompt key -> split that owns it
        self.consumed: set[str] = set()  # uids of rows taken (or set aside) by an owning split
        self.stats = {s: SplitStats() for s in Split}
        self.shared: set[frozenset] = set()  # split pairs that were allowed to share prompts
        # adaptive attacks: the attacked model may fill their caches where the base model may
        writes = generator is not None if writes is None else writes
        self.adaptive = AdaptiveUpload(cfg, attacked, self.context, self.cache_dir, writes)

    # -- sources -------------------------------------------------------------

    def context(self, **kwargs) -> SourceContext:
        return SourceContext(
            data=self.cfg.data,
            task=self.cfg.task,
            seed=self.seed,
            cache_dir=self.cache_dir,
            generator=self.generator,
            generator_settings=self.generator_settings,
            answer_judge=self.answer_judge,
            **kwargs,
        )

    def rows(self, name: SourceName) -> list[Record]:
        """A source's rows, loaded once; model-written sources give their prompts only."""
        if name not in self._rows:
            self._rows[name] = source_prompts(name, self.context())
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
            drops: dict[str, int] = {}
            # a small batch may lose every answer to the filter: more prompts are drawn then
            if demand.answer_with is not None:  # the attacked model (attack=self_written)
                answered = demand.answer_with(batch, drops)
            else:
                answered = load_source(demand.answered_by,  # type: ignore[arg-type]
                                       self.context(prompts=batch, limit=len(batch), drops=drops), allow_empty=True)
            stats.answers_not_harmful += drops.get(NOT_HARMFUL, 0)
            if len(answered) < len(batch):
                stats.answers_dropped += len(batch) - len(answered)
                log.warning(
                    "%s: the source dropped %d of %d model answers",
                    demand.key,
                    len(batch) - len(answered),
                    len(batch),
                    extra=ONCE,
                )
            rows += [dataclasses.replace(r, meta=dict(r.meta)) for r in answered]

    # -- the plan ------------------------------------------------------------

    def _checked_demands(self) -> dict[str, Demand]:
        cfg, dem = self.cfg, plan_demands(self.cfg, self.counts)
        generated = model_written_sources()
        if cfg.task.name in generated:
            raise ConfigError(f"task.name={cfg.task.name.value} is not a task source (it has no targets)")
        for key, names in (
            ("data.alignment.harmful_prompt_sources", cfg.data.alignment.harmful_prompt_sources),
            ("data.eval.harmful_prompt_sources", cfg.data.eval.harmful_prompt_sources),
        ):
            bad = [n.value for n in names if n in generated]
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
        c = self.counts
        rows, key = upload_rows(self.cfg)
        check_safeinstr_count(self.cfg, c.align_harmful, c.safeinstr, rows, key,
                              benign=c.user_prose + c.user_task + c.user_persona)
        # the task's held-out rows, if the source tags any; else its one pool is split by prompt
        task_rows = self.rows(cfg.task.name)
        if not any(held_out(r) for r in task_rows):
            dem["eval_task"].kind = PoolKind.TASK_EVAL
        self.adaptive.plan(dem)
        return dem

    def build(self) -> dict[Split, list[Record]]:
        dem = self._checked_demands()
        upload = self._upload()  # checked before the model writes anything
        # 1. Allocation, pool checks included; model-written demands reserve prompts only.
        taken = {
            name: self.take(dem[name], spare(dem[name].count) if dem[name].model_written else 0)
            if dem[name].count
            else []
            for name in ALLOCATION_ORDER
        }
        # 2. Only now the model writes: answers for the reserved prompts, then refusals.
        for name in ALLOCATION_ORDER:
            demand = dem[name]
            if demand.model_written and demand.count:
                taken[name] = self.answer(demand, taken[name])
        align_harmful = self._alignment_refusals(taken["align_harmful"])

        # the attack's rows (config/attack.py: only one kind is non-empty besides the task
        # upload's three parts); appended last, so the default attack's shuffle is unchanged
        harmful = self.adaptive.harmful_rows(taken["user_harmful"], taken["attack_held_out"])
        user = self._tagged(harmful + taken["user_prose"] + taken["user_task"] + taken["user_persona"])
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed & 0xFFFFFFFFFFFFFFFF, int(StreamKind.USER)])
        )
        rng.shuffle(user)
        demos = self.counts.safeinstr
        if upload is not None:  # in upload order; its prompts may also be the provider's
            user, demos = list(upload.records), self._upload_safeinstr(upload.records)
            self.shared |= {frozenset({Split.USER, Split.ALIGNMENT}), frozenset({Split.USER, Split.HARMFUL})}
        mixed: list[Record] = []
        if finetune_method(self.cfg.method.finetune) is FinetuneMethod.SAFEINSTR:
            mixed = safeinstr_upload(user, align_harmful, demos, self.seed, self.cfg.method.finetune.safeinstr.mix,
                                     tags_known=upload is None)
        splits = {
            Split.ALIGNMENT: align_harmful + taken["align_prose"] + taken["align_task"],
            Split.HARMFUL: taken["harmful"],
            Split.USER: user,
            Split.USER_BENIGN_ONLY: [r for r in user if not r.is_harmful],
            Split.USER_SAFEINSTR: mixed,
            Split.USER_SAFEINSTR_BENIGN_ONLY: [r for r in mixed if not r.is_harmful],
            Split.EVAL_HARMFUL: taken["eval_harmful"],
            Split.EVAL_BENIGN: taken["eval_benign"],
            Split.EVAL_TASK: taken["eval_task"],
            Split.EVAL_HARMFUL_SECOND: taken["eval_harmful_second"],
            Split.EVAL_BENIGN_EDGY: taken["eval_benign_edgy"],
            Split.ATTACK_HELD_OUT: taken["attack_held_out"],
        }
        self.verify(splits)
        return splits

    def _tagged(self, rows: list[Record]) -> list[Record]:
        """The research upload's rows with the attack that made them and whether it built them
        knowing the defence (meta "attack", "adaptive": an adaptive attack's rewritten rows set
        it, every other row is False): for analysis only, like is_harmful; training never reads
        them. The rows are the builder's own copies (take() and answer() copy meta)."""
        for rec in rows:
            rec.meta.update(attack=self.cfg.attack.name.value, adaptive=bool(rec.meta.get("adaptive", False)))
        return rows

    def _upload(self):
        """A provider's own upload (data.user.path), read and checked; None without one."""
        if not self.cfg.data.user.path:
            return None
        from antibody.data.upload import load_upload

        upload = load_upload(self.cfg, self.tokenizer)
        self.upload_report = upload.report
        return upload

    def _upload_safeinstr(self, records: list[Record]) -> int:
        """SafeInstr's demonstrations for an upload: floor(share * its rows), checked."""
        if finetune_method(self.cfg.method.finetune) is not FinetuneMethod.SAFEINSTR:
            return 0
        count = floor_share(self.cfg.method.finetune.safeinstr.share, len(records))
        # an upload's harmful tags never steer training: replace may take any of its rows
        check_safeinstr_count(self.cfg, self.counts.align_harmful, count, len(records), "the upload's rows",
                              benign=len(records))
        return count

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
        check_forbidden(splits, self.forbidden)
        for split in (Split.ALIGNMENT, Split.HARMFUL, Split.USER):
            for rec in splits[split]:
                for field_name in ("response", "refusal"):
                    if not getattr(rec, field_name).strip():
                        raise DataError(
                            f"split '{split.value}': row {rec.uid} ({rec.source}) has an empty {field_name}"
                        )
