"""Bayesian Data Scheduler: one step of the model and of the scheduler against the released
objective written out by hand, its checkpoint state, and the config checks."""

from __future__ import annotations

import pytest
import torch

from antibody.config import compose
from antibody.config.errors import ConfigError
from antibody.methods.bds import BDSFinetuneModule
from tests._synthetic import (
    GradCapture,
    align_item,
    clone_model,
    finetune_item,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)
from tests.helpers import answer_token_logprobs


def _row_ce(model, batch) -> torch.Tensor:
    """Each row's mean answer-token CE, from the position-by-position log-probs."""
    return torch.stack([-row.mean() for row in answer_token_logprobs(model, batch)])


def _cfg(tiny_cfg):
    f = tiny_cfg.method.finetune
    f.method, f.weighting, f.gradient_clip_val, f.weight_decay = "bds", "uniform", None, 0.0
    return tiny_cfg


def test_a_step_of_the_model_and_of_the_scheduler(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    rows = 10
    model = tiny_lora_model()
    user, guide = finetune_item(0, 0), align_item(0, 0)["align"]
    item = {"user": user, "guide": guide, "position": 0}
    module = BDSFinetuneModule(model, cfg.method.finetune, rows=rows)
    # a scheduler part-way: logits no longer equal, slots 3.. for this batch's rows
    logits0 = torch.linspace(-0.5, 0.7, rows)
    module.logits = logits0.clone()
    module.slot = {f"earlier-{i}": i for i in range(3)}
    # by hand: weights N softmax(l) at the rows' slots, the model loss, the scheduler's AdamW step
    idx = torch.arange(3, 3 + len(user["uid"]))
    w = rows * torch.softmax(logits0, 0)[idx]
    ref = clone_model(model)
    ce_user = _row_ce(ref, user)
    loss = _row_ce(ref, guide).mean() + (w * ce_user).mean()
    want = torch.autograd.grad(loss, trainable(ref))
    logit = logits0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([logit], lr=5e-3, betas=(0.9, 0.95), weight_decay=0.0)
    (rows * torch.softmax(logit, 0)[idx] * ce_user.detach()).mean().backward()
    opt.step()

    cap = GradCapture()
    trainer(1, tmp_path, callbacks=[cap]).fit(module, train_dataloaders=list_loader([item]))
    for g, x in zip(cap.grads[0], want, strict=True):
        torch.testing.assert_close(g, x, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(module.logits.detach(), logit.detach(), rtol=1e-6, atol=1e-7)
    assert [module.slot[u] for u in user["uid"]] == idx.tolist()
    # weights.jsonl: each row's weight / B; the harmful rows' weights as a detector
    recs = module.weight_records()
    assert [r["w"] * len(recs) for r in recs] == pytest.approx(w.tolist(), rel=1e-5)
    # the checkpoint state gives back the logits, slots, scheduler state and records
    state = module._extra_state()
    again = BDSFinetuneModule(tiny_lora_model(), cfg.method.finetune, rows=rows)
    again._load_extra_state(state)
    assert torch.equal(again.logits, module.logits.detach().cpu()) and again.slot == module.slot
    assert again.scheduler().state_dict()["state"][0]["step"] == 1 and again.weight_records() == recs


def test_the_method_is_composed_and_checked():
    cfg = compose(["experiment=tiny", "method=bds"])
    assert cfg.method.finetune.method.value == "bds" and cfg.method.finetune.bds.scheduler_lr == 5e-3
    with pytest.raises(ConfigError, match="learns its own row weights"):
        compose(["experiment=tiny", "method=bds", "method.finetune.weighting=likelihood_ratio"])
    with pytest.raises(ConfigError, match="runs in one process"):
        compose(["experiment=tiny", "method=bds", "trainer.devices=2", "trainer.strategy=ddp"])
