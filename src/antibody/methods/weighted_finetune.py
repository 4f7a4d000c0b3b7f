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

The ground-truth ``is_harmful`` tag is read only for logging, for the detector AUROCs
and by the ``oracle`` weighting, which is analysis-only (never a defence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from antibody.config.schema import Config
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


class WeightedFinetuneModule(StageModule):
    """Fine-tuning stage with per-sample weights (uniform = plain SFT).

    Items are user batches (see the DataModule's batch contract) with ``"position"``.
    ``loss_form``: TOKEN_MEAN (released code) or SAMPLE_MEAN (paper; docs/method.md), from
    ``method.finetune.loss_form``. ``detector_window``: micro-batches per detector-AUROC log;
    default one pass over the upload, ceil(data.user.n / data.finetune_batch_size).
    ``score_refusal``: also run the refusal forward when the weighting does not need it
    (gives the detector AUROCs of -r and log p(y_r|x) for SFT runs, at its cost).
    """

    log_prefix = "finetune"

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        loss_form: Optional[LossForm] = None,
        detector_window: Optional[int] = None,
        score_refusal: Optional[bool] = None,
    ):
        ft = cfg.method.finetune
        # constructor arguments override the config (tests); by default the config decides
        loss_form = ft.loss_form if loss_form is None else loss_form
        detector_window = ft.detector_window if detector_window is None else detector_window
        score_refusal = ft.score_refusal if score_refusal is None else score_refusal
        rule = WEIGHTINGS[ft.weighting]
        # controls and the oracle log their weight statistics under a labelled namespace
        # (finetune/control_response_only/..., finetune/analysis_only_oracle/...)
        tag = log_tag(ft.weighting)
        weight_names = {
            k: f"{tag}/{k}" if tag else k
            for k in ("weight_harmful_mean", "weight_benign_mean", "harmful_weight_share")
        }
        super().__init__(model, cfg, ft, ["loss", *weight_names.values()])
        self.rule = rule
        self._weight_names = weight_names
        self.loss_form = loss_form
        self.score_refusal = score_refusal or self.rule.needs_refusal
        self.detector_window = detector_window or math.ceil(cfg.data.user.n / cfg.data.finetune_batch_size)
        self.micro_batches_seen = 0
        self._detector_from = 0  # index of the first record of the open detector window
        self._records: list[dict] = []

    # ------------------------------------------------------------------ micro-batch
    def _accumulate_micro_batch(self, batch: Mapping[str, Any]) -> None:
        ft = self.cfg.method.finetune
        nll = sequence_nll(self.model, batch)
        detached = SequenceNLL(nll.nll_sum.detach(), nll.n_tokens)
        logp_y = row_logprob(detached, ft.ratio_form)
        logp_r = None
        if self.score_refusal:
            with torch.no_grad():
                logp_r = row_logprob(sequence_nll(self.model, batch, prefix="refusal_"), ft.ratio_form)
        is_harmful = batch["is_harmful"].bool()
        w = self.rule.weights(WeightInputs(logp_y, logp_r, is_harmful, ft.tau))
        loss = weighted_loss(nll, w, self.loss_form)
        self.manual_backward(loss / self.accumulate)

        self._track("loss", loss)
        self._track_weights(w, is_harmful)
        self._record_rows(batch, logp_y, logp_r, w)
        self.micro_batches_seen += 1
        if self.micro_batches_seen % self.detector_window == 0:
            self._log_detector()

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

    def _record_rows(
        self, batch: Mapping[str, Any], logp_y: Tensor, logp_r: Optional[Tensor], w: Tensor
    ) -> None:
        nan = float("nan")
        ly = logp_y.tolist()
        lr = logp_r.tolist() if logp_r is not None else [nan] * len(ly)
        for uid, source, harmful, y, r, wi in zip(
            batch["uid"], batch["source"], batch["is_harmful"].tolist(), ly, lr, w.tolist(), strict=True
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
        recs = self._records[since_record:]
        labels = torch.tensor([r["is_harmful"] for r in recs], dtype=torch.long)
        out: dict[str, float] = {}
        if not recs or labels.min() == labels.max():
            return out
        for name, score in DETECTOR_SCORES.items():
            values = torch.tensor([score(r) for r in recs], dtype=torch.float64)
            if torch.isnan(values).any():
                continue
            out[f"auroc_{name}"] = float(binary_auroc(values, labels))
        return out

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
