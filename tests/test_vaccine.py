"""Vaccine: the hidden-state perturbation, the update, hook removal, gradient checkpointing
and structural discovery, each checked against an independent computation whose hooks are
written here (not imported from antibody.methods.vaccine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

from antibody.config.baselines import HookPoint
from antibody.config.schema import AlignMethod
from antibody.methods.perturb import global_norm
from antibody.methods.vaccine import VaccineAlignModule, perturbed_hidden_states
from antibody.models.errors import ModelError
from antibody.models.loading import _enable_gradient_checkpointing
from antibody.models.structure import attention_module, decoder_layers, hook_points
from tests._synthetic import (
    VOCAB,
    GradCapture,
    align_item,
    assert_close_bf16,
    clone_model,
    hf_loss,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)
from tests.conftest import CUDA_MARKS

RHO = 5.0  # released scripts
POINTS = [HookPoint.ATTENTION, HookPoint.DECODER_LAYER]


def _cfg(cfg, point=HookPoint.ATTENTION, accumulate=1, rho=RHO):
    a = cfg.method.align
    a.method = AlignMethod.VACCINE
    a.vaccine.rho, a.vaccine.hook_point = rho, point
    a.accumulate_grad_batches = accumulate
    a.weight_decay = 0.0
    return cfg


def _fit(module, items, max_steps, tmp_path, callbacks=(), **kw):
    t = trainer(max_steps, tmp_path, callbacks=callbacks, **kw)
    t.fit(module, train_dataloaders=list_loader(items))
    return t


def _flat(gs):
    return torch.cat([g.reshape(-1) for g in gs]).double()


# ---------------------------------------------------------------------------- reference
def _layers(model):
    return model.base_model.model.model.layers  # spelled out for the tiny peft Llama


def _ref_blocks(model, point):
    return [layer.self_attn for layer in _layers(model)] if point is HookPoint.ATTENTION else list(_layers(model))


def _h(out):
    return out[0] if isinstance(out, tuple) else out


class _Hooks:
    """Forward hooks on blocks, removed on exit (the test's own, independent helper)."""

    def __init__(self, blocks, fn):
        self.handles = [b.register_forward_hook(fn) for b in blocks]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _ref_vaccine(model, batch, point, rho=RHO):
    """Vaccine's update on an untouched copy, transformers' own loss, no eps."""
    ref = clone_model(model)
    blocks = _ref_blocks(ref, point)
    outs = {}
    with _Hooks(blocks, _recorder(outs)):
        clean = hf_loss(ref, batch)
    g = torch.autograd.grad(clean, [outs[id(b)] for b in blocks])
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in g))
    e = {id(b): (rho * x.double() / norm).float() for b, x in zip(blocks, g, strict=True)}

    def add(m, a, out):
        h = _h(out) + e[id(m)]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with _Hooks(blocks, add):
        loss = hf_loss(ref, batch)
        grads = torch.autograd.grad(loss, trainable(ref))
    plain = torch.autograd.grad(hf_loss(ref, batch), trainable(ref))
    return SimpleNamespace(
        grads=list(grads), plain=list(plain), g=list(g), e=[e[id(b)] for b in blocks],
        norm=float(norm), clean=clean.item(), loss=loss.item(),
    )


def _recorder(store):
    """A forward hook keeping each block's first hidden output (returns None: no change)."""

    def hook(m, a, out):
        store.setdefault(id(m), _h(out))

    return hook


def _all_hookable(model):
    return [*_layers(model), *(layer.self_attn for layer in _layers(model))]


def _assert_no_hooks(model):
    for block in _all_hookable(model):
        assert not block._forward_hooks, f"{type(block).__name__} keeps {len(block._forward_hooks)} hooks"


