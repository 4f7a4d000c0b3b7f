"""Find a causal LM's repeated blocks from its module tree, not from its class.

Methods that act on hidden states (Vaccine) need each decoder layer, or each layer's
self-attention module. Transformer LMs keep their layers in one ``nn.ModuleList`` (Llama,
Qwen2, Gemma2: ``model.model.layers``; under peft one or two wrappers further down), so
the layers are found as a list of same-class blocks and the attention module as the layer
child named after attention. No per-architecture class checks: a new architecture with
the same shape works without a code change, and one without it gets a ``ModelError`` that
shows what was found.
"""

from __future__ import annotations

import re

from torch import nn

from antibody.config.baselines import HookPoint
from antibody.models.errors import ModelError

# "attn" (self_attn, Gemma/Llama/Qwen2/OPT) or "attention" (self_attention, Falcon)
_ATTENTION_NAME = re.compile(r"attn|attention", re.IGNORECASE)


def _is_repeated_blocks(module: nn.Module) -> bool:
    """A ModuleList whose children are all of one class (the stacked layers)."""
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    first = type(module[0])
    return all(type(child) is first for child in module)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model``, in forward order.

    Candidates are ModuleLists of same-class blocks that are not inside another candidate:
    that drops lists nested in a layer (MoE experts, which can outnumber the layers).
    Of the remaining ones the longest wins (first in module order on a tie).
    """
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not _is_repeated_blocks(module):
            continue
        # named_modules() lists parents first, so an enclosing candidate is already here
        if any(name.startswith(f"{outer}.") for outer, _ in candidates):
            continue
        candidates.append((name, module))
    if not candidates:
        raise ModelError(
            f"cannot find the decoder layers of {type(model).__name__}: no nn.ModuleList of "
            "same-class blocks in its module tree (hidden-state methods such as Vaccine need one)"
        )
    _, layers = max(candidates, key=lambda c: len(c[1]))  # max() keeps the first on a tie
    return list(layers)


def attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention submodule of one decoder layer.

    A direct child whose name mentions attention and that has submodules of its own: the
    second condition drops norms named after attention (``post_attention_layernorm`` in
    Llama/Qwen2/Gemma2), which are leaves.
    """
    children = list(layer.named_children())
    matches = [
        module
        for name, module in children
        if _ATTENTION_NAME.search(name) and "norm" not in name.lower() and any(True for _ in module.children())
    ]
    if len(matches) != 1:
        listed = ", ".join(f"{name} ({type(module).__name__})" for name, module in children) or "none"
        what = "no" if not matches else f"{len(matches)}"
        raise ModelError(
            f"{what} self-attention submodules found in decoder layer {type(layer).__name__}; "
            f"expected exactly one child named like 'attn'/'attention'. Its children: {listed}"
        )
    return matches[0]


def hook_points(model: nn.Module, point: HookPoint) -> list[nn.Module]:
    """The modules whose outputs are the hidden states at ``point``, one per layer."""
    point = HookPoint(point)  # a plain string from a hand-written config works too
    layers = decoder_layers(model)
    if point is HookPoint.DECODER_LAYER:
        return layers
    return [attention_module(layer) for layer in layers]
