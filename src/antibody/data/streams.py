"""Deterministic, resumable batch streams.

Batch k of a `CyclingSampler` is a pure function of (seed, stream kind, k): epoch
e = k // batches_per_epoch is a permutation seeded by (seed, kind, e). No state is
carried from batch to batch, so a run resumed at position k draws exactly the batches an
uninterrupted run would, and the alignment stage's two samplers (alignment rows and D_harm
rows, each with its own batch size) never depend on each other.

Last batch of an epoch (ours): kept when it holds at least half a batch, dropped otherwise.
A very small batch gives a noisy step and, for the weighted fine-tuning stage, a
meaningless softmax (a one-row batch always gets weight 1). The dropped rows are different
in every epoch (new permutation), so no row is left out for good. A split smaller than one
batch gives one batch of all its rows per epoch. Under data parallelism every global batch
must split evenly over the ranks, so only full batches are used there.

`StepStream` is the IterableDataset the training DataLoader wraps (batch_size=None): it
yields one ready item per step from `start` on, forever, each carrying its `position`.
With DataLoader workers, worker w makes items start+w, start+w+W, ...; the DataLoader
takes items from the workers in turn, so the order equals the single-process order.

Declared streams: a training module may say what its items hold with a `StreamPlan`:
`plan.at(position)` names the `TrainStream`s item `position` holds and each one's batch
index. Batch index j of a stream is always that stream's own sampler's batch j, so two
modules whose plans visit the user stream in a different rhythm (plain SFT, and Lisa with
alignment steps in between) still see the same user batches in the same order. Without a
plan, each stage's default applies (`LockstepPlan`: every stream at index = position).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Optional, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from antibody.config.errors import DataError
from antibody.data.collate import EncodedRow, collate_rows


class StreamKind(IntEnum):
    """Mixed into every sampler seed, so that two streams with one data seed differ."""

    ALIGN = 1
    HARMFUL = 2
    USER = 3
    GUIDE = 4


class TrainStream(StrEnum):
    """A batch stream an item may hold; the value is the item's key for that batch."""

    ALIGN = "align"  # the alignment stage's training split
    HARMFUL = "harmful"  # D_harm, harmful prompt -> harmful answer (the flatness term)
    USER = "user"  # the fine-tuning stage's training split (the upload)
    GUIDE = "guide"  # the provider's alignment split, replayed during fine-tuning (Lisa)


class StreamPlan(Protocol):
    """What the items of a training stream hold, declared by the training module.

    ``streams``: every stream the plan may use (their splits are checked before training);
    ``at(position)``: the streams item ``position`` holds, each with its batch index. It
    must be a pure function of the position (workers build items ahead, a resumed run
    rebuilds them from its stream position).
    """

    streams: tuple[TrainStream, ...]

    def at(self, position: int) -> Mapping[TrainStream, int]: ...


@runtime_checkable
class StreamConsumer(Protocol):
    """The resume contract between a training module and the DataModule that feeds it.

    The DataModule reads these when Lightning asks it for the training loader: that is
    after a checkpoint has been restored under every strategy (some restore only after
    ``on_fit_start``), so the module, which checkpoints them, is their one owner.
    ``stream_position``: items consumed so far (position + 1 of the last one), where the
    stream restarts; ``stream_plan``: what each item holds (None: the stage's default).
    """

    stream_position: int
    stream_plan: Optional[StreamPlan]


@dataclass(frozen=True)
class LockstepPlan:
    """Every item holds each of ``streams`` at batch index = position (the stage defaults:
    alignment and D_harm for the alignment stage, the upload for fine-tuning)."""

    streams: tuple[TrainStream, ...]

    def at(self, position: int) -> dict[TrainStream, int]:
        return dict.fromkeys(self.streams, position)


