"""sharpness_probe against a functional reference; parameters and .grad left untouched."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from antibody.methods.sharpness import sharpness_probe
from tests._synthetic import align_item, tiny_lora_model, trainable


def _batches():
    return [align_item(0, 0)["harmful"], align_item(0, 1)["harmful"]]


def _ref_loss(model, params, batches):
    losses = [
        functional_call(
            model,
            params,
            args=(),
            kwargs={k: b[k] for k in ("input_ids", "attention_mask", "labels")},
            strict=False,
        ).loss
        for b in batches
    ]
    return torch.stack(losses).mean()


def test_probe_matches_functional_reference():
    model = tiny_lora_model()
    model.train()
    batches = _batches()
    theta = {
        n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad
    }
    loss = _ref_loss(model, theta, batches)
    grads = torch.autograd.grad(loss, list(theta.values()))
    loss = loss.detach()
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    rho = 0.5
    moved = {n: v.detach() - rho * g / norm for (n, v), g in zip(theta.items(), grads, strict=True)}
    with torch.no_grad():
        loss_at = _ref_loss(model, moved, batches)

    before = [p.detach().clone() for p in trainable(model)]
    preset = [torch.full_like(p, 7.0) for p in trainable(model)]
    for p, g in zip(trainable(model), preset, strict=True):
        p.grad = g.clone()
    out = sharpness_probe(model, batches, rho)

    assert out["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
    assert out["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert out["loss_at_rho"] == pytest.approx(float(loss_at), rel=1e-5)
    assert out["loss_drop"] == pytest.approx(float(loss) - float(loss_at), rel=1e-3, abs=1e-7)
    assert out["relative_drop"] == pytest.approx(out["loss_drop"] / out["loss"], rel=1e-9)
    assert out["loss_drop"] > 0  # a descent step lowers the loss
    for p, b, g in zip(trainable(model), before, preset, strict=True):
        assert torch.equal(p, b)  # restored bit for bit
        assert torch.equal(p.grad, g)  # accumulated gradients untouched
    assert model.training


def test_small_radius_drop_is_first_order():
    # L(theta - rho g/||g||) = L - rho ||g|| + O(rho^2)
    model = tiny_lora_model()
    out = sharpness_probe(model, _batches(), 1e-3)
    assert out["loss_drop"] / (1e-3 * out["grad_norm"]) == pytest.approx(1.0, rel=0.05)


def test_probe_needs_batches():
    with pytest.raises(ValueError, match="at least one harmful batch"):
        sharpness_probe(tiny_lora_model(), [], 0.1)
