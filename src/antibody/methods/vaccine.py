"""Vaccine alignment: perturbation-aware alignment on hidden states (baseline).

Vaccine (Huang et al. 2024) trains the alignment loss at the worst-case perturbation of
the hidden states, so that the aligned model tolerates the hidden-state drift that later
harmful fine-tuning causes. Per micro-batch of the alignment stream (docs/method.md
("Vaccine")), with h_l the output of hooked block l (``method.align.vaccine.hook_point``):

1. forward with hooks that record each h_l; L = token-mean NLL;
   g_l = dL/dh_l by ``autograd.grad`` (parameters' ``.grad`` untouched);
2. e_l = rho * g_l / (||g|| + eps), ||g|| ONE L2 norm over all hooked blocks (float32);
   e_l is a constant (no graph);
3. forward again with hooks that add e_l to h_l; ``manual_backward`` of that loss, so the
   update is the alignment gradient at the perturbed hidden states.

Two forward/backward passes per micro-batch (plain SFT: one); no harmful data is used.
Accumulation, clipping, non-finite skipping and checkpoints are StageModule's.

Gradient checkpointing (docs/lightning.md ("Gradient checkpointing with peft")): the
backward recomputes each checkpointed decoder layer's ``forward``, which calls the
attention module (and its hooks) again. The record hook keeps only the first output per
block, and the backward of pass 3 runs while the perturbation hooks are still installed,
so the recomputed layer adds the same e_l and its activations equal the forward's.
Reentrant checkpointing cannot serve step 1 (``autograd.grad``); this repository enables
the non-reentrant kind (``models/loading.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from antibody.config.baselines import HookPoint
from antibody.config.schema import AlignStageConfig
from antibody.data.streams import LockstepPlan, TrainStream
from antibody.methods.base import StageModule
from antibody.methods.losses import token_mean_nll
from antibody.methods.perturb import NORM_EPS, global_norm
from antibody.models.structure import hook_points

# a forward hook: (module, args, output) -> replacement output or None
_Hook = Callable[[nn.Module, Any, Any], Any]


def _hidden(output: Any) -> Tensor:
    # attention modules return (attn_output, attn_weights); decoder layers return a tensor
    # in transformers 5 and a tuple (hidden, ...) in older releases: element 0 either way
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def _forward_hooks(blocks: Sequence[nn.Module], make_hook: Callable[[int], _Hook]) -> Iterator[None]:
    """Install ``make_hook(i)`` on block i; always remove every hook on exit.

    A hook left behind would perturb every later forward of the model (evaluation, the
    fine-tuning stage), so removal runs in ``finally``, also when the forward raises.
    """
    handles = []
    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_hook(make_hook(i)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def recorded_hidden_states(blocks: Sequence[nn.Module]) -> Iterator[list[Optional[Tensor]]]:
    """Yield a list that receives each block's hidden output during ONE forward.

    Only the first call per block is kept: a checkpoint recomputation calls the block
    again, and its output is a fresh tensor outside the graph of the loss. The hooks do
    not change any output.
    """
    recorded: list[Optional[Tensor]] = [None] * len(blocks)

    def make_hook(i: int) -> _Hook:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if recorded[i] is None:
                recorded[i] = _hidden(output)

        return hook

    with _forward_hooks(blocks, make_hook):
        yield recorded


@contextmanager
def perturbed_hidden_states(blocks: Sequence[nn.Module], deltas: Sequence[Tensor]) -> Iterator[None]:
    """Add ``deltas[i]`` to block i's hidden output on every call inside the context.

    Every call adds the same tensor, the checkpoint recomputation included; keep the
    backward inside the context when gradient checkpointing is on.
    """
    if len(deltas) != len(blocks):
        raise ValueError(f"{len(deltas)} perturbations for {len(blocks)} hooked blocks")

    def make_hook(i: int) -> _Hook:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden, delta = _hidden(output), deltas[i]
            if hidden.shape != delta.shape:
                # broadcasting would silently spread a wrong-sized perturbation
                raise RuntimeError(
                    f"hooked block {i} ({type(module).__name__}) output has shape {tuple(hidden.shape)}, "
                    f"its perturbation {tuple(delta.shape)}: perturb the batch it was computed on"
                )
            # cast so that a bf16 forward stays bf16 downstream (no-op when dtypes agree)
            return _with_hidden(output, hidden + delta.to(hidden.dtype))

        return hook

    with _forward_hooks(blocks, make_hook):
        yield


def hidden_state_gradients(loss: Tensor, hidden: Sequence[Optional[Tensor]]) -> list[Tensor]:
    """dloss/dh for each recorded hidden state (``autograd.grad``: ``.grad`` untouched)."""
    for i, h in enumerate(hidden):
        if h is None:
            raise RuntimeError(f"hooked block {i} never ran in the forward pass: it is not on the model's path")
        if not h.requires_grad:
            raise RuntimeError(
                f"the hidden state of hooked block {i} does not require grad: the forward ran under "
                "no_grad or reentrant gradient checkpointing; Vaccine needs use_reentrant=False"
            )
    return list(torch.autograd.grad(loss, list(hidden), allow_unused=True, materialize_grads=True))


def worst_case_perturbation(grads: Sequence[Tensor], rho: float) -> tuple[list[Tensor], Tensor]:
    """e_l = rho * g_l / (||g|| + eps) with one global float32 norm; returns (e, ||g||).

    One norm over all blocks (not one per block) puts the whole budget rho where the loss
    is most sensitive, as the released code does. ``e`` has the dtype of ``g`` (that of
    the hidden states) and no graph.
    """
    norm = global_norm(grads)
    scale = rho / (norm + NORM_EPS)
    return [(g.detach().float() * scale).to(g.dtype) for g in grads], norm


class HiddenPerturbation(NamedTuple):
    clean_loss: Tensor  # detached alignment loss of pass 1
    deltas: list[Tensor]  # e_l, one per hooked block
    grad_norm: Tensor  # ||g|| over all hooked blocks
    hidden_norm: Tensor  # ||h|| over all hooked blocks (the scale rho acts against)


# averaged over the micro-batches of one optimiser step (MeanMetric)
_MICRO_METRICS = ("loss", "clean_loss", "loss_increase", "hidden_grad_norm", "hidden_state_norm")


class VaccineAlignModule(StageModule):
    """Alignment stage of Vaccine: g = grad L_align at the perturbed hidden states.

    ``item`` = {"align": batch, "harmful": batch, "position": int}, the FlatAlignModule
    contract; the harmful batch is not used.
    """

    log_prefix = "align"

    def __init__(self, model: nn.Module, align: AlignStageConfig):
        super().__init__(model, align, _MICRO_METRICS)
        vaccine = align.vaccine
        self.rho = float(vaccine.rho)
        self.hook_point = HookPoint(vaccine.hook_point)
        # found once, here, so that an unsupported model fails before any training; a
        # plain list keeps the blocks from being registered twice as submodules
        self.blocks: list[nn.Module] = hook_points(model, self.hook_point)
        # declared to the DataModule: Vaccine never reads D_harm, so it is not even collated
        self.stream_plan = LockstepPlan((TrainStream.ALIGN,))

    def hidden_perturbation(self, batch: Mapping[str, Tensor]) -> HiddenPerturbation:
        """Pass 1: the alignment loss, its hidden-state gradient and e_l."""
        with recorded_hidden_states(self.blocks) as hidden:
            clean = token_mean_nll(self.model, batch)
        # outside the context: the record hooks change no output, so a checkpoint
        # recomputation inside autograd.grad needs none of them
        grads = hidden_state_gradients(clean, hidden)
        deltas, norm = worst_case_perturbation(grads, self.rho)
        with torch.no_grad():
            hidden_norm = global_norm([h.detach() for h in hidden if h is not None])
        return HiddenPerturbation(clean.detach(), deltas, norm, hidden_norm)

    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        batch = item["align"]
        p = self.hidden_perturbation(batch)
        with perturbed_hidden_states(self.blocks, p.deltas):
            loss = token_mean_nll(self.model, batch)
            # inside the context: under gradient checkpointing this backward recomputes the
            # layers, which must add the same perturbation as the forward did
            self.manual_backward(loss / self.accumulate)
        self._track("loss", loss)
        self._track("clean_loss", p.clean_loss)
        self._track("loss_increase", loss.detach() - p.clean_loss)
        self._track("hidden_grad_norm", p.grad_norm)
        self._track("hidden_state_norm", p.hidden_norm)
