"""RepNoise: the kernel MMD, each loss term, the gradient, accumulation and resume, each
checked against an independent computation (transformers' own loss, full logits, an
explicit pairwise MMD)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from antibody.config.baselines import RepNoiseConfig, RepNoiseMask
from antibody.methods.mmd import multi_kernel_mmd
from antibody.methods.repnoise import (
    RepNoiseAlignModule,
    differing_selection,
    draw_noise,
    harmful_terms,
    logit_lens_modules,
    noise_seed,
)
from antibody.models.errors import ModelError
from antibody.models.loading import _enable_gradient_checkpointing
from tests._synthetic import (
    GradCapture,
    SyntheticDataModule,
    align_item,
    assert_close_bf16,
    clone_model,
    hf_loss,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)

# larger than the released 0.1 / 0.001 so that every term moves the tiny model's gradient
# well above the comparison tolerance (a dropped term must fail the test)
ALPHA, BETA = 0.5, 0.5


def _cfg(cfg, alpha=ALPHA, beta=BETA, logit_lens=True, accumulate=1):
    a = cfg.method.align
    a.repnoise.alpha, a.repnoise.beta, a.repnoise.logit_lens = alpha, beta, logit_lens
    a.accumulate_grad_batches = accumulate
    a.weight_decay = 0.0
    return cfg


def _module(model, cfg):
    return RepNoiseAlignModule(model, cfg.method.align, seed=cfg.run.seed)


def _flat(gs):
    return torch.cat([g.reshape(-1) for g in gs]).double()


# ---------------------------------------------------------------------------- reference
def _mmd_loop(x, y, kernel_num, kernel_mul):
    """The estimator written out pair by pair in float64 Python arithmetic."""
    pts = [row.double() for row in torch.cat([x, y])]
    n, b = len(pts), len(x)
    d = [[float((pts[i] - pts[j]).pow(2).sum()) for j in range(n)] for i in range(n)]
    bw = sum(map(sum, d)) / (n * n - n) / kernel_mul ** (kernel_num // 2)

    def k(i, j):
        return sum(math.exp(-d[i][j] / (bw * kernel_mul**q)) for q in range(kernel_num))

    blocks = (k(i, j) + k(b + i, b + j) - k(i, b + j) - k(b + i, j) for i in range(b) for j in range(b))
    return sum(blocks) / (b * b)


def _mmd_broadcast(x, y, kernel_num, kernel_mul):
    """Differentiable reference: explicit [n, n, F] differences (not the Gram form)."""
    pts = torch.cat([x, y]).double()
    n, b = pts.shape[0], x.shape[0]
    d = (pts[:, None, :] - pts[None, :, :]).pow(2).sum(-1)
    bw = d.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    k = sum(torch.exp(-d / (bw * kernel_mul**q)) for q in range(kernel_num))
    return (k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b]).mean()


def _ref_harm(model, batch, seed, logit_lens, kernel_num=5, kernel_mul=2.0):
    """L_harm and MMD_noise from transformers' loss, full logits and CPU noise of ``seed``."""
    labels = batch["labels"]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        output_hidden_states=True,
    )
    states = out.hidden_states
    ce = out.loss
    if logit_lens:
        base = model.get_base_model()
        for h in states:
            logits = base.lm_head(base.model.norm(h))  # the full [B, L, V] logits
            v = logits.shape[-1]
            ce = ce + F.cross_entropy(
                logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        ce = ce / len(states)
    gen = torch.Generator().manual_seed(seed)
    mask = (labels != -100).unsqueeze(-1).double()
    mmd = 0.0
    for h in states[1:]:
        z = torch.randn(h.shape, generator=gen, dtype=torch.float32)
        mmd = mmd + _mmd_broadcast(
            (h.double() * mask).flatten(1), (z.double() * mask).flatten(1), kernel_num, kernel_mul
        )
    return ce, mmd / (len(states) - 1)


def _ref_grad(model, item, seed, alpha=ALPHA, beta=BETA, logit_lens=True):
    ref = clone_model(model)
    ce, mmd = _ref_harm(ref, item["harmful"], seed, logit_lens)
    total = hf_loss(ref, item["align"]) - alpha * torch.log(1 + ce) + beta * mmd
    params = trainable(ref)
    return {
        "total": _flat(torch.autograd.grad(total, params, retain_graph=True)),
        "harm": _flat(torch.autograd.grad(-alpha * torch.log(1 + ce), params, retain_graph=True)),
        "mmd": _flat(torch.autograd.grad(beta * mmd, params)),
    }


def _fit(module, items, max_steps, root, callbacks=(), **kw):
    t = trainer(max_steps, root, callbacks=callbacks, **kw)
    t.fit(module, train_dataloaders=list_loader(items))
    return t


# ---------------------------------------------------------------------------- MMD
@pytest.mark.parametrize(("kernel_num", "kernel_mul"), [(5, 2.0), (1, 2.0), (4, 1.5)])
def test_mmd_equals_written_out_pairwise_computation(kernel_num, kernel_mul):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 7, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    got = multi_kernel_mmd(x, y, kernel_num, kernel_mul)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_mmd_loop(x, y, kernel_num, kernel_mul), rel=1e-10, abs=1e-12)
    # float32 inputs, with a large common offset the Gram form must not lose precision to
    x32, y32 = (x + 100.0).float(), (y + 100.0).float()
    assert float(multi_kernel_mmd(x32, y32, kernel_num, kernel_mul)) == pytest.approx(
        _mmd_loop(x, y, kernel_num, kernel_mul), rel=1e-4
    )


