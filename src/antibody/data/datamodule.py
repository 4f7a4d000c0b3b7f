"""`SafetyDataModule`: every split of both stages, built once, checked before any cost.

Splits (`antibody.data.plan.Split`):
- ``alignment``: harmful prompts -> long refusals, mixed with benign prose -> the base
  model's helpful answers and task rows (counts per harmful row from cfg.data.alignment).
  Why the mix: aligning on refusals plus maths alone taught the pilot model "not maths ->
  refuse" (docs/calibration.md).
- ``harmful`` (D_harm): harmful prompt -> harmful answer; used only for the flatness term.
- ``user``: the attack's upload (config/attack.py; default `poison`: floor(p*n) harmful
  rows + the rest benign (prose share, then the task)), shuffled; ``user_benign_only`` is
  the same upload without its harmful rows (the control, attack=benign).
- ``user_safeinstr`` (SafeInstr runs only): the upload with the provider's safety
  demonstrations mixed in; ``user_safeinstr_benign_only``: the same without the user's
  harmful rows (its control).
- ``eval_harmful``, ``eval_benign``, ``eval_task``: held-out evaluation prompts.
- ``attack_held_out`` (attack=refusal_prefix only): harmful rows the attacker holds out to
  choose its prefix on; never uploaded, trained on or evaluated.

How the rows are allocated: antibody.data.plan (what each split demands) and
antibody.data.builder (taking, answering, checking).

Training streams (antibody.data.streams): the attached module keeps the `StreamConsumer`
contract: its `stream_position` (where a resumed stream restarts) and its `stream_plan`
(which streams each item holds, e.g. Lisa's alternating guide and user batches); without
a plan, the stage default holds (alignment: an alignment and a D_harm batch per item;
fine-tuning: the flat user batch).

An adaptive attack (attack=refusal_prefix, self_written) rewrites the upload's harmful rows
under `attacked_model`, the aligned model the fine-tuning starts from (antibody.data.adaptive):
it is loaded, like the base model, only in prepare_data() and only for rows not cached.

Model-written rows are written in ONE place, `prepare_data()` (Lightning runs it once, on
rank 0; `python -m antibody build-data` calls it too): it runs the builder with the
generator, which fills the cache, and keeps the splits for this process. `setup()`, where
prepare_data() did not run (other DDP ranks, or a DataModule built on a warm cache), runs
the same builder WITHOUT a generator, so it only reads that cache, and says which command
fills it when a file is missing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import lightning as L
from torch.utils.data import DataLoader

from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import Config, Stage
from antibody.data.adaptive import AttackedModel
from antibody.data.builder import SplitBuilder, SplitStats
from antibody.data.collate import BatchCollator, EncodedRow, encode_records, pad_token_id_of
from antibody.data.plan import STAGE_TRAIN_SPLIT, Split, train_split_for
from antibody.data.records import Record
from antibody.data.sources import TextGenerator
from antibody.data.streams import (
    BatchSource,
    CyclingSampler,
    LockstepPlan,
    PlanItems,
    Shard,
    StepStream,
    StreamConsumer,
    StreamKind,
    StreamPlan,
    TrainStream,
)

log = logging.getLogger(__name__)


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
    `generator_settings` identify its rows in the cache (default: `default_generator_settings`).
    `exclude_prompts` (normalised or raw prompt texts, e.g. a judge's labelled prompts) are
    kept out of the demands that allow it (harmful evaluation prompts, D_harm, the user's
    harmful rows); no split may hold a prompt of `forbidden_prompts` (a judge's training
    and validation prompts): the build fails naming the split.
    `train_split` overrides the stage's training split; by default the config decides
    (`antibody.data.plan.train_split_for`: the upload, its benign-only control, or the
    SafeInstr mix).
    `attacked_model` (adaptive attacks only): the aligned model their rows are built under;
    without one their upload is not rewritten, and the fine-tuning stream refuses it.
    """

    def __init__(
        self,
        cfg: Config,
        tokenizer,
        stage: str = "align",
        generator: Optional[TextGenerator] = None,
        cache_dir: Optional[Path] = None,
        *,
        generator_settings: Optional[dict] = None,
        exclude_prompts: Iterable[str] = (),
        forbidden_prompts: Iterable[str] = (),
        train_split: Optional[Split | str] = None,
        answer_judge=None,
        attacked_model: Optional[AttackedModel] = None,
    ):
        super().__init__()
        # the stages that train (a repair reads the alignment stage's splits)
        if stage not in (Stage.ALIGN.value, Stage.FINETUNE.value):
            raise ConfigError(f"stage={stage!r} is not a training stage; allowed: {[Stage.ALIGN.value, Stage.FINETUNE.value]}")
        self.stage = Stage(stage)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.generator = generator
        self.generator_settings: dict = (
            default_generator_settings(cfg) if generator_settings is None else dict(generator_settings)
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.exclude_prompts = tuple(exclude_prompts)
        self.forbidden_prompts = tuple(forbidden_prompts)
        # data.harmful_answer_filter=judge: scores uncached answers in prepare_data only
        self.answer_judge = answer_judge
        self.attacked_model = attacked_model
        self.train_split = (
            _as_split(train_split) if train_split is not None else train_split_for(cfg, self.stage)
        )
        self.pad_token_id = pad_token_id_of(tokenizer)
        self._splits: Optional[dict[Split, list[Record]]] = None
        self._stats: dict[Split, SplitStats] = {}
        self._encoded: dict[Split, list[EncodedRow]] = {}
        self._upload_report = None
        self._adaptive_report: Optional[dict] = None

    # -- building --------------------------------------------------------------

    def _builder(self, generator: Optional[TextGenerator], writes: bool) -> SplitBuilder:
        return SplitBuilder(
            self.cfg,
            self.cache_dir if self.cache_dir is not None else default_cache_dir(),
            generator,
            self.generator_settings,
            self.exclude_prompts,
            self.forbidden_prompts,
            tokenizer=self.tokenizer,
            answer_judge=self.answer_judge,
            attacked=self.attacked_model,
            writes=writes,
        )

    def prepare_data(self) -> None:
        """Write the model-written rows into the cache (every pool check runs first).

        Lightning calls this once per node, on rank 0, before setup(); the CLI calls it
        before setup() too. With a warm cache the generator is never called, so the model it
        would load is never loaded. The splits it built are kept for this process's setup():
        they are what setup() would read back from the cache, and building them again (and
        again when Trainer.fit calls this hook) would repeat the work and its warnings.
        Other ranks never run this hook and build theirs in setup(), from the cache.
        """
        if self._splits is None:
            self._build(self.generator, writes=True)

    def setup(self, stage: Optional[str] = None) -> None:
        """Build every split once from the sources and the cache (later calls, and calls
        after prepare_data() in this process, are no-ops).

        Reads only: a missing model-written cache file is a DataError naming the command
        that fills it (prepare_data() / `python -m antibody build-data`).
        """
        if self._splits is None:
            self._build(None, writes=False)

    def _build(self, generator: Optional[TextGenerator], writes: bool) -> None:
        builder = self._builder(generator, writes)
        self._splits = builder.build()
        self._stats = builder.stats
        self._upload_report = builder.upload_report  # a provider's upload (data.user.path)
        self._adaptive_report = builder.adaptive.report()  # an adaptive attack's choices

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
        trainer = self.trainer
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

    def _stream_split(self, stream: TrainStream) -> Split:
        # the stage's own stream reads the stage's training split (which may be a control)
        own = {Stage.ALIGN: TrainStream.ALIGN, Stage.FINETUNE: TrainStream.USER}[self.stage]
        if stream is own:
            return self.train_split
        return {
            TrainStream.ALIGN: Split.ALIGNMENT,
            TrainStream.HARMFUL: Split.HARMFUL,
            TrainStream.USER: STAGE_TRAIN_SPLIT[Stage.FINETUNE],
            TrainStream.GUIDE: Split.ALIGNMENT,
        }[stream]

    def _source(self, stream: TrainStream, shard: Shard) -> BatchSource:
        d = self.cfg.data
        size, key, kind = {
            TrainStream.ALIGN: (d.align_batch_size, "data.align_batch_size", StreamKind.ALIGN),
            TrainStream.HARMFUL: (d.harmful_batch_size, "data.harmful_batch_size", StreamKind.HARMFUL),
            TrainStream.USER: (d.finetune_batch_size, "data.finetune_batch_size", StreamKind.USER),
            # ours: guide steps are fine-tuning steps, so they take the user's batch size
            TrainStream.GUIDE: (d.finetune_batch_size, "data.finetune_batch_size", StreamKind.GUIDE),
        }[stream]
        split = self._stream_split(stream)
        return BatchSource(
            self.encoded(split), self._sampler(split, size, key, kind, shard), self.pad_token_id, shard
        )

    def default_plan(self) -> StreamPlan:
        """The stage's items without a declared plan (see antibody.data.streams)."""
        return _DEFAULT_PLANS[self.stage]

    def train_stream(
        self, start: int = 0, shard: Optional[Shard] = None, plan: Optional[StreamPlan] = None
    ) -> StepStream:
        """The stage's stream from item `start` on, as `plan` declares (default: the stage's).

        Without a plan, a fine-tuning item is the flat user batch plus "position"; with
        one, every item is ``{stream value: batch, ..., "position": k}``.
        """
        self._require()
        adaptive = self._adaptive_report
        if self.stage is Stage.FINETUNE and adaptive is not None and not adaptive["built"]:
            raise DataError(
                f"attack={self.cfg.attack.name.value} rewrites the upload under the aligned model, but this "
                "DataModule was given none (attacked_model): fine-tune through the CLI with run.init_from"
            )
        shard = shard if shard is not None else self._shard()
        flat = None
        if plan is None:
            plan = self.default_plan()
            flat = TrainStream.USER if self.stage is Stage.FINETUNE else None
        sources = {s: self._source(TrainStream(s), shard) for s in plan.streams}
        return StepStream(PlanItems(plan, sources, flat), start)

    def train_dataloader(self) -> DataLoader:
        """Resumes at the attached module's `stream_position` (items consumed so far), with
        the items its `stream_plan` declares: the `StreamConsumer` contract. A module that
        does not keep it is fed the stage's default stream from its start."""
        trainer = self.trainer
        start, plan = 0, None
        module = trainer.lightning_module if trainer is not None else None
        if isinstance(module, StreamConsumer):
            start, plan = int(module.stream_position), module.stream_plan
        return DataLoader(
            self.train_stream(start, plan=plan), batch_size=None, num_workers=self.cfg.data.num_workers
        )

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
        """The attack (what the fine-tuning user uploads and controls), then per split: rows,
        sources, harmful/benign, mean lengths, duplicates removed."""
        from antibody.data.summary import attack_summary, split_summary

        splits = self._require()
        d = self.cfg.data
        trained = splits[train_split_for(self.cfg, Stage.FINETUNE)]
        return {
            "prompt_format": d.prompt_format.value,
            "max_length": d.max_length,
            "seed": d.seed,
            "stage": self.stage.value,
            "train_split": self.train_split.value,
            "attack": attack_summary(self.cfg, splits[Split.USER], trained, self._adaptive_report),
            **({"upload": dataclasses.asdict(self._upload_report)} if self._upload_report else {}),
            "splits": {
                s.value: split_summary(splits[s], self.encoded(s), self._stats.get(s, SplitStats()))
                for s in Split
            },
        }


_DEFAULT_PLANS: dict[Stage, StreamPlan] = {
    Stage.ALIGN: LockstepPlan((TrainStream.ALIGN, TrainStream.HARMFUL)),
    Stage.FINETUNE: LockstepPlan((TrainStream.USER,)),
}
