"""Stage 2: likelihood-ratio weighted fine-tuning (docs/method.md ("Stage 2")).

Per micro-batch: one forward/backward on the user batch gives per-row NLL sums (and so
log p(y_i|x_i): the weights are detached, so taking it from the training forward gives
the same numbers as a separate no-grad pass); one extra no-grad forward scores the
refusal view when the weighting needs log p(y_r|x) (likelihood_ratio, refusal_only). Then
``w = WEIGHTINGS[mode].weights(...)`` and ``loss = weighted_loss(nll, w, loss_form)``.

Accumulation semantics (ours, documented): the softmax is over each micro-batch (as in
the released code, whose batch is the micro-batch) and the window's update is the mean
of the micro-batch losses' gradients. With uniform weights and micro-batches holding
equal target-token counts this equals one step on the concatenated batch.

Several processes (DDP, docs/multi-gpu.md): a micro-batch is the GLOBAL one, every rank's
rows together. Each rank gathers every row's detached scores (a few floats per row, plus
uids and sources for the records), takes the softmax over all of them and keeps its own
slice; the loss of its rows is their share of the global loss, times the world size
because DDP averages gradients over ranks. So W ranks with B rows each update exactly as
one process on their W*B rows (in rank order), whatever W is. The weights carry no
gradient, so only the local rows' NLL is differentiated. Records and weight statistics
then cover the global batch and are the same on every rank.

The ground-truth ``is_harmful`` tag is read only for logging, for the detector AUROCs
and by the ``oracle`` weighting, which is analysis-only (never a defence).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from antibody.config.schema import FinetuneStageConfig
from antibody.methods.base import StageModule
from antibody.methods.losses import SequenceNLL, sequence_nll
from antibody.methods.weights import (
    WEIGHTINGS,
    LossForm,
    WeightInputs,
    log_tag,
    row_logprob,
    weighted_loss,
)

# harmful-row detectors evaluated on the logged rows: name -> score (higher = more harmful)
DETECTOR_SCORES = {
    "neg_ratio": lambda rec: -rec["r"],  # -r, the Antibody score
    "neg_logp_response": lambda rec: -rec["logp_y"],  # compliance term alone
    "logp_refusal": lambda rec: rec["logp_refusal"],  # refusal term alone
}


@runtime_checkable
class WeightRecording(Protocol):
    """What a weighted fine-tuning module gives the run after training (weights.jsonl and
    the detector AUROCs of metrics.json): WeightedFinetuneModule and its subclasses."""

    def weight_records(self) -> list[dict]: ...

    def detector_metrics(self, since_record: int = 0) -> dict[str, float]: ...


@dataclass
class BatchRows:
    """One micro-batch's detached per-row numbers over every rank (rank-major order), and
    where this rank's rows lie in it."""

    logp_y: Tensor
    logp_r: Optional[Tensor]
    is_harmful: Tensor  # bool
    n_tokens: Tensor
    nll_sum: Tensor
    uids: list[str]
    sources: list[str]
    local: slice


def _to_host(rows: BatchRows, w: Tensor) -> tuple[BatchRows, Tensor]:
    """The micro-batch's per-row numbers and weights on the CPU, in one transfer (the same
    values: float32 log-probabilities and weights; the harmful tags as bools)."""
    nan = torch.full_like(rows.logp_y, float("nan"))
    cols = [rows.logp_y, nan if rows.logp_r is None else rows.logp_r, rows.is_harmful, w]
    table = torch.stack([c.detach().to(torch.float32) for c in cols], dim=1).cpu()
    host = BatchRows(table[:, 0], None if rows.logp_r is None else table[:, 1], table[:, 2].bool(),
                     rows.n_tokens, rows.nll_sum, rows.uids, rows.sources, rows.local)
    return host, table[:, 3]


def detector_aurocs(records: list[dict], scores: Mapping[str, Callable[[dict], float]]) -> dict[str, float]:
    """`auroc_<name>` of each score as a harmful-row detector over `records` (their
    `is_harmful` tags); a score with a NaN or a window of one class only is left out."""
    labels = torch.tensor([r["is_harmful"] for r in records], dtype=torch.long)
    out: dict[str, float] = {}
    if not records or labels.min() == labels.max():
        return out
    for name, score in scores.items():
        values = torch.tensor([score(r) for r in records], dtype=torch.float64)
        if not torch.isnan(values).any():
            out[f"auroc_{name}"] = float(binary_auroc(values, labels))
    return out