# ---------------------------------------------------------------------------- perturbation
@pytest.mark.parametrize("point", POINTS)
def test_perturbation_has_global_norm_rho_along_the_hidden_gradient(tiny_cfg, point):
    model = tiny_lora_model()
    batch = align_item(0, 0)["align"]
    ref = _ref_vaccine(model, batch, point)
    module = VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align)
    p = module.hidden_perturbation(batch)
    assert len(p.deltas) == 2
    assert float(global_norm(p.deltas)) == pytest.approx(RHO, rel=1e-5)  # over all layers together
    assert float(p.grad_norm) == pytest.approx(ref.norm, rel=1e-5)
    assert float(p.clean_loss) == pytest.approx(ref.clean, rel=1e-6)
    got, g = _flat(p.deltas), _flat(ref.g)
    assert float(got @ g / (got.norm() * g.norm())) == pytest.approx(1.0, abs=1e-6)  # direction of g
    for d, e in zip(p.deltas, ref.e, strict=True):
        torch.testing.assert_close(d, e, rtol=1e-5, atol=1e-7)
    # the per-layer shares are unequal, so one norm per layer would be a different vector
    shares = [float(d.norm()) for d in p.deltas]
    assert abs(shares[0] - shares[1]) > 1e-3 * RHO

    # the context adds exactly e_l to the output each block hands downstream
    blocks = _ref_blocks(model, point)
    clean, seen = {}, {}
    with torch.no_grad(), _Hooks(blocks, _recorder(clean)):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad(), perturbed_hidden_states(module.blocks, p.deltas):
        with _Hooks(blocks, _recorder(seen)):  # runs after the context's
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    # block 0 sees the same input, so its output moved by e_0 exactly; later blocks see
    # perturbed inputs and are checked through the update below
    torch.testing.assert_close(seen[id(blocks[0])] - clean[id(blocks[0])], p.deltas[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("point", POINTS)
def test_update_equals_independent_computation(tiny_cfg, tmp_path, point):
    model = tiny_lora_model()
    item = align_item(0, 0)
    ref = _ref_vaccine(model, item["align"], point)
    cap = GradCapture()
    t = _fit(VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align), [item], 1, tmp_path, [cap])
    got, want = _flat(cap.grads[0]), _flat(ref.grads)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
    # the perturbation matters: the plain SFT gradient is far outside that tolerance
    assert float((_flat(ref.plain) - want).norm()) > 0.05 * float(want.norm())
    m = t.callback_metrics
    assert float(m["align/loss"]) == pytest.approx(ref.loss, rel=1e-5)
    assert float(m["align/clean_loss"]) == pytest.approx(ref.clean, rel=1e-5)
    assert float(m["align/hidden_grad_norm"]) == pytest.approx(ref.norm, rel=1e-5)
    assert float(m["align/loss_increase"]) == pytest.approx(ref.loss - ref.clean, rel=1e-4, abs=1e-6)
    assert float(m["align/hidden_state_norm"]) > 0


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=CUDA_MARKS)])
@pytest.mark.parametrize("point", POINTS)
def test_bf16_mixed_update_equals_fp32_reference_to_bf16_precision(tiny_cfg, tmp_path, point, accelerator):
    model = tiny_lora_model()
    item = align_item(0, 0)
    ref = _ref_vaccine(model, item["align"], point)  # fp32 on the CPU
    cap = GradCapture()
    module = VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align)
    t = _fit(module, [item], 1, tmp_path, [cap], precision="bf16-mixed", accelerator=accelerator)
    assert t.global_step == 1
    # measured on the CPU: 1.8e-2 relative error, while the perturbation moves the update
    # by ~30x its norm on this tiny model (rho = 5 against small hidden states)
    assert_close_bf16(_flat(cap.grads[0]), _flat(ref.grads), "Vaccine update")


# ---------------------------------------------------------------------------- hooks
class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_at", [1, 2])  # 1: the recording pass, 2: the perturbed pass
@pytest.mark.parametrize("point", POINTS)
def test_hooks_are_removed_after_a_step_and_after_an_exception(tiny_cfg, tmp_path, point, fail_at):
    model = tiny_lora_model()
    _fit(VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align), [align_item(0, 0)], 1, tmp_path)
    _assert_no_hooks(model)

    calls = []

    def explode(m, a, out):  # the final norm runs after every hooked block
        calls.append(1)
        if len(calls) == fail_at:
            raise _Boom("mid-forward")

    model.base_model.model.model.norm.register_forward_hook(explode)
    with pytest.raises(_Boom):
        _fit(VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align), [align_item(0, 1)], 1, tmp_path)
    assert len(calls) == fail_at
    _assert_no_hooks(model)