def test_mmd_under_cpu_bf16_autocast_is_the_fp32_computation():
    """bf16-mixed on the CPU (and CUDA's bf16) runs matmuls in bf16 under autocast: the MMD
    switches it off, so its value and gradient equal the fp32 computation."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(16, 64, generator=gen) + 50.0).requires_grad_()
    y = torch.randn(16, 64, generator=gen) * 1.2 + 50.1
    want = multi_kernel_mmd(x, y)
    (g_want,) = torch.autograd.grad(want, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = multi_kernel_mmd(x, y)
        # the control: the same Gram product left to autocast is computed in bf16
        assert (x @ x.T).dtype == torch.bfloat16
    (g_got,) = torch.autograd.grad(got, x)
    assert got.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(g_got, g_want)


def test_mmd_of_identical_samples_is_zero_and_grows_as_the_distributions_part():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    # zero up to the rounding of the Gram form (float64 here)
    assert float(multi_kernel_mmd(x, x.clone())) == pytest.approx(0.0, abs=1e-12)
    same = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    # a second sample of N(0, I) scores low (the biased estimator is not 0); a shifted mean
    # or a wider spread scores higher and higher
    shifted = [float(multi_kernel_mmd(x, same + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    widened = [float(multi_kernel_mmd(x, same * scale)) for scale in (1.0, 1.5, 2.0, 4.0)]
    for values in (shifted, widened):
        assert values == sorted(values) and values[-1] > 5 * values[0] > 0


def test_mmd_of_all_zero_samples_is_zero_not_nan():
    # a harmful batch with no answer token masks everything: zero bandwidth in the released code
    z = torch.zeros(3, 5, requires_grad=True)
    got = multi_kernel_mmd(z, torch.zeros(3, 5))
    got.backward()
    assert float(got.detach()) == 0.0 and torch.isfinite(z.grad).all()


def test_mmd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"two \[B, F\] tensors of one shape"):
        multi_kernel_mmd(torch.zeros(3, 5), torch.zeros(2, 5))


# ---------------------------------------------------------------------------- loss terms
@pytest.mark.parametrize("logit_lens", [False, True])
def test_harmful_terms_equal_independent_computation(logit_lens):
    model = tiny_lora_model()
    batch = align_item(0, 0)["harmful"]
    got = harmful_terms(model, batch, 1234, RepNoiseConfig(logit_lens=logit_lens))
    with torch.no_grad():
        want_ce, want_mmd = _ref_harm(model, batch, 1234, logit_lens)
        if not logit_lens:  # the final-layer CE is transformers' own causal-LM loss
            torch.testing.assert_close(got.harmful_loss, hf_loss(model, batch), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.harmful_loss.double(), want_ce.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.mmd_loss.double(), want_mmd, rtol=1e-5, atol=1e-7)
    assert float(got.mmd_loss.detach()) > 0.1  # hidden states are far from N(0, 1): not a vacuous check


def test_lens_modules_found_with_and_without_peft():
    model = tiny_lora_model()
    base = model.get_base_model()
    for m in (model, base):
        norm, head = logit_lens_modules(m)
        assert norm is base.model.norm and head is base.lm_head


class _NoNormLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(2, 2)])
        self.head = nn.Linear(2, 3)

    def get_output_embeddings(self):
        return self.head

    def get_decoder(self):
        return self


def test_missing_final_norm_is_a_clear_error(tiny_cfg):
    with pytest.raises(
        ModelError, match=r"found head=Linear, decoder=_NoNormLM with children \['layers', 'head'\]"
    ):
        logit_lens_modules(_NoNormLM())
    with pytest.raises(ModelError, match=r"repnoise.logit_lens=false"):
        _module(_NoNormLM(), _cfg(tiny_cfg))
    _module(_NoNormLM(), _cfg(tiny_cfg, logit_lens=False))  # not needed: accepted


# ---------------------------------------------------------------------------- noise
def test_noise_depends_only_on_seed_and_position(tiny_cfg):
    shapes = [torch.empty(2, 3, 4), torch.empty(2, 3, 4)]
    rng = torch.get_rng_state()
    a = draw_noise(shapes, noise_seed(7, 5))
    torch.manual_seed(999)  # the global RNG plays no part
    draw_noise(shapes, noise_seed(7, 6))  # nor does what was drawn before
    b = draw_noise(shapes, noise_seed(7, 5))
    torch.set_rng_state(rng)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])  # each layer gets its own noise
    seeds = {noise_seed(s, p) for s in (0, 1, 42) for p in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    module = _module(tiny_lora_model(), _cfg(tiny_cfg))
    assert module.noise_seed(3) == noise_seed(tiny_cfg.run.seed, 3)
    # drawing the module's noise leaves the global RNG where it was
    before = torch.get_rng_state()
    harmful_terms(module.model, align_item(0, 0)["harmful"], module.noise_seed(0), module.settings)
    assert torch.equal(before, torch.get_rng_state())


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("logit_lens", [True, False])
def test_gradient_equals_autograd_on_reference_total(tiny_cfg, tmp_path, logit_lens):
    cfg = _cfg(tiny_cfg, logit_lens=logit_lens)
    model = tiny_lora_model()
    item = align_item(0, 0)
    want = _ref_grad(model, item, noise_seed(cfg.run.seed, 0), logit_lens=logit_lens)
    cap = GradCapture()
    t = _fit(_module(model, cfg), [item], 1, tmp_path, callbacks=[cap])
    torch.testing.assert_close(_flat(cap.grads[0]), want["total"], rtol=1e-4, atol=1e-7)
    norm = float(want["total"].norm())
    assert float(want["harm"].norm()) > 1e-2 * norm and float(want["mmd"].norm()) > 1e-2 * norm
    m = t.callback_metrics
    total = m["align/retain_loss"] - ALPHA * torch.log1p(m["align/harmful_loss"]) + BETA * m["align/mmd_loss"]
    assert float(m["align/loss"]) == pytest.approx(float(total), rel=1e-5)


def test_accumulation_averages_the_micro_batch_gradients(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, accumulate=2)
    model = tiny_lora_model()
    items = [align_item(0, 0), align_item(0, 1)]
    want = sum(_ref_grad(model, it, noise_seed(cfg.run.seed, it["position"]))["total"] for it in items) / 2
    cap = GradCapture()
    _fit(_module(model, cfg), items, 1, tmp_path, callbacks=[cap])
    assert len(cap.grads) == 1
    torch.testing.assert_close(_flat(cap.grads[0]), want, rtol=1e-4, atol=1e-7)


def test_short_fit_with_released_weights_trains_adapters_only(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, alpha=0.1, beta=0.001)  # released scripts
    model = tiny_lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    module = _module(model, cfg)
    t = _fit(module, [align_item(0, i) for i in range(3)], 3, tmp_path)
    assert t.global_step == 3 and module.stream_position == 3 and module.skipped_steps == 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n
    for key in ("loss", "retain_loss", "harmful_loss", "mmd_loss"):
        assert math.isfinite(float(t.callback_metrics[f"align/{key}"])), key


def test_resume_from_step_checkpoint_equals_uninterrupted(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, accumulate=2)

    def run(max_steps, root, ckpt_path=None, callbacks=()):
        module = _module(tiny_lora_model(), cfg)
        t = trainer(max_steps, root, callbacks=callbacks)
        t.fit(module, datamodule=SyntheticDataModule("align", batch_size=3), ckpt_path=ckpt_path)
        return module, t

    straight, _ = run(2, tmp_path / "straight")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    run(1, tmp_path / "a", callbacks=[ckpt])
    torch.manual_seed(12345)  # a fresh process's global RNG differs; the noise must not care
    resumed, t = run(2, tmp_path / "b", ckpt_path=ckpt.best_model_path or ckpt.last_model_path)
    assert t.global_step == 2 and resumed.stream_position == straight.stream_position == 4
    for p, q in zip(trainable(resumed.model), trainable(straight.model), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)


def test_bf16_mixed_step_equals_fp32_reference_to_bf16_precision(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    model = tiny_lora_model()
    item = align_item(0, 0)
    want = _ref_grad(model, item, noise_seed(cfg.run.seed, 0))["total"]
    cap = GradCapture()
    t = _fit(_module(model, cfg), [item], 1, tmp_path, callbacks=[cap], precision="bf16-mixed")
    assert t.global_step == 1
    assert_close_bf16(_flat(cap.grads[0]), want, "RepNoise gradient")
    assert float(t.callback_metrics["align/mmd_loss"]) > 0


def test_model_gradient_checkpointing_gives_the_same_terms_and_gradient():
    # models/loading.py's non-reentrant activation checkpointing (large models): the hidden
    # states, the logit lens (itself checkpointed) and the MMD must see the same graph
    item, grads, values = align_item(0, 0), [], []
    for checkpointing in (False, True):
        model = tiny_lora_model()
        if checkpointing:
            _enable_gradient_checkpointing(model.get_base_model())
        model.train()
        terms = harmful_terms(model, item["harmful"], 11, RepNoiseConfig())
        (torch.log1p(terms.harmful_loss) + terms.mmd_loss).backward()
        grads.append(_flat([p.grad for p in trainable(model)]))
        values.append((float(terms.harmful_loss.detach()), float(terms.mmd_loss.detach())))
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------- released masks
def _bo_mask(a, b):
    """BO's mask, written out: ~eq(a, b cut or zero-padded to a's shape), within a's tokens."""
    ids = a["input_ids"]
    other = torch.zeros_like(ids)
    rows, length = min(ids.shape[0], b["input_ids"].shape[0]), min(ids.shape[1], b["input_ids"].shape[1])
    other[:rows, :length] = b["input_ids"][:rows, :length]
    return (ids != other) & a["attention_mask"].bool()


