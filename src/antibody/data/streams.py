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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Optional

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from antibody.config.errors import DataError
from antibody.data.collate import EncodedRow, collate_rows


class StreamKind(IntEnum):
    """Mixed into every sampler seed, so that two streams with one data seed differ."""

    ALIGN = 1
    HARMFUL = 2
    USER = 3


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


class FinetuneItems:
    """Item k of the fine-tuning stream: the user batch plus its position."""

    def __init__(self, rows: Sequence[EncodedRow], sampler: CyclingSampler, pad_token_id: int, shard: Shard):
        self.rows, self.sampler, self.pad_token_id, self.shard = rows, sampler, pad_token_id, shard

    def __call__(self, k: int) -> dict:
        batch = collate_rows(
            [self.rows[i] for i in self.shard.take(self.sampler.batch(k))], self.pad_token_id
        )
        batch["position"] = k
        return batch


class AlignItems:
    """Item k of the alignment stream: an alignment batch and a D_harm batch from two
    independent samplers (own seeds and batch sizes), plus the position."""

    def __init__(
        self,
        align_rows: Sequence[EncodedRow],
        harmful_rows: Sequence[EncodedRow],
        align_sampler: CyclingSampler,
        harmful_sampler: CyclingSampler,
        pad_token_id: int,
        shard: Shard,
    ):
        self.align = FinetuneItems(align_rows, align_sampler, pad_token_id, shard)
        self.harmful = FinetuneItems(harmful_rows, harmful_sampler, pad_token_id, shard)

    def __call__(self, k: int) -> dict:
        align, harmful = self.align(k), self.harmful(k)
        del align["position"], harmful["position"]
        return {"align": align, "harmful": harmful, "position": k}


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