class CyclingSampler:
    """Cycles over `n` rows in batches, reshuffling each epoch; batch(k) is pure."""

    def __init__(
        self, n: int, batch_size: int, seed: int, kind: StreamKind, *, full_batches_only: bool = False
    ):
        if n < 1:
            raise DataError(f"cannot sample batches from an empty split ({kind.name.lower()} stream)")
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed, self.kind = n, batch_size, int(seed), StreamKind(kind)
        full, rest = divmod(n, batch_size)
        if full == 0:
            self.batches_per_epoch = 1  # one batch of all n rows
        elif rest and not full_batches_only and rest >= math.ceil(batch_size / 2):
            self.batches_per_epoch = full + 1
        else:
            self.batches_per_epoch = full
        self._cached: tuple[int, Optional[np.ndarray]] = (-1, None)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            # SeedSequence needs non-negative entropy; the mask keeps negative seeds usable.
            entropy = [self.seed & 0xFFFFFFFFFFFFFFFF, int(self.kind), int(epoch)]
            rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._cached = (epoch, rng.permutation(self.n))
        return self._cached[1]  # type: ignore[return-value]

    def batch(self, k: int) -> list[int]:
        if k < 0:
            raise ValueError(f"batch position must be >= 0, got {k}")
        epoch, j = divmod(k, self.batches_per_epoch)
        perm = self.permutation(epoch)
        return perm[j * self.batch_size : (j + 1) * self.batch_size].tolist()


class Shard:
    """This process's share of every global batch under data parallelism (rank::world)."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    def take(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world_size]


class BatchSource:
    """Batch k of one stream: the rows of this process's shard of the sampler's batch k."""

    def __init__(self, rows: Sequence[EncodedRow], sampler: CyclingSampler, pad_token_id: int, shard: Shard):
        self.rows, self.sampler, self.pad_token_id, self.shard = rows, sampler, pad_token_id, shard

    def __call__(self, k: int) -> dict:
        return collate_rows([self.rows[i] for i in self.shard.take(self.sampler.batch(k))], self.pad_token_id)


class PlanItems:
    """Item k of a training stream: ``{stream: batch, ..., "position": k}`` as ``plan.at(k)``
    says. ``flat``: the plan holds that one stream only, and the item is its batch itself
    plus ``"position"`` (the fine-tuning default, the contract WeightedFinetuneModule reads)."""

    def __init__(
        self,
        plan: StreamPlan,
        sources: Mapping[TrainStream, Callable[[int], dict]],
        flat: Optional[TrainStream] = None,
    ):
        missing = [str(s) for s in plan.streams if s not in sources]
        if missing:
            raise ValueError(f"no batch source for the plan's streams {missing}")
        if flat is not None and tuple(plan.streams) != (flat,):
            raise ValueError(f"a flat item holds one stream, {flat.value}; the plan has {list(plan.streams)}")
        self.plan, self.sources, self.flat = plan, dict(sources), flat

    def __call__(self, k: int) -> dict:
        where = self.plan.at(k)
        unknown = [str(s) for s in where if s not in self.plan.streams]
        if unknown or not where:
            # a plan that strays from its declared streams would read unchecked splits
            raise ValueError(
                f"plan item {k} holds {dict(where)}; the plan declares {list(self.plan.streams)}"
            )
        if self.flat is not None:
            batch = self.sources[self.flat](where[self.flat])
            batch["position"] = k
            return batch
        item: dict = {TrainStream(s).value: self.sources[s](int(j)) for s, j in where.items()}
        item["position"] = k
        return item


class StepStream(IterableDataset):
    """Items make_item(start), make_item(start + 1), ... forever."""

    def __init__(self, make_item: Callable[[int], dict], start: int = 0):
        super().__init__()
        if start < 0:
            raise ValueError(f"stream start must be >= 0, got {start}")
        self.make_item, self.start = make_item, int(start)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start + worker
        while True:
            yield self.make_item(k)
            k += workers


def take(stream: StepStream, count: int) -> list[dict]:
    """The first `count` items of a stream (single process)."""
    it = iter(stream)
    return [next(it) for _ in range(count)]
