"""QLoRA through both stages: every method's step on the nf4 model (bitsandbytes 0.50 on
the CPU, gradient checkpointing on, as conf/model/llama2-7b.yaml loads a 7B model) trains
only the LoRA tensors, leaves the 4-bit weights bit-identical, and equals the same step on
an fp32 twin whose base weights are the nf4 weights dequantised (same LoRA, same batches,
no checkpointing).

Tolerance: the steps are compared by the relative norm error of their gradients and
LoRA tensors, allowed up to ``QLORA_RTOL = 1e-5``. bitsandbytes 0.50 on the CPU computes
a 4-bit layer as "dequantise to the compute dtype (fp32 on the CPU: models/loading.py),
then an ordinary matmul", so the two models run the same fp32 arithmetic: measured error
0.0 (bit-identical) for every method here. The bound leaves room for a fused 4-bit kernel
(bitsandbytes tries kernels-community's CPU ``gemm_4bit_forward`` and falls back when the
``kernels`` package is absent, as it is here) that sums in another order: fp32 reordering
moves a dot product of K <= 128 terms by about sqrt(K) * 6e-8 ~ 1e-6 relative. Against
the un-quantised fp32 weights the same step differs by ~1e-1
(``test_tolerance_tells_nf4_from_the_unquantised_weights``), so a step that silently
trained on other weights than the 4-bit ones would fail.

Not covered: SafeInstr (the fine-tuning step is WeightedFinetuneModule's; the method
changes the data only, registry.FINETUNE_MODULES).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from antibody.config.schema import Quantization
from antibody.models import load_model, trainable_parameters
from tests.helpers import (
    QLORA_CASES,
    flat,
    fp32_twin,
    frozen_state,
    quantised_layers,
    randomise_lora_b,
    train_case,
)

bnb = pytest.importorskip("bitsandbytes")

QLORA_RTOL = 1e-5  # see the module docstring


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(model config, nf4 model with checkpointing, its dequantised fp32 twin), built once:
    each test deep-copies them."""
    from antibody.config import compose

    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path_factory.mktemp('runs')}"]).model
    torch.manual_seed(0)  # the LoRA A draw
    nf4, _ = load_model(dataclasses.replace(cfg, quantization=Quantization.NF4, gradient_checkpointing=True),
                        device="cpu")
    randomise_lora_b(nf4)
    return cfg, nf4, fp32_twin(cfg, nf4)


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", list(QLORA_CASES))
def test_nf4_step_trains_lora_only_and_equals_the_dequantised_fp32_step(models, tiny_cfg, tmp_path, case):
    model_cfg, nf4_built, twin_built = models
    nf4, twin = copy.deepcopy(nf4_built), copy.deepcopy(twin_built)
    base = nf4.get_base_model()
    # what conf/model/llama2-7b.yaml asks for: 4-bit nf4 layers, checkpointing on
    layers = quantised_layers(base)
    assert layers and all(m.weight.quant_state.quant_type == "nf4" for m in layers.values())
    assert base.is_gradient_checkpointing and not twin.get_base_model().is_gradient_checkpointing
    frozen = frozen_state(nf4)
    lora_before = {n: p.detach().clone() for n, p in trainable_parameters(nf4)}
    assert lora_before and all("lora_" in n for n in lora_before)

    got, _ = train_case(case, nf4, tiny_cfg, tmp_path / "nf4")
    want, _ = train_case(case, twin, tiny_cfg, tmp_path / "fp32")

    after = frozen_state(nf4)
    assert after.keys() == frozen.keys()
    changed = [n for n in frozen if not torch.equal(frozen[n], after[n])]
    assert changed == [], f"{case} wrote frozen or 4-bit tensors: {changed}"
    assert all(m.weight.dtype == torch.uint8 for m in quantised_layers(nf4).values())
    moved = [n for n, p in trainable_parameters(nf4) if not torch.equal(p, lora_before[n])]
    assert moved, f"{case}: no LoRA tensor moved"
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert float(w.norm()) > 0
        assert _rel(g, w) <= QLORA_RTOL, f"{case} step {step}: gradient error {_rel(g, w):.3g}"
    lora_nf4 = flat(p for _, p in trainable_parameters(nf4))
    lora_fp32 = flat(p for _, p in trainable_parameters(twin))
    assert _rel(lora_nf4, lora_fp32) <= QLORA_RTOL


def test_tolerance_tells_nf4_from_the_unquantised_weights(models, tiny_cfg, tmp_path):
    """The comparison can fail: the same step on the original fp32 weights (those nf4 was
    quantised from) differs by far more than QLORA_RTOL."""
    model_cfg, nf4_built, _ = models
    got, _ = train_case("align-antibody", copy.deepcopy(nf4_built), tiny_cfg, tmp_path / "nf4")
    original = fp32_twin(model_cfg, nf4_built, dequantised=False)
    want, _ = train_case("align-antibody", original, tiny_cfg, tmp_path / "orig")
    assert _rel(got[0], want[0]) > 100 * QLORA_RTOL


