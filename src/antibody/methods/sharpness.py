"""Sharpness probe of the harmful loss: how much one normalised descent step lowers it.

This is the quantity flat alignment shrinks (docs/method.md ("Sharpness probe")):
``L_harm(theta) - L_harm(theta - rho g / ||g||)`` with ``g = grad L_harm(theta)`` over
trainable tensors. The parameters are restored bit-exactly afterwards and ``.grad`` is
never touched, so the probe can run between training steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from antibody.methods.losses import token_mean_nll
from antibody.methods.perturb import ParameterSnapshot, descend_, global_norm, grads_of, trainable_parameters


def _harmful_loss(model: nn.Module, batches: Sequence[Mapping[str, Tensor]]) -> Tensor:
    # mean of the per-batch token-mean losses (each batch counts equally)
    return torch.stack([token_mean_nll(model, b) for b in batches]).mean()


def sharpness_probe(
    model: nn.Module, batches: Sequence[Mapping[str, Tensor]], rho: float
) -> dict[str, float]:
    """Return grad_norm, loss, loss_at_rho, loss_drop (= loss - loss_at_rho), relative_drop.

    Runs in eval mode (no dropout) and puts the model's training mode back afterwards.
    """
    if not batches:
        raise ValueError("sharpness_probe needs at least one harmful batch")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("sharpness_probe: the model has no trainable parameters")
    was_training = model.training
    model.eval()
    snapshot = ParameterSnapshot()
    try:
        loss = _harmful_loss(model, batches)
        grads = grads_of(loss, params)
        norm = global_norm(grads)
        snapshot.save(params)
        try:
            descend_(params, grads, rho, norm)
            with torch.no_grad():
                loss_at_rho = _harmful_loss(model, batches)
        finally:
            snapshot.restore(params)
    finally:
        model.train(was_training)
    base, moved = float(loss.detach()), float(loss_at_rho)
    drop = base - moved
    return {
        "grad_norm": float(norm),
        "loss": base,
        "loss_at_rho": moved,
        "loss_drop": drop,
        "relative_drop": drop / base if base != 0 else float("nan"),
    }
