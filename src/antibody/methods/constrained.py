"""Constrained fine-tuning (Qi et al. 2025, "Safety Alignment Should Be Made More Than Just
a Few Tokens Deep"; released: Unispac/shallow-vs-deep-alignment,
`finetuning_buckets/trainer/trainer.py`, `ConstrainedSFTTrainer.soft_sft_loss`).

Per micro-batch, over the answer tokens t of every row (t counted from the answer's first
token):

    w_t  = max(2 (1 - sigmoid(beta_t (log p(y_t) - log p_aligned(y_t)))), min_weight)   (detached)
    loss = - mean_t w_t log p(y_t)

so a token whose probability has risen far above the aligned model's stops pulling, and
beta_t is large for the first answer tokens (beta x first_token_bias_factor for the first,
beta x bias_factor for the rest of the first bias_length, beta after): the answer's opening
stays near the aligned model. Its gradient is the paper's objective's (Appendix D.2, as
the released code says); rows are not weighted (method.finetune.weighting=uniform).

The aligned model's log-probabilities. The released code computes them once per row with
the model as it was before fine-tuning. Here the trainable tensors at the start of the fit
are kept (the LoRA's: a few MB), and the first time a row is seen they are swapped in for a
no-grad forward, then swapped out: exact for either adapter handling (a kept alignment
adapter, whose start is the aligned model, or a new adapter over the merged base, which
starts at zero), and no second copy of the model. Each row's log-probabilities are cached
by uid, so after one pass over the upload a step costs one forward and backward. Both the
start tensors and the cache are checkpointed (a resumed run uses the same reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from antibody.config.baselines import ConstrainedConfig
from antibody.config.schema import FinetuneStageConfig
from antibody.methods.base import StageModule
from antibody.methods.losses import IGNORE_INDEX
from antibody.methods.perturb import ParameterSnapshot
from antibody.methods.weighted_finetune import detector_aurocs

_METRICS = ("loss", "sft_loss", "token_weight_mean", "logp_gap_first_tokens")


def token_logprobs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """(log p of every answer token, its row, its position within its row's answer), the
    tokens in row-major order (float32)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    where = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    logp = -F.cross_entropy(logits[:, :-1][where].float(), labels[where], reduction="none")
    rows = where[0]
    counts = torch.bincount(rows, minlength=labels.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    return logp, rows, position


def beta_per_position(position: Tensor, s: ConstrainedConfig) -> Tensor:
    """beta_t of each answer position (released `get_beta_list`)."""
    beta = torch.full(position.shape, s.beta, dtype=torch.float32, device=position.device)
    beta = torch.where(position < s.bias_length, torch.full_like(beta, s.beta * s.bias_factor), beta)
    if s.bias_length > 0:
        beta = torch.where(position == 0, torch.full_like(beta, s.beta * s.first_token_bias_factor), beta)
    return beta


def constrained_loss(logp: Tensor, ref: Tensor, position: Tensor, s: ConstrainedConfig) -> tuple[Tensor, Tensor]:
    """(the token-mean constrained loss, the detached token weights)."""
    beta = beta_per_position(position, s)
    weight = (2 * (1 - torch.sigmoid(beta * (logp.detach() - ref)))).clamp_min(s.min_weight)
    return -(weight * logp).sum() / max(logp.numel(), 1), weight


class ConstrainedFinetuneModule(StageModule):
    """Fine-tuning stage with the token-wise constrained objective (see module doc)."""

    log_prefix = "finetune"

    def __init__(self, model: nn.Module, ft: FinetuneStageConfig):
        super().__init__(model, ft, _METRICS)
        self.settings: ConstrainedConfig = ft.constrained
        self._start: list[Tensor] = []  # the trainable tensors when the fit began (the aligned model)
        self._reference: dict[str, Tensor] = {}  # uid -> its answer tokens' aligned log-probs (CPU)
        self._swap = ParameterSnapshot()
        self._records: list[dict] = []  # one per row trained on (weights.jsonl)

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self._start:  # a resumed run has them from its checkpoint
            self._start = [p.detach().clone() for p in self.trainable()]

    def reference_logprobs(self, batch: Mapping[str, Any]) -> Tensor:
        """The aligned model's log-probs of the batch's answer tokens (row-major), computed
        with the start tensors swapped in for rows not seen before."""
        uids = list(batch["uid"])
        if any(u not in self._reference for u in uids):
            params = self.trainable()
            self._swap.save(params)
            try:
                with torch.no_grad():
                    for p, s in zip(params, self._start, strict=True):
                        p.copy_(s)
                    logp, rows, _ = token_logprobs(self.model, batch)
            finally:
                self._swap.restore(params)
            host, rows = logp.cpu(), rows.cpu()
            for i, uid in enumerate(uids):
                self._reference.setdefault(uid, host[rows == i].clone())
        return torch.cat([self._reference[u] for u in uids]).to(self.device)

    def _accumulate_micro_batch(self, batch: Mapping[str, Any]) -> None:
        ref = self.reference_logprobs(batch)
        logp, rows, position = token_logprobs(self.model, batch)
        if ref.shape != logp.shape:
            raise RuntimeError(f"constrained fine-tuning: {logp.numel()} answer tokens in the batch but "
                               f"{ref.numel()} reference log-probs (rows {list(batch['uid'])})")
        loss, weight = constrained_loss(logp, ref, position, self.settings)
        self.manual_backward(loss / self.accumulate)  # each rank its token mean, as SFT's alignment step
        self._track("loss", loss)
        self._track("sft_loss", -logp.detach().mean())
        self._track("token_weight_mean", weight.mean())
        first = (position < max(self.settings.bias_length, 1)).float()  # masked mean: no read to the host
        self._track("logp_gap_first_tokens", ((logp.detach() - ref) * first).sum() / first.sum().clamp_min(1.0))
        self._record_rows(batch, logp.detach(), weight, rows)

    def _record_rows(self, batch: Mapping[str, Any], logp: Tensor, weight: Tensor, rows: Tensor) -> None:
        """Each row's mean answer log-prob and mean token weight (this rank's rows), as the
        weighted modules record theirs; its row weight is uniform."""
        n = len(batch["uid"])
        count = torch.bincount(rows, minlength=n).clamp_min(1).float()
        table = torch.stack([torch.zeros(n, device=logp.device).index_add(0, rows, logp) / count,
                             torch.zeros(n, device=logp.device).index_add(0, rows, weight) / count]).cpu()
        harmful = batch["is_harmful"].tolist() if "is_harmful" in batch else [False] * n
        for i, (uid, source) in enumerate(zip(batch["uid"], batch["source"], strict=True)):
            self._records.append({"uid": uid, "source": source, "is_harmful": bool(harmful[i]), "w": 1.0 / n,
                                  "r": float("nan"), "logp_y": float(table[0, i]), "logp_refusal": float("nan"),
                                  "token_weight": float(table[1, i]), "step": int(self.global_step)})

    # ------------------------------------------------------------------ analysis outputs
    def weight_records(self) -> list[dict]:
        """One dict per row trained on: uid, source, is_harmful, w (uniform), logp_y (mean over
        its answer tokens), token_weight (the mean of its tokens' weights), step."""
        return list(self._records)

    def detector_metrics(self, since_record: int = 0) -> dict[str, float]:
        """AUROC of -token_weight as a harmful-row detector (analysis only: reads the tags):
        whether the objective leans on the harmful rows' tokens less."""
        return detector_aurocs(self._records[since_record:], {"neg_token_weight": lambda r: -r["token_weight"]})

    def _extra_state(self) -> dict:
        return {"start": [t.detach().cpu() for t in self._start],
                "reference": {u: t.clone() for u, t in self._reference.items()}, "records": list(self._records)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        params = self.trainable()
        self._start = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(state["start"], params, strict=True)]
        self._reference = dict(state["reference"])
        self._records = list(state["records"])
