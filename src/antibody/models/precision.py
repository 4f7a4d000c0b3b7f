"""The compute precision of the trained model's work outside Lightning (its generation in
an evaluation, the screen's scoring).

Training gets its precision from Lightning's plugin (``trainer.precision``); generation and
scoring run in plain PyTorch, so the same setting is applied here: under ``bf16-mixed``
(and its alias ``bf16``) they run under ``torch.autocast`` in bfloat16 on the model's
device, as Lightning's ``MixedPrecision`` plugin runs a training step, and in full
precision otherwise. Autocast keeps the weights in their dtype and runs matrix products in
bf16. Judges are not run under it: an instrument keeps the precision it was validated in.
"""

from __future__ import annotations

import contextlib

import torch

BF16_MIXED = ("bf16-mixed", "bf16")


def inference_autocast(precision: str, where: torch.nn.Module | torch.device | str
                       ) -> contextlib.AbstractContextManager:
    """The autocast context ``trainer.precision`` asks for, on the device of ``where`` (a
    model, or a device); nothing is looked up for a full-precision run."""
    if precision not in BF16_MIXED:
        return contextlib.nullcontext()
    device = next(where.parameters()).device if isinstance(where, torch.nn.Module) else torch.device(where)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cast_for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Under bf16-mixed, store the linear layers' weights in bf16 once, for a model that
    only runs inference (an evaluation, a screen).

    Autocast casts an fp32 weight to bf16 at every forward pass, and caches the cast only
    for weights that require grad, so greedy decoding re-cast the whole frozen base for
    every new token. Casting once gives the same bf16 values (round to nearest, as autocast
    casts), so the outputs are identical (tests/test_generation.py), and decoding 64
    answers of 40 tokens on the embedded model took 6.8 s instead of 7.6 s (2 CPU cores).
    The input embedding stays fp32 (with tied embeddings it is also the output head's
    weight), so the residual stream stays fp32 as under plain autocast; 4-bit and 8-bit
    layers keep their own storage.
    """
    if precision not in BF16_MIXED:
        return model
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is torch.nn.Linear and weight is not None and weight.dtype == torch.float32
                and weight is not embedding):
            module.weight.data = weight.data.to(torch.bfloat16)
    return model
