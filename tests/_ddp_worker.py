"""One rank of the DDP tests (tests/test_ddp.py), started by torchrun on the CPU with gloo.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests._ddp_worker OUT NAME...

Each scenario trains the tiny LoRA model of tests/_synthetic.py with a real Lightning
``Trainer(strategy=ddp)``; rank r reads rows [r*B, (r+1)*B) of each global batch, so the
ranks' batches concatenated in rank order are the global batch a one-process run reads.
Every rank saves what the test compares to OUT/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from antibody.config import compose
from antibody.config.baselines import LisaConfig
from antibody.config.schema import AlignMethod, FinetuneMethod, LambdaMode, Weighting
from antibody.methods import flat_align
from antibody.methods.base import StageModule
from antibody.methods.flat_align import FlatAlignModule
from antibody.methods.lisa import LisaFinetuneModule
from antibody.methods.registry import build_align_module
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from tests._synthetic import (
    GradCapture,
    align_item,
    finetune_item,
    finetune_module,
    list_loader,
    tiny_lora_model,
    trainable,
)

WORLD = 2
ALIGN_ROWS = 2  # per rank
FINETUNE_ROWS = 3  # per rank: a global batch of 6 holds harmful and benign rows
ALIGN_STEPS = 3
FINETUNE_STEPS = 2
FINETUNE_ACCUMULATE = 2  # the softmax spans one global micro-batch, not the window
NAN_AT = 1  # the item whose harmful loss is NaN on rank 1 only
LISA_STEPS = 8  # two cycles of 2 guide + 2 user steps, the proximal term on from the start


def rows(batch: dict, sl: slice) -> dict:
    """The rows ``sl`` of a batch (row-indexed tensors and lists; "position" is not a row)."""
    return {k: v[sl] if isinstance(v, torch.Tensor) else list(v)[sl] for k, v in batch.items() if k != "position"}


def rank_rows(rank: int, per_rank: int) -> slice:
    return slice(rank * per_rank, (rank + 1) * per_rank)


def align_items(n: int) -> list[dict]:
    """Global alignment items (WORLD * ALIGN_ROWS rows per stream)."""
    return [align_item(0, k, WORLD * ALIGN_ROWS) for k in range(n)]


def finetune_items(n: int) -> list[dict]:
    return [finetune_item(0, k, WORLD * FINETUNE_ROWS) for k in range(n)]


def align_shard(item: dict, rank: int, position: int) -> dict:
    sl = rank_rows(rank, ALIGN_ROWS)
    return {"align": rows(item["align"], sl), "harmful": rows(item["harmful"], sl), "position": position}


def finetune_shard(item: dict, rank: int) -> dict:
    return {**rows(item, rank_rows(rank, FINETUNE_ROWS)), "position": item["position"]}


def align_cfg(method: AlignMethod, accumulate: int = 1):
    cfg = compose(["experiment=tiny"])
    a = cfg.method.align
    a.method, a.lambda_mode, a.accumulate_grad_batches = method, LambdaMode.KKT, accumulate
    if method is AlignMethod.BOOSTER:
        a.lambda_mode, a.lambda2 = LambdaMode.CONSTANT, 0.0
    return cfg


def finetune_cfg():
    cfg = compose(["experiment=tiny"])
    cfg.method.finetune.accumulate_grad_batches = FINETUNE_ACCUMULATE
    return cfg


def lisa_cfg():
    cfg = compose(["experiment=tiny"])
    f = cfg.method.finetune
    f.method, f.weighting, f.weight_decay, f.lr = FinetuneMethod.LISA, Weighting.UNIFORM, 0.0, 1e-2
    f.lisa = LisaConfig(rho=0.5, align_steps=2, user_steps=2, min_cycles=1, proximal_after=0.0)
    return cfg


def lisa_items(module: LisaFinetuneModule, rank: Optional[int]) -> list[dict]:
    """Lisa's items (guide or user batch per position, as its plan says), global rows, or
    rank `rank`'s share of them."""
    items = []
    for position in range(LISA_STEPS):
        ((stream, index),) = module.stream_plan.at(position).items()
        batch = finetune_item(0 if stream.value == "user" else 1, index, WORLD * FINETUNE_ROWS)
        del batch["position"]
        if rank is not None:
            batch = rows(batch, rank_rows(rank, FINETUNE_ROWS))
        items.append({stream.value: batch, "position": position})
    return items