def _bo_masked_ce(logits, ids, mask):
    """BO masked_token_ce_loss (loss_func/repnoise_loss.py:56-75) with an exact (fp32) mask:
    logits of unmasked positions zeroed, labels outside the mask (and id 0) ignored."""
    m = mask.to(logits.dtype)
    shift_logits = logits[:, :-1] * m[:, :-1].unsqueeze(-1)
    shift_labels = ids[:, 1:] * mask[:, 1:].long()
    shift_labels = shift_labels.masked_fill(shift_labels == 0, -100)
    return F.cross_entropy(shift_logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100)


def _paired_item():
    """An alignment item whose first rows share their first tokens across the two batches
    (as RN's paired rows do), so that the mask has covered and uncovered runs."""
    item = align_item(0, 0)
    harm, keep = item["harmful"], {k: v.clone() if torch.is_tensor(v) else v for k, v in item["align"].items()}
    keep["input_ids"][0, :4] = harm["input_ids"][0, :4]
    keep["input_ids"][1, :2] = harm["input_ids"][1, :2]
    return {**item, "align": keep}


def test_differing_selection_is_the_released_mask():
    item = _paired_item()
    harm, keep = item["harmful"], item["align"]
    sel = differing_selection(harm, keep)
    want = _bo_mask(harm, keep)
    assert torch.equal(sel.covered, want) and torch.equal(sel.zeroed, ~want)
    assert not sel.covered[0, :4].any() and sel.covered[0, 4]
    # unpaired rows: prompt tokens are covered too, unlike the answer mask
    answer = harm["labels"] != -100
    assert (sel.covered & ~answer & harm["attention_mask"].bool()).any()
    assert torch.equal(sel.labels != -100, want & (harm["input_ids"] != 0))
    assert torch.equal(differing_selection(keep, harm).covered, _bo_mask(keep, harm))


