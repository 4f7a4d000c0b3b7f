"""T-Vaccine: the layer probabilities from the harmful gradient, the seeded draw, and one
step (Vaccine's perturbation on the active layer only, the inactive layer's attention LoRA
untouched) against the released procedure written out with plain hooks."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from antibody.config.schema import AlignMethod
from antibody.methods.t_vaccine import TVaccineAlignModule, draw_layers, layer_probabilities
from tests._synthetic import align_item, clone_model, list_loader, tiny_lora_model, trainable, trainer

RHO = 2.0


def _attention(model) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in model.get_base_model().model.layers]


def _outputs(blocks):
    """Forward hooks that record each block's hidden output (the attention's first output)."""
    seen: list = [None] * len(blocks)

    def hook(i):
        def record(module, args, out):
            seen[i] = out[0] if isinstance(out, tuple) else out
        return record

    return seen, [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]


def _nll(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def test_layer_probabilities_are_the_harmful_gradient_norm_shares():
    model = tiny_lora_model()
    harm = align_item(0, 0)["harmful"]
    got = layer_probabilities(model, _attention(model), harm)
    ref = clone_model(model)
    seen, hooks = _outputs(_attention(ref))
    loss = _nll(ref, harm)
    grads = torch.autograd.grad(loss, seen)
    for h in hooks:
        h.remove()
    norms = [float(g.norm()) for g in grads]
    assert got == pytest.approx([n / sum(norms) for n in norms], rel=1e-5)
    assert sum(got) == pytest.approx(1.0) and all(p > 0 for p in got)


def test_the_draw_is_seeded_distinct_and_follows_the_probabilities():
    p = [0.0, 0.5, 0.0, 0.5]
    draws = {tuple(draw_layers(p, 2, 7, step)) for step in range(0, 200, 20)}
    assert draws == {(1, 3)}  # zero-probability layers are never drawn
    assert draw_layers([0.25] * 4, 2, 7, 40) == draw_layers([0.25] * 4, 2, 7, 40)
    many = [tuple(draw_layers([0.25] * 4, 2, 7, s)) for s in range(50)]
    assert len(set(many)) > 1 and all(len(set(d)) == 2 and list(d) == sorted(d) for d in many)
    assert draw_layers([0.5, 0.5], 8, 0, 0) == [0, 1]  # more layers asked than the model has


def _cfg(cfg):
    a = cfg.method.align
    a.method = AlignMethod.T_VACCINE
    a.t_vaccine.rho, a.t_vaccine.activated_layers = RHO, 1
    a.weight_decay, a.gradient_clip_val = 0.0, None
    return cfg


def test_a_step_perturbs_and_trains_the_active_layer_only(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    model = tiny_lora_model()
    module = TVaccineAlignModule(model, cfg.method.align, seed=cfg.run.seed)
    item = align_item(0, 0)
    # the released procedure by hand: probabilities, the draw, then Vaccine on that layer
    ref = clone_model(model)
    prob = layer_probabilities(ref, _attention(ref), item["harmful"])
    (active,) = draw_layers(prob, 1, cfg.run.seed, 0)
    block = _attention(ref)[active]
    seen, hooks = _outputs([block])
    clean = _nll(ref, item["align"])
    (g,) = torch.autograd.grad(clean, seen)
    hooks[0].remove()
    e = RHO * g / (g.float().norm() + 1e-7)

    def add(module_, args, out):
        return (out[0] + e, *out[1:]) if isinstance(out, tuple) else out + e

    handle = block.register_forward_hook(add)
    loss = _nll(ref, item["align"])
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    want = dict(zip(names, torch.autograd.grad(loss, trainable(ref)), strict=True))
    handle.remove()

    grads: dict = {}

    class BeforeStep(L.Callback):
        """Each trainable tensor's .grad when the optimiser steps (None: no update)."""

        def on_train_start(self, trainer_, pl_module):
            def hook(optimizer, args, kwargs):
                for n, p in model.named_parameters():
                    if p.requires_grad:
                        grads[n] = None if p.grad is None else p.grad.detach().clone()

            trainer_.optimizers[0].register_step_pre_hook(hook)

    trainer(1, tmp_path, callbacks=[BeforeStep()]).fit(module, train_dataloaders=list_loader([item]))
    assert module.active == [active]
    inactive = f"layers.{1 - active}.self_attn"
    for n, w in want.items():
        if inactive in n:
            assert grads[n] is None, n  # frozen this step, as the released code freezes it
        else:
            torch.testing.assert_close(grads[n], w, rtol=1e-4, atol=1e-7)
