"""Constrained fine-tuning (Qi et al. 2025): the per-position beta, one optimiser step's
gradient against the released objective written out by hand, the reference computed once
per row with the start tensors, and the config checks."""

from __future__ import annotations

import pytest
import torch

from antibody.config import compose
from antibody.config.baselines import ConstrainedConfig
from antibody.config.errors import ConfigError
from antibody.methods.constrained import ConstrainedFinetuneModule, beta_per_position
from tests._synthetic import (
    GradCapture,
    clone_model,
    finetune_item,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)
from tests.helpers import answer_token_logprobs


def test_beta_per_answer_position_is_the_released_list():
    # released get_beta_list(8) with beta 0.1, bias 20, first-token 5, length 5
    got = beta_per_position(torch.arange(8), ConstrainedConfig())
    assert got.tolist() == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1, 0.1])
    assert beta_per_position(torch.arange(3), ConstrainedConfig(bias_length=0)).tolist() == pytest.approx([0.1] * 3)


def _cfg(tiny_cfg):
    f = tiny_cfg.method.finetune
    f.method, f.weighting, f.gradient_clip_val, f.weight_decay = "constrained", "uniform", None, 0.0
    return tiny_cfg


def test_a_step_follows_the_released_objective_against_the_start_tensors(tiny_cfg, tmp_path):
    """The model has moved away from where the fit started (the aligned model): every token's
    weight is 2 (1 - sigmoid(beta_t (log p - log p_start))), at least 1e-3, detached, and
    the loss is the token mean of -weight x log p (released ConstrainedSFTTrainer)."""
    cfg = _cfg(tiny_cfg)
    model = tiny_lora_model()
    torch.manual_seed(3)
    start = [p.detach() + 0.3 * torch.randn_like(p) for p in trainable(model)]
    item = finetune_item(0, 0)
    # by hand: the reference from a copy holding the start tensors, the weights, the loss
    ref_model = clone_model(model)
    with torch.no_grad():
        for p, s in zip(trainable(ref_model), start, strict=True):
            p.copy_(s)
        ref = torch.cat(answer_token_logprobs(ref_model, item))
    cur_model = clone_model(model)
    logp_rows = answer_token_logprobs(cur_model, item)
    logp = torch.cat(logp_rows)
    position = torch.cat([torch.arange(len(r)) for r in logp_rows])
    beta = torch.tensor([0.5 if t == 0 else 2.0 if t < 5 else 0.1 for t in position.tolist()])
    weight = torch.clamp(2 * (1 - torch.sigmoid(beta * (logp.detach() - ref))), min=1e-3)
    assert (weight - 1).abs().max() > 0.05  # the model moved: weights are not all SFT's 1
    loss = -(weight * logp).sum() / logp.numel()
    want = torch.autograd.grad(loss, trainable(cur_model))

    module = ConstrainedFinetuneModule(model, cfg.method.finetune)
    module._start = start
    cap = GradCapture()
    trainer(1, tmp_path, callbacks=[cap]).fit(module, train_dataloaders=list_loader([item]))
    for g, w in zip(cap.grads[0], want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    # the reference was computed once per row and kept (no text: the uid keys the cache)
    assert set(module._reference) == set(item["uid"])
    torch.testing.assert_close(torch.cat([module._reference[u] for u in item["uid"]]), ref, rtol=1e-5, atol=1e-6)


def test_at_the_start_it_is_plain_sft_and_rows_seen_are_not_scored_again(tiny_cfg, tmp_path, monkeypatch):
    """Where the model still is the aligned one every weight is 2 (1 - 1/2) = 1: SFT's step.
    A second pass over the same rows reuses their cached reference."""
    from antibody.methods import constrained

    calls = []
    real = constrained.token_logprobs

    def counting(model, batch):
        calls.append(torch.is_grad_enabled())
        return real(model, batch)

    monkeypatch.setattr(constrained, "token_logprobs", counting)
    cfg = _cfg(tiny_cfg)
    item = finetune_item(0, 0)
    sft = clone_model(tiny_lora_model())
    nll = torch.cat(answer_token_logprobs(sft, item))
    want = torch.autograd.grad(-nll.mean(), trainable(sft))
    module = ConstrainedFinetuneModule(tiny_lora_model(), cfg.method.finetune)
    cap = GradCapture()
    trainer(2, tmp_path, callbacks=[cap]).fit(module, train_dataloaders=list_loader([item, dict(item, position=1)]))
    for g, w in zip(cap.grads[0], want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    assert calls == [False, True, True]  # one reference forward (no grad), then one training forward per step


def test_the_method_is_composed_and_checked():
    cfg = compose(["experiment=tiny", "method=constrained"])
    assert cfg.method.finetune.method.value == "constrained" and cfg.method.finetune.constrained.bias_length == 5
    with pytest.raises(ConfigError, match="weights tokens, not rows"):
        compose(["experiment=tiny", "method=constrained", "method.finetune.weighting=likelihood_ratio"])
    with pytest.raises(ConfigError, match=r"method.finetune.constrained.beta=0"):
        compose(["experiment=tiny", "method=constrained", "method.finetune.constrained.beta=0"])