def test_differing_step_gradient_equals_the_released_loss_written_out(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    cfg.method.align.repnoise.mask = RepNoiseMask.DIFFERING
    model = tiny_lora_model()
    item = _paired_item()
    harm, keep = item["harmful"], item["align"]
    ref = clone_model(model)
    base = ref.get_base_model()
    out = ref(input_ids=harm["input_ids"], attention_mask=harm["attention_mask"], output_hidden_states=True)
    mask = _bo_mask(harm, keep)
    ce = _bo_masked_ce(out.logits, harm["input_ids"], mask)
    for h in out.hidden_states:
        ce = ce + _bo_masked_ce(base.lm_head(base.model.norm(h)), harm["input_ids"], mask)
    ce = ce / len(out.hidden_states)
    gen = torch.Generator().manual_seed(noise_seed(cfg.run.seed, 0))
    m = mask.unsqueeze(-1).double()
    mmd = sum(
        _mmd_broadcast((h.double() * m).flatten(1), (torch.randn(h.shape, generator=gen).double() * m).flatten(1), 5, 2.0)
        for h in out.hidden_states[1:]
    ) / (len(out.hidden_states) - 1)
    kept = ref(input_ids=keep["input_ids"], attention_mask=keep["attention_mask"]).logits
    retain = _bo_masked_ce(kept, keep["input_ids"], _bo_mask(keep, harm))
    total = retain - ALPHA * torch.log(1 + ce) + BETA * mmd
    want = _flat(torch.autograd.grad(total, trainable(ref)))
    cap = GradCapture()
    t = _fit(_module(model, cfg), [item], 1, tmp_path, callbacks=[cap])
    torch.testing.assert_close(_flat(cap.grads[0]), want, rtol=1e-4, atol=1e-7)
    assert float(t.callback_metrics["align/retain_loss"]) == pytest.approx(float(retain.detach()), rel=1e-5)
    # the default (answer) mask trains differently on the same item
    cfg.method.align.repnoise.mask = RepNoiseMask.ANSWER
    cap_answer = GradCapture()
    _fit(_module(tiny_lora_model(), cfg), [item], 1, tmp_path / "answer", callbacks=[cap_answer])
    assert not torch.allclose(_flat(cap_answer.grads[0]), want, rtol=1e-2)