class WeightedFinetuneModule(StageModule):
    """Fine-tuning stage with per-sample weights (uniform = plain SFT).

    Items are user batches (see the DataModule's batch contract) with ``"position"``.
    ``ft`` is the stage's config (method.finetune); the arguments after it override it.
    ``loss_form``: TOKEN_MEAN (released code) or SAMPLE_MEAN (paper; docs/method.md), from
    ``method.finetune.loss_form``. ``detector_window``: micro-batches per detector-AUROC log,
    from ``method.finetune.detector_window``; one of them must be set (a run's default, one
    pass over the upload, needs the data config: ``antibody.methods.registry`` sizes it).
    ``score_refusal``: also run the refusal forward when the weighting does not need it
    (gives the detector AUROCs of -r and log p(y_r|x) for SFT runs, at its cost).
    """

    log_prefix = "finetune"

    def __init__(
        self,
        model: nn.Module,
        ft: FinetuneStageConfig,
        loss_form: Optional[LossForm] = None,
        detector_window: Optional[int] = None,
        score_refusal: Optional[bool] = None,
    ):
        # constructor arguments override the config (tests); by default the config decides
        loss_form = ft.loss_form if loss_form is None else loss_form
        detector_window = ft.detector_window if detector_window is None else detector_window
        if not detector_window:
            raise ValueError("detector_window: pass one or set method.finetune.detector_window "
                             "(antibody.methods.build_finetune_module sizes it from the data config)")
        score_refusal = ft.score_refusal if score_refusal is None else score_refusal
        rule = WEIGHTINGS[ft.weighting]
        # controls and the oracle log their weight statistics under a labelled namespace
        # (finetune/control_response_only/..., finetune/analysis_only_oracle/...)
        tag = log_tag(ft.weighting)
        weight_names = {
            k: f"{tag}/{k}" if tag else k
            for k in ("weight_harmful_mean", "weight_benign_mean", "harmful_weight_share")
        }
        super().__init__(model, ft, ["loss", *weight_names.values()])
        self.rule = rule
        self._weight_names = weight_names
        self.loss_form = loss_form
        self.score_refusal = score_refusal or self.rule.needs_refusal
        self.detector_window = int(detector_window)
        self.micro_batches_seen = 0
        self._detector_from = 0  # index of the first record of the open detector window
        self._records: list[dict] = []

    # ------------------------------------------------------------------ micro-batch
    def _accumulate_micro_batch(self, batch: Mapping[str, Any]) -> None:
        ft = self.stage_cfg
        nll = sequence_nll(self.model, batch)
        detached = SequenceNLL(nll.nll_sum.detach(), nll.n_tokens)
        logp_y = row_logprob(detached, ft.ratio_form)
        logp_r = None
        if self.score_refusal:
            with torch.no_grad():
                logp_r = row_logprob(sequence_nll(self.model, batch, prefix="refusal_"), ft.ratio_form)
        rows = self._gather_rows(batch, detached, logp_y, logp_r)
        w_all = self.rule.weights(WeightInputs(rows.logp_y, rows.logp_r, rows.is_harmful, ft.tau))
        token_total = (w_all * rows.n_tokens).sum()
        loss = weighted_loss(nll, w_all[rows.local], self.loss_form, token_total)
        # DDP averages the ranks' gradients; each rank's loss is its share of the global one
        world = self.trainer.world_size
        self.manual_backward(loss * world / self.accumulate)

        self._track("loss", weighted_loss(SequenceNLL(rows.nll_sum, rows.n_tokens), w_all, self.loss_form))
        # the per-row bookkeeping reads the rows on the host: one transfer of B numbers per
        # micro-batch, not one device read per statistic and list
        host, w_host = _to_host(rows, w_all)
        self._track_weights(w_host, host.is_harmful)
        self._record_rows(host, w_host)
        self.micro_batches_seen += 1
        if self.micro_batches_seen % self.detector_window == 0:
            self._log_detector()

    def global_token_mean(self, nll: SequenceNLL) -> Tensor:
        """Token-mean NLL over the global micro-batch (every rank's rows), as this rank's
        share of it times the world size, since DDP averages the ranks' gradients: W ranks
        take the step of one process on their rows together (a mean of per-rank token
        means would weight a rank's tokens by 1 / its own token count)."""
        world = self.trainer.world_size
        if world == 1:
            return nll.token_mean()
        total = self.all_gather(nll.n_tokens.sum().detach()).sum()
        return nll.nll_sum.sum() / total.clamp_min(1.0) * world

    def _gather_rows(
        self, batch: Mapping[str, Any], nll: SequenceNLL, logp_y: Tensor, logp_r: Optional[Tensor]
    ) -> BatchRows:
        """This micro-batch's rows on every rank (one process: its own rows)."""
        is_harmful = batch["is_harmful"].bool()
        uids, sources = list(batch["uid"]), list(batch["source"])
        world = self.trainer.world_size
        if world == 1:
            return BatchRows(logp_y, logp_r, is_harmful, nll.n_tokens, nll.nll_sum, uids, sources,
                             slice(0, len(uids)))
        nan = torch.full_like(logp_y, float("nan"))
        cols = [logp_y, nan if logp_r is None else logp_r, is_harmful, nll.n_tokens, nll.nll_sum]
        local = torch.stack([c.float() for c in cols], dim=1)
        # every rank holds the same number of rows (the DataModule splits a global batch
        # evenly), as all_gather requires
        table = self.all_gather(local).reshape(-1, local.shape[1])
        names: list = [None] * world
        dist.all_gather_object(names, (uids, sources))
        start = self.global_rank * local.shape[0]
        return BatchRows(
            table[:, 0],
            None if logp_r is None else table[:, 1],
            table[:, 2].bool(),
            table[:, 3],
            table[:, 4],
            [u for rank_uids, _ in names for u in rank_uids],
            [src for _, rank_sources in names for src in rank_sources],
            slice(start, start + local.shape[0]),
        )

    def _track_weights(self, w: Tensor, is_harmful: Tensor) -> None:
        # in units of the uniform weight 1/B, so 1.0 means "as in plain SFT"
        rel = w * w.shape[0]
        names = self._weight_names
        if is_harmful.any():
            self._track(names["weight_harmful_mean"], rel[is_harmful].mean())
        if (~is_harmful).any():
            self._track(names["weight_benign_mean"], rel[~is_harmful].mean())
        total = w.sum()
        if total > 0:
            self._track(names["harmful_weight_share"], w[is_harmful].sum() / total)

    def _record_rows(self, rows: BatchRows, w: Tensor) -> None:
        nan = float("nan")
        ly = rows.logp_y.tolist()
        lr = rows.logp_r.tolist() if rows.logp_r is not None else [nan] * len(ly)
        for uid, source, harmful, y, r, wi in zip(
            rows.uids, rows.sources, rows.is_harmful.tolist(), ly, lr, w.tolist(), strict=True
        ):
            self._records.append(
                {
                    "uid": uid,
                    "source": source,
                    "is_harmful": bool(harmful),
                    "r": y - r,  # NaN when the refusal view was not scored
                    "logp_y": y,
                    "logp_refusal": r,
                    "w": wi,
                    "step": int(self.global_step),
                }
            )

    # ------------------------------------------------------------------ analysis outputs
    def weight_records(self) -> list[dict]:
        """One dict per row seen: uid, source, is_harmful, r, logp_y, logp_refusal, w, step."""
        return list(self._records)

    def detector_metrics(self, since_record: int = 0) -> dict[str, float]:
        """AUROC of each harmful-row detector score over the records from ``since_record``.

        Keys ``auroc_<score>``; a score that was not computed (NaN) or a window with one
        class only is left out. Analysis only: it reads the ground-truth tags.
        """
        return detector_aurocs(self._records[since_record:], DETECTOR_SCORES)

    def _log_detector(self) -> None:
        metrics = self.detector_metrics(self._detector_from)
        self._detector_from = len(self._records)
        if metrics:
            logs = {f"{self.log_prefix}/detector/{k}": v for k, v in metrics.items()}
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self) -> None:
        # finite loaders: close the open window at the epoch end
        if self._detector_from < len(self._records):
            metrics = self.detector_metrics(self._detector_from)
            self._detector_from = len(self._records)
            if metrics:
                self.log_dict(
                    {f"{self.log_prefix}/detector/{k}": v for k, v in metrics.items()},
                    on_step=False,
                    on_epoch=True,
                    batch_size=1,
                )

    # ------------------------------------------------------------------ checkpoints
    def _extra_state(self) -> dict:
        return {
            "micro_batches_seen": self.micro_batches_seen,
            "detector_from": self._detector_from,
            "records": list(self._records),
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.micro_batches_seen = int(state["micro_batches_seen"])
        self._detector_from = int(state["detector_from"])
        self._records = list(state["records"])
