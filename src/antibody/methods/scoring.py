"""The Antibody score of rows outside training: log p(y|x) of each row's own response,
log p(y_r|x) of its refusal view and r = log p(y|x) - log p(y_r|x), by the fine-tuning stage's
own functions (`sequence_nll`, `row_logprob` with the stage's ratio form, the
`likelihood_ratio` rule's score; methods/weighted_finetune.py), with no gradient. So a row's r
here is the r `WeightedFinetuneModule` computes for it. Used by the screen (app/screen/run.py)
and by the adaptive attacks' attacked model (app/attacked.py), which choose or judge rows by
what the weighting would do with them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from antibody.config.schema import RatioForm, Weighting
from antibody.methods.losses import sequence_nll
from antibody.methods.weights import WEIGHTINGS, WeightInputs, row_logprob


def ratio_scores(model, batch: Mapping, ratio_form: RatioForm) -> dict[str, torch.Tensor]:
    """{"logp_y", "logp_refusal", "r"} of one collated batch (the DataModule's batch
    contract), float32 on the CPU. Always the Antibody score, whatever weighting a config names."""
    with torch.no_grad():
        logp_y = row_logprob(sequence_nll(model, batch), ratio_form)
        logp_r = row_logprob(sequence_nll(model, batch, prefix="refusal_"), ratio_form)
        inputs = WeightInputs(logp_y, logp_r, batch["is_harmful"].bool(), 1.0)
        r = WEIGHTINGS[Weighting.LIKELIHOOD_RATIO].score(inputs)
    return {"logp_y": logp_y.float().cpu(), "logp_refusal": logp_r.float().cpu(), "r": r.float().cpu()}
