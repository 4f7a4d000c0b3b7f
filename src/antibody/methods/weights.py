"""Per-sample weights of the fine-tuning stage (docs/method.md ("Stage 2")), keyed by ``Weighting``.

For each row i of a user batch: logp_y(i) = log p(y_i | x_i) of its own response and
logp_r(i) = log p(y_r(i) | x_i) of its refusal view, both length-normalised (``mean``,
released code) or summed (``sum``, paper). The Antibody score is
``r_i = logp_y(i) - logp_r(i)`` and the weights ``softmax(r / tau)`` over the batch,
detached. Controls and the oracle exist for analysis and are labelled as such
(``kind``): they must not be reported as defences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

import torch
from torch import Tensor

from antibody.config.schema import LossForm, RatioForm, Weighting
from antibody.methods.losses import SequenceNLL


class WeightingKind(StrEnum):
    DEFENCE = "defence"  # deployable: uses no labels
    CONTROL = "control"  # ablation of one term of the Antibody score
    ANALYSIS_ONLY = "analysis_only"  # reads the ground-truth harmful tag: never a defence




@dataclass
class WeightInputs:
    """What a weighting rule may look at, all [B] tensors (no gradient)."""

    logp_response: Tensor
    logp_refusal: Optional[Tensor]  # None when the rule does not need the refusal view
    is_harmful: Tensor  # bool
    tau: float


@dataclass(frozen=True)
class WeightingRule:
    kind: WeightingKind
    needs_refusal: bool  # whether the extra no-grad refusal forward must run
    # the per-row score whose softmax gives the weights; None: weights do not use a score
    score: Optional[Callable[[WeightInputs], Tensor]]
    # weights for rules without a score
    direct: Optional[Callable[[WeightInputs], Tensor]] = None

    def weights(self, inputs: WeightInputs) -> Tensor:
        """Detached weights summing to 1 over the batch (0 everywhere if no row may count)."""
        with torch.no_grad():
            if self.score is not None:
                return torch.softmax(self.score(inputs).float() / inputs.tau, dim=0)
            assert self.direct is not None
            return self.direct(inputs)


def _require_refusal(inputs: WeightInputs) -> Tensor:
    if inputs.logp_refusal is None:
        raise ValueError("this weighting needs log p(y_r|x) but no refusal view was scored")
    return inputs.logp_refusal


def _uniform(inputs: WeightInputs) -> Tensor:
    n = inputs.logp_response.shape[0]
    return torch.full((n,), 1.0 / n, dtype=torch.float32, device=inputs.logp_response.device)


def _oracle(inputs: WeightInputs) -> Tensor:
    keep = (~inputs.is_harmful.bool()).float()
    # an all-harmful batch gets all-zero weights: the loss is then exactly 0 (see loss)
    return keep / keep.sum().clamp_min(1.0)


WEIGHTINGS: dict[Weighting, WeightingRule] = {
    Weighting.UNIFORM: WeightingRule(WeightingKind.DEFENCE, needs_refusal=False, score=None, direct=_uniform),
    # Antibody: r = log p(y|x) - log p(y_r|x)
    Weighting.LIKELIHOOD_RATIO: WeightingRule(
        WeightingKind.DEFENCE,
        needs_refusal=True,
        score=lambda i: i.logp_response - _require_refusal(i),
    ),
    # control: the compliance term alone
    Weighting.RESPONSE_ONLY: WeightingRule(
        WeightingKind.CONTROL, needs_refusal=False, score=lambda i: i.logp_response
    ),
    # control: the refusal term alone
    Weighting.REFUSAL_ONLY: WeightingRule(
        WeightingKind.CONTROL, needs_refusal=True, score=lambda i: -_require_refusal(i)
    ),
    # ANALYSIS ONLY: reads the ground-truth tag the provider does not have (upper bound)
    Weighting.ORACLE: WeightingRule(
        WeightingKind.ANALYSIS_ONLY, needs_refusal=False, score=None, direct=_oracle
    ),
}


def row_logprob(nll: SequenceNLL, form: RatioForm) -> Tensor:
    """log p(y|x) per row, length-normalised or summed."""
    return _LOGPROB_FORMS[form](nll)


_LOGPROB_FORMS: dict[RatioForm, Callable[[SequenceNLL], Tensor]] = {
    RatioForm.MEAN: SequenceNLL.row_mean_logprob,  # released code
    RatioForm.SUM: SequenceNLL.row_sum_logprob,  # paper
}


def _token_mean_loss(nll: SequenceNLL, w: Tensor, denom: Optional[Tensor]) -> Tensor:
    if denom is None:
        denom = (w * nll.n_tokens).sum()
    numer = (w * nll.nll_sum).sum()
    # zero weight on every target token (oracle on an all-harmful batch): a zero loss that
    # keeps the graph, instead of 0/0
    return torch.where(denom > 0, numer / denom.clamp_min(1e-30), numer * 0.0)


def _sample_mean_loss(nll: SequenceNLL, w: Tensor, denom: Optional[Tensor]) -> Tensor:
    # no normaliser: the weights already sum to 1 over the (global) batch
    return (w * (nll.nll_sum / nll.n_tokens.clamp_min(1.0))).sum()


_LOSS_FORMS: dict[LossForm, Callable[[SequenceNLL, Tensor, Optional[Tensor]], Tensor]] = {
    LossForm.TOKEN_MEAN: _token_mean_loss,
    LossForm.SAMPLE_MEAN: _sample_mean_loss,
}


def weighted_loss(
    nll: SequenceNLL, w: Tensor, form: LossForm = LossForm.TOKEN_MEAN, token_total: Optional[Tensor] = None
) -> Tensor:
    """The fine-tuning loss from per-row NLL sums (with gradient) and detached weights.

    ``token_total``: sum_i w_i * N_i of the whole batch when ``nll`` holds only part of it
    (this rank's rows under DDP, docs/multi-gpu.md); then the loss is this part's share of
    the batch's token-mean loss, and the shares add up to it. Default: this batch's own.
    """
    return _LOSS_FORMS[form](nll, w.detach(), None if token_total is None else token_total.detach())


def log_tag(mode: Weighting) -> str:
    """Namespace of logged weight statistics: "" for defences, else e.g.
    "control_response_only" or "analysis_only_oracle", so that a control or the oracle is
    never read as a defence on a dashboard."""
    kind = WEIGHTINGS[mode].kind
    return "" if kind is WeightingKind.DEFENCE else f"{kind.value}_{mode.value}"