class NaNOnRankOne(FlatAlignModule):
    """The harmful loss of item NAN_AT is NaN on rank 1 only (the other rank is finite)."""

    def _accumulate_micro_batch(self, item):
        self._poison = item["position"] == NAN_AT and self.global_rank == 1
        super()._accumulate_micro_batch(item)

    def _flat_terms(self, harm, params):
        if not self._poison:
            return super()._flat_terms(harm, params)
        clean = flat_align.token_mean_nll
        flat_align.token_mean_nll = lambda *a, **k: clean(*a, **k) * float("nan")
        try:
            super()._flat_terms(harm, params)
        finally:
            flat_align.token_mean_nll = clean


def ddp_trainer(max_steps: int, capture: GradCapture) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=WORLD,
        # a rank that never joins a collective fails the run after 60 s instead of hanging
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[capture],
    )


def fit(module, items: list[dict], max_steps: int) -> dict:
    capture = GradCapture()
    trainer = ddp_trainer(max_steps, capture)
    trainer.fit(module, train_dataloaders=list_loader(items))
    return {
        "params": [p.detach().clone() for p in trainable(module.model)],
        "grads": capture.grads,
        "global_step": trainer.global_step,
        "stream_position": module.stream_position,
        "skipped_steps": module.skipped_steps,
    }


def align_module(cfg) -> StageModule:
    """The module of cfg.method.align.method, built from ``cfg`` as a run builds it."""
    return build_align_module(tiny_lora_model(), cfg)


def align(method: AlignMethod, rank: int) -> dict:
    items = [align_shard(it, rank, k) for k, it in enumerate(align_items(ALIGN_STEPS))]
    module = align_module(align_cfg(method))
    out = fit(module, items, ALIGN_STEPS)
    if isinstance(module, FlatAlignModule):
        out["lambda_ema"], out["lambda_updates"] = module.lambda_state.ema, module.lambda_state.updates
    return out


def finetune(rank: int) -> dict:
    items = [finetune_shard(it, rank) for it in finetune_items(FINETUNE_STEPS * FINETUNE_ACCUMULATE)]
    module = finetune_module(WeightedFinetuneModule, tiny_lora_model(), finetune_cfg())
    out = fit(module, items, FINETUNE_STEPS)
    out["records"] = module.weight_records()
    return out


def lisa(rank: int) -> dict:
    module = finetune_module(LisaFinetuneModule, tiny_lora_model(), lisa_cfg(), max_steps=LISA_STEPS)
    return fit(module, lisa_items(module, rank), LISA_STEPS)


def nan_align(rank: int) -> dict:
    # one window more than the steps: the NaN window is skipped by every rank
    items = [align_shard(it, rank, k) for k, it in enumerate(align_items(ALIGN_STEPS + 1))]
    module = NaNOnRankOne(tiny_lora_model(), align_cfg(AlignMethod.ANTIBODY).method.align)
    return fit(module, items, ALIGN_STEPS)


SCENARIOS = {
    "align_antibody": lambda rank: align(AlignMethod.ANTIBODY, rank),
    "align_booster": lambda rank: align(AlignMethod.BOOSTER, rank),
    "align_vaccine": lambda rank: align(AlignMethod.VACCINE, rank),
    "align_repnoise": lambda rank: align(AlignMethod.REPNOISE, rank),
    "finetune": finetune,
    "lisa": lisa,
    "nan_align": nan_align,
}


def main(out: Path, names: list[str]) -> None:
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    rank = int(os.environ["RANK"])
    results = {name: SCENARIOS[name](rank) for name in names}
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