@pytest.mark.parametrize("point", POINTS)
def test_gradient_checkpointing_gives_the_same_update(tiny_cfg, tmp_path, point):
    item = align_item(0, 0)
    grads, attn_calls = [], []
    for checkpointing in (False, True):
        model = tiny_lora_model()
        if checkpointing:  # the repository's own switch (non-reentrant, input grads)
            _enable_gradient_checkpointing(model.get_base_model())
        counter = []
        _layers(model)[0].self_attn.register_forward_hook(_call_counter(counter))
        cap = GradCapture()
        _fit(VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align), [item], 1, tmp_path, [cap])
        grads.append(_flat(cap.grads[0]))
        attn_calls.append(len(counter))
        _assert_no_hooks_but(model, _layers(model)[0].self_attn, 1)
    # the recomputation really re-ran layer 0's attention (so, with the attention hook
    # point, it added the perturbation again). Pass 1 with decoder-layer outputs needs no
    # backward through layer 0, hence one recomputation less.
    assert attn_calls == [2, 4 if point is HookPoint.ATTENTION else 3]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("point", POINTS)
def test_reentrant_checkpointing_is_refused_clearly(tiny_cfg, point):
    model = tiny_lora_model()
    base = model.get_base_model()
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    base.enable_input_require_grads()
    model.train()
    module = VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align)
    # attention outputs are made under no_grad inside a reentrant checkpoint (our check);
    # decoder-layer outputs reach autograd.grad, which torch refuses under it
    with pytest.raises(RuntimeError, match="use_reentrant"):
        module.hidden_perturbation(align_item(0, 0)["align"])
    _assert_no_hooks(model)


def _call_counter(calls):
    def hook(m, a, out):
        calls.append(1)

    return hook


def _assert_no_hooks_but(model, block, n):
    for b in _all_hookable(model):
        assert len(b._forward_hooks) == (n if b is block else 0)


# ---------------------------------------------------------------------------- discovery
def _tiny_qwen2():
    return Qwen2ForCausalLM(
        Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    )


def _tiny_gemma2():
    return Gemma2ForCausalLM(
        Gemma2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                     attn_implementation="eager")
    )


@pytest.mark.parametrize("build", [_tiny_qwen2, _tiny_gemma2], ids=["qwen2", "gemma2"])
@pytest.mark.parametrize("point", POINTS)
def test_other_architectures_through_peft(tiny_cfg, build, point):
    torch.manual_seed(0)
    base = build()
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    layers = list(base.model.layers)
    assert decoder_layers(model) == layers
    want = [layer.self_attn for layer in layers] if point is HookPoint.ATTENTION else layers
    assert hook_points(model, point) == want
    module = VaccineAlignModule(model, _cfg(tiny_cfg, point).method.align)
    p = module.hidden_perturbation(align_item(0, 0)["align"])
    assert float(global_norm(p.deltas)) == pytest.approx(RHO, rel=1e-5)
    assert all(not b._forward_hooks for b in [*layers, *want])


def test_tiny_llama_hook_points_are_its_layers_and_self_attention():
    model = tiny_lora_model()
    layers = list(_layers(model))
    assert decoder_layers(model) == layers
    # post_attention_layernorm is named after attention too; it is a leaf norm
    assert [attention_module(layer) for layer in layers] == [layer.self_attn for layer in layers]
    assert hook_points(model, HookPoint.DECODER_LAYER) == layers
    assert hook_points(model, "attention") == [layer.self_attn for layer in layers]


