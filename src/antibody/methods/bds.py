"""Bayesian Data Scheduler (Hu et al., NeurIPS 2025; released: Egg-Hu/Bayesian-Data-Scheduler,
`bds/trainer/dbs_trainer.py`, `DBSTrainer.fit`, with the scalar scheduler of
`bds/models/actor.py`, `TrainableTensorModule`, softmax activation), the closest published
rival to Antibody's likelihood-ratio weighting.

Every upload row i has a logit l_i (all `init` at the start); its weight is
w_i = N softmax(l)_i over the N rows of the upload (1 each at the start). Per step, with an
alignment batch A (the provider's alignment split, replayed) and a user batch U:

    model loss      = mean_{a in A} ce(a) + mean_{i in U} w_i ce(i)          (w detached)
    scheduler loss  = mean_{i in U} w_i ce(i).detach()                        (grad to l only)

where ce is a row's mean token cross-entropy (released `BatchCrossEntropyLoss`,
sequence_reduce="mean"). The model takes its optimiser step; the scheduler takes an AdamW
step (lr 5e-3, betas 0.9 / 0.95, no decay) on its logits with the same detached losses, so
weight moves toward the rows the model fits and away from those it does not. Released
`upperlevel_weight=-1` (0_train_eval_dbs.sh:18): both terms at weight 1, no decay.

Rows get their logit slot when first seen (the softmax treats every slot alike, so the
assignment does not change any weight); the logits, the scheduler's optimiser state and the
slots are checkpointed. weights.jsonl records w_i / B (1 / B: as under SFT) per row seen, and
the AUROC of -w as a harmful-row detector is logged (analysis only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn

from antibody.config.baselines import BDSConfig
from antibody.config.schema import FinetuneStageConfig
from antibody.data.streams import LockstepPlan, TrainStream
from antibody.methods.base import StageModule
from antibody.methods.losses import sequence_nll
from antibody.methods.weighted_finetune import detector_aurocs

_METRICS = ("loss", "alignment_loss", "user_loss", "weighted_user_loss", "weight_harmful_mean", "weight_benign_mean")


def row_mean_ce(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """Each row's mean answer-token cross-entropy (rows without a target token: 0)."""
    nll = sequence_nll(model, batch)
    return nll.nll_sum / nll.n_tokens.clamp_min(1.0)


class BDSFinetuneModule(StageModule):
    """Fine-tuning stage of the Bayesian Data Scheduler (see the module doc)."""

    log_prefix = "finetune"

    def __init__(self, model: nn.Module, ft: FinetuneStageConfig, *, rows: int):
        super().__init__(model, ft, _METRICS)
        self.settings: BDSConfig = ft.bds
        self.rows = int(rows)
        # every item holds a user batch and an alignment batch at its position
        self.stream_plan = LockstepPlan((TrainStream.USER, TrainStream.GUIDE))
        self.logits = torch.full((self.rows,), float(self.settings.init), dtype=torch.float32)
        self.slot: dict[str, int] = {}
        self._scheduler: Optional[torch.optim.Optimizer] = None
        self._scheduler_state: Optional[dict] = None
        self._records: list[dict] = []

    def scheduler(self) -> torch.optim.Optimizer:
        """The logits' AdamW (created on their device the first time it is needed)."""
        if self._scheduler is None:
            self.logits = self.logits.to(self.device).requires_grad_(True)
            b1, b2 = self.settings.scheduler_betas
            self._scheduler = torch.optim.AdamW([self.logits], lr=self.settings.scheduler_lr, betas=(b1, b2),
                                                weight_decay=0.0)
            if self._scheduler_state is not None:
                self._scheduler.load_state_dict(self._scheduler_state)
        return self._scheduler

    def slots(self, uids: list[str]) -> Tensor:
        for u in uids:
            if u not in self.slot:
                if len(self.slot) >= self.rows:
                    raise RuntimeError(f"BDS: more than method.finetune.bds.rows={self.rows} distinct upload rows")
                self.slot[u] = len(self.slot)
        return torch.tensor([self.slot[u] for u in uids], device=self.device)

    def weights(self) -> Tensor:
        return self.rows * torch.softmax(self.logits, dim=0)

    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        user, align = item[TrainStream.USER.value], item[TrainStream.GUIDE.value]
        opt = self.scheduler()
        idx = self.slots(list(user["uid"]))
        with torch.no_grad():
            w = self.weights()[idx]
        ce_align = row_mean_ce(self.model, align).mean()
        ce_user = row_mean_ce(self.model, user)
        weighted = (w * ce_user).mean()
        loss = ce_align + weighted
        self.manual_backward(loss / self.accumulate)
        # the scheduler's step on the same detached losses (released: after the model's step,
        # which does not change them)
        opt.zero_grad(set_to_none=True)
        (self.weights()[idx] * ce_user.detach()).mean().backward()
        opt.step()
        self._track("loss", loss)
        self._track("alignment_loss", ce_align)
        self._track("user_loss", ce_user.detach().mean())
        self._track("weighted_user_loss", weighted)
        self._record_rows(user, w)

    def _record_rows(self, user: Mapping[str, Any], w: Tensor) -> None:
        harmful = user["is_harmful"].bool()
        host, n = w.detach().float().cpu(), len(user["uid"])
        tags = harmful.cpu().tolist()
        for name, keep in (("weight_harmful_mean", harmful), ("weight_benign_mean", ~harmful)):
            if keep.any():
                self._track(name, w[keep].mean())
        for i, (uid, source) in enumerate(zip(user["uid"], user["source"], strict=True)):
            self._records.append({"uid": uid, "source": source, "is_harmful": bool(tags[i]), "w": float(host[i]) / n,
                                  "r": float("nan"), "logp_y": float("nan"), "logp_refusal": float("nan"),
                                  "step": int(self.global_step)})

    # ------------------------------------------------------------------ analysis outputs
    def weight_records(self) -> list[dict]:
        """One dict per row trained on: uid, source, is_harmful, w (its weight / B), step."""
        return list(self._records)

    def detector_metrics(self, since_record: int = 0) -> dict[str, float]:
        """AUROC of -w as a harmful-row detector (analysis only: reads the tags)."""
        return detector_aurocs(self._records[since_record:], {"neg_weight": lambda r: -r["w"]})

    # ------------------------------------------------------------------ checkpoints
    def _extra_state(self) -> dict:
        return {"logits": self.logits.detach().cpu().clone(), "slot": dict(self.slot),
                "scheduler": None if self._scheduler is None else self._scheduler.state_dict(),
                "records": list(self._records)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.logits = state["logits"].clone()
        self.slot = dict(state["slot"])
        self._scheduler, self._scheduler_state = None, state["scheduler"]
        self._records = list(state["records"])
