"""Per-sequence negative log-likelihood of the target tokens of a causal LM.

docs/lightning.md ("transformers 5"): the default causal-LM loss is a token mean over the batch, so
per-sample weights need per-sequence sums. Labels follow the Hugging Face convention
(aligned with ``input_ids``, -100 on prompt and padding); the shift by one happens here,
exactly as in transformers' ``ForCausalLMLoss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100  # transformers / PyTorch convention for "no loss here"


class SequenceNLL(NamedTuple):
    """Per row: summed NLL of the target tokens and their number (float32)."""

    nll_sum: Tensor  # [B]
    n_tokens: Tensor  # [B]

    def token_mean(self) -> Tensor:
        """Token-mean NLL over the batch (= transformers' ``model(labels=...).loss``)."""
        return self.nll_sum.sum() / self.n_tokens.sum().clamp_min(1.0)

    def row_mean_logprob(self) -> Tensor:
        """mean_t log p(y_t | ...) per row; rows with no target token get 0."""
        return -self.nll_sum / self.n_tokens.clamp_min(1.0)

    def row_sum_logprob(self) -> Tensor:
        """sum_t log p(y_t | ...) per row."""
        return -self.nll_sum


def per_sequence_nll(logits: Tensor, labels: Tensor) -> SequenceNLL:
    """Per-row summed cross-entropy of positions whose label is not -100.

    Only the target positions are gathered before the (float32) cross-entropy: the full
    [B, L, V] float32 logits would be the largest tensor of the step at paper scale. The
    gather's size is the number of target tokens, so it reads one number back to the host
    per call (one `nonzero`, whose indices serve the gather and the per-row sums alike).
    """
    batch = labels.shape[0]
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    where = mask.nonzero(as_tuple=True)
    ce = F.cross_entropy(shift_logits[where].float(), shift_labels[where], reduction="none")
    nll_sum = torch.zeros(batch, dtype=torch.float32, device=logits.device).index_add(0, where[0], ce)
    n_tokens = mask.sum(dim=1).to(torch.float32)
    return SequenceNLL(nll_sum, n_tokens)


def sequence_nll(model: nn.Module, batch: Mapping[str, Tensor], prefix: str = "") -> SequenceNLL:
    """Forward ``model`` on ``batch[prefix + "input_ids"]`` etc. and return per-row NLL.

    ``prefix="refusal_"`` scores the refusal view of a batch (same prompt, refusal answer).
    """
    out = model(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"])
    return per_sequence_nll(out.logits, batch[f"{prefix}labels"])


def token_mean_nll(model: nn.Module, batch: Mapping[str, Tensor], prefix: str = "") -> Tensor:
    """The ordinary SFT loss of a batch (token mean over all target tokens)."""
    return sequence_nll(model, batch, prefix).token_mean()
