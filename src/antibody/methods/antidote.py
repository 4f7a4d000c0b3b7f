"""Antidote (Huang et al. 2025; git-disl/Antidote at 26e2ade): after fine-tuning, zero the
adapter weights that matter most on harmful rows.

The released recipe (utils.py, prune_wanda_outlier; train.py:497-535), step by step:
1. run harmful prompt+answer rows through the fine-tuned model (eval mode, no gradient) and
   keep, for every LoRA linear layer (lora_A and lora_B of the fine-tuning adapter: find_layers
   keeps the modules with "lora" in their name), the squared L2 norm of each input feature
   over the tokens it saw (WrappedGPT.scaler_row, averaged over rows: a constant factor per
   layer, which does not change any ranking);
2. score each weight by Wanda's |W_ij| sqrt(scaler_row_j);
3. in each output row, keep the int(cols (1 - dense_ratio)) lowest-scoring weights and zero
   the others (W_mask = 1 on the rest, then param *= 1 - W_mask).

The released calibration runs one row per batch (per_device_train_batch_size 1), so no
padding enters the norms; our batches are padded, and pad positions are masked out, which
gives the same sums. Only the trained adapter ("default") is pruned: adapters stacked frozen
beneath it, or merged into the base, are the alignment's and stay as they are, as in the
released code, where the alignment LoRA is merged before the fine-tuning LoRA loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from antibody.models.adapters import TRAINED_ADAPTER


def lora_linears(model: nn.Module, adapter: str = TRAINED_ADAPTER) -> dict[str, nn.Linear]:
    """The adapter's LoRA matrices as peft holds them: every `<module>.lora_A.<adapter>` and
    `<module>.lora_B.<adapter>` linear layer, by its full name."""
    out = {}
    for name, mod in model.named_modules():
        parts = name.rsplit(".", 2)
        if isinstance(mod, nn.Linear) and len(parts) == 3 and parts[1] in ("lora_A", "lora_B") and parts[2] == adapter:
            out[name] = mod
    return out


class InputNorms:
    """Forward hooks that add up, per input feature of each layer, the squared activations of
    the tokens the attention mask keeps (`mask` is set before each forward)."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
        self.tokens = 0
        self.mask: torch.Tensor | None = None  # (batch, length) of 0/1
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str):
        def add(_module, inputs, _output):
            x = inputs[0].detach().to(torch.float64)  # (batch, length, features)
            keep = self.mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
            self.sums[name] += (x.square() * keep).sum(dim=(0, 1)).cpu()
        return add

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """|W_ij| ||X_j||_2 (utils.py:702), in float64 so that near-ties rank alike on every device."""
    return weight.detach().to(torch.float64).abs().cpu() * input_sq_sum.to(torch.float64).sqrt().unsqueeze(0)


def prune_mask(scores: torch.Tensor, dense_ratio: float) -> torch.Tensor:
    """True where a weight is zeroed: in each row, all but the int(cols (1 - dense_ratio))
    lowest scores (a stable ascending sort, as utils.py:721-723)."""
    keep = int(scores.shape[1] * (1 - dense_ratio))  # the released rounding, in Python floats
    order = torch.sort(scores, dim=-1, stable=True).indices
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], False)
    return mask


@dataclass
class PruneReport:
    layers: int
    weights: int  # adapter weights scored
    zeroed: int  # of which zeroed
    tokens: int  # calibration tokens (pad excluded)
    rows: int  # calibration rows

    def as_dict(self) -> dict:
        return {"layers": self.layers, "weights": self.weights, "zeroed": self.zeroed,
                "zeroed_share": self.zeroed / max(1, self.weights), "tokens": self.tokens, "rows": self.rows}


@torch.no_grad()
def antidote_prune(model: nn.Module, batches: Iterable[dict], dense_ratio: float) -> PruneReport:
    """Score the trained adapter's weights on `batches` (input_ids, attention_mask) and zero,
    in place, those Antidote prunes."""
    layers = lora_linears(model)
    if not layers:
        raise ValueError(f"Antidote: the model has no LoRA layers of adapter {TRAINED_ADAPTER!r} to prune")
    was_training = model.training
    model.eval()  # the released calibration runs in eval mode: LoRA dropout is off
    norms = InputNorms(layers)
    device = next(model.parameters()).device
    rows = 0
    try:
        for batch in batches:
            mask = batch["attention_mask"]
            norms.mask = mask
            norms.tokens += int(mask.sum())
            rows += int(mask.shape[0])
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        norms.close()
        model.train(was_training)
    if rows == 0:
        raise ValueError("Antidote: no calibration rows")
    weights = zeroed = 0
    for name, layer in layers.items():
        mask = prune_mask(wanda_scores(layer.weight, norms.sums[name]), dense_ratio)
        layer.weight.masked_fill_(mask.to(layer.weight.device), 0.0)
        weights += mask.numel()
        zeroed += int(mask.sum())
    return PruneReport(len(layers), weights, zeroed, norms.tokens, rows)