class _Layer(nn.Module):
    def __init__(self, n_attn=1, n_experts=0):
        super().__init__()
        self.input_norm = nn.LayerNorm(4)
        for i in range(n_attn):
            setattr(self, f"attn{i}", nn.Sequential(nn.Linear(4, 4)))
        self.mlp = nn.ModuleList(nn.Linear(4, 4) for _ in range(n_experts)) if n_experts else nn.Linear(4, 4)


class _Stack(nn.Module):
    def __init__(self, n_layers=2, **kw):
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.layers = nn.ModuleList(_Layer(**kw) for _ in range(n_layers))


def test_nested_lists_are_not_layers():
    # MoE experts outnumber the layers but sit inside one: the outer list is the layers
    model = _Stack(n_layers=2, n_experts=8)
    assert decoder_layers(model) == list(model.layers)


def test_model_without_decoder_layers_is_a_clear_error(tiny_cfg):
    with pytest.raises(ModelError, match=r"decoder layers of Sequential: no nn.ModuleList"):
        decoder_layers(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))
    with pytest.raises(ModelError, match="no nn.ModuleList"):
        VaccineAlignModule(nn.Sequential(nn.Linear(4, 4)), _cfg(tiny_cfg).method.align)


@pytest.mark.parametrize(("n_attn", "what"), [(0, "no"), (2, "2")])
def test_layer_without_one_attention_module_is_a_clear_error(tiny_cfg, n_attn, what):
    model = _Stack(n_attn=n_attn)
    with pytest.raises(ModelError, match=rf"{what} self-attention submodules found in decoder layer _Layer.*"
                       r"Its children: input_norm \(LayerNorm\)"):
        hook_points(model, HookPoint.ATTENTION)
    assert hook_points(model, HookPoint.DECODER_LAYER) == list(model.layers)  # layers still found


def test_mismatched_perturbation_is_refused():
    model = tiny_lora_model()
    blocks = hook_points(model, HookPoint.DECODER_LAYER)
    with pytest.raises(ValueError, match="1 perturbations for 2 hooked blocks"):
        with perturbed_hidden_states(blocks, [torch.zeros(1)]):
            pass
    batch = align_item(0, 0)["align"]
    with pytest.raises(RuntimeError, match=r"perturb the batch it was computed on"):
        with perturbed_hidden_states(blocks, [torch.zeros(1, 1, 32)] * 2):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    _assert_no_hooks(model)


# ---------------------------------------------------------------------------- Lightning
def test_short_fit_trains_the_adapter_only_with_two_passes_per_micro_batch(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    forwards = []
    model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    module = VaccineAlignModule(model, _cfg(tiny_cfg).method.align)
    t = _fit(module, [align_item(0, i) for i in range(3)], 3, tmp_path)
    assert t.global_step == 3 and module.stream_position == 3 and module.skipped_steps == 0
    assert len(forwards) == 6  # 2 per micro-batch; the harmful batch is never used
    for n, p in model.named_parameters():
        assert torch.equal(p, frozen[n]) if not p.requires_grad else not torch.equal(p, lora[n]), n
    for key in ("loss", "clean_loss", "loss_increase", "hidden_grad_norm", "hidden_state_norm", "grad_norm_total"):
        assert torch.isfinite(torch.as_tensor(t.callback_metrics[f"align/{key}"])), key
    _assert_no_hooks(model)


def test_accumulation_averages_per_micro_batch_updates(tiny_cfg, tmp_path):
    model = tiny_lora_model()
    items = [align_item(0, 0), align_item(0, 1)]
    # each micro-batch is perturbed along its own hidden gradient, then the two averaged
    want = sum(_flat(_ref_vaccine(model, it["align"], HookPoint.ATTENTION).grads) for it in items) / 2
    cap = GradCapture()
    module = VaccineAlignModule(model, _cfg(tiny_cfg, accumulate=2).method.align)
    t = _fit(module, items, 1, tmp_path, [cap])
    assert t.global_step == 1 and len(cap.grads) == 1 and module.stream_position == 2
    torch.testing.assert_close(_flat(cap.grads[0]), want, rtol=1e-4, atol=1e-8)