def _lora_grads(model: nn.Module, batch: dict) -> list[torch.Tensor | None]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return [p.grad for _, p in trainable_parameters(model)]


def test_an_eval_forward_before_training_keeps_every_lora_gradient(models):
    """bitsandbytes' CPU inference repacking (models.loading._keep_cpu_4bit_differentiable)
    must not cut the gradient: after an eval-mode no-grad forward (a probe, a screen) the
    training step's LoRA gradients equal those of a model that never ran in eval mode."""
    _, nf4_built, _ = models
    ids = torch.tensor([[5, 17, 42, 99, 7, 3], [8, 8, 64, 12, 1, 2]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    want = _lora_grads(copy.deepcopy(nf4_built), batch)
    evaluated = copy.deepcopy(nf4_built)
    with torch.no_grad():
        evaluated.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    got = _lora_grads(evaluated, batch)
    assert all(g is not None for g in got), "an eval forward cut the LoRA gradient"
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in quantised_layers(evaluated).values())


def test_an_nf4_chain_stacks_the_alignment_adapter_through_the_cli(tmp_path):
    """align -> finetune (merge, then a new adapter) -> eval on an nf4 base: the alignment
    adapter is never merged (models.adapters.merges_exactly) but rebuilt, frozen, beneath
    the fine-tuning adapter, in the fine-tuning stage and in its evaluation alike."""
    import json

    from safetensors.torch import load_file

    from antibody.app.stages import read_base_adapters
    from antibody.cli.main import main
    from antibody.config import compose

    base = ["experiment=tiny", "model.quantization=nf4", "method.align.max_steps=2",
            "method.finetune.max_steps=2", f"run.output_dir={tmp_path}"]
    assert main(["align", *base, "run.name=al", "method=sft"]) == 0
    # merge + new LoRA: Vaccine's, RepNoise's and SafeInstr's handling, an option for any method
    merge = "method.finetune.merge_then_new_adapter=true"
    assert main(["finetune", *base, "run.name=ft", "run.init_from=al", "method=sft", merge]) == 0
    ft = tmp_path / "ft"
    assert compose(["method=sft", merge]).method.finetune.merge_then_new_adapter
    assert read_base_adapters(ft) == [str((tmp_path / "al" / "adapter").resolve())]
    assert not [p for p in (ft / "adapter").iterdir() if p.is_dir()]  # only the new adapter is saved

    cfg = compose(base).model
    model, _ = load_model(cfg, base_adapters=read_base_adapters(ft), adapter_path=ft / "adapter")
    saved = load_file(tmp_path / "al" / "adapter" / "adapter_model.safetensors")
    stacked = {n: p for n, p in model.named_parameters() if ".base0." in n}
    assert len(stacked) == len(saved) and not any(p.requires_grad for p in stacked.values())
    for name, tensor in saved.items():  # peft saves without the adapter name
        assert torch.equal(stacked[name.replace(".weight", ".base0.weight")], tensor)
    assert main(["eval", f"run={ft}"]) == 0
    assert json.loads((ft / "eval" / "metrics.json").read_text())["metrics"]["harmful/harmful_score"]["n"] > 0


def test_an_inference_load_keeps_the_compute_dtype_and_the_kv_cache():
    """An nf4 model loaded for inference skips peft's training preparation: embeddings and
    norms keep the model's dtype (bf16 here) instead of fp32, gradient checkpointing stays
    off (the KV cache on), and nothing requires grad; a training load upcasts them."""
    from antibody.config import compose

    cfg = dataclasses.replace(compose(["experiment=tiny"]).model, quantization=Quantization.NF4, dtype="bfloat16",
                              gradient_checkpointing=True)
    train, _ = load_model(cfg, device="cpu")
    infer, _ = load_model(cfg, device="cpu", inference=True)
    embed = "base_model.model.model.embed_tokens.weight"
    assert dict(train.named_parameters())[embed].dtype == torch.float32  # peft's recipe upcasts
    params = dict(infer.named_parameters())
    assert params[embed].dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for n, p in params.items() if "norm" in n)
    assert not infer.get_base_model().is_gradient_checkpointing and infer.config.use_cache is not False
    assert not any(p.requires_grad for p in infer.parameters())
    with torch.no_grad():
        ids = torch.tensor([[5, 17, 42, 99]])
        assert infer.eval()(input_ids=ids).logits.dtype == torch.bfloat16
