"""Trainable-parameter vector algebra: gradients, norms, in-place perturb, exact restore.

Both the flat-alignment step and the sharpness probe move the trainable tensors (LoRA)
along a normalised gradient and put them back. docs/method.md, docs/lightning.md: only
trainable tensors are ever written (frozen or 4-bit base weights never), the norm is over
those tensors only, and the restore copies a snapshot back (``theta - e + e != theta`` in
bf16), so it is bit-exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# ours: keeps rho * g / (||g|| + eps) finite when the harmful gradient vanishes
NORM_EPS = 1e-12


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors the optimiser updates (LoRA adapters under peft), in a fixed order."""
    return [p for p in model.parameters() if p.requires_grad]


def grads_of(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """d loss / d params without touching ``.grad`` (accumulated gradients stay intact).

    Parameters the loss does not depend on get zeros, so every gradient list lines up
    with ``params``.
    """
    return list(torch.autograd.grad(loss, list(params), allow_unused=True, materialize_grads=True))


def current_grads(params: Sequence[Tensor]) -> list[Tensor]:
    """``.grad`` of each parameter, zeros where none was accumulated yet."""
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of the concatenation of ``tensors``, computed in float32 (0-dim tensor)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """One float32 vector from a list of tensors (the lambda_t rules work on these)."""
    return torch.cat([t.reshape(-1).float() for t in tensors])


def unflatten_like(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """`flatten`'s inverse: `flat` cut into tensors of the shapes (and dtypes) of `like`."""
    sizes = [t.numel() for t in like]
    if sum(sizes) != flat.numel():
        raise ValueError(f"a vector of {flat.numel()} entries does not fill tensors of {sum(sizes)}")
    return [part.view_as(t).to(t.dtype) for part, t in zip(torch.split(flat, sizes), like, strict=True)]


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """True when no entry of any tensor is inf or NaN (one device sync)."""
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class ParameterSnapshot:
    """Reusable copy of a list of tensors, restored with ``copy_`` (bit-exact).

    The storage is allocated once and reused every step: the released code deep-copies
    the whole model each step instead (trainers/antibody_alignment.py; docs/method.md).
    """

    def __init__(self) -> None:
        self._saved: list[Tensor] = []

    def save(self, params: Sequence[Tensor]) -> None:
        fits = len(self._saved) == len(params) and all(
            s.shape == p.shape and s.dtype == p.dtype and s.device == p.device
            for s, p in zip(self._saved, params, strict=True)
        )
        with torch.no_grad():
            if not fits:
                self._saved = [p.detach().clone() for p in params]
            else:
                for s, p in zip(self._saved, params, strict=True):
                    s.copy_(p)

    def restore(self, params: Sequence[Tensor]) -> None:
        if len(self._saved) != len(params):
            raise RuntimeError(
                f"snapshot holds {len(self._saved)} tensors but {len(params)} parameters were given"
            )
        with torch.no_grad():
            for s, p in zip(self._saved, params, strict=True):
                p.copy_(s)


def descend_(params: Sequence[Tensor], grads: Sequence[Tensor], rho: float, grad_norm: Tensor) -> None:
    """theta <- theta - rho * g / (||g|| + eps), in place, trainable tensors only.

    ``grad_norm`` is passed in (the caller logs it) and stays a tensor, so no device sync
    happens here.
    """
    scale = rho / (grad_norm + NORM_EPS)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_((g.float() * scale).to(p.dtype))
