"""WeightedFinetuneModule: weights, loss and gradients against independent computations."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from antibody.config.schema import RatioForm, Weighting
from antibody.methods.losses import per_sequence_nll
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from antibody.methods.weights import WEIGHTINGS, LossForm, WeightingKind, log_tag, weighted_loss
from tests._synthetic import (
    BF16_RTOL,
    IGNORE,
    GradCapture,
    assert_close_bf16,
    clone_model,
    finetune_item,
    finetune_module,
    hf_loss,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)
from tests.conftest import CUDA_MARKS


def _cfg(cfg, weighting=Weighting.LIKELIHOOD_RATIO, form=RatioForm.MEAN, tau=1.0, accumulate=1, **kw):
    f = cfg.method.finetune
    f.weighting, f.ratio_form, f.tau, f.accumulate_grad_batches = weighting, form, tau, accumulate
    f.weight_decay = 0.0
    for k, v in kw.items():
        setattr(f, k, v)
    return cfg


def _module(model, cfg, **overrides):
    return finetune_module(WeightedFinetuneModule, model, cfg, **overrides)


def _fit(module, items, max_steps, tmp_path, callbacks=(), **kw):
    t = trainer(max_steps, tmp_path, callbacks=callbacks, **kw)
    t.fit(module, train_dataloaders=list_loader(items))
    return t


# ---------------------------------------------------------------------------- reference
def _ref_row_terms(model, batch, prefix=""):
    """(summed log-prob, token count) per row, by an explicit loop over target positions."""
    logits = model(
        input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"]
    ).logits.float()
    logp = logits.log_softmax(-1)
    labels = batch[f"{prefix}labels"]
    sums, counts = [], []
    for i in range(labels.shape[0]):
        terms = [logp[i, t - 1, labels[i, t]] for t in range(1, labels.shape[1]) if labels[i, t] != IGNORE]
        sums.append(torch.stack(terms).sum())
        counts.append(len(terms))
    return torch.stack(sums), torch.tensor(counts, dtype=torch.float32)


def _ref_weights(model, batch, weighting, form, tau):
    with torch.no_grad():
        sy, ny = _ref_row_terms(model, batch)
        sr, nr = _ref_row_terms(model, batch, "refusal_")
    ly, lr = (sy / ny, sr / nr) if form is RatioForm.MEAN else (sy, sr)
    score = {
        Weighting.LIKELIHOOD_RATIO: ly - lr,
        Weighting.RESPONSE_ONLY: ly,
        Weighting.REFUSAL_ONLY: -lr,
    }[weighting]
    return torch.softmax(score / tau, 0), ly, lr


def _ref_grad(model, batch, w):
    ref = clone_model(model)
    sums, counts = _ref_row_terms(ref, batch)
    loss = -(w * sums).sum() / (w * counts).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, trainable(ref))])


def _flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


def _count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


# ---------------------------------------------------------------------------- tests
def test_registry_and_labels():
    assert set(WEIGHTINGS) == set(Weighting)
    assert WEIGHTINGS[Weighting.ORACLE].kind is WeightingKind.ANALYSIS_ONLY
    assert {m for m in Weighting if WEIGHTINGS[m].kind is WeightingKind.CONTROL} == {
        Weighting.RESPONSE_ONLY,
        Weighting.REFUSAL_ONLY,
    }
    assert log_tag(Weighting.ORACLE) == "analysis_only_oracle"
    assert log_tag(Weighting.LIKELIHOOD_RATIO) == ""


def test_uniform_loss_is_transformers_token_mean():
    model = tiny_lora_model()
    batch = finetune_item(0, 0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = per_sequence_nll(logits, batch["labels"])
    w = torch.full((4,), 0.25)
    torch.testing.assert_close(weighted_loss(nll, w), hf_loss(model, batch), rtol=1e-6, atol=1e-7)
    # the paper form with uniform weights is the mean of per-row mean losses
    sums, counts = _ref_row_terms(model, batch)
    torch.testing.assert_close(weighted_loss(nll, w, LossForm.SAMPLE_MEAN), (-sums / counts).mean())


@pytest.mark.parametrize(("form", "tau"), [(RatioForm.MEAN, 1.0), (RatioForm.SUM, 0.5)])
def test_likelihood_ratio_weights_and_gradient(tiny_cfg, tmp_path, form, tau):
    model = tiny_lora_model()
    item = finetune_item(0, 0)
    w_ref, ly, lr = _ref_weights(model, item, Weighting.LIKELIHOOD_RATIO, form, tau)
    g_ref = _ref_grad(model, item, w_ref)
    calls = _count_forwards(model)
    cap = GradCapture()
    module = _module(model, _cfg(tiny_cfg, form=form, tau=tau))
    _fit(module, [item], 1, tmp_path, callbacks=[cap])
    recs = module.weight_records()
    assert [r["uid"] for r in recs] == item["uid"]
    torch.testing.assert_close(torch.tensor([r["w"] for r in recs]), w_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.tensor([r["logp_y"] for r in recs]), ly, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor([r["logp_refusal"] for r in recs]), lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor([r["r"] for r in recs]), ly - lr, rtol=1e-4, atol=1e-5)
    assert float(w_ref.max() - w_ref.min()) > 1e-3  # the weights are not trivially uniform
    torch.testing.assert_close(_flat(cap.grads[0]), g_ref, rtol=1e-4, atol=1e-7)
    assert len(calls) == 2  # training forward + one no-grad refusal forward


def test_uniform_step_is_plain_sft_and_skips_the_refusal_forward(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    item = finetune_item(0, 0)
    ref = clone_model(model)
    g_ref = _flat(torch.autograd.grad(hf_loss(ref, item), trainable(ref)))
    want_loss = float(hf_loss(ref, item).detach())
    calls = _count_forwards(model)
    cap = GradCapture()
    module = _module(model, _cfg(tiny_cfg, weighting=Weighting.UNIFORM))
    t = _fit(module, [item], 1, tmp_path, callbacks=[cap])
    assert float(t.callback_metrics["finetune/loss"]) == pytest.approx(want_loss, rel=1e-6)
    torch.testing.assert_close(_flat(cap.grads[0]), g_ref, rtol=1e-5, atol=1e-7)
    assert len(calls) == 1
    assert all(math.isnan(r["logp_refusal"]) for r in module.weight_records())


def test_oracle_zeroes_harmful_rows(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    item = finetune_item(0, 0)
    assert item["is_harmful"].any() and (~item["is_harmful"]).any()
    benign_only = dict(item)
    benign_only["labels"] = item["labels"].masked_fill(item["is_harmful"][:, None], IGNORE)
    ref = clone_model(model)
    g_ref = _flat(torch.autograd.grad(hf_loss(ref, benign_only), trainable(ref)))
    calls = _count_forwards(model)
    cap = GradCapture()
    module = _module(model, _cfg(tiny_cfg, weighting=Weighting.ORACLE))
    t = _fit(module, [item], 1, tmp_path, callbacks=[cap])
    w = torch.tensor([r["w"] for r in module.weight_records()])
    assert torch.equal(w[item["is_harmful"]], torch.zeros(int(item["is_harmful"].sum())))
    assert float(w.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(_flat(cap.grads[0]), g_ref, rtol=1e-5, atol=1e-7)
    assert len(calls) == 1
    # analysis-only numbers are logged under a labelled name
    assert float(t.callback_metrics["finetune/analysis_only_oracle/harmful_weight_share"]) == 0.0
    assert "finetune/harmful_weight_share" not in t.callback_metrics


@pytest.mark.parametrize(
    ("weighting", "forwards"), [(Weighting.RESPONSE_ONLY, 1), (Weighting.REFUSAL_ONLY, 2)]
)
def test_controls_use_one_term(tiny_cfg, tmp_path, weighting, forwards):
    model = tiny_lora_model()
    item = finetune_item(0, 0)
    w_ref, _, _ = _ref_weights(model, item, weighting, RatioForm.MEAN, 0.5)
    calls = _count_forwards(model)
    module = _module(model, _cfg(tiny_cfg, weighting=weighting, tau=0.5))
    t = _fit(module, [item], 1, tmp_path)
    w = torch.tensor([r["w"] for r in module.weight_records()])
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-7)
    assert len(calls) == forwards
    assert f"finetune/control_{weighting.value}/weight_harmful_mean" in t.callback_metrics


def test_weight_statistics(tiny_cfg, tmp_path):
    module = _module(tiny_lora_model(), _cfg(tiny_cfg))
    t = _fit(module, [finetune_item(0, 0)], 1, tmp_path)
    recs = module.weight_records()
    w = torch.tensor([r["w"] for r in recs])
    h = torch.tensor([r["is_harmful"] for r in recs])
    m = t.callback_metrics
    assert float(m["finetune/weight_harmful_mean"]) == pytest.approx(float(w[h].mean() * len(w)), rel=1e-5)
    assert float(m["finetune/weight_benign_mean"]) == pytest.approx(float(w[~h].mean() * len(w)), rel=1e-5)
    assert float(m["finetune/harmful_weight_share"]) == pytest.approx(float(w[h].sum() / w.sum()), rel=1e-5)


# uniform accumulation equals one large batch: tests/test_accumulation.py
def test_weighted_accumulation_averages_per_microbatch_softmax(tiny_cfg, tmp_path):
    items = [finetune_item(0, 0), finetune_item(0, 1)]
    model = tiny_lora_model()
    refs = []
    for it in items:
        w, _, _ = _ref_weights(model, it, Weighting.LIKELIHOOD_RATIO, RatioForm.MEAN, 1.0)
        refs.append(_ref_grad(model, it, w))
    cap = GradCapture()
    _fit(_module(model, _cfg(tiny_cfg, accumulate=2)), items, 1, tmp_path, callbacks=[cap])
    torch.testing.assert_close(_flat(cap.grads[0]), (refs[0] + refs[1]) / 2, rtol=1e-4, atol=1e-7)


def test_detector_auroc_matches_sklearn(tiny_cfg, tmp_path):
    module = _module(tiny_lora_model(), _cfg(tiny_cfg), detector_window=3)
    t = _fit(module, [finetune_item(0, i) for i in range(3)], 3, tmp_path)
    recs = module.weight_records()
    y = [r["is_harmful"] for r in recs]
    want = {
        "neg_ratio": roc_auc_score(y, [-r["r"] for r in recs]),
        "neg_logp_response": roc_auc_score(y, [-r["logp_y"] for r in recs]),
        "logp_refusal": roc_auc_score(y, [r["logp_refusal"] for r in recs]),
    }
    got = module.detector_metrics()
    for name, value in want.items():
        assert got[f"auroc_{name}"] == pytest.approx(value, abs=1e-6)
        assert float(t.callback_metrics[f"finetune/detector/auroc_{name}"]) == pytest.approx(value, abs=1e-6)
    assert [r["step"] for r in recs] == [0] * 4 + [1] * 4 + [2] * 4


def test_nonfinite_step_is_skipped(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    state = {"calls": 0}

    def poison_second_batch(module, args, out):
        state["calls"] += 1
        if state["calls"] in (3, 4):  # both forwards of the second micro-batch
            out.logits = out.logits * float("nan")
        return out

    model.register_forward_hook(poison_second_batch)
    module = _module(model, _cfg(tiny_cfg))
    t = _fit(module, [finetune_item(0, i) for i in range(3)], 2, tmp_path)
    assert t.global_step == 2 and module.skipped_steps == 1 and module.stream_position == 3
    assert all(torch.isfinite(p).all() for p in trainable(model))


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=CUDA_MARKS)])
def test_bf16_mixed_step_equals_fp32_reference_to_bf16_precision(tiny_cfg, tmp_path, accelerator):
    model = tiny_lora_model()
    item = finetune_item(0, 0)
    # fp32 references on the CPU, independent of the module
    w_ref, ly, lr = _ref_weights(model, item, Weighting.LIKELIHOOD_RATIO, RatioForm.MEAN, 1.0)
    g_ref = _ref_grad(model, item, w_ref)
    sums, counts = _ref_row_terms(clone_model(model), item)
    loss_ref = float((-(w_ref * sums).sum() / (w_ref * counts).sum()).detach())
    cap = GradCapture()
    module = _module(model, _cfg(tiny_cfg))
    t = _fit(module, [item], 1, tmp_path, callbacks=[cap], precision="bf16-mixed", accelerator=accelerator)
    assert t.global_step == 1
    recs = module.weight_records()
    torch.testing.assert_close(torch.tensor([r["logp_y"] for r in recs]), ly, rtol=BF16_RTOL, atol=0.0)
    torch.testing.assert_close(torch.tensor([r["logp_refusal"] for r in recs]), lr, rtol=BF16_RTOL, atol=0.0)
    # the weights differ from uniform by ~0.03 and agree with fp32 to ~5e-5 (measured)
    torch.testing.assert_close(torch.tensor([r["w"] for r in recs]), w_ref, rtol=0.0, atol=2e-3)
    assert float(t.callback_metrics["finetune/loss"]) == pytest.approx(loss_ref, rel=BF16_RTOL)
    assert_close_bf16(_flat(cap.grads[0]), g_ref, "weighted gradient")  # measured 6.7e-3


def test_a_module_is_given_its_stage_config_and_named_fields(tiny_cfg):
    """The registry gives each module its stage's config and passes the few other fields it
    needs by name; the run writes weight records through the WeightRecording protocol."""
    from antibody.config.schema import AlignMethod
    from antibody.methods import WeightRecording, build_align_module, build_finetune_module

    assert tiny_cfg.method.finetune.detector_window is None
    module = build_finetune_module(tiny_lora_model(), tiny_cfg)
    assert module.stage_cfg is tiny_cfg.method.finetune and isinstance(module, WeightRecording)
    assert module.detector_window == math.ceil(tiny_cfg.data.user.n / tiny_cfg.data.finetune_batch_size)
    with pytest.raises(ValueError, match="detector_window"):
        WeightedFinetuneModule(tiny_lora_model(), tiny_cfg.method.finetune)  # nothing sizes it
    tiny_cfg.method.align.method = AlignMethod.REPNOISE
    align = build_align_module(tiny_lora_model(), tiny_cfg)
    assert align.stage_cfg is tiny_cfg.method.align and align.seed == tiny_cfg.run.seed
    assert not isinstance(align, WeightRecording)


def test_row_bookkeeping_reads_the_rows_on_the_host_once_per_micro_batch(monkeypatch):
    """The per-row numbers reach the host in one transfer per micro-batch (`_to_host`), with
    their values unchanged."""
    from antibody.methods import weighted_finetune as wf

    rows = wf.BatchRows(torch.tensor([-1.5, -2.25]), torch.tensor([-0.5, float("nan")]), torch.tensor([True, False]),
                        torch.tensor([3.0, 4.0]), torch.tensor([4.5, 9.0]), ["a", "b"], ["s", "t"], slice(0, 2))
    host, w = wf._to_host(rows, torch.tensor([0.75, 0.25]))
    assert host.logp_y.tolist() == [-1.5, -2.25] and host.logp_r[0].item() == -0.5 and host.logp_r[1].isnan()
    assert host.is_harmful.tolist() == [True, False] and w.tolist() == [0.75, 0.25]
    assert wf._to_host(dataclasses.replace(rows, logp_r=None), w)[0].logp_r is None


def test_the_loss_gathers_its_targets_with_one_host_read():
    """per_sequence_nll: the per-row summed CE of the target tokens (against a loop written
    out by hand), found with a single nonzero (its only read back to the host)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from antibody.methods.losses import per_sequence_nll

    class Count(TorchDispatchMode):
        """Ops that read back to the host: nonzero, item(), and indexing by a bool mask (a
        nonzero inside the kernel)."""

        nonzero = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            bool_index = func is torch.ops.aten.index.Tensor and any(
                i is not None and i.dtype == torch.bool for i in args[1])
            self.nonzero += bool_index or func in (torch.ops.aten.nonzero.default,
                                                   torch.ops.aten._local_scalar_dense.default)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.tensor([[-100, -100, 4, 5, 1, -100], [-100, 2, 3, -100, -100, -100], [-100] * 6])
    with Count() as count:
        out = per_sequence_nll(logits, labels)
    assert count.nonzero == 1
    want = torch.zeros(3)
    for b in range(3):
        for t in range(5):
            if labels[b, t + 1] != -100:
                want[b] -= torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]]
    torch.testing.assert_close(out.nll_sum, want)
    assert out.n_tokens.tolist() == [3.0, 2.0, 0.0]
