"""Gradient accumulation equals one large batch, for every stage module whose documented
semantics promise it: N micro-batches accumulated over one optimiser step give the
gradient, and the update, of one step on their concatenation.

- FlatAlignModule running SFT (no flat terms): the window's update is the mean of the
  micro-batch gradients (flat_align.py's module docstring, "Accumulation semantics");
- WeightedFinetuneModule with uniform weights and micro-batches of equal target-token
  counts (weighted_finetune.py's module docstring).

The flat methods (their terms are per micro-batch), weighted fine-tuning (its softmax is
per micro-batch), Vaccine and RepNoise do not promise it; their own test files check
their per-micro-batch averaging.
"""

from __future__ import annotations

import copy

import pytest
import torch

from antibody.config.schema import AlignMethod, FinetuneMethod, Weighting
from antibody.methods.flat_align import FlatAlignModule
from antibody.methods.registry import build_align_module, build_finetune_module
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from tests._synthetic import (
    GradCapture,
    align_item,
    concat_batches,
    finetune_item,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)


def _sft_align(cfg, accumulate):
    a = cfg.method.align
    a.method, a.accumulate_grad_batches, a.weight_decay = AlignMethod.SFT, accumulate, 0.0
    return build_align_module(tiny_lora_model(), cfg)


def _sft_align_items():
    # equal lengths: the token-mean loss of the concatenation is then the mean of the two
    i0, i1 = align_item(0, 0, fixed_lengths=True), align_item(0, 1, fixed_lengths=True)
    big = {"align": concat_batches(i0["align"], i1["align"]), "harmful": i0["harmful"], "position": 0}
    return [i0, i1], big


def _uniform_finetune(cfg, accumulate):
    f = cfg.method.finetune
    f.method, f.weighting = FinetuneMethod.SFT, Weighting.UNIFORM
    f.accumulate_grad_batches, f.weight_decay = accumulate, 0.0
    return build_finetune_module(tiny_lora_model(), cfg)


def _uniform_finetune_items():
    i0, i1 = finetune_item(0, 0, fixed_lengths=True), finetune_item(0, 1, fixed_lengths=True)
    return [i0, i1], {**concat_batches(i0, i1), "position": 0}


def _step(build, tiny_cfg, accumulate, items, root):
    """One optimiser step over `items`: the module, its gradient and its trained tensors."""
    module = build(copy.deepcopy(tiny_cfg), accumulate)
    cap = GradCapture()
    t = trainer(1, root, callbacks=[cap])
    t.fit(module, train_dataloaders=list_loader(items))
    assert t.global_step == 1 and len(cap.grads) == 1  # the whole window was one step
    grad = torch.cat([g.reshape(-1) for g in cap.grads[0]])
    return module, grad, [p.detach().clone() for p in trainable(module.model)]


@pytest.mark.parametrize(
    ("module_cls", "build", "make_items"),
    [
        pytest.param(FlatAlignModule, _sft_align, _sft_align_items, id="FlatAlignModule-sft"),
        pytest.param(WeightedFinetuneModule, _uniform_finetune, _uniform_finetune_items,
                     id="WeightedFinetuneModule-uniform"),
    ],
)
def test_accumulation_equals_one_large_batch(tiny_cfg, tmp_path, module_cls, build, make_items):
    micro, big = make_items()
    accumulated, g_acc, p_acc = _step(build, tiny_cfg, 2, micro, tmp_path / "accumulated")
    large, g_big, p_big = _step(build, tiny_cfg, 1, [big], tmp_path / "large")
    assert type(accumulated) is type(large) is module_cls  # the module the case is about
    torch.testing.assert_close(g_acc, g_big, rtol=1e-5, atol=1e-8)
    for p, q in zip(p_acc, p_big, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    # the comparison has teeth: one micro-batch's step (what a window that kept only one
    # micro-batch would take) is far from the large batch's
    _, g_one, _ = _step(build, tiny_cfg, 1, micro[:1], tmp_path / "one")
    assert float((g_one - g_big).norm()) > 1e-2 * float(g_big.norm())
