"""FlatAlignModule: perturbation, exact restore, the update direction, accumulation,
non-finite skipping and bf16, each checked against an independent computation."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.func import functional_call

from antibody.config.errors import ConfigError
from antibody.config.schema import AlignMethod, LambdaMode
from antibody.methods.flat_align import FlatAlignModule
from antibody.methods.perturb import ParameterSnapshot, descend_, global_norm
from tests._synthetic import (
    BF16_RTOL,
    GradCapture,
    align_item,
    assert_close_bf16,
    clone_model,
    concat_batches,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)
from tests.conftest import CUDA_MARKS

RHO = 0.5  # larger than the paper's 0.1 so that g_h' differs clearly from g_h on a tiny model


def _cfg(cfg, method=AlignMethod.ANTIBODY, mode=LambdaMode.KKT, lam=5.0, lambda2=0.05, accumulate=1, **kw):
    a = cfg.method.align
    a.method, a.lambda_mode, a.lam, a.lambda2, a.rho = method, mode, lam, lambda2, RHO
    a.accumulate_grad_batches = accumulate
    a.weight_decay = 0.0
    a.gradient_clip_val = None  # the unclipped update is checked here; clipping: test_clipping.py
    for k, v in kw.items():
        setattr(a, k, v)
    return cfg


# ---------------------------------------------------------------------------- reference
def _named_trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _ref_loss(model, params, batch, prefix=""):
    # transformers' own loss through functional_call: independent of antibody.methods.losses
    kwargs = {
        "input_ids": batch[f"{prefix}input_ids"],
        "attention_mask": batch[f"{prefix}attention_mask"],
        "labels": batch[f"{prefix}labels"],
    }
    return functional_call(model, params, args=(), kwargs=kwargs, strict=False).loss


def _ref_grad(model, params, batch, prefix=""):
    leaf = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(_ref_loss(model, leaf, batch, prefix), list(leaf.values()), allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for v, g in zip(leaf.values(), grads, strict=True)]


def _flat(gs):
    return torch.cat([g.reshape(-1) for g in gs]).double()


def _ref_terms(model, item, rho=RHO):
    """g_a, g_h, g_h', g_r and theta' by functional calls on an untouched copy."""
    ref = clone_model(model)
    theta = _named_trainable(ref)
    g_h = _ref_grad(ref, theta, item["harmful"])
    norm = math.sqrt(float(_flat(g_h).pow(2).sum()))
    theta_p = {k: v - rho * g / (norm + 1e-12) for (k, v), g in zip(theta.items(), g_h, strict=True)}
    return {
        "g_a": _ref_grad(ref, theta, item["align"]),
        "g_h": g_h,
        "g_hp": _ref_grad(ref, theta_p, item["harmful"]),
        "g_r": _ref_grad(ref, theta_p, item["harmful"], "refusal_"),
        "theta": theta,
        "theta_p": theta_p,
    }


def _ref_lambda(mode, a, s, lam=5.0, xi=5.0, eta=5.0):
    if mode is LambdaMode.CONSTANT:
        return lam
    if mode is LambdaMode.KKT:
        ss = float(s @ s)
        return max(0.0, (xi * ss - float(s @ a)) / ss)
    # cosine_ema at its first update: the EMA starts at the raw value
    return max(eta - float(s @ a) / (float(a.norm()) * float(s.norm())), 0.0)


def _ref_update(terms_list, mode, lambda2, **lam_kw):
    """A + lambda(A, S) S + lambda2 R over window averages of per-micro-batch terms."""
    n = len(terms_list)
    A = sum(_flat(t["g_a"]) for t in terms_list) / n
    S = sum(_flat(t["g_h"]) - _flat(t["g_hp"]) for t in terms_list) / n
    R = sum(_flat(t["g_r"]) for t in terms_list) / n
    lam = _ref_lambda(mode, A, S, **lam_kw)
    return A + lam * S + lambda2 * R, lam


def _fit(module, items, max_steps, tmp_path, callbacks=(), **kw):
    t = trainer(max_steps, tmp_path, callbacks=callbacks, **kw)
    t.fit(module, train_dataloaders=list_loader(items))
    return t


class ForwardRecorder:
    """Snapshot of the trainable tensors at every forward call of the model."""

    def __init__(self, model):
        self.snaps = []
        self.handle = model.register_forward_pre_hook(
            lambda m, args, kwargs: self.snaps.append([p.detach().clone() for p in trainable(m)]),
            with_kwargs=True,
        )


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("log_refusal", "passes"), [(False, 3), (True, 4)])
def test_booster_costs_three_passes_unless_refusal_logging_is_asked_for(tiny_cfg, tmp_path, log_refusal, passes):
    cfg = _cfg(tiny_cfg, method=AlignMethod.BOOSTER, mode=LambdaMode.CONSTANT, lambda2=0.0)
    cfg.method.align.log_refusal_loss = log_refusal
    model = tiny_lora_model()
    rec = ForwardRecorder(model)
    t = _fit(FlatAlignModule(model, cfg.method.align), [align_item(0, 0)], 1, tmp_path)
    # g_h at theta, g_h' at theta', g_a at theta (+ the logged refusal forward at theta')
    assert len(rec.snaps) == passes
    assert ("align/refusal_loss" in t.callback_metrics) is log_refusal


def test_perturbation_norm_direction_and_bit_exact_restore(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, accumulate=2)
    model = tiny_lora_model()
    items = [align_item(0, 0), align_item(0, 1)]
    ref = _ref_terms(model, items[0])
    rec = ForwardRecorder(model)
    _fit(FlatAlignModule(model, cfg.method.align), items, 1, tmp_path)
    # 4 passes per micro-batch: g_h at theta, g_h' and g_r at theta', g_a at theta
    assert len(rec.snaps) == 8
    theta, theta_p = rec.snaps[0], rec.snaps[1]
    delta = [b - a for a, b in zip(theta, theta_p, strict=True)]
    assert float(global_norm(delta)) == pytest.approx(RHO, rel=1e-5)
    # theta' = theta - rho g_h / ||g_h|| with the independently computed g_h
    for t, d, tp_ref in zip(theta, delta, ref["theta_p"].values(), strict=True):
        torch.testing.assert_close(t + d, tp_ref, rtol=1e-5, atol=1e-6)
    # the refusal pass runs at the same theta'
    for a, b in zip(rec.snaps[1], rec.snaps[2], strict=True):
        assert torch.equal(a, b)
    # restore is bit-exact: g_a and the next micro-batch (no optimiser step yet) see theta
    for snap in (rec.snaps[3], rec.snaps[4]):
        for a, b in zip(theta, snap, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(theta, ref["theta"].values(), strict=True):
        assert torch.equal(a, b)


def test_snapshot_restore_is_bit_exact_in_bf16():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 5, generator=gen).bfloat16() for _ in range(3)]
    grads = [torch.randn(7, 5, generator=gen).bfloat16() for _ in range(3)]
    original = [p.clone() for p in params]
    snap = ParameterSnapshot()
    snap.save(params)
    descend_(params, grads, 0.37, global_norm(grads))
    assert not all(torch.equal(a, b) for a, b in zip(params, original, strict=True))
    snap.restore(params)
    assert all(torch.equal(a, b) for a, b in zip(params, original, strict=True))


def test_frozen_weights_never_change(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = _named_trainable(model)
    _fit(FlatAlignModule(model, _cfg(tiny_cfg).method.align), [align_item(0, i) for i in range(3)], 3, tmp_path)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, lora[n]), n
        else:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.parametrize(
    ("method", "mode", "lambda2"),
    [
        (AlignMethod.ANTIBODY, LambdaMode.KKT, 0.05),
        (AlignMethod.ANTIBODY, LambdaMode.COSINE_EMA, 0.05),
        (AlignMethod.ANTIBODY, LambdaMode.CONSTANT, 0.3),
        (AlignMethod.BOOSTER, LambdaMode.CONSTANT, 0.0),
    ],
)
def test_update_equals_independent_computation(tiny_cfg, tmp_path, method, mode, lambda2):
    cfg = _cfg(tiny_cfg, method=method, mode=mode, lam=2.5, lambda2=lambda2)
    model = tiny_lora_model()
    item = align_item(0, 0)
    terms = _ref_terms(model, item)
    want, lam = _ref_update([terms], mode, lambda2, lam=2.5)
    cap = GradCapture()
    t = _fit(FlatAlignModule(model, cfg.method.align), [item], 1, tmp_path, callbacks=[cap])
    got = _flat(cap.grads[0])
    torch.testing.assert_close(got, want, rtol=2e-4, atol=1e-7)
    assert float(t.callback_metrics["align/lambda_t"]) == pytest.approx(lam, rel=1e-4)
    # each term is far above the tolerance, so a missing term would fail the comparison
    s = _flat(terms["g_h"]) - _flat(terms["g_hp"])
    assert float((lam * s).norm()) > 1e-2 * float(want.norm())
    if lambda2:
        assert float((lambda2 * _flat(terms["g_r"])).norm()) > 1e-2 * float(want.norm())


def test_clipping_scales_the_combined_gradient(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, gradient_clip_val=1e-3)
    model = tiny_lora_model()
    item = align_item(0, 0)
    want, _ = _ref_update([_ref_terms(model, item)], LambdaMode.KKT, 0.05)
    cap = GradCapture()
    _fit(FlatAlignModule(model, cfg.method.align), [item], 1, tmp_path, callbacks=[cap])
    got = _flat(cap.grads[0])
    assert float(got.norm()) == pytest.approx(1e-3, rel=1e-3)
    torch.testing.assert_close(got / got.norm(), want / want.norm(), rtol=1e-4, atol=1e-6)


def test_zero_lambdas_equal_a_plain_sft_step(tiny_cfg, tmp_path):
    items = [align_item(0, 0)]
    # independent plain SFT step: transformers loss, torch AdamW
    ref = tiny_lora_model()
    a = tiny_cfg.method.align
    opt = torch.optim.AdamW(trainable(ref), lr=a.lr, weight_decay=0.0)
    ref.train()
    ref(**{k: items[0]["align"][k] for k in ("input_ids", "attention_mask", "labels")}).loss.backward()
    opt.step()

    results = {}
    for method in (AlignMethod.ANTIBODY, AlignMethod.SFT):
        model = tiny_lora_model()
        rec = ForwardRecorder(model)
        cfg = _cfg(tiny_cfg, method=method, mode=LambdaMode.CONSTANT, lam=0.0, lambda2=0.0)
        _fit(FlatAlignModule(model, cfg.method.align), items, 1, tmp_path)
        results[method] = len(rec.snaps)
        for p, q in zip(trainable(model), trainable(ref), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    # SFT skips the flat passes entirely; Antibody with lambda = lambda2 = 0 still runs the
    # harmful ones (g_h, g_h') but, like Booster, no refusal pass when lambda2 = 0
    assert results == {AlignMethod.SFT: 1, AlignMethod.ANTIBODY: 3}


# SFT's accumulation equals one large batch: tests/test_accumulation.py
def test_flat_accumulation_of_identical_microbatches_equals_their_concatenation(tiny_cfg, tmp_path):
    i0 = align_item(0, 0, fixed_lengths=True)
    big = {k: concat_batches(i0[k], i0[k]) for k in ("align", "harmful")}
    grads = []
    for accumulate, items in (
        (3, [i0, {**i0, "position": 1}, {**i0, "position": 2}]),
        (1, [{**big, "position": 0}]),
    ):
        cap = GradCapture()
        _fit(
            FlatAlignModule(tiny_lora_model(), _cfg(tiny_cfg, accumulate=accumulate).method.align),
            items,
            1,
            tmp_path,
            [cap],
        )
        grads.append(_flat(cap.grads[0]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_flat_accumulation_uses_per_microbatch_terms_and_one_lambda(tiny_cfg, tmp_path):
    items = [align_item(0, 0), align_item(0, 1)]
    model = tiny_lora_model()
    want, lam = _ref_update([_ref_terms(model, it) for it in items], LambdaMode.COSINE_EMA, 0.05)
    cap = GradCapture()
    cfg = _cfg(tiny_cfg, mode=LambdaMode.COSINE_EMA, accumulate=2)
    module = FlatAlignModule(model, cfg.method.align)
    _fit(module, items, 1, tmp_path, callbacks=[cap])
    torch.testing.assert_close(_flat(cap.grads[0]), want, rtol=2e-4, atol=1e-7)
    assert module.lambda_state.updates == 1  # once per optimiser step, not per micro-batch
    assert module.lambda_state.ema == pytest.approx(lam, rel=1e-5)


class _NaNOnBatches(L.Callback):
    """Turns the model's logits into NaN during the chosen batches (only on the first
    forward of each micro-batch when ``first_pass_only``: the harmful pass at theta)."""

    def __init__(self, model, batches, first_pass_only=False):
        self.batches, self.first_only, self.active, self.calls = set(batches), first_pass_only, False, 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.calls += 1
        if self.active and (not self.first_only or self.calls == 1):
            out.logits = out.logits * float("nan")
        return out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active, self.calls = batch_idx in self.batches or -1 in self.batches, 0


class _ParamsPerBatch(L.Callback):
    def __init__(self):
        self.after, self.steps = [], 0

    def on_train_start(self, trainer, pl_module):
        trainer.optimizers[0].register_step_pre_hook(lambda *a: setattr(self, "steps", self.steps + 1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append([p.detach().clone() for p in trainable(pl_module.model)])


def test_nonfinite_window_is_skipped_and_params_restored(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    module = FlatAlignModule(model, _cfg(tiny_cfg).method.align)
    nan = _NaNOnBatches(model, {1}, first_pass_only=True)  # NaN g_h: the perturbation is poisoned
    rec = _ParamsPerBatch()
    t = _fit(module, [align_item(0, i) for i in range(3)], 2, tmp_path, callbacks=[nan, rec])
    assert t.global_step == 2 and rec.steps == 2  # the optimiser never saw the NaN window
    assert module.skipped_steps == 1 and module.consecutive_nonfinite == 0
    assert module.stream_position == 3
    assert all(torch.equal(a, b) for a, b in zip(rec.after[0], rec.after[1], strict=True))
    assert all(torch.isfinite(p).all() for p in trainable(model))
    assert float(t.callback_metrics["align/skipped_steps"]) == 1.0


def test_too_many_consecutive_nonfinite_steps_raise(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    module = FlatAlignModule(model, _cfg(tiny_cfg, max_consecutive_nonfinite=2).method.align)
    nan = _NaNOnBatches(model, {-1})
    with pytest.raises(RuntimeError, match=r"3 optimiser steps in a row.*max_consecutive_nonfinite=2"):
        _fit(module, [align_item(0, i) for i in range(5)], 3, tmp_path, callbacks=[nan])
    assert module.skipped_steps == 3


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=CUDA_MARKS)])
def test_bf16_mixed_step_equals_fp32_reference_to_bf16_precision(tiny_cfg, tmp_path, accelerator):
    model = tiny_lora_model()
    item = align_item(0, 0)
    terms = _ref_terms(model, item)  # fp32 on the CPU, independent of the module
    want, lam = _ref_update([terms], LambdaMode.KKT, 0.05)
    ref = clone_model(model)
    with torch.no_grad():
        h = float(_ref_loss(ref, terms["theta"], item["harmful"]))
        hp = float(_ref_loss(ref, terms["theta_p"], item["harmful"]))
    cap = GradCapture()
    module = FlatAlignModule(model, _cfg(tiny_cfg).method.align)
    t = _fit(module, [item], 1, tmp_path, callbacks=[cap], precision="bf16-mixed", accelerator=accelerator)
    assert t.global_step == 1
    # measured on the CPU: 1.1e-2 relative error; dropping g_a (18% of the update) would fail
    assert_close_bf16(_flat(cap.grads[0]), want, "combined update")
    m = t.callback_metrics
    assert float(m["align/lambda_t"]) == pytest.approx(lam, rel=BF16_RTOL)
    assert float(m["align/harmful_loss"]) == pytest.approx(h, rel=BF16_RTOL)
    assert float(m["align/perturbed_harmful_loss"]) == pytest.approx(hp, rel=BF16_RTOL)
    assert float(m["align/grad_norm_h"]) == pytest.approx(float(_flat(terms["g_h"]).norm()), rel=BF16_RTOL)


def test_fp16_mixed_precision_is_refused(tiny_cfg):
    # on CPU Lightning itself swaps 16-mixed for bf16-mixed, so the check is driven directly
    module = FlatAlignModule(tiny_lora_model(), _cfg(tiny_cfg).method.align)
    module._trainer = SimpleNamespace(precision="16-mixed")
    with pytest.raises(ConfigError, match=r"trainer.precision='16-mixed'.*bf16-mixed"):
        module.on_fit_start()
    module._trainer = SimpleNamespace(precision="bf16-mixed")
    module.on_fit_start()


def test_overshooting_perturbation_is_reported(tiny_cfg, tmp_path, monkeypatch):
    """When the 'descent' step raises the harmful loss past the factor, the module says so
    once, naming the config key, instead of training on silently."""
    module = FlatAlignModule(tiny_lora_model(), _cfg(tiny_cfg).method.align)

    def window(*pairs):  # the micro-batches' (harmful loss, perturbed harmful loss), then the step's check
        for h, hp in pairs:
            module._note_overshoot(torch.tensor(h), torch.tensor(hp))
        module._warn_on_overshoot()

    # the window's first overshooting micro-batch is the one reported
    with pytest.warns(UserWarning, match=rf"method.align.rho={RHO} raised the harmful loss from 0.9 to 24"):
        window((0.8, 1.0), (0.9, 24.0), (0.7, 30.0))
    window((0.9, 30.0))  # said once only (no second warning, no error)
    module._overshoot_warned = False
    window((0.9, 1.5))  # below the factor: silent
    assert not module._overshoot_warned and module._overshoot is None
    # wired into the training step: with factor 0 any perturbed loss counts as overshoot
    monkeypatch.setattr(FlatAlignModule, "OVERSHOOT_FACTOR", 0.0)
    fresh = FlatAlignModule(tiny_lora_model(), _cfg(tiny_cfg).method.align)
    # recorded here rather than with pytest.warns, which re-emits the fit's other (third-
    # party) warnings without their module, past the module-specific filters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(fresh, [align_item(0, k) for k in range(1)], 1, tmp_path)
    overshoot = [w for w in caught if "raised the harmful loss" in str(w.message)]
    assert len(overshoot) == 1 and overshoot[0].category is UserWarning and fresh._overshoot_warned


def test_small_radius_does_not_warn(tiny_cfg, tmp_path, recwarn):
    module = FlatAlignModule(tiny_lora_model(), _cfg(tiny_cfg).method.align)
    _fit(module, [align_item(0, k) for k in range(2)], 2, tmp_path)
    overshoot = [str(w.message) for w in recwarn if "raised the harmful loss" in str(w.message)]
    assert overshoot == [] and module._overshoot_warned is False


def test_a_flat_window_reads_nothing_back_to_the_host_between_micro_batches(tiny_cfg, tmp_path, monkeypatch):
    """On an accelerator a host read (.item(), float(), bool() of a tensor) waits for every
    queued kernel; the flat step keeps its per-micro-batch values as tensors and reads them
    once per optimiser step. Counted on the CPU as the aten op every such read goes through,
    inside each micro-batch of a window of two, outside the model's own forward (transformers
    reads the attention mask there: not ours to change)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    in_model = [0]

    class HostReads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func is torch.ops.aten._local_scalar_dense.default and not in_model[0]
            return func(*args, **(kwargs or {}))

    reads: list[int] = []
    micro_batch = FlatAlignModule._accumulate_micro_batch

    def counted(self, item):
        with HostReads() as mode:
            micro_batch(self, item)
        reads.append(mode.n)

    monkeypatch.setattr(FlatAlignModule, "_accumulate_micro_batch", counted)
    # factor 0: every micro-batch overshoots, so the overshoot check is exercised too
    monkeypatch.setattr(FlatAlignModule, "OVERSHOOT_FACTOR", 0.0)
    module = FlatAlignModule(tiny_lora_model(), _cfg(tiny_cfg, accumulate=2).method.align)
    module.model.register_forward_pre_hook(lambda *a: in_model.__setitem__(0, in_model[0] + 1))
    module.model.register_forward_hook(lambda *a: in_model.__setitem__(0, in_model[0] - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(module, [align_item(0, k) for k in range(2)], 1, tmp_path)
    assert reads == [0, 0] and module._overshoot_warned
